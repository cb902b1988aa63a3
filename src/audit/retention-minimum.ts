/**
 * How long audit files must be kept to count as an audit trail under PCI DSS 10.5.1 ("retain
 * audit log history for at least 12 months"). `--audit-retention` may be shorter (tests and labs
 * want seconds), but never quietly: a member says so when it starts, exports its retention as
 * `rampart_audit_retention_seconds`, and `rampart compliance check` fails RAMPART-AUDIT-RETENTION.
 */
export const auditRetentionDaysMin = 365;

const dayMs = 86_400_000;

/** A retention for people: `8 s`, `90 min`, `30 days` (whole units, rounded down). */
export function retentionText(milliseconds: number): string {
  if (milliseconds >= dayMs) return `${Math.floor(milliseconds / dayMs)} days`;
  if (milliseconds >= 3_600_000) return `${Math.floor(milliseconds / 3_600_000)} h`;
  if (milliseconds >= 60_000) return `${Math.floor(milliseconds / 60_000)} min`;
  return `${Math.floor(milliseconds / 1000)} s`;
}

/** Why `retentionMs` falls short of PCI DSS 10.5.1, or undefined when it does not. */
export function retentionShortfall(retentionMs: number): string | undefined {
  if (retentionMs >= auditRetentionDaysMin * dayMs) return undefined;
  return `audit files are deleted ${retentionText(retentionMs)} after they close (--audit-retention), `
    + `less than PCI DSS 10.5.1's ${auditRetentionDaysMin} days: \`rampart compliance check\` fails RAMPART-AUDIT-RETENTION; `
    + 'give --audit-retention 365d or more (default 400d), or archive closed trail files elsewhere first';
}
