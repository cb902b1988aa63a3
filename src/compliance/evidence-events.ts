/**
 * Audit events as an auditor asks for them: the NIST SP 800-53 AU-3 / PCI DSS 10.2.2 fields as
 * CSV columns (user, event type, date and time, success or failure, origin, affected data), and a
 * running summary for the bundle's HTML page (counts per day, denials, administrative actions,
 * failed logins), in bounded memory whatever the number of events.
 */
import { csvCell } from '../audit/csv.js';
import type { AuditEvent } from '../audit/event.js';

/** The CSV header: each AU-3 / PCI DSS 10.2.2 element, then what ties a row to the trail. */
export const evidenceCsvColumns = [
  'date_time', 'user', 'identified_by', 'event_type', 'success_or_failure', 'outcome', 'code', 'origin', 'member', 'affected_data', 'detail', 'seq', 'hash',
] as const;

export function evidenceCsvRow(event: AuditEvent): string {
  const cells: Record<(typeof evidenceCsvColumns)[number], unknown> = {
    date_time: event.time,
    user: event.user ?? '',
    identified_by: event.via ?? '',
    event_type: event.action,
    success_or_failure: event.outcome === 'allowed' ? 'success' : 'failure',
    outcome: event.outcome,
    code: event.code ?? '',
    origin: event.source ?? '',
    member: event.member,
    affected_data: event.targets ?? [],
    detail: event.detail ?? '',
    seq: event.seq,
    hash: event.hash,
  };
  return evidenceCsvColumns.map((column) => csvCell(cells[column])).join(',');
}

/** Changes to who may do what, to membership, keys and the store: what an auditor reviews as administration. */
const administrativeActions = new Set([
  'AuthEnable', 'AuthDisable', 'UserAdd', 'UserDelete', 'UserChangePassword', 'UserGrantRole', 'UserRevokeRole',
  'RoleAdd', 'RoleDelete', 'RoleGrantPermission', 'RoleRevokePermission', 'PolicyApply',
  'MemberAdd', 'MemberRemove', 'MemberUpdate', 'MemberPromote', 'MoveLeader',
  'Defragment', 'Alarm', 'Compact', 'Downgrade', 'Snapshot', 'EncryptionRotate',
]);

export function isAdministrative(event: AuditEvent): boolean {
  return administrativeActions.has(event.action) || event.action.startsWith('AuditPolicy');
}

export function isFailedLogin(event: AuditEvent): boolean {
  return event.action === 'Authenticate' && event.outcome !== 'allowed';
}

/** Events listed by kind in the summary (the most recent ones; counts cover all). */
export const summaryListedEventsMax = 200;
/** Distinct users and actions counted by name; past it they count as `(other)`. */
export const summaryNamesMax = 10_000;

export interface DayCounts {
  allowed: number;
  denied: number;
  failed: number;
}

/** What the HTML summary shows, built event by event. */
export class EvidenceSummary {
  readonly days = new Map<string, DayCounts>();
  readonly users = new Map<string, number>();
  readonly actions = new Map<string, number>();
  readonly members = new Map<string, number>();
  readonly denials: AuditEvent[] = [];
  readonly administrative: AuditEvent[] = [];
  readonly failedLogins: AuditEvent[] = [];
  total = 0;
  deniedTotal = 0;
  administrativeTotal = 0;
  failedLoginTotal = 0;

  add(event: AuditEvent): void {
    this.total += 1;
    const day = event.time.slice(0, 10);
    const counts = this.days.get(day) ?? { allowed: 0, denied: 0, failed: 0 };
    counts[event.outcome] += 1;
    this.days.set(day, counts);
    count(this.users, event.user === undefined || event.user === '' ? '(none)' : event.user);
    count(this.actions, event.action);
    count(this.members, event.member);
    if (event.outcome === 'denied') {
      this.deniedTotal += 1;
      keepRecent(this.denials, event);
    }
    if (isAdministrative(event)) {
      this.administrativeTotal += 1;
      keepRecent(this.administrative, event);
    }
    if (isFailedLogin(event)) {
      this.failedLoginTotal += 1;
      keepRecent(this.failedLogins, event);
    }
  }
}

function count(map: Map<string, number>, name: string): void {
  const key = map.has(name) || map.size < summaryNamesMax ? name : '(other)';
  map.set(key, (map.get(key) ?? 0) + 1);
}

function keepRecent(list: AuditEvent[], event: AuditEvent): void {
  list.push(event);
  if (list.length > summaryListedEventsMax) list.shift();
}
