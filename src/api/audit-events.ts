/**
 * What an audit event says about a request: its targets (keys, ranges, leases, user and role
 * names — never values, passwords or tokens) and how its result reads to an auditor.
 *
 * A Txn names every key and range of its compares and of both branches, however many: past the
 * trail's bound the rest is summarised by count and hash, but keys under a sensitive prefix (and
 * ranges that reach into one) come first and are always named, so decoys cannot hide them.
 */
import * as grpc from '@grpc/grpc-js';
import { auditKey } from '../audit/event.js';
import { auditPolicyDigest, encodeAuditPolicy, parseAuditPolicy } from '../audit/policy.js';
import { prefixRangeEnd } from '../storage/mvcc/range.js';
import type { Compare, RequestOp, TxnRequest } from './messages.js';

/** Keys whose every access is named in the trail, whatever else a request touches. */
export const sensitiveKeyPrefixes: readonly Buffer[] = [Buffer.from('/registry/secrets/')];

interface Target {
  readonly text: string;
  readonly sensitive: boolean;
  /** The key or range itself (what the audit policy's key selectors match); absent for names and ids. */
  readonly range?: KeyRange;
}

/** A key or range in etcd's convention: an empty rangeEnd is the single key, `\0` every key from `key` on. */
export interface KeyRange {
  readonly key: Buffer;
  readonly rangeEnd: Buffer;
}

const noKey = Buffer.alloc(0);
const asKey = (value: unknown): Buffer => (Buffer.isBuffer(value) ? value : typeof value === 'string' ? Buffer.from(value) : noKey);

/** Whether [start, end) (a single key when end is empty; to the end of the keyspace when end is \0) meets a sensitive prefix. */
function touchesSensitive(start: Buffer, end: Buffer): boolean {
  for (const sensitive of sensitiveKeyPrefixes) {
    if (end.length === 0) {
      if (start.subarray(0, sensitive.length).equals(sensitive)) return true;
      continue;
    }
    // The prefix's keys are [sensitive, sensitive + 0xff...): overlap when start < its end and end > sensitive.
    const startsBeforePrefixEnd = start.subarray(0, sensitive.length).compare(sensitive) <= 0;
    const endsAfterPrefix = (end.length === 1 && end[0] === 0) || Buffer.compare(end, sensitive) > 0;
    if (startsBeforePrefixEnd && endsAfterPrefix) return true;
  }
  return false;
}

function range(key: unknown, rangeEnd: unknown): Target {
  const start = asKey(key);
  const end = asKey(rangeEnd);
  const sensitive = touchesSensitive(start, end);
  const keyRange = { key: start, rangeEnd: end };
  if (end.length === 0) return { text: auditKey(start), sensitive, range: keyRange };
  if (end.length === 1 && end[0] === 0) return { text: `${auditKey(start)}..`, sensitive, range: keyRange };
  return { text: `${auditKey(start)}..${auditKey(end)}`, sensitive, range: keyRange };
}

const plain = (text: string): Target => ({ text, sensitive: false });

/**
 * A lock or election name: named as given, but its range is every key under `name/` (where
 * src/server/concurrency.ts reads and writes), so key rules see it. Leader and Observe return a
 * key's value: without its range, a read of /registry/secrets/ through the election API escaped
 * the shipped policy's secret-reads rule.
 */
function underName(name: unknown): Target {
  const prefix = Buffer.concat([asKey(name), Buffer.from('/')]);
  const end = prefixRangeEnd(prefix);
  return { text: auditKey(asKey(name)), sensitive: touchesSensitive(prefix, end), range: { key: prefix, rangeEnd: end } };
}

/** The leader key of a Proclaim or Resign (a LeaderKey message). */
const leaderKeyOf = (leader: unknown): unknown => (typeof leader === 'object' && leader !== null ? (leader as { key?: unknown }).key : undefined);

function txnTargets(txn: TxnRequest, into: Target[]): void {
  for (const compare of (txn.compare ?? []) as Compare[]) into.push(range(compare.key, compare.range_end));
  const op = (entry: RequestOp): void => {
    switch (entry.request) {
      case 'request_range':
        into.push(range(entry.request_range.key, entry.request_range.range_end));
        break;
      case 'request_put':
        into.push(range(entry.request_put.key, undefined));
        break;
      case 'request_delete_range':
        into.push(range(entry.request_delete_range.key, entry.request_delete_range.range_end));
        break;
      case 'request_txn':
        txnTargets(entry.request_txn, into);
        break;
    }
  };
  (txn.success ?? []).forEach(op);
  (txn.failure ?? []).forEach(op);
}

/** An int64 id as hex; anything that is not one (a malformed request) as `?`. */
function hexId(id: unknown): string {
  try {
    return BigInt.asUintN(64, BigInt(String(id || '0'))).toString(16);
  } catch {
    return '?';
  }
}
/** Lease ids as etcdctl prints them (%016x), so the id a client saw greps in the trail. */
const lease = (id: unknown): string => {
  const hex = hexId(id);
  return `lease:${hex === '?' ? hex : hex.padStart(16, '0')}`;
};
const member = (id: unknown): string => `member:${hexId(id)}`;

/** The policy an apply puts in force, by the digest of its canonical JSON (as `rampart audit policy show` prints it). */
function auditPolicyTarget(text: unknown): string {
  try {
    return `audit-policy:sha256:${auditPolicyDigest(encodeAuditPolicy(parseAuditPolicy('(applied audit policy)', String(text ?? ''))))}`;
  } catch {
    return 'audit-policy:malformed';
  }
}

/** Whether a Txn has a put or a delete in either branch, nested ones too. */
export function txnWrites(txn: TxnRequest): boolean {
  return [...(txn.success ?? []), ...(txn.failure ?? [])].some((op: RequestOp) =>
    op.request === 'request_put' || op.request === 'request_delete_range' || (op.request === 'request_txn' && txnWrites(op.request_txn)));
}

/**
 * The targets of a request, by RPC name, distinct, sensitive ones first; `named` of them must
 * never be summarised away. `ranges`: every key and range among them, for the audit policy.
 */
export function targetsOf(rpc: string, request: Record<string, unknown>): { targets: string[]; named: number; ranges: KeyRange[] } {
  const text = (value: unknown): string => (Buffer.isBuffer(value) ? auditKey(value) : typeof value === 'string' ? value : String(value ?? ''));
  let targets: Target[];
  switch (rpc) {
    case 'Range':
    case 'DeleteRange':
    case 'Watch.create':
      targets = [range(request.key, request.range_end)];
      break;
    case 'Put':
      targets = [range(request.key, undefined)];
      if (String(request.lease ?? '0') !== '0') targets.push(plain(lease(request.lease)));
      break;
    case 'Txn': {
      targets = [];
      txnTargets(request as unknown as TxnRequest, targets);
      break;
    }
    case 'Compact':
      targets = [plain(`revision:${String(request.revision)}`)];
      break;
    case 'LeaseGrant':
    case 'LeaseRevoke':
    case 'LeaseTimeToLive':
      targets = [plain(lease(request.ID))];
      break;
    case 'Authenticate':
    case 'UserAdd':
    case 'UserGet':
    case 'UserDelete':
    case 'UserChangePassword':
    case 'RoleAdd':
      targets = [plain(text(request.name))];
      break;
    case 'UserGrantRole':
      targets = [plain(text(request.user)), plain(`role:${text(request.role)}`)];
      break;
    case 'UserRevokeRole':
      targets = [plain(text(request.name)), plain(`role:${text(request.role)}`)];
      break;
    case 'RoleGet':
    case 'RoleDelete':
      targets = [plain(`role:${text(request.role)}`)];
      break;
    case 'RoleGrantPermission': {
      const perm = (request.perm ?? {}) as { key?: unknown; range_end?: unknown; permType?: number };
      targets = [plain(`role:${text(request.name)}`), range(perm.key, perm.range_end), plain(`permission:${['read', 'write', 'readwrite'][perm.permType ?? 0] ?? 'unknown'}`)];
      break;
    }
    case 'RoleRevokePermission':
      targets = [plain(`role:${text(request.role)}`), range(request.key, request.range_end)];
      break;
    case 'MemberAdd':
    case 'MemberUpdate':
      targets = ((request.peerURLs as unknown[] | undefined) ?? []).slice(0, 16).map((url) => plain(`peer:${String(url)}`));
      break;
    case 'MemberRemove':
    case 'MemberPromote':
      targets = [plain(member(request.ID))];
      break;
    case 'MoveLeader':
      targets = [plain(member(request.targetID))];
      break;
    case 'Lock':
    case 'Campaign':
    case 'Leader':
    case 'Observe':
      targets = [underName(request.name)];
      break;
    case 'Proclaim':
    case 'Resign':
      targets = [range(leaderKeyOf(request.leader), undefined)];
      break;
    case 'Unlock':
      targets = [range(request.key, undefined)];
      break;
    case 'AuditPolicyApply':
      targets = [plain(auditPolicyTarget(request.policy_json))];
      break;
    default:
      targets = [];
  }
  if (targets.length === 1) {
    // One target (a Put, a Range): the distinct, sensitive-first order below is the target itself.
    const [only] = targets as [Target];
    return { targets: [only.text], named: only.sensitive ? 1 : 0, ranges: only.range === undefined ? [] : [only.range] };
  }
  const sensitive = new Set<string>();
  const others = new Set<string>();
  const ranges: KeyRange[] = [];
  for (const target of targets) {
    (target.sensitive ? sensitive : others).add(target.text);
    if (target.range !== undefined) ranges.push(target.range);
  }
  for (const text of sensitive) others.delete(text);
  return { targets: [...sensitive, ...others], named: sensitive.size, ranges };
}

/**
 * `targetsOf(rpc, request).ranges` of a call with one key or range (Range, Put, DeleteRange, a
 * watch, Unlock), read straight from the request without building its target's text: what the audit
 * policy decides on, so a read the policy does not record (most of the traffic) costs no key's
 * text. Undefined for every other call (`targetsOf` then).
 */
export function singleAuditRanges(rpc: string, request: Record<string, unknown>): KeyRange[] | undefined {
  switch (rpc) {
    case 'Range':
    case 'DeleteRange':
    case 'Watch.create':
      return [{ key: asKey(request.key), rangeEnd: asKey(request.range_end) }];
    case 'Put':
    case 'Unlock':
      return [{ key: asKey(request.key), rangeEnd: noKey }];
    default:
      return undefined;
  }
}

const deniedCodes = new Set([grpc.status.PERMISSION_DENIED, grpc.status.UNAUTHENTICATED]);
const deniedMessages = new Set([
  'etcdserver: user name is empty',
  'etcdserver: authentication failed, invalid user ID or password',
  'etcdserver: revision of auth store is old',
  'etcdserver: too many requests',
]);

/** allowed, denied (a permission or authentication refusal) or failed (any other error). */
export function outcomeOf(code: grpc.status, detail: string): 'allowed' | 'denied' | 'failed' {
  if (code === grpc.status.OK) return 'allowed';
  return deniedCodes.has(code) || deniedMessages.has(detail) ? 'denied' : 'failed';
}
