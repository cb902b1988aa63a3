/**
 * RAMPART-AUDIT-RETENTION: every member keeps its closed audit files at least a year (PCI DSS
 * 10.5.1), as it reports in `rampart_audit_retention_seconds`. Pure: reads the member facts only.
 */
import { auditRetentionDaysMin, retentionText } from '../audit/retention-minimum.js';
import { worst, type ControlResult, type ControlStatus, type Observed } from './control.js';
import type { MemberFacts } from './facts.js';

const dayMs = 86_400_000;

export function auditRetentionControl(members: Observed<readonly MemberFacts[]>): ControlResult {
  const id = 'RAMPART-AUDIT-RETENTION';
  const title = `Audit files are kept at least ${auditRetentionDaysMin} days (PCI DSS 10.5.1)`;
  const fix = `start every member with --audit-retention ${auditRetentionDaysMin}d or more (the default, 400d, is PCI DSS 10.5.1's year plus margin); `
    + 'a shorter retention deletes closed trail files for good: archive them elsewhere first';
  if ('unavailable' in members) return { id, title, status: 'skip', evidence: [`members: ${members.unavailable}`], fix };
  const findings = members.value.map((member): { status: ControlStatus; line: string } => {
    if ('unavailable' in member.metrics) return { status: 'skip', line: `${member.name} metrics: ${member.metrics.unavailable}` };
    const metrics = member.metrics.value;
    if (!metrics.auditOn) return { status: 'fail', line: `${member.name}: keeps NO audit trail (--no-audit): nothing is retained` };
    if (metrics.auditRetentionSeconds === undefined) return { status: 'skip', line: `${member.name} metrics: no rampart_audit_retention_seconds (a member older than this check)` };
    const retentionMs = metrics.auditRetentionSeconds * 1000;
    const seen = `${member.name} metrics: rampart_audit_retention_seconds ${metrics.auditRetentionSeconds}: closed audit files are deleted after ${retentionText(retentionMs)}`;
    return retentionMs >= auditRetentionDaysMin * dayMs
      ? { status: 'pass', line: seen }
      : { status: 'fail', line: `${seen}, LESS than ${auditRetentionDaysMin} days` };
  });
  if (findings.length === 0) return { id, title, status: 'skip', evidence: ['no members'], fix };
  return { id, title, status: worst(findings.map((finding) => finding.status)), evidence: findings.map((finding) => finding.line), fix };
}
