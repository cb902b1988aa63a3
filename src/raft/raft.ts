/**
 * A pure, deterministic Raft core: leader election with pre-vote and check-quorum, log
 * replication with flow control, snapshots, ReadIndex, leadership transfer, and single-member
 * configuration changes (one in flight at a time).
 *
 * Inputs: `tick()`, `step(message)`, `propose()`, `readIndex()`, `transferLeadership()`.
 * Output: `ready()` batches (see `Ready` for the order the caller must follow), then `advance()`.
 * Never: I/O, timers, the clock, or Math.random — time is ticks, randomness is `config.random`.
 * Roles differ only in which step function handles a message.
 */
import { assert } from '../errors.js';
import { RaftLog } from './log.js';
import { Progress } from './progress.js';
import { committedIndex, voteResult } from './quorum.js';
import {
  noNode,
  type ConfigurationChange,
  type ConfigurationState,
  type Entry,
  type EntryType,
  type HardState,
  type Message,
  type NodeId,
  type ReadState,
  type Ready,
  type Role,
  type Snapshot,
} from './types.js';

export interface RaftConfig {
  readonly id: NodeId;
  /** Ticks without hearing from a leader before an election; randomized in [electionTicks, 2×). */
  readonly electionTicks: number;
  readonly heartbeatTicks: number;
  /** Appends in flight to one follower in replicate state. */
  readonly inflightMessagesMax: number;
  readonly entriesPerAppendMax: number;
  /**
   * Entry data per append (and per forward of proposals), at least one entry each: under load one
   * append carries a whole turn's proposals, and a follower catching up gets the log in pieces
   * that stay far below the transport's message limit.
   */
  readonly appendBytesMax: number;
  /** Committed entries handed out per Ready. */
  readonly committedEntriesPerReadyMax: number;
  readonly preVote: boolean;
  readonly checkQuorum: boolean;
  /** Uniform in [0, 1); injected so runs are reproducible. */
  readonly random: () => number;
}

export const defaultRaftConfig = {
  electionTicks: 10,
  heartbeatTicks: 1,
  inflightMessagesMax: 256,
  entriesPerAppendMax: 256,
  appendBytesMax: 1024 * 1024,
  committedEntriesPerReadyMax: 4096,
  preVote: true,
  checkQuorum: true,
} as const;

export interface RaftRestore {
  readonly hardState: HardState;
  /** The latest snapshot, if the log was ever compacted: what a far-behind follower is sent. */
  readonly snapshot: Snapshot | undefined;
  /** Index and term of the entry just before `entries` (0, 0 for a log never compacted). */
  readonly logStart?: { readonly index: number; readonly term: number };
  /** Persisted entries after `logStart`. */
  readonly entries: readonly Entry[];
  /** Membership as of `applied`. */
  readonly configuration: ConfigurationState;
  /** The state machine has applied up to here already. */
  readonly applied: number;
}

interface PendingRead {
  readonly context: string;
  readonly index: number;
  readonly requester: NodeId;
  readonly acks: Set<NodeId>;
}

export class RaftNode {
  readonly id: NodeId;
  private termValue: number;
  private vote: NodeId;
  private roleValue: Role = 'follower';
  private leaderValue: NodeId = noNode;
  private readonly log: RaftLog;
  private voters: NodeId[];
  private learners: NodeId[];
  private progress = new Map<NodeId, Progress>();
  private votes = new Map<NodeId, boolean>();
  private electionElapsed = 0;
  private heartbeatElapsed = 0;
  private randomizedElectionTicks = 0;
  private transferee: NodeId = noNode;
  private pendingConfigurationIndex = 0;
  private pendingReads: PendingRead[] = [];
  /** Reads asked of a new leader before it has committed an entry of its term. */
  private deferredReads: { context: string; requester: NodeId }[] = [];
  private messages: Message[] = [];
  /**
   * Followers owed an append (new entries, a new commit index, a probe): sent when messages are
   * next taken (`flushAppends`), so the proposals and acknowledgements of one event-loop turn share
   * one append per follower instead of one each.
   */
  private appendsOwed = new Set<NodeId>();
  /**
   * Read requests were asked that no heartbeat confirms yet: one heartbeat, carrying the latest
   * one's context, is sent when messages are next taken (`flushAppends`). The requests of one
   * event-loop turn (this member's own and those followers forwarded) share one round of
   * heartbeats and answers instead of one round each; each was asked before that heartbeat went
   * out, so a quorum's answers to it confirm every one of them (`acknowledgeRead`).
   */
  private readHeartbeatOwed = false;
  /**
   * Followers owed the new commit index only (see `broadcastCommit`): sent with `appendsOwed`, as
   * an append that asks for no answer when it carries no entries.
   */
  private commitsOwed = new Set<NodeId>();
  private readStates: ReadState[] = [];
  private latestSnapshot: Snapshot | undefined;
  private snapshotToPersist: Snapshot | undefined;
  private lastHardState: HardState;

  constructor(
    private readonly config: RaftConfig,
    restore: RaftRestore,
  ) {
    this.id = config.id;
    this.termValue = restore.hardState.term;
    this.vote = restore.hardState.vote;
    const boundary = restore.logStart ?? restore.snapshot?.metadata ?? { index: 0, term: 0 };
    this.log = new RaftLog(boundary, restore.entries, restore.hardState.commit);
    this.log.applied = Math.max(restore.applied, boundary.index);
    assert(this.log.applied <= this.log.committed, 'applied beyond commit');
    this.latestSnapshot = restore.snapshot;
    this.voters = [...restore.configuration.voters];
    this.learners = [...restore.configuration.learners];
    this.lastHardState = restore.hardState;
    this.becomeFollower(this.termValue, noNode);
  }

  // ---- state ----

  get term(): number {
    return this.termValue;
  }

  get role(): Role {
    return this.roleValue;
  }

  get leader(): NodeId {
    return this.leaderValue;
  }

  get commitIndex(): number {
    return this.log.committed;
  }

  get appliedIndex(): number {
    return this.log.applied;
  }

  get lastIndex(): number {
    return this.log.lastIndex;
  }

  get firstIndex(): number {
    return this.log.firstIndex;
  }

  get configuration(): ConfigurationState {
    return { voters: [...this.voters], learners: [...this.learners] };
  }

  get leadershipTransferee(): NodeId {
    return this.transferee;
  }

  /** The leader's view of each peer, for status and tests. */
  progressOf(id: NodeId): { match: number; next: number; state: string } | undefined {
    const progress = this.progress.get(id);
    return progress === undefined ? undefined : { match: progress.match, next: progress.next, state: progress.state };
  }

  entryTerm(index: number): number | undefined {
    return this.log.term(index);
  }

  /** Entries in [from, to] still in the log (not compacted). */
  entries(from: number, to: number): Entry[] | undefined {
    return this.log.slice(from, Math.min(to, this.log.lastIndex));
  }

  private isVoter(id: NodeId): boolean {
    return this.voters.includes(id);
  }

  private peers(): NodeId[] {
    return [...this.voters, ...this.learners].filter((id) => id !== this.id);
  }

  // ---- inputs ----

  tick(): void {
    if (this.roleValue === 'leader') {
      this.tickLeader();
    } else {
      this.electionElapsed += 1;
      if (this.electionElapsed >= this.randomizedElectionTicks && this.isVoter(this.id)) {
        this.electionElapsed = 0;
        this.campaign(this.config.preVote ? 'preVote' : 'vote', false);
      }
    }
  }

  private tickLeader(): void {
    for (const progress of this.progress.values()) {
      if (progress.state === 'snapshot' && ++progress.snapshotWaitTicks > this.config.electionTicks * 2) {
        // The snapshot (or its acknowledgement) was lost: probe from the match point again, which
        // resends the snapshot if the follower still needs it.
        progress.pendingSnapshot = 0;
        progress.becomeProbe();
      }
    }
    this.heartbeatElapsed += 1;
    this.electionElapsed += 1;
    if (this.electionElapsed >= this.config.electionTicks) {
      this.electionElapsed = 0;
      if (this.config.checkQuorum && !this.quorumActive()) {
        // Cut off from a majority: stop acting as leader so clients go elsewhere.
        this.becomeFollower(this.termValue, noNode);
        return;
      }
      for (const [id, progress] of this.progress) {
        if (id !== this.id) progress.recentActive = false;
      }
      if (this.transferee !== noNode) {
        this.transferee = noNode;
      }
    }
    if (this.heartbeatElapsed >= this.config.heartbeatTicks) {
      this.heartbeatElapsed = 0;
      this.broadcastHeartbeat('');
    }
  }

  private quorumActive(): boolean {
    const active = this.voters.filter((id) => id === this.id || this.progress.get(id)?.recentActive === true);
    return active.length >= Math.floor(this.voters.length / 2) + 1;
  }

  /** Proposes data for the log. False when it cannot be accepted now (no leader, transfer in progress). */
  propose(data: Buffer): boolean {
    return this.proposeEntries([{ type: 'normal', data }]);
  }

  /**
   * Proposes one membership change. False when another change is still being applied, or the
   * change is not valid for the current configuration.
   */
  proposeConfigurationChange(change: ConfigurationChange): boolean {
    const entry = { type: 'configurationChange' as const, data: Buffer.from(JSON.stringify(change)) };
    if (this.roleValue === 'leader') {
      if (!this.acceptsConfigurationChange(change)) return false;
      return this.proposeEntries([entry]);
    }
    // A follower forwards; the leader decides (the caller learns the outcome when it is applied).
    return this.proposeEntries([entry]);
  }

  private acceptsConfigurationChange(change: ConfigurationChange): boolean {
    return this.pendingConfigurationIndex <= this.log.applied && this.validChange(change);
  }

  private validChange(change: ConfigurationChange): boolean {
    const voter = this.voters.includes(change.nodeId);
    const learner = this.learners.includes(change.nodeId);
    switch (change.type) {
      case 'addVoter':
      case 'addLearner':
        return !voter && !learner;
      case 'promoteLearner':
        return learner;
      case 'removeNode':
        return (voter && this.voters.length > 1) || learner;
    }
  }

  private proposeEntries(entries: readonly { type: EntryType; data: Buffer }[]): boolean {
    if (this.roleValue === 'leader') {
      if (this.transferee !== noNode) return false;
      this.appendAsLeader(entries);
      this.broadcastAppend();
      return true;
    }
    if (this.leaderValue === noNode || this.roleValue !== 'follower') return false;
    this.forward(this.leaderValue, entries);
    return true;
  }

  /**
   * Forwards proposals to the leader: added to a forward to it still waiting here (one message
   * carries the proposals of one event-loop turn), in the order they were made.
   */
  private forward(to: NodeId, entries: readonly { type: EntryType; data: Buffer }[]): void {
    for (let position = this.messages.length - 1; position >= 0; position--) {
      const queued = this.messages[position];
      if (queued?.type === 'propose' && queued.to === to) {
        if (dataBytes(queued.entries) + dataBytes(entries) > this.config.appendBytesMax) break;
        this.messages[position] = { ...queued, entries: [...queued.entries, ...entries] };
        return;
      }
    }
    this.send({ type: 'propose', to, term: 0, entries });
  }

  /** Asks for a read index; the answer comes as a ReadState with the same context. */
  readIndex(context: string): boolean {
    if (this.roleValue === 'leader') {
      this.handleReadIndex(context, this.id);
      return true;
    }
    if (this.leaderValue === noNode || this.roleValue !== 'follower') return false;
    this.send({ type: 'readIndex', to: this.leaderValue, term: 0, context });
    return true;
  }

  /** Hands leadership to `target` once its log is caught up. */
  transferLeadership(target: NodeId): boolean {
    if (this.roleValue !== 'leader' || target === this.id || !this.isVoter(target)) return false;
    this.transferee = target;
    this.electionElapsed = 0;
    const progress = this.progress.get(target);
    if (progress !== undefined && progress.match === this.log.lastIndex) {
      this.send({ type: 'timeoutNow', to: target, term: this.termValue });
    } else {
      this.sendAppend(target);
    }
    return true;
  }

  /** The transport could not reach a peer: probe it again from its match point. */
  reportUnreachable(id: NodeId): void {
    const progress = this.progress.get(id);
    if (this.roleValue === 'leader' && progress !== undefined && progress.state === 'replicate') {
      progress.becomeProbe();
    }
  }

  /** Called by the caller when it applies a configuration-change entry. */
  applyConfigurationChange(change: ConfigurationChange): ConfigurationState {
    const without = (list: NodeId[]): NodeId[] => list.filter((id) => id !== change.nodeId);
    switch (change.type) {
      case 'addVoter':
        if (!this.voters.includes(change.nodeId)) this.voters = [...without(this.voters), change.nodeId];
        this.learners = without(this.learners);
        break;
      case 'addLearner':
        if (!this.voters.includes(change.nodeId) && !this.learners.includes(change.nodeId)) this.learners = [...this.learners, change.nodeId];
        break;
      case 'promoteLearner':
        if (this.learners.includes(change.nodeId)) {
          this.learners = without(this.learners);
          this.voters = [...this.voters, change.nodeId];
        }
        break;
      case 'removeNode':
        this.voters = without(this.voters);
        this.learners = without(this.learners);
        break;
    }
    if (this.roleValue === 'leader') {
      for (const id of [...this.voters, ...this.learners]) {
        if (!this.progress.has(id)) {
          const progress = new Progress(this.log.lastIndex + 1, this.learners.includes(id), this.config.inflightMessagesMax);
          progress.recentActive = true;
          this.progress.set(id, progress);
        }
      }
      for (const id of [...this.progress.keys()]) {
        if (!this.voters.includes(id) && !this.learners.includes(id)) this.progress.delete(id);
      }
      if (change.type === 'removeNode' && change.nodeId === this.id) {
        this.becomeFollower(this.termValue, noNode);
      } else if (this.maybeCommit()) {
        // Fewer voters can mean a smaller quorum that already holds more entries.
        this.broadcastAppend();
      }
      if (change.type === 'removeNode' && change.nodeId === this.transferee) this.transferee = noNode;
    }
    return this.configuration;
  }

  /**
   * The caller took a snapshot of its state at `snapshot.metadata.index` (≤ committed). Entries up
   * to `compactIndex` (default: the snapshot's index) are dropped; keeping some lets slightly
   * lagging followers catch up from the log instead of a snapshot. The caller may snapshot while it
   * applies a Ready's entries, before `advance` tells Raft they are applied: entries Raft does not
   * yet know applied stay (a later compaction drops them), whatever the batch's length.
   */
  compact(snapshot: Snapshot, compactIndex = snapshot.metadata.index): void {
    assert(compactIndex <= snapshot.metadata.index, 'cannot compact past the snapshot');
    assert(snapshot.metadata.index <= this.log.committed, 'cannot snapshot uncommitted entries');
    if (this.latestSnapshot === undefined || snapshot.metadata.index > this.latestSnapshot.metadata.index) {
      this.latestSnapshot = snapshot;
    }
    const through = Math.min(compactIndex, this.log.applied);
    if (through > this.log.snapshotBoundary.index) this.log.compact(through);
  }

  /** Index and term of the entry just before the first one in the log. */
  get logStart(): { index: number; term: number } {
    return this.log.snapshotBoundary;
  }

  /** Starts an election now (a lone voter at start need not wait out a timeout). */
  campaignNow(): void {
    if (this.roleValue !== 'leader' && this.isVoter(this.id)) this.campaign(this.config.preVote ? 'preVote' : 'vote', false);
  }

  // ---- messages ----

  step(message: Message): void {
    if (message.type === 'propose' || message.type === 'readIndex') {
      // Forwarded requests carry no term; only a leader acts on them.
      this.stepForwarded(message);
      return;
    }
    if (message.term > this.termValue) {
      if (message.type === 'preVote' || message.type === 'vote') {
        const inLease = this.config.checkQuorum && this.leaderValue !== noNode && this.electionElapsed < this.config.electionTicks;
        if (inLease && !message.transfer) {
          // A leader is alive as far as we know: a disruptive candidate gets no answer.
          return;
        }
      }
      if (message.type === 'preVote' || (message.type === 'preVoteResponse' && !message.reject)) {
        // Pre-vote traffic never changes terms.
      } else if (message.type === 'append' || message.type === 'heartbeat' || message.type === 'snapshot') {
        this.becomeFollower(message.term, message.from);
      } else {
        this.becomeFollower(message.term, noNode);
      }
    } else if (message.term < this.termValue) {
      if ((this.config.checkQuorum || this.config.preVote) && (message.type === 'append' || message.type === 'heartbeat')) {
        // Tell a stale leader about the newer term so it steps down.
        this.send({ type: 'appendResponse', to: message.from, term: this.termValue, reject: false, index: 0, rejectHint: 0 });
      } else if (message.type === 'preVote') {
        this.send({ type: 'preVoteResponse', to: message.from, term: this.termValue, reject: true });
      }
      return;
    }

    if (message.type === 'preVote' || message.type === 'vote') {
      this.handleVoteRequest(message);
      return;
    }
    switch (this.roleValue) {
      case 'leader':
        this.stepLeader(message);
        break;
      case 'candidate':
      case 'preCandidate':
        this.stepCandidate(message);
        break;
      case 'follower':
        this.stepFollower(message);
        break;
    }
  }

  private stepForwarded(message: Extract<Message, { type: 'propose' | 'readIndex' }>): void {
    if (this.roleValue !== 'leader') {
      return;
    }
    if (message.type === 'propose') {
      if (this.transferee !== noNode) return;
      const entries = message.entries.filter((entry) => {
        if (entry.type === 'normal') return true;
        const change = parseConfigurationChange(entry.data);
        return change !== undefined && this.acceptsConfigurationChange(change);
      });
      if (entries.length === 0) return;
      this.appendAsLeader(entries);
      this.broadcastAppend();
    } else {
      this.handleReadIndex(message.context, message.from);
    }
  }

  private handleVoteRequest(message: Extract<Message, { type: 'preVote' | 'vote' }>): void {
    const responseType = message.type === 'preVote' ? 'preVoteResponse' : 'voteResponse';
    const canVote =
      this.vote === message.from ||
      (this.vote === noNode && this.leaderValue === noNode) ||
      (message.type === 'preVote' && message.term > this.termValue);
    if (canVote && this.log.isUpToDate(message.lastIndex, message.lastTerm)) {
      this.send({ type: responseType, to: message.from, term: message.term, reject: false });
      if (message.type === 'vote') {
        this.electionElapsed = 0;
        this.vote = message.from;
      }
    } else {
      this.send({ type: responseType, to: message.from, term: this.termValue, reject: true });
    }
  }

  private stepFollower(message: Message): void {
    switch (message.type) {
      case 'append':
        this.electionElapsed = 0;
        this.leaderValue = message.from;
        this.handleAppend(message);
        break;
      case 'heartbeat':
        this.electionElapsed = 0;
        this.leaderValue = message.from;
        this.log.commitTo(Math.min(message.commit, this.log.lastIndex));
        this.send({ type: 'heartbeatResponse', to: message.from, term: this.termValue, context: message.context });
        break;
      case 'snapshot':
        this.electionElapsed = 0;
        this.leaderValue = message.from;
        this.handleSnapshot(message.snapshot, message.from);
        break;
      case 'timeoutNow':
        if (this.isVoter(this.id)) {
          // Leadership transfer: campaign at once, skipping pre-vote.
          this.campaign('vote', true);
        }
        break;
      case 'readIndexResponse':
        this.readStates.push({ context: message.context, index: message.index });
        break;
      default:
        break;
    }
  }

  private stepCandidate(message: Message): void {
    switch (message.type) {
      case 'append':
      case 'heartbeat':
      case 'snapshot':
        this.becomeFollower(message.term, message.from);
        this.stepFollower(message);
        break;
      case 'preVoteResponse':
      case 'voteResponse': {
        const expected = this.roleValue === 'preCandidate' ? 'preVoteResponse' : 'voteResponse';
        if (message.type !== expected) return;
        this.votes.set(message.from, !message.reject);
        const result = voteResult(this.voters, this.votes);
        if (result === 'won') {
          if (this.roleValue === 'preCandidate') this.campaign('vote', false);
          else this.becomeLeader();
        } else if (result === 'lost') {
          this.becomeFollower(this.termValue, noNode);
        }
        break;
      }
      default:
        break;
    }
  }

  private stepLeader(message: Message): void {
    const progress = this.progress.get(message.from);
    if (progress === undefined) return;
    switch (message.type) {
      case 'appendResponse': {
        progress.recentActive = true;
        if (message.reject) {
          if (progress.maybeDecrease(message.index, message.rejectHint)) {
            if (progress.state === 'replicate') progress.becomeProbe();
            this.appendsOwed.add(message.from);
          }
          return;
        }
        const wasPaused = progress.isPaused();
        if (progress.maybeUpdate(message.index)) {
          if (progress.state === 'probe') progress.becomeReplicate();
          else if (progress.state === 'snapshot' && progress.match >= progress.pendingSnapshot) progress.becomeProbe();
          if (this.maybeCommit()) {
            this.broadcastCommit();
          } else if (wasPaused || progress.next <= this.log.lastIndex) {
            this.appendsOwed.add(message.from);
          }
          if (message.from === this.transferee && progress.match === this.log.lastIndex) {
            this.send({ type: 'timeoutNow', to: message.from, term: this.termValue });
          }
        }
        return;
      }
      case 'heartbeatResponse': {
        progress.recentActive = true;
        progress.heardFrom();
        // Entries not sent yet go now. Entries sent and not acknowledged are probed again (an empty
        // append asking for an answer: a follower missing them rejects it) only once the match
        // point stood still between two answers to periodic heartbeats, a heartbeat interval
        // apart: until then their acknowledgement is most likely on its way, and the probe and its
        // answer would be two messages for nothing. Answers to a read's confirmation heartbeats
        // (a context) come at any moment and do not count.
        let stalled = false;
        if (message.context === '') {
          stalled = progress.match === progress.matchAtHeartbeat;
          progress.matchAtHeartbeat = progress.match;
        }
        if (progress.match < this.log.lastIndex && (progress.state !== 'replicate' || progress.next <= this.log.lastIndex || stalled)) this.appendsOwed.add(message.from);
        if (message.context !== '') this.acknowledgeRead(message.context, message.from);
        return;
      }
      default:
        return;
    }
  }

  // ---- follower handling ----

  private handleAppend(message: Extract<Message, { type: 'append' }>): void {
    if (message.prevIndex < this.log.committed) {
      // Already have everything up to our commit index; acknowledge that (unless asked for no answer).
      if (message.commitOnly !== true) this.acknowledgeAppend(message.from, this.log.committed);
      return;
    }
    const lastNew = this.log.tryAppend(message.prevIndex, message.prevTerm, message.entries);
    if (lastNew === undefined) {
      // Answered even when asked for no answer: the leader's view of this log is wrong.
      this.send({ type: 'appendResponse', to: message.from, term: this.termValue, reject: true, index: message.prevIndex, rejectHint: this.log.lastIndex });
      return;
    }
    this.log.commitTo(Math.min(message.commit, lastNew));
    if (message.commitOnly !== true) this.acknowledgeAppend(message.from, lastNew);
  }

  /**
   * Acknowledges entries up to `index` to the leader. Acknowledgements are cumulative and go out
   * together after this Ready's fsync: one still waiting here to the same leader in the same term
   * is raised to `index` instead of queueing another (appends arriving during an fsync cost the
   * leader one answer, not one each).
   */
  private acknowledgeAppend(to: NodeId, index: number): void {
    for (let position = this.messages.length - 1; position >= 0; position--) {
      const queued = this.messages[position];
      if (queued?.type !== 'appendResponse') continue;
      if (!queued.reject && queued.to === to && queued.term === this.termValue) {
        this.messages[position] = { ...queued, index: Math.max(queued.index, index) };
        return;
      }
      break;
    }
    this.send({ type: 'appendResponse', to, term: this.termValue, reject: false, index, rejectHint: 0 });
  }

  private handleSnapshot(snapshot: Snapshot, from: NodeId): void {
    const { index, term } = snapshot.metadata;
    if (index <= this.log.committed) {
      this.send({ type: 'appendResponse', to: from, term: this.termValue, reject: false, index: this.log.committed, rejectHint: 0 });
      return;
    }
    if (this.log.matchTerm(index, term)) {
      // Our log already holds the snapshot's last entry: just move the commit point.
      this.log.commitTo(index);
    } else {
      this.log.restore(snapshot.metadata);
      this.voters = [...snapshot.metadata.configuration.voters];
      this.learners = [...snapshot.metadata.configuration.learners];
      this.snapshotToPersist = snapshot;
      this.latestSnapshot = snapshot;
    }
    this.send({ type: 'appendResponse', to: from, term: this.termValue, reject: false, index: this.log.lastIndex, rejectHint: 0 });
  }

  // ---- leader work ----

  private appendAsLeader(entries: readonly { type: EntryType; data: Buffer }[]): void {
    let index = this.log.lastIndex;
    const appended = entries.map((entry) => ({ index: ++index, term: this.termValue, type: entry.type, data: entry.data }));
    for (const entry of appended) {
      if (entry.type === 'configurationChange') this.pendingConfigurationIndex = entry.index;
    }
    this.log.append(appended);
    // The leader's own copy counts toward commit only once persisted (see `advance`), so it may
    // send these entries to followers before its own fsync finishes.
    this.maybeCommit();
  }

  /** Advances the commit index to what a majority holds, counting only entries of this term (§5.4.2). */
  private maybeCommit(): boolean {
    const index = committedIndex(this.voters, (id) => this.progress.get(id)?.match ?? 0);
    if (index > this.log.committed && this.log.term(index) === this.termValue) {
      this.log.commitTo(index);
      this.releaseDeferredReads();
      return true;
    }
    return false;
  }

  /** Owes every follower an append (see `appendsOwed`). */
  private broadcastAppend(): void {
    for (const id of this.peers()) this.appendsOwed.add(id);
  }

  /** Owes every follower the commit index, which just advanced (see `commitsOwed`). */
  private broadcastCommit(): void {
    for (const id of this.peers()) this.commitsOwed.add(id);
  }

  /** Sends the read heartbeat owed, and the appends owed, each with everything the follower's progress lets through now. */
  private flushAppends(): void {
    if (this.readHeartbeatOwed) {
      this.readHeartbeatOwed = false;
      const latest = this.pendingReads[this.pendingReads.length - 1];
      if (this.roleValue === 'leader' && latest !== undefined) this.broadcastHeartbeat(latest.context);
    }
    if (this.appendsOwed.size === 0 && this.commitsOwed.size === 0) return;
    const owed = [...this.appendsOwed];
    const commits = [...this.commitsOwed].filter((id) => !this.appendsOwed.has(id));
    this.appendsOwed.clear();
    this.commitsOwed.clear();
    if (this.roleValue !== 'leader') return;
    for (const id of owed) this.sendAppend(id, false);
    for (const id of commits) this.sendAppend(id, true);
  }

  private broadcastHeartbeat(context: string): void {
    for (const id of this.peers()) {
      const progress = this.progress.get(id);
      const commit = Math.min(progress?.match ?? 0, this.log.committed);
      this.send({ type: 'heartbeat', to: id, term: this.termValue, commit, context });
    }
  }

  /**
   * Sends `to` an append from its progress. `commitUpdate`: it is owed only the new commit index.
   * When such an append carries no entries to a follower in replicate state, it asks for no answer
   * (`commitOnly`): the follower acknowledges the entries it was sent when they arrive, and an
   * answer to an empty append would repeat that (half the messages a write cost below saturation
   * were these appends and their answers). A lost acknowledgement is recovered as any lost
   * message: the heartbeat answers of a follower whose match point stalls bring an append that
   * asks for an answer (see the heartbeatResponse case of `stepLeader`).
   */
  private sendAppend(to: NodeId, commitUpdate = false): void {
    const progress = this.progress.get(to);
    if (progress === undefined || progress.isPaused()) return;
    const prevIndex = progress.next - 1;
    const prevTerm = this.log.term(prevIndex);
    const last = Math.min(this.log.lastIndex, prevIndex + this.config.entriesPerAppendMax);
    const entries = prevTerm === undefined ? undefined : withinBytes(this.log.slice(progress.next, last), this.config.appendBytesMax);
    if (prevTerm === undefined || entries === undefined) {
      // What the follower needs is compacted away: send the snapshot instead.
      const snapshot = this.latestSnapshot;
      assert(snapshot !== undefined, 'log compacted without a snapshot');
      progress.becomeSnapshot(snapshot.metadata.index);
      this.send({ type: 'snapshot', to, term: this.termValue, snapshot });
      return;
    }
    if (commitUpdate && entries.length === 0 && progress.state === 'replicate') {
      this.send({ type: 'append', to, term: this.termValue, prevIndex, prevTerm, entries, commit: this.log.committed, commitOnly: true });
      return;
    }
    this.send({ type: 'append', to, term: this.termValue, prevIndex, prevTerm, entries, commit: this.log.committed });
    if (entries.length > 0) {
      progress.sentEntries(entries[entries.length - 1]?.index ?? prevIndex);
    } else if (progress.state === 'probe') {
      progress.probeSent = true;
    }
  }

  private handleReadIndex(context: string, requester: NodeId): void {
    if (this.log.term(this.log.committed) !== this.termValue) {
      // Until an entry of this term commits, our commit index may be behind the true one.
      this.deferredReads.push({ context, requester });
      return;
    }
    if (this.voters.length === 1) {
      this.answerRead({ context, index: this.log.committed, requester, acks: new Set() });
      return;
    }
    this.pendingReads.push({ context, index: this.log.committed, requester, acks: new Set([this.id]) });
    this.readHeartbeatOwed = true;
  }

  private releaseDeferredReads(): void {
    if (this.deferredReads.length === 0 || this.log.term(this.log.committed) !== this.termValue) return;
    const deferred = this.deferredReads;
    this.deferredReads = [];
    for (const read of deferred) this.handleReadIndex(read.context, read.requester);
  }

  private acknowledgeRead(context: string, from: NodeId): void {
    const position = this.pendingReads.findIndex((read) => read.context === context);
    const read = this.pendingReads[position];
    if (read === undefined || !this.isVoter(from)) return;
    read.acks.add(from);
    const granted = new Map([...read.acks].map((id) => [id, true] as const));
    if (voteResult(this.voters, granted) !== 'won') return;
    // A quorum confirmed leadership after this read (and every earlier one) was asked.
    const released = this.pendingReads.slice(0, position + 1);
    this.pendingReads = this.pendingReads.slice(position + 1);
    for (const done of released) this.answerRead(done);
  }

  private answerRead(read: PendingRead): void {
    if (read.requester === this.id) {
      this.readStates.push({ context: read.context, index: read.index });
    } else {
      this.send({ type: 'readIndexResponse', to: read.requester, term: this.termValue, context: read.context, index: read.index });
    }
  }

  // ---- role changes ----

  private resetTerm(term: number): void {
    if (this.termValue !== term) {
      this.termValue = term;
      this.vote = noNode;
    }
    this.leaderValue = noNode;
    this.electionElapsed = 0;
    this.heartbeatElapsed = 0;
    this.randomizedElectionTicks = this.config.electionTicks + Math.floor(this.config.random() * this.config.electionTicks);
    this.votes = new Map();
    this.transferee = noNode;
    this.pendingReads = [];
    this.readHeartbeatOwed = false;
    this.deferredReads = [];
    this.appendsOwed.clear();
    this.commitsOwed.clear();
  }

  private becomeFollower(term: number, leader: NodeId): void {
    this.resetTerm(term);
    this.roleValue = 'follower';
    this.leaderValue = leader;
    this.progress = new Map();
  }

  private campaign(kind: 'preVote' | 'vote', transfer: boolean): void {
    let term: number;
    if (kind === 'preVote') {
      // Ask without bumping our term: a partitioned node cannot disrupt the cluster on return.
      this.resetTerm(this.termValue);
      this.roleValue = 'preCandidate';
      term = this.termValue + 1;
    } else {
      this.resetTerm(this.termValue + 1);
      this.roleValue = 'candidate';
      this.vote = this.id;
      term = this.termValue;
    }
    this.votes.set(this.id, true);
    if (voteResult(this.voters, this.votes) === 'won') {
      if (kind === 'preVote') this.campaign('vote', transfer);
      else this.becomeLeader();
      return;
    }
    for (const id of this.voters) {
      if (id === this.id) continue;
      this.send({ type: kind, to: id, term, lastIndex: this.log.lastIndex, lastTerm: this.log.lastTerm, transfer });
    }
  }

  private becomeLeader(): void {
    assert(this.roleValue === 'candidate', 'only a candidate becomes leader');
    this.resetTerm(this.termValue);
    this.roleValue = 'leader';
    this.leaderValue = this.id;
    this.progress = new Map();
    for (const id of [...this.voters, ...this.learners]) {
      const progress = new Progress(this.log.lastIndex + 1, this.learners.includes(id), this.config.inflightMessagesMax);
      progress.recentActive = true;
      this.progress.set(id, progress);
    }
    this.progress.get(this.id)?.maybeUpdate(this.log.stableIndex);
    // Configuration changes wait until everything before this term is applied.
    this.pendingConfigurationIndex = this.log.lastIndex;
    // An empty entry of our term lets earlier entries commit (§5.4.2) and enables reads.
    this.appendAsLeader([{ type: 'normal', data: Buffer.alloc(0) }]);
    this.broadcastAppend();
  }

  private send(message: DistributiveOmit<Message, 'from'>): void {
    this.messages.push({ ...message, from: this.id } as Message);
  }

  /**
   * Removes and returns the pending messages that depend on nothing a Ready persists, which the
   * caller may send at once instead of after the next Ready's fsync and apply:
   * - a leader's appends and heartbeats: a leader may send entries before writing them itself
   *   (Raft thesis 10.2.1; its own copy counts toward commit only once persisted, see `advance`),
   *   and a heartbeat carries a commit index the follower already holds;
   * - heartbeat responses: they confirm the sender's current term and leader, which holds when
   *   sent whether or not the term is on disk yet (a vote, which must be, is never sent early);
   * - forwarded proposals and read requests, and read answers: they carry no persisted state.
   * So a member busy persisting or applying a large batch keeps the others informed within the
   * election timeout, and replication of the next batch overlaps applying the previous one.
   */
  takeUrgentMessages(): Message[] {
    this.flushAppends();
    if (!this.messages.some(isUrgent)) return [];
    const urgent = this.messages.filter(isUrgent);
    this.messages = this.messages.filter((message) => !isUrgent(message));
    return urgent;
  }

  /**
   * Removes and returns the read indexes confirmed so far, which the caller may act on at once
   * instead of after the next Ready's fsync and apply: a read state says a quorum acknowledged
   * this node's leadership after the read was asked, and the index it must apply before serving;
   * it depends on nothing a Ready persists. (Otherwise the Ready carries them.)
   */
  takeReadStates(): ReadState[] {
    const states = this.readStates;
    this.readStates = [];
    return states;
  }

  // ---- Ready ----

  private hardState(): HardState {
    return { term: this.termValue, vote: this.vote, commit: this.log.committed };
  }

  hasReady(): boolean {
    this.flushAppends();
    const hard = this.hardState();
    return (
      this.messages.length > 0 ||
      this.readStates.length > 0 ||
      this.snapshotToPersist !== undefined ||
      this.log.stableIndex < this.log.lastIndex ||
      this.log.committed > this.log.applied ||
      hard.term !== this.lastHardState.term ||
      hard.vote !== this.lastHardState.vote ||
      hard.commit !== this.lastHardState.commit
    );
  }

  ready(): Ready {
    this.flushAppends();
    const hard = this.hardState();
    const changed = hard.term !== this.lastHardState.term || hard.vote !== this.lastHardState.vote || hard.commit !== this.lastHardState.commit;
    const ready: Ready = {
      softState: { leader: this.leaderValue, role: this.roleValue },
      hardState: changed ? hard : undefined,
      snapshot: this.snapshotToPersist,
      entries: this.log.unstableEntries(),
      committedEntries: this.snapshotToPersist === undefined ? this.log.nextCommitted(this.config.committedEntriesPerReadyMax) : [],
      messages: this.messages,
      readStates: this.readStates,
    };
    this.messages = [];
    this.readStates = [];
    return ready;
  }

  /**
   * The caller made the Ready's entries durable (its persist finished) and may still be applying
   * its committed entries: a leader's own copy of them counts toward commit from now on, so the
   * commit index (and the appends telling followers about it, see `takeUrgentMessages`) need not
   * wait for that apply. `advance` does this too when not called before.
   */
  persisted(ready: Ready): void {
    const lastEntry = ready.entries[ready.entries.length - 1];
    // A later append may have replaced them (a follower's log truncated): then they are not ours to count.
    if (lastEntry === undefined || this.log.term(lastEntry.index) !== lastEntry.term) return;
    this.log.stableIndex = Math.max(this.log.stableIndex, lastEntry.index);
    if (this.roleValue === 'leader' && this.progress.get(this.id)?.maybeUpdate(this.log.stableIndex) === true && this.maybeCommit()) {
      this.broadcastCommit();
    }
  }

  advance(ready: Ready): void {
    if (ready.hardState !== undefined) this.lastHardState = ready.hardState;
    if (ready.snapshot !== undefined && ready.snapshot === this.snapshotToPersist) {
      this.snapshotToPersist = undefined;
    }
    this.persisted(ready);
    const lastApplied = ready.committedEntries[ready.committedEntries.length - 1];
    if (lastApplied !== undefined) {
      this.log.applied = Math.max(this.log.applied, lastApplied.index);
    }
  }
}

const urgentTypes: ReadonlySet<Message['type']> = new Set(['append', 'heartbeat', 'heartbeatResponse', 'propose', 'readIndex', 'readIndexResponse']);

function isUrgent(message: Message): boolean {
  return urgentTypes.has(message.type);
}

function dataBytes(entries: readonly { readonly data: Buffer }[]): number {
  let bytes = 0;
  for (const entry of entries) bytes += entry.data.length;
  return bytes;
}

/** The first entries whose data fits in `bytesMax`, at least one (an entry is never split). */
function withinBytes(entries: Entry[] | undefined, bytesMax: number): Entry[] | undefined {
  if (entries === undefined) return undefined;
  let bytes = 0;
  for (let count = 0; count < entries.length; count++) {
    bytes += entries[count]?.data.length ?? 0;
    if (bytes > bytesMax && count > 0) return entries.slice(0, count);
  }
  return entries;
}

export function parseConfigurationChange(data: Buffer): ConfigurationChange | undefined {
  try {
    const parsed = JSON.parse(data.toString()) as Partial<ConfigurationChange>;
    const types = ['addVoter', 'addLearner', 'removeNode', 'promoteLearner'];
    if (typeof parsed.nodeId !== 'string' || typeof parsed.type !== 'string' || !types.includes(parsed.type)) return undefined;
    return { type: parsed.type, nodeId: parsed.nodeId, context: typeof parsed.context === 'string' ? parsed.context : '' };
  } catch {
    return undefined;
  }
}

type DistributiveOmit<T, K extends PropertyKey> = T extends unknown ? Omit<T, K> : never;
