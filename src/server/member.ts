/**
 * A member: its database, Raft log and loop, state machine (MVCC store, leases, alarms,
 * membership), peer transport and watchers, and the request path:
 * validate → propose → commit → apply → answer.
 *
 * Owns: turning API requests into proposals and reads, waiting for their application, snapshots
 * of its state, the member's timers (lease expiry, progress notifications, size accounting).
 * Never: speaks the client gRPC API (the API layer does) or decides what a request means (the
 * applier does).
 */
import { randomBytes, randomInt } from 'node:crypto';
import path from 'node:path';
import type * as grpc from '@grpc/grpc-js';
import type { Logger } from 'pino';
import { RampartError, assert, type ErrorCode } from '../errors.js';
import { RaftNode, defaultRaftConfig, parseConfigurationChange } from '../raft/raft.js';
import type { ConfigurationChange, Entry, Message, Ready, Snapshot, SoftState } from '../raft/types.js';
import { openRaftLog } from '../storage/wal/migration.js';
import type { SegmentedLog } from '../storage/wal/segmented-log.js';
import type { LoadedLog } from '../storage/log.js';
import { ensurePrivateDirectory } from '../storage/private-files.js';
import { DirectorySize } from '../storage/directory-size.js';
import { SealedDatabase, type DatabaseSnapshot, type KekProvider, type KeyringStatus, type ResealProgress, type RewrapHook } from '../storage/database.js';
import { takeIndexCheckpoint, writeIndexCheckpoint } from '../storage/mvcc/index-checkpoint.js';
import { MvccStore, encodeMetaNumber, readMetaNumber, type BatchOperation } from '../storage/mvcc/store.js';
import { authStateKey, metaKey, prefix, prefixEnd } from '../storage/schema.js';
import { fromIndexKey } from '../storage/mvcc/range.js';
import { encodeInternalRequest } from '../api/proto.js';
import { decodeCommittedProposal } from './committed-proposal.js';
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
import { Alarms, Applier, alarmType, decodeLeaseRecord, type ApplyResult } from './applier.js';
import { executeRange, int64Out } from './kv.js';
import { Lessor } from './lessor.js';
import { Membership, bootstrapEntries, hash64, memberIdFor, type ChangeContext, type InitialMember, type MemberRecord } from './membership.js';
import { RaftLoop } from './raft-loop.js';
import { UnappliedLeaseChanges, confirmKeepAlive } from './lease-confirmation.js';
import { leaseChangedBy } from '../api/lease-change-scan.js';
import { finishInterruptedInstall, installStaged, snapshotChunkBytesDefault, snapshotChunks, stageSnapshot } from './state-snapshot.js';
import { clusterMemberPeerUrlsMax, clusterMembersMax, clusterTextBytesMax } from './cluster-view.js';
import { Transport, fetchCluster, type ClusterView, type LeaseAnswer, type LoginAttempt } from './transport.js';
import type { PeerCertificate } from 'node:tls';
import { organizationalUnit } from '../pki/authority.js';
import { WatchHub } from './watch-hub.js';
import { AuditCheckpoints, checkpointsOf } from './audit-checkpoints.js';
import { LoginRecords, encodeLoginRecords, loginRecordsFlushIntervalMs, loginRecordsPerEntryMax } from './login-records.js';
import { encodeCheckpoint, type ProposedCheckpoint } from '../audit/checkpoint.js';
import type { PeerRefusal } from '../audit/peer-refusals.js';
import { LoginLimiter } from '../auth/limiter.js';
import { checkTxnDuplicates, validateDeleteRange, validatePut, validateRange, validateTxnShape } from './validate.js';
import { AuthHolder, decodeAuthState, emptyAuthState, encodeAuthChange, type AuthChange } from '../auth/store.js';
import { authorizeRange } from './authorize.js';
import type { Caller } from '../api/messages.js';
import { instruments, slowApplyMs } from '../instruments.js';

interface StateView {
  readonly index: number;
  readonly view: DatabaseSnapshot;
  readers: number;
  retired: boolean;
}

export const serverVersion = '3.5.17';

export interface MemberOptions {
  readonly dataDir: string;
  readonly name: string;
  readonly clientUrls: readonly string[];
  /** This member's advertised peer URLs. */
  readonly peerUrls: readonly string[];
  readonly listenPeerUrls: readonly string[];
  readonly initialCluster: readonly InitialMember[];
  readonly initialClusterState: 'new' | 'existing';
  readonly initialClusterToken: string;
  readonly quotaBackendBytes: number;
  readonly maxRequestBytes: number;
  readonly watchProgressNotifyIntervalMs: number;
  /** Bytes of watch responses queued for all streams, not yet flushed (WatchQueueBudget); default watchQueuedBytesMaxDefault. */
  readonly watchQueuedBytesMax?: number;
  readonly requestTimeoutMs: number;
  readonly heartbeatMs: number;
  readonly electionMs: number;
  /** Applied entries between snapshots of the state machine. */
  readonly snapshotCount: number;
  /** Entries kept in the log after a snapshot, for followers that are only a little behind. */
  readonly snapshotCatchUpEntries: number;
  /** Bytes per chunk a snapshot is sent and staged in (default snapshotChunkBytesDefault). */
  readonly snapshotChunkBytes?: number;
  readonly peerServerCredentials: grpc.ServerCredentials;
  readonly peerClientCredentials: grpc.ChannelCredentials;
  /** TLS on the peer port: check that connecting certificates are peer certificates of members. */
  readonly peerTls: boolean;
  /** Revoked certificates, refused on the peer port as on the client port. */
  readonly isRevoked?: (serialNumber: string) => boolean;
  /** Hears of each connection or call the peer port refuses, for the audit trail (audit/peer-refusals.ts). */
  readonly onPeerRefused?: (refusal: PeerRefusal) => void;
  readonly logger: Logger;
  /** Seal the member's records at rest under DEKs wrapped by this provider's KEK; absent: plaintext. */
  readonly keyProvider?: KekProvider | undefined;
  /** Automatic DEK rotation: a new DEK once the active one is this old. */
  readonly encryptionRotationIntervalMs?: number;
  /** Records per second a re-seal pass rewrites. */
  readonly encryptionResealRecordsPerSecond?: number;
  readonly onRemoved?: () => void;
  readonly nowMs?: () => number;
}

export const defaultEncryptionRotationIntervalMs = 7 * 24 * 3600 * 1000;
/** How often a member checks its rotation schedule and whether a re-seal pass is due. */
const encryptionCheckIntervalMs = 2_000;
export const defaultQuotaBackendBytes = 2 * 1024 * 1024 * 1024;
export const defaultMaxRequestBytes = 1.5 * 1024 * 1024;
/**
 * Committed entries this member may have left to apply before it refuses new proposals with
 * `etcdserver: too many requests` (etcd's maxGapBetweenApplyAndCommitIndex): past it, a proposal
 * would only wait behind the backlog (and add to it) until it timed out.
 */
export const applyGapEntriesMax = 5_000;

type ProposalBody = Omit<InternalRequest, 'id'>;

interface ProposalWaiter {
  readonly proposedMs: number;
  /** performance.now() past which the proposal fails with etcd's 'request timed out'. */
  readonly expiresMs: number;
  /** Answers the proposal with its applied result (or a refusal such as LeaderChanged). */
  readonly resolve: (result: ApplyResult) => void;
  readonly reject: (error: unknown) => void;
}

export interface MemberInfo {
  readonly id: bigint;
  readonly name: string;
  readonly peerUrls: readonly string[];
  readonly clientUrls: readonly string[];
  readonly isLearner: boolean;
}

/**
 * How long a stop may spend writing the key index checkpoint before it gives up (the next start
 * then rebuilds): `rampart serve` exits 8 s after a stop signal whatever is left, `rampart down`
 * kills after 10 s. At 500,000 keys of 1 KiB the write took ~1-3 s on a quiet 2-core machine.
 */
const indexCheckpointWriteBudgetMs = 4_000;

/**
 * How long a failed member may spend closing before it exits anyway. Nothing it would still write
 * is needed (what it acknowledged is durable; its index checkpoint is not written after a
 * failure), and a member that serves nothing must not linger: the soak saw one take ~10 s (in
 * Transport.close, which then waited for the other members' streams; it now ends them, and failed
 * members closed in 29-189 ms). A backstop.
 */
export const failedCloseGraceMs = 2_000;

export class Member {
  readonly watchHub: WatchHub;
  /** Failed-login records: the leader's decide for the cluster (loginAttempt). */
  readonly loginLimiter = new LoginLimiter();
  /** The replicated copy of existing users' failed-login records, merged into loginLimiter. */
  private readonly loginRecords = new LoginRecords((record) => this.loginLimiter.merge(record));
  private flushingLoginRecords = false;
  readonly lessor: Lessor;
  private readonly alarms = new Alarms();
  private readonly auditCheckpoints = new AuditCheckpoints();
  readonly membership = new Membership();
  /** Users, roles, permissions and whether auth is on: replicated, applied like every other entry. */
  readonly auth = new AuthHolder();
  private readonly applier: Applier;
  private loop!: RaftLoop;
  private transport!: Transport;
  /**
   * Proposals waiting for their entry to be applied, with when each was proposed (performance.now())
   * and when it times out. Every proposal gets the same timeout and is added as it is proposed, so
   * the map's order is deadline order: one timer (`proposalDeadline`) serves them all, armed for
   * the first, instead of a setTimeout and clearTimeout per proposal.
   */
  private readonly waiters = new Map<string, ProposalWaiter>();
  private proposalDeadline: NodeJS.Timeout | undefined;
  /** Proposed configuration changes by request id: told, once applied, why it was refused if it was. */
  private readonly changeWaiters = new Map<string, (refusal: ErrorCode | undefined) => void>();
  private nextRequestId: bigint;
  private appliedIndexValue = 0;
  /** The last applied batch's LevelDB write (see applyEntries); it never rejects (a failure stops the member). */
  private applyWrite: Promise<void> = Promise.resolve();
  /** A scheduled snapshot's log compaction, running beside the Raft loop (startSnapshot); it never rejects. */
  private snapshotTask: Promise<void> | undefined;
  private snapshotIndex = 0;
  /** Restored state not in the log: compact the log behind a snapshot once the founding entries apply. */
  private restoredState = false;
  private dbSizeBytes = 0;
  private readonly databaseSize: DirectorySize;
  private readonly timers: NodeJS.Timeout[] = [];
  private readonly revoking = new Set<bigint>();
  private stopped = false;
  /** Set when the member stops on a fatal error: it writes no index checkpoint then. */
  private failed = false;
  private published = false;
  private markReady!: () => void;
  private readonly readyPromise = new Promise<void>((resolve) => {
    this.markReady = resolve;
  });
  readonly memberHex: string;
  /** The ids as every response header carries them (made once: a header is built per response). */
  private readonly clusterIdOut: number | string;
  private readonly memberIdOut: number | string;
  /** The database view a snapshot at its index is streamed from, while Raft may send it. */
  private stateView: StateView | undefined;
  /** A follower was asked for a snapshot whose view is no longer held (outgoingSnapshot). */
  private snapshotWanted = false;
  private receivingSnapshot = false;
  /** The members an existing member named when this one joined: its first peers, before the log names them. */
  private joinedFrom: ClusterView | undefined;
  private readonly nowMs: () => number;

  private constructor(
    readonly options: MemberOptions,
    private readonly db: SealedDatabase,
    readonly store: MvccStore,
    private readonly logStore: SegmentedLog,
    readonly clusterId: bigint,
    readonly memberId: bigint,
  ) {
    this.memberHex = memberId.toString(16);
    this.clusterIdOut = int64Out(clusterId);
    this.memberIdOut = int64Out(memberId);
    db.releaseViews = () => this.releaseStateView();
    this.nowMs = options.nowMs ?? (() => performance.now());
    this.lessor = new Lessor(this.nowMs);
    this.applier = new Applier(store, this.lessor, this.alarms, this.membership, this.auth, this.auditCheckpoints, this.loginRecords);
    this.watchHub = new WatchHub(store, options.watchQueuedBytesMax);
    this.databaseSize = new DirectorySize(path.join(options.dataDir, 'db'));
    // Request ids need only be unique among this process's waiters across the cluster's log.
    this.nextRequestId = randomBytes(8).readBigUInt64BE(0) >> 2n;
  }

  static async open(options: MemberOptions): Promise<Member> {
    await ensurePrivateDirectory(options.dataDir, 'data directory');
    const db = await SealedDatabase.open(options.dataDir, options.keyProvider);
    if (options.encryptionResealRecordsPerSecond !== undefined) db.resealRecordsPerSecond = options.encryptionResealRecordsPerSecond;
    let logClosing: SegmentedLog | undefined;
    try {
      // Taken (and its token removed) before anything writes: a checkpoint is never used twice.
      let checkpoint = await takeIndexCheckpoint({ dataDir: options.dataDir, db, sealer: db.outsideSealer() });
      if (checkpoint.reason !== undefined) options.logger.warn({ reason: checkpoint.reason }, 'key index checkpoint not used; rebuilding the index from the database');
      const { clusterId, memberId, joinedFrom } = await loadIdentity(db, options);
      const logOptions = { dataDir: options.dataDir, db, sealer: db.outsideSealer() };
      let opened = await openRaftLog(logOptions);
      logClosing = opened.store;
      if (opened.migrated) options.logger.info('moved the Raft log from the database into its segment files');
      // A snapshot install that a crash interrupted is finished before anything reads the state.
      if (await finishInterruptedInstall(db, opened.store)) {
        options.logger.warn('finished installing a snapshot that a restart interrupted');
        checkpoint = { reason: 'a snapshot install was finished at start' };
        await opened.store.close();
        opened = await openRaftLog(logOptions);
        logClosing = opened.store;
      }
      const { store: logStore, loaded } = opened;
      db.resealOutside = () => logStore.resealIfNeeded();
      const store = await MvccStore.open(db, checkpoint.index);
      if (checkpoint.index !== undefined) options.logger.info({ keys: store.keyCount }, 'key index loaded from its checkpoint');
      const member = new Member(options, db, store, logStore, clusterId, memberId);
      member.joinedFrom = joinedFrom;
      await member.recover(loaded);
      return member;
    } catch (error) {
      await logClosing?.close();
      await db.close();
      throw error;
    }
  }

  private async loadStateMachine(): Promise<void> {
    this.lessor.clear();
    for await (const [key, value] of this.db.iterator({ gte: Buffer.of(prefix.lease), lt: prefixEnd(prefix.lease) })) {
      const record = decodeLeaseRecord(value);
      this.lessor.grant(key.readBigInt64BE(1), record.grantedTtlSeconds, record.owner);
    }
    this.store.forEachLeasedKey((lease, indexKey) => this.lessor.attach(lease, indexKey));
    this.alarms.clear();
    for await (const key of this.db.keys({ gte: Buffer.of(prefix.alarm), lt: prefixEnd(prefix.alarm) })) {
      this.alarms.load(key);
    }
    this.auditCheckpoints.clear();
    await this.moveLegacyAuditCheckpoints();
    for await (const [key, value] of this.db.iterator({ gte: Buffer.of(prefix.auditCheckpoint), lt: prefixEnd(prefix.auditCheckpoint) })) {
      this.auditCheckpoints.load(key, value);
    }
    this.loginRecords.clear();
    for await (const [, value] of this.db.iterator({ gte: Buffer.of(prefix.loginRecord), lt: prefixEnd(prefix.loginRecord) })) {
      this.loginRecords.load(value);
    }
    await this.membership.load(this.db);
    const authRecord = await this.db.get(authStateKey);
    this.auth.set(authRecord === undefined ? emptyAuthState : decodeAuthState(authRecord));
    this.appliedIndexValue = await readMetaNumber(this.db, metaKey.consistentIndex);
  }

  /**
   * Audit checkpoints kept under the old prefix (this data written by an older version, or a
   * snapshot received from one) move to the current one, in one synced batch: same records, same
   * keys after the prefix byte. Nothing else reads or writes them meanwhile (start, snapshot install).
   */
  private async moveLegacyAuditCheckpoints(): Promise<void> {
    const moves: BatchOperation[] = [];
    for await (const [key, value] of this.db.iterator({ gte: Buffer.of(prefix.legacyAuditCheckpoint), lt: prefixEnd(prefix.legacyAuditCheckpoint) })) {
      moves.push({ type: 'put', key: Buffer.concat([Buffer.of(prefix.auditCheckpoint), key.subarray(1)]), value }, { type: 'del', key });
    }
    if (moves.length > 0) await this.db.batch(moves, { sync: true });
  }

  private async recover(loadedLog: LoadedLog): Promise<void> {
    await this.loadStateMachine();
    let loaded = loadedLog;
    const fresh = loaded.entries.length === 0 && loaded.logStart.index === 0 && loaded.hardState.term === 0;
    if (fresh && this.options.initialClusterState === 'new') {
      if (!this.options.initialCluster.some((member) => memberIdFor(member.peerUrls, this.options.initialClusterToken) === this.memberHex)) {
        throw new Error(`--initial-cluster must list this member (${this.options.name}=${this.options.peerUrls.join(',')})`);
      }
      // Every founding member writes the same first entries, committed: the cluster's founding members.
      const entries = bootstrapEntries(this.options.initialCluster, this.options.initialClusterToken);
      const hardState = { term: 1, vote: '', commit: entries.length };
      await this.logStore.save({ hardState, entries });
      loaded = { hardState, logStart: { index: 0, term: 0 }, entries };
    }
    this.restoredState = (await this.db.get(metaKey.restoredState)) !== undefined;
    const applied = this.appliedIndexValue;
    const termAt = (index: number): number =>
      index === loaded.logStart.index ? loaded.logStart.term : (loaded.entries.find((entry) => entry.index === index)?.term ?? 0);
    let snapshot: Snapshot | undefined;
    if (loaded.logStart.index > 0) {
      assert(applied >= loaded.logStart.index, 'applied state is behind the compacted log');
      // Raft carries only the metadata; the records are streamed from a view of the database now.
      snapshot = { metadata: { index: applied, term: termAt(applied), configuration: this.membership.configuration() }, data: Buffer.alloc(0) };
      this.holdStateView(applied);
      this.snapshotIndex = applied;
    }
    const node = new RaftNode(
      {
        ...defaultRaftConfig,
        id: this.memberHex,
        electionTicks: Math.max(2, Math.round(this.options.electionMs / this.options.heartbeatMs)),
        heartbeatTicks: 1,
        random: () => randomInt(0x1_0000_0000) / 0x1_0000_0000,
      },
      // A commit index alone is not synced to the log: what was applied was committed.
      { hardState: { ...loaded.hardState, commit: Math.max(loaded.hardState.commit, applied) }, snapshot, logStart: loaded.logStart, entries: loaded.entries, configuration: this.membership.configuration(), applied },
    );
    this.transport = new Transport({
      selfId: this.memberHex,
      clusterId: this.clusterId.toString(16),
      logger: this.options.logger,
      serverCredentials: this.options.peerServerCredentials,
      clientCredentials: this.options.peerClientCredentials,
      onMessage: (message) => this.loop.step(message),
      onUnreachable: (peer) => node.reportUnreachable(peer),
      isRemoved: (id) => this.membership.isRemoved(id),
      onRemoved: (peer) => this.stopRemoved(`member ${peer} reports this member was removed from the cluster; stopping`),
      snapshotChunks: (message) => this.outgoingSnapshot(message.snapshot.metadata.index),
      receiveSnapshot: (message, chunks) => this.receiveSnapshot(message, chunks),
      onLeaseRenew: (id) => this.answerLeaseConfirmed(id, true),
      onLeaseTimeToLive: (id) => this.answerLeaseConfirmed(id, false),
      onCluster: () => ({ clusterId: this.clusterId.toString(16), members: this.membership.list() }),
      onLoginAttempt: (attempt) => this.leaderLoginAttempt(attempt),
      ...(this.options.onPeerRefused === undefined ? {} : { onPeerRefused: this.options.onPeerRefused }),
      ...(this.options.peerTls
        ? { authorizePeer: (certificate: PeerCertificate) => this.authorizePeer(certificate), mayActAs: (certificate: PeerCertificate, from: string) => this.peerMayActAs(certificate, from) }
        : {}),
    });
    this.updatePeers();
    await this.transport.listen(this.options.listenPeerUrls);
    this.loop = new RaftLoop(node, {
      persist: (ready) => this.persist(ready),
      send: (messages) => this.transport.send(messages),
      installSnapshot: (installed) => this.installSnapshot(installed),
      applyEntries: (entries) => this.applyEntries(entries),
      onSoftState: (state, previous) => this.onSoftState(state, previous),
      onFatal: (error) => this.fail(error),
    }, this.options.heartbeatMs, this.options.requestTimeoutMs);
    this.loop.start();
    // A compaction's deletions are written in the background: their failure (ENOSPC) fails the member.
    this.store.onBackgroundFailure((error) => this.abort(error));
    // Any LevelDB write that fails (a full disk), awaited or not, the apply path's or another's (a
    // re-seal, a snapshot being staged, the key store): the member fails closed, before the
    // write's caller goes on.
    this.db.onWriteFailure = (error) => this.abort(error);
    this.campaignIfAlone();
    await this.refreshDbSize();
    this.timers.push(setInterval(() => this.revokeExpiredLeases(), 500));
    this.timers.push(setInterval(() => void this.refreshDbSize(), 1000));
    this.timers.push(setInterval(() => void this.publishAttributes(), 100));
    this.timers.push(setInterval(() => this.watchHub.notifyProgress(), this.options.watchProgressNotifyIntervalMs));
    this.timers.push(setInterval(() => this.flushLoginRecords(), loginRecordsFlushIntervalMs));
    if (this.db.encrypted) {
      const rotationIntervalMs = this.options.encryptionRotationIntervalMs ?? defaultEncryptionRotationIntervalMs;
      this.timers.push(setInterval(() => this.encryptionMaintenance(rotationIntervalMs), Math.min(rotationIntervalMs, encryptionCheckIntervalMs)));
      // A re-seal pass a crash or a restart interrupted resumes at once; so does a migration.
      if (this.db.migrating) this.options.logger.warn('this member kept its data in plaintext: sealing every record online (rampart encryption status shows the progress)');
      if (this.db.resealDue) this.startReseal();
    }
    for (const timer of this.timers) timer.unref();
  }

  /**
   * A peer must present a certificate issued as a peer certificate (not a client or server one)
   * whose SANs name the host of some member's peer URL.
   */
  private authorizePeer(certificate: PeerCertificate): string | undefined {
    if (this.options.isRevoked?.(certificate.serialNumber) === true) return `certificate ${JSON.stringify(certificate.subject?.CN)} is revoked`;
    const unit = certificate.subject?.OU;
    const units = Array.isArray(unit) ? unit : [unit];
    if (!units.includes(organizationalUnit.peer)) return `certificate ${JSON.stringify(certificate.subject?.CN)} is not a peer certificate`;
    const names = (certificate.subjectaltname ?? '').split(',').map((entry) => entry.trim().replace(/^(DNS|IP Address):/, ''));
    const hosts = new Set<string>();
    for (const member of this.options.initialCluster) for (const url of member.peerUrls) hosts.add(new URL(url).hostname);
    for (const member of this.membership.list()) for (const url of member.peerUrls) hosts.add(new URL(url).hostname);
    if (!names.some((name) => hosts.has(name))) return `certificate names ${names.join(',')} match no member's peer URL`;
    return undefined;
  }

  /**
   * The member a peer certificate speaks for: the one whose name is its CN (`rampart up`, `rampart
   * init` and `rampart cert issue peer NAME` issue a member's peer certificate with CN = its
   * --name). A member added but not started yet has no name: until it publishes one, a certificate
   * whose SANs name its peer host speaks for it.
   */
  private peerMayActAs(certificate: PeerCertificate, from: string): boolean {
    const commonName = certificate.subject?.CN;
    if (this.membership.isRemoved(from)) return false;
    // The replicated records, or, before this member has applied them, what it started from (the
    // founders from its flags, or the view it joined with), as updatePeers does.
    let record: { name: string; peerUrls: readonly string[] } | undefined = this.membership.get(from);
    if (record === undefined && this.joinedFrom !== undefined) record = this.joinedFrom.members.find((member) => member.id === from);
    if (record === undefined && this.options.initialClusterState === 'new') {
      record = this.options.initialCluster.find((member) => memberIdFor(member.peerUrls, this.options.initialClusterToken) === from);
    }
    if (record === undefined) return false;
    if (record.name !== '') return typeof commonName === 'string' && record.name === commonName;
    const names = (certificate.subjectaltname ?? '').split(',').map((entry) => entry.trim().replace(/^(DNS|IP Address):/, ''));
    return record.peerUrls.some((url) => names.includes(new URL(url).hostname));
  }

  /** A lone voter need not wait out an election timeout. */
  private campaignIfAlone(): void {
    const { voters } = this.loop.node.configuration;
    if (voters.length === 1 && voters[0] === this.memberHex && !this.loop.isLeader) {
      this.loop.node.campaignNow();
      this.loop.kick();
    }
  }

  /** Resolves once this member has a leader and has published itself: then it serves clients (as etcd). */
  whenReady(): Promise<void> {
    return this.readyPromise;
  }

  private updatePeers(): void {
    const known = new Map<string, readonly string[]>();
    if (this.joinedFrom === undefined) {
      for (const member of this.options.initialCluster) known.set(memberIdFor(member.peerUrls, this.options.initialClusterToken), member.peerUrls);
    } else {
      for (const member of this.joinedFrom.members) known.set(member.id, member.peerUrls);
    }
    for (const member of this.membership.list()) known.set(member.id, member.peerUrls);
    this.transport.setPeers([...known].filter(([id]) => !this.membership.isRemoved(id)).map(([id, peerUrls]) => ({ id, peerUrls })));
  }

  // ---- status ----

  /** Leaders this member has seen come to power (as etcd's etcd_server_leader_changes_seen_total). */
  leaderChangesSeen = 0;

  get appliedIndex(): number {
    return this.appliedIndexValue;
  }

  get term(): number {
    return this.loop.term;
  }

  get leaderId(): bigint {
    return this.loop.leaderId;
  }

  get isLeader(): boolean {
    return this.loop.isLeader;
  }

  get raftIndex(): number {
    return this.loop.lastIndex;
  }

  /** Proposals waiting to be applied (etcd_server_proposals_pending). */
  get pendingProposals(): number {
    return this.waiters.size;
  }

  get dbSize(): number {
    return this.dbSizeBytes;
  }

  get isLearner(): boolean {
    return this.membership.get(this.memberHex)?.isLearner ?? false;
  }

  get snapshotsSent(): number {
    return this.transport.snapshotsSent;
  }

  get snapshotsReceived(): number {
    return this.transport.snapshotsReceived;
  }

  members(): MemberInfo[] {
    return this.membership.list().map((member) => ({
      id: BigInt(`0x${member.id}`),
      name: member.name,
      peerUrls: member.peerUrls,
      clientUrls: member.clientUrls,
      isLearner: member.isLearner,
    }));
  }

  header(revision: number = this.store.currentRevision): ResponseHeader {
    return { cluster_id: this.clusterIdOut, member_id: this.memberIdOut, revision, raft_term: this.loop.term };
  }

  /** A header for calls that do not touch the KV store: etcd reports revision 0 there. */
  headerWithoutRevision(): ResponseHeader {
    return this.header(0);
  }

  // ---- reads ----

  async range(request: RangeRequest, caller?: Caller): Promise<ReturnType<typeof executeRange>> {
    validateRange(request);
    this.checkRunning();
    if (!request.serializable) {
      await this.loop.readBarrier();
    }
    if (caller !== undefined) authorizeRange(this.auth.decider, caller, request);
    return executeRange(this.store, request);
  }

  /** Waits until a linearizable read may be served here. */
  readBarrier(): Promise<void> {
    this.checkRunning();
    return this.loop.readBarrier();
  }

  // ---- writes ----

  async put(request: PutRequest, caller?: Caller): Promise<{ revision: number; response: object }> {
    validatePut(request);
    return this.propose({ request: 'put', put: request, caller }, true);
  }

  async deleteRange(request: DeleteRangeRequest, caller?: Caller): Promise<{ revision: number; response: object }> {
    validateDeleteRange(request);
    return this.propose({ request: 'delete_range', delete_range: request, caller }, false);
  }

  async txn(request: TxnRequest, caller?: Caller): Promise<{ revision: number; response: object }> {
    // Cheapest first: the linear checks (size bound, then each op's, etcd's error order), then
    // authorization (a caller without permission costs no more), then the duplicate-key check.
    validateTxnShape(request);
    this.checkRunning();
    await this.authorizeCurrent({ id: 0, request: 'txn', txn: request, caller });
    checkTxnDuplicates(request);
    if (isReadOnlyTxn(request)) {
      // A read-only transaction needs no log entry: evaluate it against a linearizable read view.
      await this.loop.readBarrier();
      const result = this.applier.apply({ id: 0, request: 'txn', txn: request, caller }, []);
      if (!result.ok) throw result.error;
      return { revision: result.revision, response: result.response };
    }
    // Authorized just above: not again before proposing (the second check only ever refused earlier
    // what applying refuses anyway). Applying checks against the auth state at the entry's place in
    // the log, on every member: a permission revoked after the check above refuses the Txn there.
    return this.propose({ request: 'txn', txn: request, caller }, true, true);
  }

  /** An auth change (Auth service, policy apply), checked and replicated like any write. */
  /** Proposes this member's audit chain head for the cluster to witness; resolves once applied. */
  async proposeAuditCheckpoint(checkpoint: ProposedCheckpoint): Promise<void> {
    await this.propose({ request: 'audit_checkpoint', audit_checkpoint: encodeCheckpoint(checkpoint) }, false);
  }

  /** Every audit checkpoint this member has applied (each member's, every kept window and latest) and the signers' certificates. */
  async auditCheckpointRecords(): Promise<ReturnType<typeof checkpointsOf>> {
    const values: Buffer[] = [];
    for await (const [, value] of this.db.iterator({ gte: Buffer.of(prefix.auditCheckpoint), lt: prefixEnd(prefix.auditCheckpoint) })) values.push(value);
    return checkpointsOf(values);
  }

  async authChange(change: AuthChange, caller?: Caller): Promise<void> {
    await this.propose({ request: 'auth_change', auth_change: encodeAuthChange(change), caller }, false);
  }

  async compact(request: CompactionRequest, caller?: Caller): Promise<{ revision: number; response: object }> {
    const result = await this.propose({ request: 'compaction', compaction: request, caller }, false);
    if (request.physical) {
      await this.store.whenCompacted();
    }
    return result;
  }

  async leaseGrant(ttlSeconds: number, requestedId: bigint, caller?: Caller): Promise<{ revision: number; response: object }> {
    let id = requestedId;
    while (id === 0n) {
      id = randomBytes(8).readBigInt64BE(0) & 0x7fff_ffff_ffff_ffffn;
    }
    // The caller goes into the entry: the lease's owner is recorded where every member applies it.
    return this.propose({ request: 'lease_grant', lease_grant: { ID: id.toString(), TTL: String(ttlSeconds) }, caller }, true);
  }

  async leaseRevoke(id: bigint, caller?: Caller): Promise<{ revision: number; response: object }> {
    if (!this.lessor.has(id)) {
      throw new RampartError('LeaseNotFound');
    }
    return this.propose({ request: 'lease_revoke', lease_revoke: { ID: id.toString() }, caller }, false);
  }

  // ---- failed logins ----

  /**
   * A login event, decided by the leader's records so that guessing limits hold for the cluster (a
   * follower asks the leader; three members no longer mean three times the guesses). The records
   * are not replicated through the log: a failed login must not become a Raft write an attacker
   * controls. This member's own records count too (the stricter answer wins), so a follower cut
   * off from the leader still limits, and it refuses logins while it knows no leader (fail closed).
   * Returns the milliseconds the (user, source) pair is locked out for.
   */
  async loginAttempt(attempt: LoginAttempt): Promise<number> {
    const local = this.recordLoginAttempt(attempt);
    this.checkRunning();
    const leader = this.loop.leader;
    if (leader === this.memberHex) return local;
    if (leader === '') throw new RampartError('NoLeader');
    try {
      return Math.max(local, await this.transport.loginAttempt(leader, attempt, this.options.requestTimeoutMs));
    } catch {
      if (attempt.outcome === 'check') throw new RampartError('NoLeader');
      return local;
    }
  }

  private leaderLoginAttempt(attempt: LoginAttempt): Promise<number> {
    if (this.loop.leader !== this.memberHex) return Promise.reject(new RampartError('NoLeader'));
    return Promise.resolve(this.recordLoginAttempt(attempt));
  }

  /**
   * The leader replicates the login records that changed since its last flush (and clears those
   * whose window is over), one bounded entry at a time: see src/server/login-records.ts.
   */
  private flushLoginRecords(): void {
    if (this.flushingLoginRecords || this.stopped || this.loop.leader !== this.memberHex) return;
    const changes = this.loginLimiter.takeChanges(loginRecordsPerEntryMax);
    const expired = this.loginRecords.expired(Date.now(), this.loginLimiter.windowMs, loginRecordsPerEntryMax - changes.length);
    if (changes.length === 0 && expired.length === 0) return;
    this.flushingLoginRecords = true;
    this.propose({ request: 'login_records', login_records: encodeLoginRecords([...expired, ...changes]) }, false)
      .catch((error: unknown) => {
        this.loginLimiter.returnChanges(changes);
        this.options.logger.debug({ err: error instanceof Error ? error.message : String(error) }, 'could not replicate failed-login records; retrying');
      })
      .finally(() => {
        this.flushingLoginRecords = false;
      });
  }

  private recordLoginAttempt({ user, source, outcome, known }: LoginAttempt): number {
    if (outcome === 'failed') this.loginLimiter.failed(user, source, known);
    else if (outcome === 'succeeded') this.loginLimiter.succeeded(user, source);
    return this.loginLimiter.blockedFor(user, source);
  }

  /** Keep-alive: the leader renews; a follower forwards to the leader. Returns 0 when the lease is gone. */
  async leaseKeepAlive(id: bigint): Promise<number> {
    const answer = await this.leaseAtLeader(id, true);
    return answer.found ? answer.ttl : 0;
  }

  async leaseTimeToLive(id: bigint): Promise<LeaseAnswer> {
    return this.leaseAtLeader(id, false);
  }

  /** As etcd: a renewal during an election waits for the new leader, up to the request timeout. */
  private async leaseAtLeader(id: bigint, renew: boolean): Promise<LeaseAnswer> {
    const deadline = Date.now() + this.options.requestTimeoutMs;
    for (;;) {
      this.checkRunning();
      this.followLeadership();
      const leader = this.loop.leader;
      if (this.lessor.isPrimary) {
        try {
          return await this.answerLeaseConfirmed(id, renew);
        } catch (error) {
          if (!(error instanceof RampartError && (error.code === 'NoLeader' || error.code === 'LeaderChanged'))) throw error;
        }
      } else if (leader !== '' && leader !== this.memberHex) {
        // (A leader still applying its predecessor's entries is not primary yet: wait for it.)
        try {
          return await this.transport.lease(leader, renew ? 'LeaseRenew' : 'LeaseTimeToLive', id, Math.max(100, deadline - Date.now()));
        } catch {
          // The leader moved or is unreachable: wait for the next one.
        }
      }
      if (Date.now() >= deadline) throw new RampartError(leader === '' ? 'NoLeader' : 'Timeout');
      await new Promise((resolve) => setTimeout(resolve, this.options.heartbeatMs));
    }
  }

  /**
   * As etcd's LeaseRenew: a leader answers a keep-alive only once a quorum has confirmed, after it
   * arrived, that it still leads, and while that confirmation is fresh; see lease-confirmation.ts
   * (it does not wait to apply all it had committed, which a slow leader disk delays past that).
   * TimeToLive reads (the attached keys too) behind a full read barrier, so a deposed leader still
   * refuses it; it renews nothing, so it is not held to the keep-alive's freshness bound (as in
   * etcd, the remaining TTL is the leader's view when it answers).
   */
  private async answerLeaseConfirmed(id: bigint, renew: boolean): Promise<LeaseAnswer> {
    this.followLeadership();
    if (!this.lessor.isPrimary) throw new RampartError('NoLeader');
    if (renew) await confirmKeepAlive(this.loop, this.unappliedLeaseChanges, id, this.nowMs, this.options.electionMs / 2);
    else await this.loop.readBarrier();
    return this.answerLease(id, renew);
  }

  private readonly unappliedLeaseChanges = new UnappliedLeaseChanges({
    appliedIndex: () => this.appliedIndexValue,
    entries: (from, to) => this.loop.node.entries(from, to),
    leaseChangedBy,
  });

  /** Only the primary lessor answers (see Lessor); a leader still catching up answers NoLeader, and the caller retries. */
  private answerLease(id: bigint, renew: boolean): LeaseAnswer {
    this.followLeadership();
    if (!this.lessor.isPrimary) throw new RampartError('NoLeader');
    const lease = this.lessor.get(id);
    if (lease === undefined) return { found: false, ttl: -1, grantedTtl: 0, keys: [] };
    let ttl: number;
    try {
      ttl = renew ? this.lessor.renew(id) : this.lessor.remainingSeconds(id);
    } catch (error) {
      if (error instanceof RampartError && error.code === 'LeaseNotFound') return { found: false, ttl: -1, grantedTtl: 0, keys: [] };
      throw error;
    }
    return { found: true, ttl, grantedTtl: lease.grantedTtlSeconds, keys: [...lease.keys].sort().map(fromIndexKey) };
  }

  async alarm(request: AlarmRequest, caller?: Caller): Promise<{ revision: number; response: object }> {
    if (request.action === 0) {
      return { revision: this.store.currentRevision, response: { alarms: this.alarms.list(request.alarm) } };
    }
    return this.propose({ request: 'alarm', alarm: request, caller }, false);
  }

  alarmList(): ReturnType<Alarms['list']> {
    return this.alarms.list();
  }

  // ---- membership ----

  async memberAdd(peerUrls: readonly string[], isLearner: boolean): Promise<MemberRecord> {
    this.checkRunning();
    const refusal = memberAddRefusal(this.membership.list().length, peerUrls);
    if (refusal !== undefined) throw new RampartError(refusal);
    const taken = new Set(this.membership.list().flatMap((member) => member.peerUrls));
    if (peerUrls.some((url) => taken.has(url))) throw new RampartError('PeerUrlExists');
    const id = memberIdFor(peerUrls, this.options.initialClusterToken);
    if (this.membership.isRemoved(id)) throw new RampartError('MemberIdRemoved');
    if (this.membership.get(id) !== undefined) throw new RampartError('MemberExists');
    const member: MemberRecord = { id, name: '', peerUrls, clientUrls: [], isLearner };
    await this.changeConfiguration({ type: isLearner ? 'addLearner' : 'addVoter', nodeId: id }, member);
    this.updatePeers();
    return this.membership.get(id) ?? member;
  }

  async memberRemove(id: string): Promise<void> {
    const member = this.membership.get(id);
    if (member === undefined) throw new RampartError('MemberNotFound');
    await this.changeConfiguration({ type: 'removeNode', nodeId: id }, member);
  }

  async memberPromote(id: string): Promise<void> {
    const member = this.membership.get(id);
    if (member === undefined) throw new RampartError('MemberNotFound');
    if (!member.isLearner) throw new RampartError('MemberNotLearner');
    if (this.loop.isLeader) {
      const progress = this.loop.node.progressOf(id);
      if (progress === undefined || progress.match < this.loop.lastIndex * 0.9) throw new RampartError('LearnerNotReady');
    }
    await this.changeConfiguration({ type: 'promoteLearner', nodeId: id }, member);
  }

  async memberUpdate(id: string, peerUrls: readonly string[]): Promise<void> {
    if (this.membership.get(id) === undefined) throw new RampartError('MemberNotFound');
    if (!arePeerUrls(peerUrls)) throw new RampartError('MemberBadUrls');
    await this.propose({ request: 'member_update', member_update: { ID: BigInt(`0x${id}`).toString(), peerURLs: [...peerUrls] } }, false);
    this.updatePeers();
  }

  /** Hands leadership to another voter (etcd's MoveLeader); this member must be the leader. */
  async moveLeader(targetId: string): Promise<void> {
    this.checkRunning();
    if (!this.loop.isLeader) throw new RampartError('NotLeader');
    if (targetId === this.memberHex) return;
    if (!this.loop.node.configuration.voters.includes(targetId)) throw new RampartError('BadLeaderTransferee');
    if (!this.loop.transferLeadership(targetId)) throw new RampartError('BadLeaderTransferee');
    const deadline = Date.now() + this.options.requestTimeoutMs;
    while (this.loop.leader !== targetId) {
      if (Date.now() > deadline) throw new RampartError('LeaderTransferTimeout');
      await new Promise((resolve) => setTimeout(resolve, this.options.heartbeatMs));
    }
  }

  private async changeConfiguration(change: Omit<ConfigurationChange, 'context'>, member: MemberRecord): Promise<void> {
    const requestId = randomBytes(8).toString('hex');
    const context: ChangeContext = { requestId, member };
    let timer: NodeJS.Timeout | undefined;
    const applied = new Promise<void>((resolve, reject) => {
      timer = setTimeout(() => {
        this.changeWaiters.delete(requestId);
        reject(new RampartError('Timeout'));
      }, this.options.requestTimeoutMs);
      this.changeWaiters.set(requestId, (refusal) => {
        clearTimeout(timer);
        if (refusal === undefined) resolve();
        else reject(new RampartError(refusal));
      });
    });
    try {
      this.loop.proposeConfigurationChange({ ...change, context: JSON.stringify(context) });
    } catch (error) {
      // Nobody awaits `applied` now: its timer would reject it unhandled and stop the process.
      clearTimeout(timer);
      this.changeWaiters.delete(requestId);
      if (error instanceof RampartError && error.code === 'InvalidArgument') throw new RampartError('Unhealthy');
      throw error;
    }
    await applied;
  }

  // ---- the request path ----

  /**
   * Checks a request before it is proposed or read. This member's auth state can be behind the
   * cluster's (a member back from a partition has not applied a grant acknowledged meanwhile), so a
   * refusal is confirmed after a read barrier: access granted at the time is never refused. Only
   * refusals pay for the barrier.
   */
  private async authorizeCurrent(request: InternalRequest): Promise<void> {
    try {
      this.applier.authorize(request);
    } catch (error) {
      if (!(error instanceof RampartError)) throw error;
      await this.loop.readBarrier();
      this.applier.authorize(request);
    }
  }

  /**
   * Proposes `body` and waits for its entry to be applied; the body becomes the request (its id set here), it is not copied.
   * `authorized`: the caller has just run `authorizeCurrent` on this request (the Txn path).
   */
  private async propose(body: ProposalBody, consumesSpace: boolean, authorized = false): Promise<{ revision: number; response: object }> {
    this.checkRunning();
    if (this.loop.node.commitIndex > this.appliedIndexValue + applyGapEntriesMax) throw new RampartError('TooManyRequests');
    const receivedMs = performance.now();
    const request = body as InternalRequest;
    request.id = 0;
    // Refused here, a request never reaches the log; applying it checks again against that moment's state.
    if (!authorized) await this.authorizeCurrent(request);
    const id = (this.nextRequestId++).toString();
    request.id = id;
    const data = encodeInternalRequest(request);
    if (data.length > this.options.maxRequestBytes) {
      throw new RampartError('RequestTooLarge');
    }
    if (consumesSpace && this.dbSizeBytes + data.length > this.options.quotaBackendBytes) {
      this.raiseNoSpaceAlarm();
      throw new RampartError('NoSpace');
    }
    const result = await new Promise<ApplyResult>((resolve, reject) => {
      const proposedMs = performance.now();
      instruments.writeStageSeconds.record((proposedMs - receivedMs) / 1000, 'authorize');
      this.waiters.set(id, {
        proposedMs,
        expiresMs: proposedMs + this.options.requestTimeoutMs,
        resolve: (applied) => {
          instruments.writeStageSeconds.recordSince(proposedMs, 'answer');
          resolve(applied);
        },
        reject,
      });
      try {
        this.loop.propose(data);
      } catch (error) {
        this.waiters.delete(id);
        instruments.proposalFailed.record(1);
        reject(error);
        return;
      }
      this.armProposalDeadline();
    });
    if (!result.ok) {
      throw result.error;
    }
    return { revision: result.revision, response: result.response };
  }

  /** Arms the timer for the first waiter's deadline (the earliest), unless it is armed already (for an earlier one). */
  private armProposalDeadline(): void {
    if (this.proposalDeadline !== undefined) return;
    const first = this.waiters.values().next();
    if (first.done === true) return;
    this.proposalDeadline = setTimeout(() => this.expireProposals(), Math.max(1, Math.ceil(first.value.expiresMs - performance.now())));
  }

  /** Fails every proposal past its deadline with etcd's 'request timed out' (Unavailable), then waits for the next. */
  private expireProposals(): void {
    this.proposalDeadline = undefined;
    const now = performance.now();
    for (const [id, waiter] of this.waiters) {
      if (waiter.expiresMs > now) break;
      this.waiters.delete(id);
      instruments.proposalFailed.record(1);
      waiter.reject(new RampartError('Timeout'));
    }
    this.armProposalDeadline();
  }

  private raiseNoSpaceAlarm(): void {
    if (this.alarms.has(alarmType.noSpace)) {
      return;
    }
    this.options.logger.warn({ dbSizeBytes: this.dbSizeBytes, quotaBytes: this.options.quotaBackendBytes }, 'database space exceeded; raising NOSPACE alarm');
    this.propose({ request: 'alarm', alarm: { action: 1, memberID: this.memberId.toString(), alarm: alarmType.noSpace } }, false).catch(() => undefined);
  }

  // ---- Raft loop host ----

  private async persist(ready: Ready): Promise<void> {
    if (ready.snapshot === undefined) {
      await this.logStore.save({ hardState: ready.hardState, entries: ready.entries });
      return;
    }
    // The records were staged as they arrived (receiveSnapshot); they move into place in bounded,
    // crash-safe steps, and the log restarts after the snapshot. The last applied batch lands first.
    await this.applyWrite;
    const { index, term } = ready.snapshot.metadata;
    await installStaged(this.db, this.logStore, index, term, ready.hardState);
    if (ready.entries.length > 0) await this.logStore.save({ entries: ready.entries });
  }

  /**
   * A snapshot from the leader, streamed in chunks: staged on disk as it arrives, then handed to
   * Raft, whose Ready installs it. One at a time; one Raft already has is refused.
   */
  private async receiveSnapshot(message: Extract<Message, { type: 'snapshot' }>, chunks: AsyncIterable<Buffer>): Promise<void> {
    this.checkRunning();
    const { index, term } = message.snapshot.metadata;
    if (index <= this.appliedIndexValue) throw new Error(`snapshot at ${index} is behind this member (applied ${this.appliedIndexValue})`);
    if (this.receivingSnapshot) throw new Error('another snapshot is being received');
    this.receivingSnapshot = true;
    try {
      const startedMs = performance.now();
      const staged = await stageSnapshot(this.db, message.snapshot.metadata, chunks);
      this.options.logger.info({ index, term, ...staged, ms: Math.round(performance.now() - startedMs) }, 'snapshot from leader staged');
      this.loop.step(message);
      // Raft's Ready for it is persisted (installed) before another transfer may replace the staging.
      await this.loop.settled();
    } finally {
      this.receivingSnapshot = false;
    }
  }

  /** Keeps a view of the database at `index` for the followers a snapshot at `index` is sent to. */
  private holdStateView(index: number): void {
    const previous = this.stateView;
    this.stateView = { index, view: this.db.snapshot(), readers: 0, retired: false };
    if (previous !== undefined) this.retireStateView(previous);
  }

  /**
   * Drops the held view for good and resolves once it is closed (after a snapshot being streamed
   * from it ends, waited for up to a minute): a migration to encryption compacts its plaintext away
   * only once no view sees it. A follower that needs a snapshot then gets a fresh one.
   */
  private async releaseStateView(): Promise<boolean> {
    const state = this.stateView;
    if (state === undefined) return true;
    this.stateView = undefined;
    state.retired = true;
    for (let waited = 0; state.readers > 0 && waited < 600; waited++) await new Promise((resolve) => setTimeout(resolve, 100));
    if (state.readers > 0) {
      this.options.logger.warn({ index: state.index }, 'a snapshot stream still reads the view taken before the encryption migration; the migration finishes after it ends');
      return false;
    }
    await state.view.close().catch(() => undefined);
    return true;
  }

  private retireStateView(state: StateView): void {
    state.retired = true;
    if (state.readers === 0) void state.view.close().catch(() => undefined);
  }

  /** The records of the snapshot Raft is sending (the view taken at its index), in chunks. */
  private async *outgoingSnapshot(index: number): AsyncGenerator<Buffer> {
    const state = this.stateView;
    if (state === undefined || state.index !== index) {
      // Raft asks for a snapshot whose view is gone: take a fresh one at the next applied batch, which
      // Raft sends on its next attempt, rather than fail until the next scheduled snapshot.
      this.snapshotWanted = true;
      throw new Error(`snapshot at ${index} is no longer held`);
    }
    state.readers += 1;
    try {
      yield* snapshotChunks(this.db, state.view, this.options.snapshotChunkBytes ?? snapshotChunkBytesDefault);
    } finally {
      state.readers -= 1;
      if (state.retired) this.retireStateView(state);
    }
  }

  private async installSnapshot(snapshot: Snapshot): Promise<void> {
    await this.applyWrite;
    this.options.logger.info({ index: snapshot.metadata.index }, 'installed snapshot from leader');
    await this.store.reload();
    await this.loadStateMachine();
    this.snapshotIndex = snapshot.metadata.index;
    // Raft's latest snapshot is now this one: hold its view so this member can send it if it leads.
    this.holdStateView(snapshot.metadata.index);
    this.updatePeers();
    this.watchHub.resyncAll();
  }

  private removedReported = false;

  /** Once: by applying its own removal, or told by a peer that missed it (transport.ts memberRemovedDetails). */
  private stopRemoved(why: string): void {
    if (this.removedReported) return;
    this.removedReported = true;
    this.options.logger.warn(why);
    setTimeout(() => this.options.onRemoved?.(), 200).unref();
  }

  /** Applies committed entries in order; the consistent index is written in the same batch as their effects. */
  private async applyEntries(entries: readonly Entry[]): Promise<void> {
    // At most one applied batch on its way to LevelDB: batches land in order, consistent index last.
    await this.applyWrite;
    // A failed write stops the member: nothing after it is applied or written (a later batch's
    // consistent index would cover the failed batch's effects, which the database never got).
    if (this.failed) return;
    const applyStarted = performance.now();
    const batch: BatchOperation[] = [];
    const results: [string, ApplyResult][] = [];
    const appliedChanges: [string, ErrorCode | undefined][] = [];
    let removedSelf = false;
    let membershipChanged = false;
    for (const entry of entries) {
      if (entry.index <= this.appliedIndexValue) continue;
      if (entry.type === 'configurationChange') {
        const change = parseConfigurationChange(entry.data);
        if (change === undefined) continue;
        const context = parseChangeContext(change.context);
        const refusal = this.membership.refusal(change, context);
        if (context !== undefined && context.requestId !== '') appliedChanges.push([context.requestId, refusal]);
        if (refusal !== undefined) {
          // Refused by every member alike (see membership.ts): Raft's configuration stays as it is.
          this.options.logger.warn({ index: entry.index, change: change.type, member: change.nodeId, reason: refusal }, 'refused a committed configuration change');
          continue;
        }
        batch.push(...this.membership.applyChange(change, context));
        this.loop.node.applyConfigurationChange(change);
        membershipChanged = true;
        if (change.type === 'removeNode' && change.nodeId === this.memberHex) removedSelf = true;
        continue;
      }
      if (entry.data.length === 0) continue;
      const decoded = decodeCommittedProposal(entry.data);
      if (!decoded.ok) {
        // Skipped on every member alike: it changes nothing but the applied index (see committed-proposal.ts).
        instruments.applySkipped.record(1);
        this.options.logger.error({ index: entry.index, term: entry.term, bytes: entry.data.length, reason: decoded.reason }, 'skipped a committed entry whose proposal cannot be decoded; it changes nothing');
        if (decoded.id !== undefined) results.push([decoded.id, { ok: false, error: new RampartError('ProposalUndecodable') }]);
        continue;
      }
      const request = decoded.request;
      if (request.request === 'member_attributes' || request.request === 'member_update') membershipChanged = true;
      const applied = this.applier.apply(request, batch);
      if (request.request === 'encryption_rotate' && applied.ok) this.rotateKeys(request.encryption_rotate?.kek === true);
      results.push([String(request.id), applied]);
    }
    const last = entries[entries.length - 1];
    if (last === undefined || last.index <= this.appliedIndexValue) {
      return;
    }
    batch.push({ type: 'put', key: metaKey.consistentIndex, value: encodeMetaNumber(last.index) });
    this.appliedIndexValue = last.index;
    for (const { revision, events } of this.applier.takeEvents()) {
      this.watchHub.notify(revision, events);
    }
    const revision = this.store.currentRevision;
    const commitStarted = performance.now();
    instruments.writeStageSeconds.record((commitStarted - applyStarted) / 1000, 'apply');
    for (const [id] of results) {
      const waiter = this.waiters.get(id);
      if (waiter !== undefined) instruments.writeStageSeconds.record((applyStarted - waiter.proposedMs) / 1000, 'commit');
    }
    const restoredPending = this.restoredState && this.appliedIndexValue > 0 && this.loop.node.entryTerm(this.appliedIndexValue) !== undefined;
    // A scheduled snapshot does not hold the Raft loop (see startSnapshot): this batch is written
    // synced, its view is taken as the write lands, and the log is compacted in the background.
    const snapshotNow = !restoredPending && this.snapshotTask === undefined && (this.snapshotWanted || this.appliedIndexValue - this.snapshotIndex >= this.options.snapshotCount);
    if (snapshotNow) this.snapshotWanted = false;
    // Callers are answered once the batch is applied in memory, as etcd does: its entries are
    // durable in the Raft log, and after a crash every entry past the consistent index (written in
    // this batch) is applied again. The write overlaps the next Ready's log write; until it lands,
    // reads find the new records through the store (`markFlushed`), and the next apply, a snapshot
    // and close wait for it.
    const written = this.db.batch(batch, snapshotNow ? { sync: true } : undefined).then(
      () => {
        instruments.backendCommitSeconds.recordSince(commitStarted);
        if (performance.now() - applyStarted > slowApplyMs) instruments.slowApply.record(1);
        this.store.markFlushed(batch, revision);
        return true;
      },
      (error: unknown) => {
        this.fail(error);
        return false;
      },
    );
    const snapshotAt = this.appliedIndexValue;
    // The view is taken in the same turn as the write lands: the next batch's write waits for
    // applyWrite, so the database is at exactly `snapshotAt` then.
    this.applyWrite = snapshotNow ? written.then((ok) => (ok ? this.startSnapshot(snapshotAt) : undefined)) : written.then(() => undefined);
    for (const [id, result] of results) {
      const waiter = this.waiters.get(id);
      if (waiter !== undefined) {
        this.waiters.delete(id);
        waiter.resolve(result);
      }
    }
    for (const [requestId, refusal] of appliedChanges) {
      this.changeWaiters.get(requestId)?.(refusal);
      this.changeWaiters.delete(requestId);
    }
    if (membershipChanged) {
      this.updatePeers();
      this.campaignIfAlone();
    }
    if (removedSelf) this.stopRemoved('this member has been removed from the cluster; stopping');
    this.followLeadership();
    if (restoredPending) {
      // Everything up to here (the founding members) is in the snapshot too; keep no entry behind it.
      await this.takeSnapshot(0);
      // Raft compacts only what it knows applied (not yet this batch): until the log really starts
      // behind the restored state, try again after the next batch (the member's own attributes follow).
      if (this.logStore.logStart.index > 0) {
        await this.db.batch([{ type: 'del', key: metaKey.restoredState }], { sync: true });
        this.restoredState = false;
      }
    }
  }

  /**
   * A scheduled snapshot, once its batch (written synced: the applied state through `index` is
   * durable) has landed and before any later batch is written: holds the database's view at `index`
   * for followers that need it, compacts Raft's log, then compacts the stored log in the background
   * (one frame in the log's queue; the deletions outside it). The Raft loop goes on meanwhile;
   * close waits for it, and the next snapshot is not taken before it ends.
   */
  private startSnapshot(index: number): void {
    if (this.failed) return;
    try {
      const term = this.loop.node.entryTerm(index);
      if (term === undefined) return;
      this.holdStateView(index);
      const snapshot: Snapshot = { metadata: { index, term, configuration: this.loop.node.configuration }, data: Buffer.alloc(0) };
      this.loop.node.compact(snapshot, Math.max(0, index - this.options.snapshotCatchUpEntries));
      this.snapshotIndex = index;
      const { index: compactIndex, term: compactTerm } = this.loop.node.logStart;
      if (compactIndex <= this.logStore.logStart.index) return;
      this.snapshotTask = this.logStore.compactThrough(compactIndex, compactTerm).then(
        () => {
          this.options.logger.info({ index, compactIndex }, 'snapshot taken; log compacted');
          this.snapshotTask = undefined;
        },
        (error: unknown) => this.fail(error),
      );
    } catch (error) {
      this.fail(error);
    }
  }

  /** Snapshots the state machine at the applied index and compacts the log behind it, holding the Raft loop (restored state only). */
  private async takeSnapshot(catchUpEntries: number): Promise<void> {
    await this.applyWrite;
    await this.snapshotTask;
    // After a failed write the database misses an applied batch: no snapshot claims it, and the
    // log behind it stays.
    if (this.failed) return;
    const index = this.appliedIndexValue;
    const term = this.loop.node.entryTerm(index);
    if (term === undefined) return;
    // The database is at exactly `index` now (this batch is written): the view streamed to followers.
    this.holdStateView(index);
    const snapshot: Snapshot = { metadata: { index, term, configuration: this.loop.node.configuration }, data: Buffer.alloc(0) };
    // Raft keeps what it does not yet know applied (this batch, when it is longer than the
    // catch-up tail); the stored log is compacted exactly as far as Raft's.
    this.loop.node.compact(snapshot, Math.max(0, index - catchUpEntries));
    this.snapshotIndex = index;
    const { index: compactIndex, term: compactTerm } = this.loop.node.logStart;
    if (compactIndex > this.logStore.logStart.index) {
      // The applied state (written unsynced) must be durable before the log behind it goes.
      await this.db.batch([{ type: 'put', key: metaKey.consistentIndex, value: encodeMetaNumber(index) }], { sync: true });
      await this.logStore.compactThrough(compactIndex, compactTerm);
    }
    this.options.logger.info({ index, compactIndex }, 'snapshot taken; log compacted');
  }

  private onSoftState(state: SoftState, previous: SoftState): void {
    if (state.role === 'leader' && previous.role !== 'leader') {
      this.options.logger.info({ term: this.loop.term }, 'became leader');
    }
    this.followLeadership();
    if (state.leader !== previous.leader) {
      if (state.leader !== '') this.leaderChangesSeen += 1;
      this.options.logger.info({ leader: state.leader, term: this.loop.term }, 'leader changed');
      if (previous.leader !== '') this.failPendingProposals();
    }
  }

  /**
   * As etcd: when the leader a proposal went to is gone, its waiter fails at once with the
   * retryable 'etcdserver: leader changed' (Unavailable) instead of waiting out the request
   * timeout. The outcome is unknown to the client (the entry may still commit), as after a timeout.
   */
  private failPendingProposals(): void {
    if (this.waiters.size === 0) return;
    const pending = [...this.waiters.values()];
    this.waiters.clear();
    for (const waiter of pending) waiter.resolve({ ok: false, error: new RampartError('LeaderChanged') });
  }

  /** Publishes this member's name and client URLs through the log, once a leader exists. */
  private async publishAttributes(): Promise<void> {
    if (this.published || this.stopped || this.loop.leader === '') return;
    const record = this.membership.get(this.memberHex);
    if (record === undefined) return;
    if (record.name === this.options.name && record.clientUrls.join(',') === this.options.clientUrls.join(',')) {
      this.published = true;
      this.markReady();
      return;
    }
    this.published = true;
    try {
      await this.propose({ request: 'member_attributes', member_attributes: { id: this.memberHex, name: this.options.name, client_urls: [...this.options.clientUrls] } }, false);
      this.markReady();
    } catch {
      this.published = false;
    }
  }

  /** Promotes or demotes the lessor from the Raft role, term and applied index of this instant. */
  private followLeadership(): void {
    const node = this.loop.node;
    const leaderTerm = node.role === 'leader' ? node.term : undefined;
    const appliedOwnTerm = leaderTerm !== undefined && node.entryTerm(this.appliedIndexValue) === leaderTerm;
    this.lessor.followLeadership({ leaderTerm, appliedOwnTerm }, this.options.electionMs);
  }

  private revokeExpiredLeases(): void {
    if (this.stopped) {
      return;
    }
    this.followLeadership();
    if (!this.lessor.isPrimary) {
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
    this.dbSizeBytes = await this.databaseSize.measure().catch(() => this.dbSizeBytes);
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

  /** Encryption at rest on this member: undefined when it does not encrypt. */
  encryptionStatus(): KeyringStatus | undefined {
    return this.db.encryptionStatus();
  }

  /** Re-seal progress of this member's records (counts from the last full scan). */
  get encryptionProgress(): ResealProgress {
    return this.db.resealProgress;
  }

  /** Counts this member's records per DEK now: a scan of the database, and the Raft log's segment files. */
  async encryptionRecordCounts(): Promise<Map<number, number>> {
    const counts = await this.db.countRecords();
    for (const [id, count] of this.logStore.recordCounts()) counts.set(id, (counts.get(id) ?? 0) + count);
    return counts;
  }

  /** Whether the KEK provider answers, and the KEK it uses now (undefined: no encryption). */
  async encryptionProviderHealth(): Promise<{ reachable: boolean; kekId: string } | undefined> {
    const provider = this.options.keyProvider;
    if (provider === undefined || !this.db.encrypted) return undefined;
    return provider.health().catch(() => ({ reachable: false, kekId: '' }));
  }

  /** Rotates every member's DEK (or with `kek`, re-wraps under a new KEK) through the log. */
  async rotateEncryption(kek: boolean, caller?: Caller): Promise<void> {
    this.checkRunning();
    if (!this.db.encrypted) throw new RampartError('NotCapable', 'this member does not encrypt at rest');
    await this.propose({ request: 'encryption_rotate', encryption_rotate: { kek }, caller }, false);
    await this.keyRotation;
  }

  private keyRotation: Promise<void> = Promise.resolve();
  /** The KEK provider's last health check (a KMS plugin may go away while the member serves). */
  kekProviderReachable = true;
  private healthChecking = false;
  private rewrapping = false;

  /** A key wrapped by this member's KEK outside its database (the audit trail key): re-wrapped at each KEK rotation. */
  onKekRewrap(hook: RewrapHook): () => void {
    return this.db.onKekRewrap(hook);
  }

  get encryptionResealDue(): boolean {
    return this.db.resealDue;
  }

  /** This member's part of a rotation: one at a time, never blocking the apply path. */
  private rotateKeys(kek: boolean): void {
    if (!this.db.encrypted) return;
    this.keyRotation = this.keyRotation.then(async () => {
      if (this.stopped) return;
      if (kek) {
        await this.db.rewrap();
        this.options.logger.info({ kekId: this.db.encryptionStatus()?.kekId }, 'data keys re-wrapped under a new key-encryption key');
        return;
      }
      const id = await this.db.rotate();
      this.options.logger.info({ dek: id }, 'rotated the data encryption key; re-sealing older records in the background');
      this.startReseal();
    }).catch((error: unknown) => this.options.logger.error({ err: String(error) }, 'key rotation failed'));
  }

  private startReseal(): void {
    void this.db.startReseal((error) => this.options.logger.error({ err: String(error) }, 're-seal pass failed; it resumes at the next check'));
  }

  /** The automatic DEK rotation schedule, and a re-seal pass that is due. */
  private encryptionMaintenance(rotationIntervalMs: number): void {
    if (this.stopped) return;
    const status = this.db.encryptionStatus();
    if (status === undefined) return;
    if (!this.healthChecking) {
      this.healthChecking = true;
      void this.encryptionProviderHealth().then((health) => {
        const reachable = health?.reachable ?? true;
        if (reachable !== this.kekProviderReachable) {
          this.options.logger[reachable ? 'info' : 'warn']({ provider: status.providerSource }, reachable ? 'key-encryption key provider reachable again' : 'key-encryption key provider unreachable; serving with the data keys already unwrapped');
        }
        this.kekProviderReachable = reachable;
        // A KMS that rotated its key reports a new key_id: re-wrap the data keys under it.
        const current = this.db.encryptionStatus();
        if (reachable && status.provider === 'kms' && health !== undefined && health.kekId !== '' && current !== undefined && current.deks.some((dek) => dek.kekId !== health.kekId) && !this.rewrapping) {
          this.rewrapping = true;
          this.options.logger.info({ kekId: health.kekId }, 'the KMS reports a new key_id; re-wrapping the data keys');
          this.rotateKeys(true);
          void this.keyRotation.finally(() => {
            this.rewrapping = false;
          });
        }
      }).finally(() => {
        this.healthChecking = false;
      });
    }
    if (Date.now() - status.lastRotationMs >= rotationIntervalMs) {
      this.rotateKeys(false);
    } else if (this.db.resealDue) {
      this.startReseal();
    }
  }

  private checkRunning(): void {
    if (this.stopped) {
      throw new RampartError('Stopped');
    }
  }

  /**
   * Stops the member through its failure path (logged, closed, exit 1) for a failure found outside
   * it (the serve command's last resort for a rejection nothing handled). Once: a member that has
   * already failed is on its way out (`fail` runs once).
   */
  abort(error: unknown): void {
    this.fail(error);
  }

  private fail(error: unknown): void {
    // Once: a second failure (the same write seen by its caller and by the database's hook) finds
    // the member already on its way out.
    if (this.failed) return;
    this.options.logger.fatal({ err: String(error) }, 'member failed; stopping');
    this.stopped = true;
    this.failed = true;
    // An applied batch that will never be written: whoever waits for it (a compaction, which close
    // waits for; a watch catching up; HashKV) is told so instead of waiting forever.
    this.store.abandonFlushes(new Error('the member failed before its applied batches were written'));
    process.exitCode = 1;
    const exit = (): void => {
      process.exit(1);
    };
    const grace = setTimeout(() => {
      this.options.logger.error({ graceMs: failedCloseGraceMs }, 'the failed member did not close in time; exiting');
      exit();
    }, failedCloseGraceMs);
    // Closing after a failure may fail too (the disk still full): logged, and the exit goes on.
    void this.close().catch((closeError: unknown) => {
      this.options.logger.error({ err: String(closeError) }, 'the failed member did not close cleanly');
    }).finally(() => {
      clearTimeout(grace);
      exit();
    });
  }

  /**
   * At a clean shutdown, once nothing writes: the key index to its checkpoint, which the next start
   * loads instead of reading every record (`index-checkpoint.ts`). Not after a failure, while
   * plaintext is being sealed, or with writes unfinished; a checkpoint not written is a full rebuild.
   */
  private async checkpointIndex(): Promise<void> {
    if (this.failed || this.db.migrating || !this.store.flushed) return;
    const started = performance.now();
    try {
      const outcome = await writeIndexCheckpoint({ dataDir: this.options.dataDir, db: this.db, sealer: this.db.outsideSealer() }, this.store.indexRecords(), this.appliedIndexValue, started + indexCheckpointWriteBudgetMs);
      const ms = Math.round(performance.now() - started);
      if (outcome === 'written') this.options.logger.info({ keys: this.store.keyCount, ms }, 'key index checkpoint written');
      else if (outcome === 'past deadline') this.options.logger.warn({ keys: this.store.keyCount, ms, budgetMs: indexCheckpointWriteBudgetMs }, 'key index checkpoint not written: the write ran past its budget; the next start rebuilds the index');
      else this.options.logger.warn({ keys: this.store.keyCount, ms }, 'key index checkpoint not written: the database holds another applied index; the next start rebuilds the index');
    } catch (error) {
      this.options.logger.warn({ err: String(error) }, 'key index checkpoint not written; the next start rebuilds the index');
    }
  }

  async close(): Promise<void> {
    if (this.stopped && this.timers.length === 0) return;
    this.stopped = true;
    for (const timer of this.timers) clearInterval(timer);
    this.timers.length = 0;
    await this.loop.close();
    await this.applyWrite;
    await this.snapshotTask;
    await this.transport.close();
    const compacted = await this.store.whenCompacted().then(() => true, () => false);
    if (this.stateView !== undefined) this.retireStateView(this.stateView);
    if (compacted) await this.checkpointIndex();
    await this.logStore.close();
    await this.db.close();
  }
}

function parseChangeContext(text: string): ChangeContext | undefined {
  try {
    const parsed = JSON.parse(text) as ChangeContext;
    return typeof parsed.member?.id === 'string' ? parsed : undefined;
  } catch {
    return undefined;
  }
}

/**
 * Why MemberAdd refuses to add a member advertising `peerUrls` to a cluster of `memberCount`
 * members, if it does: the cluster must stay within what a joining member reads (cluster-view.ts).
 */
export function memberAddRefusal(memberCount: number, peerUrls: readonly string[]): 'MemberBadUrls' | 'TooManyMembers' | undefined {
  if (!arePeerUrls(peerUrls)) return 'MemberBadUrls';
  if (memberCount >= clusterMembersMax) return 'TooManyMembers';
  return undefined;
}

/** Peer URLs a member may advertise: at least one, and within what a joining member reads (cluster-view.ts). */
function arePeerUrls(urls: readonly string[]): boolean {
  return urls.length > 0 && urls.length <= clusterMemberPeerUrlsMax && urls.every((url) => Buffer.byteLength(url) <= clusterTextBytesMax && isUrl(url));
}

function isUrl(text: string): boolean {
  try {
    const url = new URL(text);
    return (url.protocol === 'http:' || url.protocol === 'https:') && url.port !== '';
  } catch {
    return false;
  }
}

function isReadOnlyTxn(request: TxnRequest): boolean {
  return [...request.success, ...request.failure].every(
    (op) => op.request === 'request_range' || (op.request === 'request_txn' && isReadOnlyTxn(op.request_txn)),
  );
}

async function loadIdentity(db: SealedDatabase, options: MemberOptions): Promise<{ clusterId: bigint; memberId: bigint; joinedFrom?: ClusterView }> {
  const storedMember = await db.get(metaKey.memberId);
  const storedCluster = await db.get(metaKey.clusterId);
  if (storedMember !== undefined && storedCluster !== undefined) {
    const stored = { memberId: storedMember.readBigUInt64BE(0), clusterId: storedCluster.readBigUInt64BE(0) };
    if (options.initialClusterState === 'existing' && !(await hasMemberRecords(db))) {
      // Joined, then stopped before the log named any member: ask again for the peers to answer.
      const view = await learnCluster(options).catch(() => undefined);
      if (view !== undefined && BigInt(`0x${view.clusterId}`) === stored.clusterId) return { ...stored, joinedFrom: view };
    }
    return stored;
  }
  let memberId: bigint;
  let clusterId: bigint;
  let joinedFrom: ClusterView | undefined;
  if (options.initialClusterState === 'existing') {
    // As etcd: a member joining an existing cluster takes its id and the cluster's from the
    // cluster itself (the ids were chosen by `member add` under the cluster's token, which the
    // settings etcdctl prints do not carry).
    joinedFrom = await learnCluster(options);
    const own = [...options.peerUrls].sort().join(',');
    const record = joinedFrom.members.find((member) => [...member.peerUrls].sort().join(',') === own);
    if (record === undefined) {
      throw new Error(`the cluster has no member with peer URLs ${options.peerUrls.join(',')}: add it first (etcdctl member add ${options.name} --peer-urls=${options.peerUrls.join(',')})`);
    }
    memberId = BigInt(`0x${record.id}`);
    clusterId = BigInt(`0x${joinedFrom.clusterId}`);
  } else {
    // As etcd: the member id comes from its peer URLs and the cluster token; every member of a
    // cluster shares the token, so they share the cluster id.
    memberId = BigInt(`0x${memberIdFor(options.peerUrls, options.initialClusterToken)}`);
    clusterId = hash64(`cluster/${options.initialClusterToken}`);
  }
  const memberBytes = Buffer.alloc(8);
  memberBytes.writeBigUInt64BE(memberId);
  const clusterBytes = Buffer.alloc(8);
  clusterBytes.writeBigUInt64BE(clusterId);
  await db.batch([
    { type: 'put', key: metaKey.memberId, value: memberBytes },
    { type: 'put', key: metaKey.clusterId, value: clusterBytes },
  ], { sync: true });
  return joinedFrom === undefined ? { memberId, clusterId } : { memberId, clusterId, joinedFrom };
}

async function hasMemberRecords(db: SealedDatabase): Promise<boolean> {
  for await (const key of db.keys({ gte: Buffer.of(prefix.member), lt: prefixEnd(prefix.member) })) {
    if (key.length > 0) return true;
  }
  return false;
}

/** How long a joining member keeps asking the members of `--initial-cluster` about the cluster. */
const joinDeadlineMs = 30_000;

/** Asks the other members of `--initial-cluster`, in turn, until one answers with a well-formed view. */
async function learnCluster(options: MemberOptions): Promise<ClusterView> {
  const own = new Set(options.peerUrls);
  const urls = options.initialCluster.flatMap((member) => member.peerUrls).filter((url) => !own.has(url));
  if (urls.length === 0) throw new Error('--initial-cluster-state existing: --initial-cluster names no other member to join');
  const deadline = Date.now() + joinDeadlineMs;
  const problems = new Map<string, string>();
  for (;;) {
    for (const url of urls) {
      try {
        const view = await fetchCluster(url, options.peerClientCredentials);
        if (/^[0-9a-f]{1,16}$/.test(view.clusterId) && view.members.every((member) => /^[0-9a-f]{1,16}$/.test(member.id))) {
          options.logger.info({ peer: url, clusterId: view.clusterId }, 'learned the cluster to join');
          return view;
        }
        problems.set(url, 'malformed answer');
      } catch (error) {
        problems.set(url, error instanceof Error ? error.message : String(error));
      }
    }
    if (Date.now() > deadline) {
      throw new Error(`cannot learn the cluster to join from ${[...problems].map(([url, problem]) => `${url} (${problem})`).join(', ')}`);
    }
    await new Promise((resolve) => setTimeout(resolve, 500));
  }
}

