/**
 * A member: its database, log, state machine (MVCC store, leases, alarms) and watchers, and the
 * request path: validate → propose → commit → apply → answer.
 *
 * Owns: turning API requests into proposals and reads, waiting for their application, the member's
 * timers (lease expiry, progress notifications, size accounting). Never: speaks gRPC (the API
 * layer does) or decides what an entry means (the applier does).
 */
import { randomBytes, createHash } from 'node:crypto';
import { mkdir, readdir, stat } from 'node:fs/promises';
import path from 'node:path';
import { ClassicLevel } from 'classic-level';
import type { Logger } from 'pino';
import { RampartError } from '../errors.js';
import { DurableLog, entryType, type LogEntry } from '../storage/log.js';
import { MvccStore, encodeMetaNumber, readMetaNumber, type BatchOperation, type Database } from '../storage/mvcc/store.js';
import { metaKey, prefix, prefixEnd } from '../storage/schema.js';
import { toIndexKey } from '../storage/mvcc/range.js';
import { decodeInternalRequest, encodeInternalRequest } from '../api/proto.js';
import type {
  AlarmRequest,
  CompactionRequest,
  DeleteRangeRequest,
  InternalRequest,
  PutRequest,
  RangeRequest,
  ResponseHeader,
  TxnRequest,
} from '../api/messages.js';
import { Alarms, Applier, alarmType, type ApplyResult } from './applier.js';
import { SoloConsensus, type Consensus } from './consensus.js';
import { executeRange, int64Out, parseBigInt64 } from './kv.js';
import { Lessor } from './lessor.js';
import { WatchHub } from './watch-hub.js';
import { validateDeleteRange, validatePut, validateRange, validateTxn } from './validate.js';

export const serverVersion = '3.5.17';

export interface MemberOptions {
  readonly dataDir: string;
  readonly name: string;
  readonly clientUrls: readonly string[];
  readonly peerUrls: readonly string[];
  readonly initialClusterToken: string;
  readonly quotaBackendBytes: number;
  readonly maxRequestBytes: number;
  readonly watchProgressNotifyIntervalMs: number;
  readonly requestTimeoutMs: number;
  readonly logger: Logger;
  readonly nowMs?: () => number;
}

export const defaultQuotaBackendBytes = 2 * 1024 * 1024 * 1024;
export const defaultMaxRequestBytes = 1.5 * 1024 * 1024;

interface Waiter {
  resolve(result: ApplyResult): void;
}

type ProposalBody = Omit<InternalRequest, 'id'>;

export interface MemberInfo {
  readonly id: bigint;
  readonly name: string;
  readonly peerUrls: readonly string[];
  readonly clientUrls: readonly string[];
  readonly isLearner: boolean;
}

export class Member {
  readonly watchHub: WatchHub;
  readonly lessor: Lessor;
  private readonly alarms: Alarms;
  private readonly applier: Applier;
  private consensus!: Consensus;
  private readonly waiters = new Map<string, Waiter>();
  private nextRequestId: number;
  private appliedIndexValue = 0;
  private dbSizeBytes = 0;
  private readonly timers: NodeJS.Timeout[] = [];
  private readonly revoking = new Set<bigint>();
  private stopped = false;
  private fatalError: unknown;

  private constructor(
    readonly options: MemberOptions,
    private readonly db: Database,
    readonly store: MvccStore,
    private readonly log: DurableLog,
    readonly clusterId: bigint,
    readonly memberId: bigint,
  ) {
    const nowMs = options.nowMs ?? (() => performance.now());
    this.lessor = new Lessor(nowMs);
    this.alarms = new Alarms();
    this.applier = new Applier(store, this.lessor, this.alarms);
    this.watchHub = new WatchHub(store);
    // Request ids only need to be unique among this process's waiters; start past any earlier run's.
    this.nextRequestId = Date.now() * 1000;
  }

  static async open(options: MemberOptions): Promise<Member> {
    await mkdir(options.dataDir, { recursive: true, mode: 0o700 });
    const db: Database = new ClassicLevel<Buffer, Buffer>(path.join(options.dataDir, 'db'), { keyEncoding: 'buffer', valueEncoding: 'buffer' });
    await db.open();
    try {
      const { clusterId, memberId } = await loadIdentity(db, options);
      const store = await MvccStore.open(db);
      const log = await DurableLog.open(db);
      const member = new Member(options, db, store, log, clusterId, memberId);
      await member.recover();
      return member;
    } catch (error) {
      await db.close();
      throw error;
    }
  }

  private async recover(): Promise<void> {
    for await (const [key, value] of this.db.iterator({ gte: Buffer.of(prefix.lease), lt: prefixEnd(prefix.lease) })) {
      this.lessor.grant(key.readBigInt64BE(1), Number(value.readBigUInt64BE(0)));
    }
    this.store.forEachLive((kv) => {
      if (kv.lease !== 0n) this.lessor.attach(kv.lease, toIndexKey(kv.key));
    });
    for await (const key of this.db.keys({ gte: Buffer.of(prefix.alarm), lt: prefixEnd(prefix.alarm) })) {
      this.alarms.load(key);
    }
    const consistentIndex = await readMetaNumber(this.db, metaKey.consistentIndex);
    this.appliedIndexValue = consistentIndex;
    this.log.startAfter(consistentIndex, this.log.lastTerm);
    // Entries made durable but not applied before a crash: apply them now, exactly once.
    const pending = await this.log.entries(consistentIndex + 1, this.log.lastIndex);
    if (pending.length > 0) {
      this.options.logger.info({ from: consistentIndex + 1, to: this.log.lastIndex }, 'applying log entries after restart');
      await this.applyCommitted(pending);
    }
    const term = this.log.lastTerm + 1;
    this.consensus = new SoloConsensus(this.log, term, this.memberId, (entries) => this.applyCommitted(entries), (error) => this.fail(error));
    this.lessor.refreshAll();
    await this.refreshDbSize();
    this.timers.push(setInterval(() => this.revokeExpiredLeases(), 500));
    this.timers.push(setInterval(() => void this.refreshDbSize(), 1000));
    this.timers.push(setInterval(() => this.watchHub.notifyProgress(), this.options.watchProgressNotifyIntervalMs));
    for (const timer of this.timers) timer.unref();
  }

  get appliedIndex(): number {
    return this.appliedIndexValue;
  }

  get term(): number {
    return this.consensus.term;
  }

  get leaderId(): bigint {
    return this.consensus.leaderId;
  }

  get raftIndex(): number {
    return this.consensus.lastIndex;
  }

  get dbSize(): number {
    return this.dbSizeBytes;
  }

  members(): MemberInfo[] {
    return [{ id: this.memberId, name: this.options.name, peerUrls: this.options.peerUrls, clientUrls: this.options.clientUrls, isLearner: false }];
  }

  header(revision: number = this.store.currentRevision): ResponseHeader {
    return { cluster_id: int64Out(this.clusterId), member_id: int64Out(this.memberId), revision, raft_term: this.consensus.term };
  }

  /** A header for calls that do not touch the KV store: etcd reports revision 0 there. */
  headerWithoutRevision(): ResponseHeader {
    return this.header(0);
  }

  // ---- reads ----

  async range(request: RangeRequest): Promise<ReturnType<typeof executeRange>> {
    validateRange(request);
    this.checkRunning();
    if (!request.serializable) {
      await this.consensus.readBarrier();
    }
    return executeRange(this.store, request);
  }

  // ---- writes ----

  async put(request: PutRequest): Promise<{ revision: number; response: object }> {
    validatePut(request);
    return this.propose({ request: 'put', put: request }, true);
  }

  async deleteRange(request: DeleteRangeRequest): Promise<{ revision: number; response: object }> {
    validateDeleteRange(request);
    return this.propose({ request: 'delete_range', delete_range: request }, false);
  }

  async txn(request: TxnRequest): Promise<{ revision: number; response: object }> {
    validateTxn(request);
    const readOnly = isReadOnlyTxn(request);
    if (readOnly) {
      // A read-only transaction needs no log entry: evaluate it against a linearizable read view.
      await this.consensus.readBarrier();
      const batch: BatchOperation[] = [];
      const result = this.applier.apply({ id: 0, request: 'txn', txn: request }, batch);
      if (!result.ok) throw result.error;
      return { revision: result.revision, response: result.response };
    }
    return this.propose({ request: 'txn', txn: request }, true);
  }

  async compact(request: CompactionRequest): Promise<{ revision: number; response: object }> {
    const result = await this.propose({ request: 'compaction', compaction: request }, false);
    if (request.physical) {
      await this.store.whenCompacted();
    }
    return result;
  }

  async leaseGrant(ttlSeconds: number, requestedId: bigint): Promise<{ revision: number; response: object }> {
    let id = requestedId;
    while (id === 0n) {
      id = randomBytes(8).readBigInt64BE(0) & 0x7fff_ffff_ffff_ffffn;
    }
    return this.propose({ request: 'lease_grant', lease_grant: { ID: id.toString(), TTL: String(ttlSeconds) } }, true);
  }

  async leaseRevoke(id: bigint): Promise<{ revision: number; response: object }> {
    if (!this.lessor.has(id)) {
      throw new RampartError('LeaseNotFound');
    }
    return this.propose({ request: 'lease_revoke', lease_revoke: { ID: id.toString() } }, false);
  }

  /** Keep-alive, served by the leader from memory. Returns the TTL, or 0 when the lease is gone. */
  leaseKeepAlive(id: bigint): number {
    this.checkRunning();
    if (!this.consensus.isLeader) {
      throw new RampartError('NoLeader');
    }
    return this.lessor.has(id) ? this.lessor.renew(id) : 0;
  }

  async alarm(request: AlarmRequest): Promise<{ revision: number; response: object }> {
    if (request.action === 0) {
      return { revision: this.store.currentRevision, response: { alarms: this.alarms.list(request.alarm) } };
    }
    return this.propose({ request: 'alarm', alarm: request }, false);
  }

  alarmList(): ReturnType<Alarms['list']> {
    return this.alarms.list();
  }

  private async propose(body: ProposalBody, consumesSpace: boolean): Promise<{ revision: number; response: object }> {
    this.checkRunning();
    const id = String(this.nextRequestId++);
    const data = encodeInternalRequest({ id, ...body } as InternalRequest);
    if (data.length > this.options.maxRequestBytes) {
      throw new RampartError('RequestTooLarge');
    }
    if (consumesSpace && this.dbSizeBytes + data.length > this.options.quotaBackendBytes) {
      this.raiseNoSpaceAlarm();
      throw new RampartError('NoSpace');
    }
    const result = await new Promise<ApplyResult>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiters.delete(id);
        reject(new RampartError('Timeout'));
      }, this.options.requestTimeoutMs);
      this.waiters.set(id, {
        resolve: (applied) => {
          clearTimeout(timer);
          resolve(applied);
        },
      });
      try {
        this.consensus.propose(data);
      } catch (error) {
        clearTimeout(timer);
        this.waiters.delete(id);
        reject(error);
      }
    });
    if (!result.ok) {
      throw result.error;
    }
    return { revision: result.revision, response: result.response };
  }

  private raiseNoSpaceAlarm(): void {
    if (this.alarms.has(alarmType.noSpace)) {
      return;
    }
    this.options.logger.warn({ dbSizeBytes: this.dbSizeBytes, quotaBytes: this.options.quotaBackendBytes }, 'database space exceeded; raising NOSPACE alarm');
    this.propose({ request: 'alarm', alarm: { action: 1, memberID: this.memberId.toString(), alarm: alarmType.noSpace } }, false).catch(() => undefined);
  }

  /** Applies committed entries in order; the consistent index is written in the same batch as their effects. */
  private async applyCommitted(entries: readonly LogEntry[]): Promise<void> {
    const batch: BatchOperation[] = [];
    const results: [string, ApplyResult][] = [];
    for (const entry of entries) {
      if (entry.type !== entryType.normal || entry.data.length === 0) {
        continue;
      }
      const request = decodeInternalRequest(entry.data);
      results.push([String(request.id), this.applier.apply(request, batch)]);
    }
    const last = entries[entries.length - 1];
    if (last === undefined) {
      return;
    }
    batch.push({ type: 'put', key: metaKey.consistentIndex, value: encodeMetaNumber(last.index) });
    this.appliedIndexValue = last.index;
    for (const { revision, events } of this.applier.takeEvents()) {
      this.watchHub.notify(revision, events);
    }
    const revision = this.store.currentRevision;
    await this.db.batch(batch);
    this.store.markFlushed(batch, revision);
    for (const [id, result] of results) {
      const waiter = this.waiters.get(id);
      if (waiter !== undefined) {
        this.waiters.delete(id);
        waiter.resolve(result);
      }
    }
    if (last.index - this.log.firstIndex > logEntriesRetained * 2) {
      await this.log.compactThrough(last.index - logEntriesRetained);
    }
  }

  private revokeExpiredLeases(): void {
    if (this.stopped || !this.consensus.isLeader) {
      return;
    }
    for (const id of this.lessor.expired()) {
      if (this.revoking.has(id)) continue;
      this.revoking.add(id);
      this.propose({ request: 'lease_revoke', lease_revoke: { ID: id.toString() } }, false)
        .catch((error: unknown) => this.options.logger.warn({ leaseId: id.toString(16), err: String(error) }, 'revoking expired lease failed'))
        .finally(() => this.revoking.delete(id));
    }
  }

  private async refreshDbSize(): Promise<void> {
    this.dbSizeBytes = await directoryBytes(path.join(this.options.dataDir, 'db')).catch(() => this.dbSizeBytes);
  }

  async defragment(): Promise<void> {
    this.checkRunning();
    await this.db.compactRange(Buffer.of(0), Buffer.of(0xff));
    await this.refreshDbSize();
  }

  /** A consistent copy of the state machine (everything but the log), as a snapshot stream's records. */
  snapshotIterator(): AsyncIterableIterator<[Buffer, Buffer]> {
    return this.db.iterator({ gte: Buffer.of(0), lt: Buffer.of(0xff) })[Symbol.asyncIterator]() as AsyncIterableIterator<[Buffer, Buffer]>;
  }

  private checkRunning(): void {
    if (this.stopped) {
      throw new RampartError('Stopped');
    }
  }

  private fail(error: unknown): void {
    this.fatalError = error;
    this.options.logger.fatal({ err: String(error) }, 'member failed; stopping');
    this.stopped = true;
    process.exitCode = 1;
    void this.close().finally(() => process.exit(1));
  }

  get failed(): unknown {
    return this.fatalError;
  }

  async close(): Promise<void> {
    this.stopped = true;
    for (const timer of this.timers) clearInterval(timer);
    await this.consensus.close();
    await this.store.whenCompacted().catch(() => undefined);
    await this.db.close();
  }
}

/** Log entries kept after they are applied (for followers that lag, once there are followers). */
const logEntriesRetained = 10_000;

function isReadOnlyTxn(request: TxnRequest): boolean {
  return [...request.success, ...request.failure].every(
    (op) => op.request === 'request_range' || (op.request === 'request_txn' && isReadOnlyTxn(op.request_txn)),
  );
}

async function loadIdentity(db: Database, options: MemberOptions): Promise<{ clusterId: bigint; memberId: bigint }> {
  const storedMember = await db.get(metaKey.memberId);
  const storedCluster = await db.get(metaKey.clusterId);
  if (storedMember !== undefined && storedCluster !== undefined) {
    return { memberId: storedMember.readBigUInt64BE(0), clusterId: storedCluster.readBigUInt64BE(0) };
  }
  // As etcd: the member id is derived from its peer URLs and the cluster token, the cluster id from its members.
  const memberId = hash64([...options.peerUrls].sort().join(',') + options.initialClusterToken);
  const clusterId = hash64(`${memberId.toString(16)}/${options.initialClusterToken}`);
  const memberBytes = Buffer.alloc(8);
  memberBytes.writeBigUInt64BE(memberId);
  const clusterBytes = Buffer.alloc(8);
  clusterBytes.writeBigUInt64BE(clusterId);
  await db.batch([
    { type: 'put', key: metaKey.memberId, value: memberBytes },
    { type: 'put', key: metaKey.clusterId, value: clusterBytes },
  ], { sync: true });
  return { memberId, clusterId };
}

function hash64(text: string): bigint {
  const digest = createHash('sha256').update(text).digest();
  const value = digest.readBigUInt64BE(0);
  return value === 0n ? 1n : value;
}

async function directoryBytes(directory: string): Promise<number> {
  let total = 0;
  for (const name of await readdir(directory)) {
    total += (await stat(path.join(directory, name))).size;
  }
  return total;
}

export { parseBigInt64 };
