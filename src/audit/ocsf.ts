/**
 * Audit events as OCSF API Activity events (class 6003, category Application Activity, schema
 * 1.3.0), so that SIEMs that read OCSF (Splunk, Elastic, Sentinel, Security Lake) ingest them
 * without a parser of ours. The mapping:
 *
 *   activity_id     CRUD of the etcd call: Range/Watch/…Get/…List → Read, Put/Txn/grants → Update,
 *                   DeleteRange/…Delete/LeaseRevoke → Delete, LeaseGrant/…Add → Create, else Other
 *   actor.user      the caller (name; `via` — certificate, token, password — in `unmapped`);
 *                   a caller that never identified itself is `actor.app_name` only, and the
 *                   member's own events (`audit.start`) have the member as `actor.app_uid`
 *   api.operation   the RPC (`Put`, `Txn`, `Authenticate`, …); api.service.name `etcdserverpb`
 *   resources[]     the targets: keys, ranges, lease/member/revision ids, user and role names
 *   src_endpoint    the caller's address; dst_endpoint the member (uid = member id)
 *   status_id       Success for `allowed`, Failure for `denied` and `failed` (status_code = gRPC
 *                   status name, status_detail = its message); severity Informational, Medium for
 *                   a denial, Low for another failure
 *   metadata.uid    `<member>:<file>:<seq>`, unique per event: a receiver that sees an event twice
 *                   (at-least-once transports) drops the copy by it; metadata.sequence = seq
 *   unmapped.rampart  the chain fields (file, seq, prev, hash) so the trail can be re-verified,
 *                   and the request fields when the audit policy records them
 *
 * Only what the trail holds is mapped: keys and names, never values.
 */
import type { AuditEvent } from './event.js';

export const ocsfSchemaVersion = '1.3.0';
const apiActivityClass = 6003;
const applicationCategory = 6;

const activities = { 1: 'Create', 2: 'Read', 3: 'Update', 4: 'Delete', 99: 'Other' } as const;
type ActivityId = keyof typeof activities;

const reads = new Set(['Range', 'Watch.create', 'LeaseTimeToLive', 'LeaseLeases', 'MemberList', 'Status', 'Hash', 'HashKV', 'AuthStatus', 'UserGet', 'UserList', 'RoleGet', 'RoleList', 'PolicyExport', 'Snapshot', 'Audit.Checkpoints', 'Audit.Tail']);
const creates = new Set(['LeaseGrant', 'UserAdd', 'RoleAdd', 'MemberAdd']);
const deletes = new Set(['DeleteRange', 'LeaseRevoke', 'UserDelete', 'RoleDelete', 'MemberRemove']);
const updates = new Set(['Put', 'Txn', 'Compact', 'UserGrantRole', 'UserRevokeRole', 'UserChangePassword', 'RoleGrantPermission', 'RoleRevokePermission', 'AuthEnable', 'AuthDisable', 'MemberUpdate', 'MemberPromote', 'PolicyApply', 'LeaseKeepAlive']);

export function activityOf(action: string): ActivityId {
  if (reads.has(action)) return 2;
  if (creates.has(action)) return 1;
  if (deletes.has(action)) return 4;
  if (updates.has(action)) return 3;
  return 99;
}

const severities = { allowed: { id: 1, name: 'Informational' }, failed: { id: 2, name: 'Low' }, denied: { id: 3, name: 'Medium' } } as const;

/** `host:port`, `[v6]:port` or `ipv4:host:port` as an OCSF network endpoint; anything else by name. */
export function endpointOf(source: string | undefined): Record<string, string | number> {
  const text = (source ?? '').replace(/^ipv[46]:/, '');
  const match = /^\[?([0-9a-fA-F:.]+?)\]?:(\d{1,5})$/.exec(text);
  if (match !== null && (match[1]?.includes('.') === true || match[1]?.includes(':') === true)) {
    return { ip: match[1] as string, port: Number(match[2]) };
  }
  return { name: text === '' ? 'unknown' : text };
}

function resourceType(target: string): string {
  const kind = /^(lease|member|revision):/.exec(target)?.[1];
  if (kind !== undefined) return `etcd ${kind}`;
  if (target.startsWith('…[')) return 'summary';
  return target.includes('..') ? 'etcd key range' : 'etcd key';
}

export interface OcsfContext {
  /** The trail file holding the event (its sequence numbers count per file). */
  readonly file: string;
  /** Rampart's version, for metadata.product.version. */
  readonly productVersion: string;
}

/** One event as an OCSF API Activity object (JSON-ready). */
export function ocsfApiActivity(event: AuditEvent, context: OcsfContext): Record<string, unknown> {
  const activity = activityOf(event.action);
  const severity = severities[event.outcome];
  const success = event.outcome === 'allowed';
  const user = event.user ?? '';
  const internal = event.action.startsWith('audit.');
  let actor: Record<string, unknown>;
  if (internal) actor = { app_name: 'rampart', app_uid: event.member }; // the member's own event (a trail file starting)
  else actor = user === '' ? { app_name: 'etcd v3 API client (unidentified)' } : { user: { name: user } };
  const result: Record<string, unknown> = {
    activity_id: activity,
    activity_name: activities[activity],
    category_uid: applicationCategory,
    category_name: 'Application Activity',
    class_uid: apiActivityClass,
    class_name: 'API Activity',
    type_uid: apiActivityClass * 100 + activity,
    type_name: `API Activity: ${activities[activity]}`,
    severity_id: severity.id,
    severity: severity.name,
    time: Date.parse(event.time),
    message: `${event.action} ${event.outcome}${user === '' ? '' : ` for ${user}`}`,
    status_id: success ? 1 : 2,
    status: success ? 'Success' : 'Failure',
    ...(event.code === undefined ? {} : { status_code: event.code }),
    ...(event.detail === undefined ? {} : { status_detail: event.detail }),
    metadata: {
      version: ocsfSchemaVersion,
      product: { name: 'Rampart', vendor_name: 'Rampart', version: context.productVersion },
      uid: `${event.member}:${context.file}:${event.seq}`,
      sequence: event.seq,
      original_time: event.time,
      log_name: 'audit',
      log_provider: 'rampart',
      event_code: event.action,
    },
    actor,
    api: { operation: event.action, service: { name: internal || event.action.startsWith('Audit.') ? 'rampart' : 'etcdserverpb' } },
    src_endpoint: endpointOf(event.source),
    dst_endpoint: { uid: event.member, svc_name: 'rampart' },
    unmapped: {
      rampart: {
        member: event.member, file: context.file, seq: event.seq, prev: event.prev, hash: event.hash,
        ...(event.via === undefined ? {} : { via: event.via }),
        // The audit policy's `request` level: name=value texts, values only as HMACs.
        ...(event.request === undefined ? {} : { request: event.request }),
      },
    },
  };
  if (event.targets !== undefined && event.targets.length > 0) result.resources = event.targets.map((target) => ({ name: target, type: resourceType(target) }));
  return result;
}
