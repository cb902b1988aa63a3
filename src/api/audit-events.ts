/**
 * What an audit event says about a request: its targets (keys, ranges, leases, user and role
 * names — never values, passwords or tokens) and how its result reads to an auditor.
 */
import * as grpc from '@grpc/grpc-js';
import { auditKey } from '../audit/log.js';
import type { Compare, RequestOp, TxnRequest } from './messages.js';

const maxTargets = 32;

function range(key: unknown, rangeEnd: unknown): string {
  const start = Buffer.isBuffer(key) ? key : Buffer.alloc(0);
  const end = Buffer.isBuffer(rangeEnd) ? rangeEnd : Buffer.alloc(0);
  if (end.length === 0) return auditKey(start);
  if (end.length === 1 && end[0] === 0) return `${auditKey(start)}..`;
  return `${auditKey(start)}..${auditKey(end)}`;
}

function txnTargets(txn: TxnRequest, into: Set<string>): void {
  for (const compare of txn.compare as Compare[]) into.add(range(compare.key, compare.range_end));
  const op = (entry: RequestOp): void => {
    switch (entry.request) {
      case 'request_range':
        into.add(range(entry.request_range.key, entry.request_range.range_end));
        break;
      case 'request_put':
        into.add(range(entry.request_put.key, undefined));
        break;
      case 'request_delete_range':
        into.add(range(entry.request_delete_range.key, entry.request_delete_range.range_end));
        break;
      case 'request_txn':
        txnTargets(entry.request_txn, into);
        break;
    }
  };
  txn.success.forEach(op);
  txn.failure.forEach(op);
}

const lease = (id: unknown): string => `lease:${BigInt(String(id || '0')).toString(16)}`;

/** The targets of a unary request, by RPC name. */
export function targetsOf(rpc: string, request: Record<string, unknown>): string[] {
  const text = (value: unknown): string => (Buffer.isBuffer(value) ? auditKey(value) : String(value ?? ''));
  let targets: string[];
  switch (rpc) {
    case 'Range':
    case 'DeleteRange':
    case 'Watch.create':
      targets = [range(request.key, request.range_end)];
      break;
    case 'Put':
      targets = [range(request.key, undefined), ...(String(request.lease ?? '0') !== '0' ? [lease(request.lease)] : [])];
      break;
    case 'Txn': {
      const into = new Set<string>();
      txnTargets(request as unknown as TxnRequest, into);
      targets = [...into];
      break;
    }
    case 'Compact':
      targets = [`revision:${String(request.revision)}`];
      break;
    case 'LeaseGrant':
    case 'LeaseRevoke':
    case 'LeaseTimeToLive':
      targets = [lease(request.ID)];
      break;
    case 'Authenticate':
    case 'UserAdd':
    case 'UserGet':
    case 'UserDelete':
    case 'UserChangePassword':
    case 'RoleAdd':
      targets = [text(request.name)];
      break;
    case 'UserGrantRole':
      targets = [text(request.user), `role:${text(request.role)}`];
      break;
    case 'UserRevokeRole':
      targets = [text(request.name), `role:${text(request.role)}`];
      break;
    case 'RoleGet':
    case 'RoleDelete':
      targets = [`role:${text(request.role)}`];
      break;
    case 'RoleGrantPermission': {
      const perm = (request.perm ?? {}) as { key?: unknown; range_end?: unknown; permType?: number };
      targets = [`role:${text(request.name)}`, range(perm.key, perm.range_end), `permission:${['read', 'write', 'readwrite'][perm.permType ?? 0] ?? 'unknown'}`];
      break;
    }
    case 'RoleRevokePermission':
      targets = [`role:${text(request.role)}`, range(request.key, request.range_end)];
      break;
    case 'MemberAdd':
    case 'MemberUpdate':
      targets = ((request.peerURLs as string[] | undefined) ?? []).map((url) => `peer:${url}`);
      break;
    case 'MemberRemove':
    case 'MemberPromote':
      targets = [`member:${BigInt(String(request.ID || '0')).toString(16)}`];
      break;
    case 'MoveLeader':
      targets = [`member:${BigInt(String(request.targetID || '0')).toString(16)}`];
      break;
    case 'Lock':
    case 'Campaign':
    case 'Leader':
      targets = [text(request.name)];
      break;
    case 'Unlock':
      targets = [text(request.key)];
      break;
    default:
      targets = [];
  }
  return targets.slice(0, maxTargets);
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
