/**
 * What each request needs, checked against an auth state: the same function runs before a request
 * is proposed (so a refused request never reaches the log) and when its entry is applied (so a
 * permission revoked in between is honoured), as etcd checks at apply time.
 *
 * Range: read on its range. Put: write (and read with prev_kv; write on the keys of the lease it
 * attaches). DeleteRange: write (read with prev_kv). Txn: read for every compare, and every op of both
 * branches, nested ones too. LeaseRevoke: write on every attached key. Compaction, alarms and auth
 * changes: root.
 */
import { RampartError } from '../errors.js';
import type { AuthDecider } from '../auth/store.js';
import type { Access } from '../auth/permissions.js';
import type { Caller, DeleteRangeRequest, InternalRequest, PutRequest, RangeRequest, RequestOp, TxnRequest } from '../api/messages.js';

export type LeaseKeys = (leaseId: bigint) => readonly Buffer[];

const none = Buffer.alloc(0);

/**
 * Ranges one request may have checked: a Txn's ops are bounded by validate.ts, but a put that
 * attaches a lease needs write on every key of that lease. Each lease is checked once per request;
 * past this many ranges the request is refused rather than hold the event loop.
 */
export const authorizationRangesMax = 100_000;

/** What one request has had checked so far. */
interface Budget {
  rangesLeft: number;
  readonly leasesChecked: Set<bigint>;
}

function newBudget(): Budget {
  return { rangesLeft: authorizationRangesMax, leasesChecked: new Set() };
}

/** Throws etcd's error when the caller may not proceed; returns when auth is off or it may. */
export function checkCaller(decider: AuthDecider, caller: Caller): void {
  if (!decider.state.enabled) return;
  if (caller.user === '') throw new RampartError('UserEmpty');
  if (caller.token && Number(caller.revision) < decider.state.revision) throw new RampartError('AuthOldRevision');
}

export function requireAdmin(decider: AuthDecider, caller: Caller): void {
  if (!decider.state.enabled) return;
  checkCaller(decider, caller);
  if (!decider.state.users.has(caller.user)) throw new RampartError('UserNotFound');
  if (!decider.isAdmin(caller.user)) throw new RampartError('PermissionDenied');
}

function need(decider: AuthDecider, caller: Caller, key: Buffer, rangeEnd: Buffer, access: Access, budget: Budget = newBudget()): void {
  if (--budget.rangesLeft < 0) throw new RampartError('RequestTooComplex');
  if (!decider.isPermitted(caller.user, key, rangeEnd, access)) throw new RampartError('PermissionDenied');
}

export function authorizeRange(decider: AuthDecider, caller: Caller, request: Pick<RangeRequest, 'key' | 'range_end'>): void {
  if (!decider.state.enabled) return;
  checkCaller(decider, caller);
  need(decider, caller, request.key, request.range_end, 'read');
}

function authorizePut(decider: AuthDecider, caller: Caller, request: PutRequest, leaseKeys: LeaseKeys, budget: Budget): void {
  need(decider, caller, request.key, none, 'write', budget);
  if (request.prev_kv) need(decider, caller, request.key, none, 'read', budget);
  const lease = BigInt(request.lease || '0');
  if (lease !== 0n && !budget.leasesChecked.has(lease)) {
    budget.leasesChecked.add(lease);
    for (const key of leaseKeys(lease)) need(decider, caller, key, none, 'write', budget);
  }
}

function authorizeDelete(decider: AuthDecider, caller: Caller, request: DeleteRangeRequest, budget: Budget): void {
  need(decider, caller, request.key, request.range_end, 'write', budget);
  if (request.prev_kv) need(decider, caller, request.key, request.range_end, 'read', budget);
}

function authorizeTxn(decider: AuthDecider, caller: Caller, request: TxnRequest, leaseKeys: LeaseKeys, budget: Budget): void {
  for (const compare of request.compare) need(decider, caller, compare.key, compare.range_end, 'read', budget);
  const op = (entry: RequestOp): void => {
    switch (entry.request) {
      case 'request_range':
        need(decider, caller, entry.request_range.key, entry.request_range.range_end, 'read', budget);
        break;
      case 'request_put':
        authorizePut(decider, caller, entry.request_put, leaseKeys, budget);
        break;
      case 'request_delete_range':
        authorizeDelete(decider, caller, entry.request_delete_range, budget);
        break;
      case 'request_txn':
        authorizeTxn(decider, caller, entry.request_txn, leaseKeys, budget);
        break;
    }
  };
  request.success.forEach(op);
  request.failure.forEach(op);
}

/** Checks a client request (one with a caller) against the state; members' own requests pass. */
export function authorizeRequest(decider: AuthDecider, request: InternalRequest, leaseKeys: LeaseKeys): void {
  const caller = request.caller;
  if (caller === undefined || caller === null || !decider.state.enabled) return;
  checkCaller(decider, caller);
  const budget = newBudget();
  switch (request.request) {
    case 'put':
      if (request.put !== undefined) authorizePut(decider, caller, request.put, leaseKeys, budget);
      return;
    case 'delete_range':
      if (request.delete_range !== undefined) authorizeDelete(decider, caller, request.delete_range, budget);
      return;
    case 'txn':
      if (request.txn !== undefined) authorizeTxn(decider, caller, request.txn, leaseKeys, budget);
      return;
    case 'lease_revoke':
      // Revoking deletes every key of the lease anyway: checking each is proportional to that work.
      budget.rangesLeft = Number.POSITIVE_INFINITY;
      for (const key of leaseKeys(BigInt(request.lease_revoke?.ID ?? '0'))) need(decider, caller, key, none, 'write', budget);
      return;
    case 'compaction':
    case 'alarm':
    case 'auth_change':
    case 'member_update':
    case 'encryption_rotate':
      requireAdmin(decider, caller);
      return;
    case 'lease_grant':
    case 'member_attributes':
    case 'audit_checkpoint':
    case 'login_records':
    case undefined:
      return;
  }
}
