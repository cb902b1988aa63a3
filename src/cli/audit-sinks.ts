/**
 * `rampart serve --audit-sink … [--audit-fail-closed]`: checks the flags and starts the member's
 * streaming audit sinks (src/audit/sinks/). Sinks stream the trail, so they need one; failing
 * closed needs a sink to fail on.
 */
import path from 'node:path';
import type { Logger } from 'pino';
import type { AuditLog } from '../audit/log.js';
import { AuditSinks, readSinkFiles } from '../audit/sinks/fleet.js';
import { parseSinkSpecs, type SinkSpec } from '../audit/sinks/spec.js';

export interface AuditSinkFlags {
  readonly dataDir: string;
  readonly auditSink: readonly string[];
  readonly auditFailClosed: boolean;
}

/**
 * The repeatable flag's parser. From `--config-file` a list arrives joined by commas with no
 * previous value: it is split before each sink's scheme.
 */
export function collectSinks(value: string, previous: readonly string[] | undefined): string[] {
  if (previous === undefined) return value.split(/,(?=stdout(?:$|[?,])|syslog\+tls:\/\/|https:\/\/)/);
  return [...previous, value];
}

/**
 * The sinks the flags ask for, or the error a member refuses them with: a malformed or duplicate
 * spec, failing closed with no sink, a sink without a trail, a file a spec names that cannot be
 * read. `rampart up` runs it before it creates or starts anything.
 */
export async function checkedAuditSinks(sinkTexts: readonly string[], failClosed: boolean, audit: boolean): Promise<SinkSpec[]> {
  const specs = parseSinkSpecs(sinkTexts);
  if (specs.length === 0 && failClosed) throw new Error('--audit-fail-closed needs at least one --audit-sink to fail on');
  if (specs.length > 0 && !audit) throw new Error('--audit-sink streams the audit trail: not with --no-audit');
  for (const spec of specs) await readSinkFiles(spec);
  return specs;
}

export async function startAuditSinks(flags: AuditSinkFlags, trail: AuditLog | undefined, trailDirectory: string, member: string, productVersion: string, logger: Logger): Promise<AuditSinks | undefined> {
  const specs = await checkedAuditSinks(flags.auditSink, flags.auditFailClosed, trail !== undefined);
  if (specs.length === 0 || trail === undefined) return undefined;
  const sinks = await AuditSinks.start({ specs, trail, trailDirectory, stateDirectory: path.join(flags.dataDir, 'audit-sinks'), member, productVersion, logger });
  if (flags.auditFailClosed) logger.info({ sinks: specs.map((spec) => spec.name) }, 'audit fails closed: client requests are refused while no audit sink takes events');
  return sinks;
}
