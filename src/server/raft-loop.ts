/**
 * Drives the pure Raft core for one member: ticks on a timer, steps incoming messages, and handles
 * each Ready in the order Raft requires — persist (fsync), then send, then apply, then advance.
 * Proposals arriving while an fsync is in flight share the next one (group commit).
 *
 * Owns: timing and sequencing. Never: the meaning of entries (the member applies them).
 */
import { randomBytes } from 'node:crypto';
import { RampartError } from '../errors.js';
import { instruments } from '../instruments.js';
import type { RaftNode } from '../raft/raft.js';
import type { ConfigurationChange, Entry, Message, NodeId, Ready, Snapshot, SoftState } from '../raft/types.js';
import type { Consensus } from './consensus.js';

export interface RaftLoopHost {
  /** Makes the Ready's hard state, entries and snapshot durable (one fsync). */
  persist(ready: Ready): Promise<void>;
  send(messages: readonly Message[]): void;
  /** Replaces the state machine with a snapshot that `persist` already wrote. */
  installSnapshot(snapshot: Snapshot): Promise<void>;
  applyEntries(entries: readonly Entry[]): Promise<void>;
  onSoftState(state: SoftState, previous: SoftState): void;
  onFatal(error: unknown): void;
}

interface PendingRead {
  readonly resolve: () => void;
  readonly reject: (error: unknown) => void;
  readonly timer: NodeJS.Timeout;
  index?: number;
}

export class RaftLoop implements Consensus {
  private running = false;
  private closed = false;
  private idle: Promise<void> = Promise.resolve();
  private ticker: NodeJS.Timeout | undefined;
  private softState: SoftState = { leader: '', role: 'follower' };
  private readonly reads = new Map<string, PendingRead>();
  private readonly readContextPrefix = randomBytes(6).toString('hex');
  private readSequence = 0;

  constructor(
    readonly node: RaftNode,
    private readonly host: RaftLoopHost,
    private readonly tickMs: number,
    private readonly requestTimeoutMs: number,
  ) {}

  start(): void {
    this.ticker = setInterval(() => {
      this.node.tick();
      this.sendUrgent();
      this.kick();
    }, this.tickMs);
    this.kick();
  }

  get term(): number {
    return this.node.term;
  }

  get leaderId(): bigint {
    return this.node.leader === '' ? 0n : BigInt(`0x${this.node.leader}`);
  }

  get leader(): NodeId {
    return this.node.leader;
  }

  get isLeader(): boolean {
    return this.node.role === 'leader';
  }

  get lastIndex(): number {
    return this.node.lastIndex;
  }

  step(message: Message): void {
    if (this.closed) return;
    this.node.step(message);
    this.sendUrgent();
    this.kick();
  }

  /**
   * Heartbeats, their responses, a leader's appends and forwarded requests go out now, not after
   * the Ready being persisted or applied (see RaftNode.takeUrgentMessages): a long fsync or a
   * large apply must not look like a dead leader or a lost quorum to the other members, and
   * followers persist the next entries while this member still applies the previous ones.
   */
  private sendUrgent(): void {
    const urgent = this.node.takeUrgentMessages();
    if (urgent.length > 0) this.host.send(urgent);
  }

  propose(data: Buffer): void {
    if (this.closed) throw new RampartError('Stopped');
    if (!this.node.propose(data)) throw new RampartError('NoLeader');
    this.sendUrgent();
    this.kick();
  }

  proposeConfigurationChange(change: ConfigurationChange): void {
    if (this.closed) throw new RampartError('Stopped');
    if (!this.node.proposeConfigurationChange(change)) {
      throw new RampartError(this.node.leader === '' ? 'NoLeader' : 'InvalidArgument', 'configuration change refused');
    }
    this.kick();
  }

  transferLeadership(target: NodeId): boolean {
    const accepted = this.node.transferLeadership(target);
    this.sendUrgent();
    this.kick();
    return accepted;
  }

  /** ReadIndex: resolves once this member has applied everything committed when the read began. */
  readBarrier(): Promise<void> {
    if (this.closed) return Promise.reject(new RampartError('Stopped'));
    const context = `${this.readContextPrefix}:${++this.readSequence}`;
    return new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.reads.delete(context);
        reject(new RampartError('Timeout'));
      }, this.requestTimeoutMs);
      this.reads.set(context, { resolve, reject, timer });
      if (!this.node.readIndex(context)) {
        clearTimeout(timer);
        this.reads.delete(context);
        reject(new RampartError('NoLeader'));
        return;
      }
      this.sendUrgent();
      this.kick();
    });
  }

  /** Resolves once every Ready pending now has been handled (persisted, applied, advanced). */
  async settled(): Promise<void> {
    this.kick();
    while (this.running) await this.idle;
  }

  /** Processes Ready batches until there are none; never two at once. */
  kick(): void {
    if (this.running || this.closed) return;
    this.running = true;
    this.idle = new Promise((resolve) => setImmediate(() => void this.processReadies().then(resolve, resolve)));
  }

  private async processReadies(): Promise<void> {
    try {
      while (!this.closed && this.node.hasReady()) {
        const ready = this.node.ready();
        const persistStarted = performance.now();
        if (ready.softState.role === 'leader') {
          // Overlap the leader's fsync with the followers' (see Ready).
          this.host.send(ready.messages);
          await this.host.persist(ready);
        } else {
          await this.host.persist(ready);
          this.host.send(ready.messages);
        }
        if (ready.entries.length > 0) instruments.writeStageSeconds.recordSince(persistStarted, 'persist');
        if (ready.snapshot !== undefined) await this.host.installSnapshot(ready.snapshot);
        if (ready.committedEntries.length > 0) await this.host.applyEntries(ready.committedEntries);
        for (const state of ready.readStates) {
          const read = this.reads.get(state.context);
          if (read !== undefined) read.index = state.index;
        }
        this.node.advance(ready);
        this.releaseReads();
        if (ready.softState.leader !== this.softState.leader || ready.softState.role !== this.softState.role) {
          const previous = this.softState;
          this.softState = ready.softState;
          if (previous.leader !== ready.softState.leader) this.failReads(new RampartError('LeaderChanged'));
          this.host.onSoftState(ready.softState, previous);
        }
      }
    } catch (error) {
      // A failed fsync or apply leaves the member in an unknown state: stop rather than guess.
      this.host.onFatal(error);
    } finally {
      this.running = false;
    }
    if (!this.closed && this.node.hasReady()) this.kick();
  }

  private releaseReads(): void {
    const applied = this.node.appliedIndex;
    for (const [context, read] of this.reads) {
      if (read.index !== undefined && read.index <= applied) {
        clearTimeout(read.timer);
        this.reads.delete(context);
        read.resolve();
      }
    }
  }

  private failReads(error: RampartError): void {
    for (const [context, read] of this.reads) {
      if (read.index !== undefined) continue; // already confirmed; only waiting for apply
      clearTimeout(read.timer);
      this.reads.delete(context);
      read.reject(error);
    }
  }

  async close(): Promise<void> {
    this.closed = true;
    if (this.ticker !== undefined) clearInterval(this.ticker);
    this.failReads(new RampartError('Stopped'));
    for (const read of this.reads.values()) {
      clearTimeout(read.timer);
      read.reject(new RampartError('Stopped'));
    }
    this.reads.clear();
    await this.idle;
  }
}
