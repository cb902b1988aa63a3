/**
 * Who may use a lease (Rampart's rule; etcd lets any user keep alive, list, inspect or attach to
 * any lease): while auth is on, a lease belongs to the user who granted it, recorded in the grant's
 * log entry. Only that user or root may keep it alive, revoke it, see it (LeaseLeases,
 * LeaseTimeToLive) or attach keys to it; a lease granted while auth was off has no owner and is
 * root's. Granting needs a user of the auth store, at most `leasesPerUserMax` leases each.
 *
 * Checked like every permission: before a request is proposed and again when it is applied.
 */
import { RampartError } from '../errors.js';
import type { AuthDecider } from '../auth/store.js';
import type { Caller, InternalRequest, RequestOp, TxnRequest } from '../api/messages.js';
import { checkCaller } from './authorize.js';
import { leasesPerUserMax } from './lessor.js';

/** The owner of lease `id` ('' for none), or undefined when there is no such lease. */
export type LeaseOwner = (id: bigint) => string | undefined;

/** Whether `caller` may use a lease owned by `owner`. */
export function mayUseLease(decider: AuthDecider, caller: Caller, owner: string): boolean {
  if (!decider.state.enabled) return true;
  return (owner !== '' && owner === caller.user) || decider.isAdmin(caller.user);
}

function checkAttach(decider: AuthDecider, caller: Caller, lease: string | undefined, ownerOf: LeaseOwner): void {
  const id = BigInt(lease ?? '0');
  if (id === 0n) return;
  const owner = ownerOf(id);
  // A lease that does not exist is the applier's LeaseNotFound, as in etcd.
  if (owner !== undefined && !mayUseLease(decider, caller, owner)) throw new RampartError('PermissionDenied');
}

function checkTxn(decider: AuthDecider, caller: Caller, txn: TxnRequest, ownerOf: LeaseOwner): void {
  const ops: readonly RequestOp[] = [...txn.success, ...txn.failure];
  for (const op of ops) {
    if (op.request === 'request_put') checkAttach(decider, caller, op.request_put.lease, ownerOf);
    else if (op.request === 'request_txn') checkTxn(decider, caller, op.request_txn, ownerOf);
  }
}

/** Throws etcd's error when the request uses a lease its caller may not use, or grants one it may not. */
export function authorizeLeaseUse(decider: AuthDecider, request: InternalRequest, ownerOf: LeaseOwner, ownedBy: (user: string) => number): void {
  // A member's own request (the leader revoking an expired lease) has no caller and passes, as in
  // authorizeRequest: refusing it left every lease of a secure cluster unexpired forever.
  const caller = request.caller;
  if (caller === undefined || caller === null || !decider.state.enabled) return;
  switch (request.request) {
    case 'lease_grant':
      checkCaller(decider, caller);
      if (!decider.state.users.has(caller.user)) throw new RampartError('UserNotFound');
      if (ownedBy(caller.user) >= leasesPerUserMax) throw new RampartError('TooManyLeases');
      return;
    case 'lease_revoke': {
      const owner = ownerOf(BigInt(request.lease_revoke?.ID ?? '0'));
      if (owner !== undefined && !mayUseLease(decider, caller, owner)) throw new RampartError('PermissionDenied');
      return;
    }
    case 'put':
      if (request.put !== undefined && request.put !== null) checkAttach(decider, caller, request.put.lease, ownerOf);
      return;
    case 'txn':
      if (request.txn !== undefined && request.txn !== null) checkTxn(decider, caller, request.txn, ownerOf);
      return;
    default:
      return;
  }
}
