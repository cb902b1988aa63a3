/**
 * Applies committed log entries to the state machine, deterministically: every member applies the
 * same entries in the same order and reaches the same state.
 *
 * Owns: the meaning of each InternalRequest. Never: I/O of its own (it returns batch operations for
 * the member to write, with the consistent index in the same batch), clocks (lease expiry times are
 * the lessor's, and not part of replicated state), or randomness (lease IDs come in the entry).
 * A request that fails validation changes nothing: every check runs before the first change.
 */
import { RampartError, isRampartError } from '../errors.js';
import { encodeBigUint64 } from '../storage/encoding.js';
import type { BatchOperation, MvccStore, StoreEvent, WriteTransaction } from '../storage/mvcc/store.js';
import { prefix } from '../storage/schema.js';
import { toIndexKey, fromIndexKey } from '../storage/mvcc/range.js';
import type {
  AlarmMember,
  AlarmRequest,
  CompactionRequest,
  DeleteRangeRequest,
  InternalRequest,
  LeaseGrantRequest,
  LeaseRevokeRequest,
  PutRequest,
  RequestOp,
  ResponseOp,
  TxnRequest,
  TxnResponse,
} from '../api/messages.js';
import { deleteResponse, evaluateCompare, executeRange, keyRangeOf, parseBigInt64, parseInt64, toKeyValueMessage, int64Out, type ReadView } from './kv.js';
import { leaseTtlMaxSeconds, type Lessor } from './lessor.js';
import { authorizeLeaseUse } from './lease-ownership.js';
import type { Membership } from './membership.js';
import { applyAuthChange, decodeAuthChange, encodeAuthState, type AuthHolder, type AuthState } from '../auth/store.js';
import { authStateKey } from '../storage/schema.js';
import { authorizeRequest } from './authorize.js';
import type { AuditCheckpoints } from './audit-checkpoints.js';
import type { LoginRecords } from './login-records.js';

export const alarmType = { none: 0, noSpace: 1, corrupt: 2 } as const;

export type ApplyResult =
  | { readonly ok: true; readonly revision: number; readonly response: object }
  | { readonly ok: false; readonly error: RampartError };

export class Alarms {
  private readonly active = new Map<string, AlarmMember & { memberIdBig: bigint }>();

  static keyOf(memberId: bigint, alarm: number): Buffer {
    return Buffer.concat([Buffer.of(prefix.alarm), encodeBigUint64(memberId), Buffer.of(alarm)]);
  }

  clear(): void {
    this.active.clear();
  }

  load(key: Buffer): void {
    const memberId = key.readBigUInt64BE(1);
    const alarm = key[9] ?? 0;
    this.set(memberId, alarm);
  }

  set(memberId: bigint, alarm: number): void {
    this.active.set(`${memberId}:${alarm}`, { memberID: int64Out(memberId), alarm, memberIdBig: memberId });
  }

  delete(memberId: bigint, alarm: number): boolean {
    return this.active.delete(`${memberId}:${alarm}`);
  }

  has(alarm: number): boolean {
    for (const entry of this.active.values()) {
      if (entry.alarm === alarm) return true;
    }
    return false;
  }

  list(alarm = alarmType.none as number): AlarmMember[] {
    return [...this.active.values()]
      .filter((entry) => alarm === alarmType.none || entry.alarm === alarm)
      .map((entry) => ({ memberID: entry.memberID, alarm: entry.alarm }));
  }
}

export class Applier {
  /** Change events of the entries applied since the last `takeEvents`, for watchers. */
  private events: { revision: number; events: StoreEvent[] }[] = [];

  constructor(
    private readonly store: MvccStore,
    private readonly lessor: Lessor,
    private readonly alarms: Alarms,
    private readonly membership: Membership,
    private readonly auth: AuthHolder,
    private readonly checkpoints: AuditCheckpoints,
    private readonly loginRecords: LoginRecords,
  ) {}

  /** Who granted a lease ('' for nobody), undefined when there is no such lease. */
  readonly leaseOwner = (id: bigint): string | undefined => this.lessor.get(id)?.owner;

  /** Every check a request needs against the current auth state: key permissions, then lease ownership. */
  authorize(request: InternalRequest): void {
    authorizeRequest(this.auth.decider, request, this.leaseKeys);
    authorizeLeaseUse(this.auth.decider, request, this.leaseOwner, (user) => this.lessor.ownedBy(user));
  }

  /** The keys attached to a lease (for permission checks). */
  readonly leaseKeys = (id: bigint): Buffer[] => [...(this.lessor.get(id)?.keys ?? [])].map(fromIndexKey);

  takeEvents(): { revision: number; events: StoreEvent[] }[] {
    const events = this.events;
    this.events = [];
    return events;
  }

  apply(request: InternalRequest, batch: BatchOperation[]): ApplyResult {
    try {
      this.authorize(request);
      switch (request.request) {
        case 'auth_change':
          this.applyAuthChangeEntry(required(request.auth_change ?? undefined), batch);
          return { ok: true, revision: this.store.currentRevision, response: {} };
        case 'put':
          return this.applyPut(required(request.put), batch);
        case 'delete_range':
          return this.applyDeleteRange(required(request.delete_range), batch);
        case 'txn':
          return this.applyTxn(required(request.txn), batch);
        case 'compaction':
          return this.applyCompaction(required(request.compaction), batch);
        case 'lease_grant':
          return this.applyLeaseGrant(required(request.lease_grant), this.auth.state.enabled ? (request.caller?.user ?? '') : '', batch);
        case 'lease_revoke':
          return this.applyLeaseRevoke(required(request.lease_revoke), batch);
        case 'alarm':
          return this.applyAlarm(required(request.alarm), batch);
        case 'member_attributes': {
          const attributes = required(request.member_attributes);
          batch.push(...this.membership.updateAttributes(attributes.id, attributes.name, attributes.client_urls));
          return { ok: true, revision: this.store.currentRevision, response: {} };
        }
        case 'audit_checkpoint':
          this.checkpoints.apply(required(request.audit_checkpoint ?? undefined), batch);
          return { ok: true, revision: this.store.currentRevision, response: {} };
        case 'member_update': {
          const update = required(request.member_update);
          const id = BigInt(update.ID).toString(16);
          if (this.membership.get(id) === undefined) throw new RampartError('MemberNotFound');
          batch.push(...this.membership.updatePeerUrls(id, update.peerURLs));
          return { ok: true, revision: this.store.currentRevision, response: {} };
        }
        case 'login_records':
          this.loginRecords.apply(required(request.login_records ?? undefined), batch);
          return { ok: true, revision: this.store.currentRevision, response: {} };
        case 'encryption_rotate':
          // No replicated state changes: each member rotates its own keys (see Member.applyEntries).
          return { ok: true, revision: this.store.currentRevision, response: {} };
        case undefined:
          throw new RampartError('InvalidArgument', 'empty internal request');
      }
      return unreachable(request.request);
    } catch (error) {
      if (isRampartError(error)) {
        return { ok: false, error };
      }
      throw error;
    }
  }

  /**
   * An auth change from the log (its op and field types already checked when it was decoded:
   * committed-proposal.ts skips one that fails). applyAuthChange is pure (it copies what it changes)
   * and the holder takes a state only once its decider is built, so should any step still throw,
   * the change is refused like any invalid request, changing nothing, on every member alike,
   * instead of stopping them all.
   */
  private applyAuthChangeEntry(encoded: string, batch: BatchOperation[]): void {
    try {
      const next = applyAuthChange(this.auth.state, decodeAuthChange(encoded)) as AuthState | undefined;
      if (next === undefined) throw new RampartError('InvalidArgument', 'auth change: unknown op');
      if (next === this.auth.state) return;
      const value = encodeAuthState(next);
      this.auth.set(next);
      batch.push({ type: 'put', key: authStateKey, value });
    } catch (error) {
      if (isRampartError(error)) throw error;
      throw new RampartError('InvalidArgument', 'auth change: malformed');
    }
  }

  private finish(transaction: WriteTransaction, batch: BatchOperation[]): number {
    const revision = transaction.commit();
    batch.push(...transaction.batch);
    if (transaction.events.length > 0) {
      this.events.push({ revision, events: transaction.events });
    }
    return revision;
  }

  private applyPut(request: PutRequest, batch: BatchOperation[]): ApplyResult {
    this.rejectWhenNoSpace();
    const transaction = this.store.beginWrite();
    this.checkPut(transaction, request);
    const previous = this.put(transaction, request);
    const revision = this.finish(transaction, batch);
    const response = request.prev_kv && previous !== undefined ? { prev_kv: toKeyValueMessage(previous) } : {};
    return { ok: true, revision, response };
  }

  private checkPut(view: ReadView, request: PutRequest): void {
    const lease = parseBigInt64(request.lease);
    if (request.ignore_value || request.ignore_lease) {
      if (view.range({ key: request.key, rangeEnd: Buffer.alloc(0) }).kvs.length === 0) {
        throw new RampartError('KeyNotFound');
      }
    }
    if (lease !== 0n && !this.lessor.has(lease)) {
      throw new RampartError('LeaseNotFound');
    }
  }

  /**
   * The key's previous value comes back from `transaction.put` (one index lookup); only a put that
   * keeps the previous value or lease reads it first.
   */
  private put(transaction: WriteTransaction, request: PutRequest): ReturnType<WriteTransaction['put']> {
    let value = request.value;
    let lease: bigint;
    if (request.ignore_value || request.ignore_lease) {
      const current = transaction.range({ key: request.key, rangeEnd: Buffer.alloc(0) }).kvs[0];
      if (request.ignore_value && current !== undefined) value = current.value;
      lease = request.ignore_lease && current !== undefined ? current.lease : parseBigInt64(request.lease);
    } else {
      lease = parseBigInt64(request.lease);
    }
    const previous = transaction.put(request.key, value, lease);
    const detach = previous !== undefined && previous.lease !== 0n && previous.lease !== lease;
    if (detach || lease !== 0n) {
      const indexKey = toIndexKey(request.key);
      if (detach) this.lessor.detach(previous.lease, indexKey);
      if (lease !== 0n) this.lessor.attach(lease, indexKey);
    }
    return previous;
  }

  private deleteRange(transaction: WriteTransaction, request: DeleteRangeRequest): ReturnType<WriteTransaction['deleteRange']> {
    const deleted = transaction.deleteRange(keyRangeOf(request));
    for (const kv of deleted) {
      if (kv.lease !== 0n) {
        this.lessor.detach(kv.lease, toIndexKey(kv.key));
      }
    }
    return deleted;
  }

  private applyDeleteRange(request: DeleteRangeRequest, batch: BatchOperation[]): ApplyResult {
    const transaction = this.store.beginWrite();
    const deleted = this.deleteRange(transaction, request);
    const revision = this.finish(transaction, batch);
    return { ok: true, revision, response: deleteResponse(deleted, request.prev_kv) };
  }

  private applyTxn(request: TxnRequest, batch: BatchOperation[]): ApplyResult {
    if (this.alarms.has(alarmType.noSpace) && txnHasPut(request)) {
      throw new RampartError('NoSpace');
    }
    const transaction = this.store.beginWrite();
    // Every compare, nested ones too, is decided against the state before the transaction (as etcd).
    const path = choosePath(transaction, request);
    this.checkTxn(transaction, request, path);
    const response = this.executeTxn(transaction, request, path);
    const revision = this.finish(transaction, batch);
    return { ok: true, revision, response: { succeeded: response.succeeded, responses: response.responses } };
  }

  private checkTxn(view: ReadView, request: TxnRequest, path: TxnPath): void {
    const ops = path.succeeded ? request.success : request.failure;
    let nested = 0;
    for (const op of ops) {
      switch (op.request) {
        case 'request_put':
          this.checkPut(view, op.request_put);
          break;
        case 'request_range': {
          const revision = parseInt64(op.request_range.revision);
          if (revision > this.store.currentRevision) throw new RampartError('FutureRevision');
          if (revision > 0 && revision < this.store.compactRevision) throw new RampartError('Compacted');
          break;
        }
        case 'request_txn':
          this.checkTxn(view, op.request_txn, path.nested[nested++] ?? impossible());
          break;
        case 'request_delete_range':
          break;
      }
    }
  }

  private executeTxn(transaction: WriteTransaction, request: TxnRequest, path: TxnPath): Omit<TxnResponse, 'header'> {
    const ops = path.succeeded ? request.success : request.failure;
    const responses: ResponseOp[] = [];
    let nested = 0;
    for (const op of ops) {
      responses.push(this.executeOp(transaction, op, path.nested, () => nested++));
    }
    return { succeeded: path.succeeded, responses };
  }

  private executeOp(transaction: WriteTransaction, op: RequestOp, nestedPaths: TxnPath[], nextNested: () => number): ResponseOp {
    const header = (): { revision: number } => ({ revision: transaction.changed ? transaction.revision : this.store.currentRevision });
    switch (op.request) {
      case 'request_range': {
        const { revision: _revision, ...result } = executeRange(transaction, op.request_range);
        return { response_range: { header: headerOf(header().revision), ...result } };
      }
      case 'request_put': {
        const previous = this.put(transaction, op.request_put);
        const response = op.request_put.prev_kv && previous !== undefined ? { prev_kv: toKeyValueMessage(previous) } : {};
        return { response_put: { header: headerOf(header().revision), ...response } };
      }
      case 'request_delete_range': {
        const deleted = this.deleteRange(transaction, op.request_delete_range);
        return { response_delete_range: { header: headerOf(header().revision), ...deleteResponse(deleted, op.request_delete_range.prev_kv) } };
      }
      case 'request_txn': {
        const path = nestedPaths[nextNested()] ?? impossible();
        const result = this.executeTxn(transaction, op.request_txn, path);
        return { response_txn: { header: headerOf(header().revision), ...result } };
      }
    }
  }

  private applyCompaction(request: CompactionRequest, batch: BatchOperation[]): ApplyResult {
    this.store.compact(parseInt64(request.revision), batch);
    return { ok: true, revision: this.store.currentRevision, response: {} };
  }

  private applyLeaseGrant(request: LeaseGrantRequest, owner: string, batch: BatchOperation[]): ApplyResult {
    this.rejectWhenNoSpace();
    const id = parseBigInt64(request.ID);
    const ttl = parseInt64(request.TTL);
    if (ttl > leaseTtlMaxSeconds) {
      throw new RampartError('LeaseTtlTooLarge');
    }
    const lease = this.lessor.grant(id, ttl, owner);
    batch.push({ type: 'put', key: leaseKey(id), value: encodeLeaseRecord(lease.grantedTtlSeconds, owner) });
    return { ok: true, revision: this.store.currentRevision, response: { ID: int64Out(id), TTL: lease.grantedTtlSeconds, error: '' } };
  }

  private applyLeaseRevoke(request: LeaseRevokeRequest, batch: BatchOperation[]): ApplyResult {
    const id = parseBigInt64(request.ID);
    const keys = this.lessor.revoke(id);
    const transaction = this.store.beginWrite();
    for (const indexKey of keys.sort()) {
      transaction.deleteRange({ key: fromIndexKey(indexKey), rangeEnd: Buffer.alloc(0) });
    }
    batch.push({ type: 'del', key: leaseKey(id) });
    const revision = this.finish(transaction, batch);
    return { ok: true, revision, response: {} };
  }

  private applyAlarm(request: AlarmRequest, batch: BatchOperation[]): ApplyResult {
    const memberId = BigInt(request.memberID || '0');
    const revision = this.store.currentRevision;
    switch (request.action) {
      case 0:
        return { ok: true, revision, response: { alarms: this.alarms.list(request.alarm) } };
      case 1: {
        if (request.alarm === alarmType.none) {
          return { ok: true, revision, response: { alarms: [] } };
        }
        this.alarms.set(memberId, request.alarm);
        batch.push({ type: 'put', key: Alarms.keyOf(memberId, request.alarm), value: Buffer.alloc(0) });
        return { ok: true, revision, response: { alarms: [{ memberID: int64Out(memberId), alarm: request.alarm }] } };
      }
      case 2: {
        const removed = this.alarms.delete(memberId, request.alarm);
        if (removed) {
          batch.push({ type: 'del', key: Alarms.keyOf(memberId, request.alarm) });
        }
        return { ok: true, revision, response: { alarms: removed ? [{ memberID: int64Out(memberId), alarm: request.alarm }] : [] } };
      }
      default:
        throw new RampartError('InvalidArgument', 'unknown alarm action');
    }
  }

  private rejectWhenNoSpace(): void {
    if (this.alarms.has(alarmType.noSpace)) {
      throw new RampartError('NoSpace');
    }
  }
}

interface TxnPath {
  readonly succeeded: boolean;
  /** Paths of the nested transactions in the chosen branch, in order. */
  readonly nested: TxnPath[];
}

function choosePath(view: ReadView, request: TxnRequest): TxnPath {
  const succeeded = request.compare.every((compare) => evaluateCompare(view, compare));
  const ops = succeeded ? request.success : request.failure;
  const nested = ops.flatMap((op) => (op.request === 'request_txn' ? [choosePath(view, op.request_txn)] : []));
  return { succeeded, nested };
}

function txnHasPut(request: TxnRequest): boolean {
  return [...request.success, ...request.failure].some(
    (op) => op.request === 'request_put' || (op.request === 'request_txn' && txnHasPut(op.request_txn)),
  );
}

function headerOf(revision: number): { cluster_id: number; member_id: number; revision: number; raft_term: number } {
  return { cluster_id: 0, member_id: 0, revision, raft_term: 0 };
}

/** A lease record: granted TTL (8 bytes, big-endian), then its owner's name in UTF-8 (none before owners were kept). */
export function encodeLeaseRecord(grantedTtlSeconds: number, owner: string): Buffer {
  return Buffer.concat([encodeBigUint64(BigInt(grantedTtlSeconds)), Buffer.from(owner, 'utf8')]);
}

export function decodeLeaseRecord(value: Buffer): { grantedTtlSeconds: number; owner: string } {
  return { grantedTtlSeconds: Number(value.readBigUInt64BE(0)), owner: value.subarray(8).toString('utf8') };
}

export function leaseKey(id: bigint): Buffer {
  return Buffer.concat([Buffer.of(prefix.lease), encodeBigUint64(id)]);
}

function required<T>(value: T | undefined): T {
  if (value === undefined) {
    throw new RampartError('InvalidArgument', 'request body missing');
  }
  return value;
}

function unreachable(value: never): never {
  throw new Error(`assertion failed: unhandled request ${String(value)}`);
}

function impossible(): never {
  throw new Error('assertion failed: transaction path does not match request');
}
