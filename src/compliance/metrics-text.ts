/**
 * The few facts a compliance check reads from a member's Prometheus text (`/metrics`), by the
 * metric names `src/server/metrics.ts` registers. Absent metrics are absent facts, not zeros.
 */
import type { MetricsFacts } from './facts.js';

/** The largest /metrics body read; a member's is a few tens of KiB. */
export const metricsBodyBytesMax = 4 * 1024 * 1024;

export function parseMetrics(text: string): MetricsFacts {
  let auditOn = false;
  let authEnabled: boolean | undefined;
  let encryptionEnabled: boolean | undefined;
  let auditRetentionSeconds: number | undefined;
  const certificateExpirySeconds: Record<string, number> = {};
  for (const line of text.split('\n')) {
    if (line.startsWith('#') || line.trim() === '') continue;
    const match = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)/.exec(line);
    if (match === null) continue;
    const [, name, labels, raw] = match;
    const value = Number(raw);
    if (Number.isNaN(value)) continue;
    if (name === 'rampart_audit_queue_events') auditOn = true;
    else if (name === 'rampart_auth_enabled') authEnabled = value === 1;
    else if (name === 'rampart_encryption_enabled') encryptionEnabled = value === 1;
    else if (name === 'rampart_audit_retention_seconds') auditRetentionSeconds = value;
    else if (name === 'rampart_certificate_expiry_seconds') {
      const use = /use="([^"]*)"/.exec(labels ?? '')?.[1];
      if (use !== undefined) certificateExpirySeconds[use] = value;
    }
  }
  return { auditOn, authEnabled, encryptionEnabled, certificateExpirySeconds, ...(auditRetentionSeconds === undefined ? {} : { auditRetentionSeconds }) };
}
