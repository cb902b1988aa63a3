/**
 * Drives the pure Raft core for one member: ticks on a timer, steps incoming messages, and handles
 * each Ready in the order Raft requires — persist (fsync), then send, then apply, then advance.
 * Proposals arriving while an fsync is in flight share the next one (group commit). Committed
 * entries that an earlier Ready already made durable here are applied while this Ready's entries
 * are persisted (see `processReadies`).
 *
 * Owns: timing and sequencing. Never: the meaning of entries (the member applies them).
 */
import { randomBytes } from 'node:crypto';
import { RampartError } from '../errors.js';
import { instruments } from '../instruments.js';
import type { RaftNode } from '../raft/raft.js';
import type { ConfigurationChange, Entry, Message, NodeId, ReadState, Ready, Snapshot, SoftState } from '../raft/types.js';
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

interface ReadWaiter {
  /** Called with the read index. */
  readonly resolve: (index: number) => void;
  readonly reject: (error: unknown) => void;
  /** Answered once the quorum confirmed the leadership, without waiting to apply the index (see confirmLeadership). */
  readonly confirmationOnly: boolean;
  /** Answered, failed or timed out. A waiter can sit in two groups (see `readIndexRetryMs`): the first to settle it wins. */
  settled: boolean;
  /** A group holding it has its read index: it is answered once that index is applied, and no leader change fails it. */
  confirmed: boolean;
  /** When it times out (performance.now()). */
  readonly deadline: number;
}

/** Reads that share one ReadIndex request: all of them began before it was asked. */
interface ReadGroup {
  readonly context: string;
  readonly waiters: Set<ReadWaiter>;
  /** The read index, once the leader confirmed it. */
  index?: number;
}

/**
 * After this long without an answer, the next ReadIndex request is asked anyway, and the reads of
 * the one in flight join it: that request or its confirmation may be lost for good (a request a
 * follower forwarded, or the leader's heartbeats, dropped while a peer connection was cut), and
 * nothing else would ask for them again. They keep waiting for the first request too: under load
 * its answer may only be late, and a request abandoned for each later one would never be answered.
 */
const readIndexRetryMs = 500;

export class RaftLoop implements Consensus {
  private running = false;
  private closed = false;
  private idle: Promise<void> = Promise.resolve();
  private ticker: NodeJS.Timeout | undefined;
  private softState: SoftState = { leader: '', role: 'follower' };
  /** Read groups asked of Raft, by context, until their index is applied. */
  private readonly reads = new Map<string, ReadGroup>();
  /** The ReadIndex request in flight: reads arriving meanwhile wait in `nextReads` for the next one. */
  private readInFlight: { group: ReadGroup; retry: NodeJS.Timeout } | undefined;
  private nextReads: ReadGroup | undefined;
  private readonly readContextPrefix = randomBytes(6).toString('hex');
  private readSequence = 0;
  private urgentScheduled = false;
  /**
   * Reads in the order they joined, so in the order they time out (all after requestTimeoutMs): one
   * timer, for the oldest unsettled, instead of a timer armed and cleared for every read. Settled
   * reads leave the queue when they reach its head.
   */
  private readDeadlines: ReadWaiter[] = [];
  private readDeadlinesHead = 0;
  private readDeadlineTimer: NodeJS.Timeout | undefined;

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
    this.sendUrgentSoon();
    this.takeReadStates(this.node.takeReadStates());
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

  /**
   * The urgent messages of this event-loop turn go out together after it (setImmediate runs once
   * the turn's I/O callbacks are done): the proposals and acknowledgements arriving in one turn
   * become one append per follower carrying all of their entries, not one append each.
   */
  private sendUrgentSoon(): void {
    if (this.urgentScheduled) return;
    this.urgentScheduled = true;
    setImmediate(() => {
      this.urgentScheduled = false;
      if (!this.closed) this.sendUrgent();
    });
  }

  propose(data: Buffer): void {
    if (this.closed) throw new RampartError('Stopped');
    if (!this.node.propose(data)) throw new RampartError('NoLeader');
    this.sendUrgentSoon();
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

  /**
   * ReadIndex: resolves once this member has applied everything committed when the read began.
   * As etcd does, one request is in flight at a time and every read arriving meanwhile shares the
   * next one (asked after they all began, so its index covers each of them): under load one
   * heartbeat round confirms many reads instead of one round each.
   */
  async readBarrier(): Promise<void> {
    await this.joinRead(false);
  }

  /**
   * Resolves with the read index as soon as a quorum has confirmed, after this call, that this
   * member still leads: the same shared ReadIndex round as `readBarrier`, without waiting until the
   * index is applied. The heartbeats and their answers bypass the Ready being persisted (see
   * `sendUrgent`, `takeReadStates`), so a slow fsync or apply does not delay it; what was committed
   * but not yet applied is the caller's to look at (a lease keep-alive does, see lease-confirmation).
   */
  confirmLeadership(): Promise<number> {
    return this.joinRead(true);
  }

  private joinRead(confirmationOnly: boolean): Promise<number> {
    if (this.closed) return Promise.reject(new RampartError('Stopped'));
    return new Promise<number>((resolve, reject) => {
      const waiter: ReadWaiter = { resolve, reject, confirmationOnly, settled: false, confirmed: false, deadline: performance.now() + this.requestTimeoutMs };
      this.dropSettledReads();
      this.readDeadlines.push(waiter);
      this.readDeadlineTimer ??= setTimeout(() => this.expireReads(), this.requestTimeoutMs);
      this.nextReadGroup().waiters.add(waiter);
      this.askReadIndex();
    });
  }

  /** Fails the reads whose time is up, forgets the settled ones at the head, and waits for the next. */
  private expireReads(): void {
    this.readDeadlineTimer = undefined;
    const now = performance.now();
    const queue = this.readDeadlines;
    let head = this.readDeadlinesHead;
    while (head < queue.length) {
      const waiter = queue[head] as ReadWaiter;
      if (!waiter.settled && waiter.deadline > now) break;
      head += 1;
      fail(waiter, new RampartError('Timeout'));
    }
    this.readDeadlinesHead = head;
    this.dropSettledReads();
    const next = this.readDeadlines[this.readDeadlinesHead];
    if (next !== undefined && !this.closed) this.readDeadlineTimer = setTimeout(() => this.expireReads(), Math.max(0, next.deadline - now));
  }

  /**
   * Forgets the settled reads at the head of the deadline queue (most reads are answered long
   * before their time is up), so it holds about as many reads as wait, not every read of the last
   * requestTimeoutMs. Amortized O(1): the array is cut once its dropped head outweighs the rest.
   */
  private dropSettledReads(): void {
    const queue = this.readDeadlines;
    let head = this.readDeadlinesHead;
    while (head < queue.length && (queue[head] as ReadWaiter).settled) head += 1;
    if (head === queue.length) {
      this.readDeadlines = [];
      this.readDeadlinesHead = 0;
    } else if (head > 64 && head * 2 > queue.length) {
      this.readDeadlines = queue.slice(head);
      this.readDeadlinesHead = 0;
    } else {
      this.readDeadlinesHead = head;
    }
  }

  private nextReadGroup(): ReadGroup {
    return (this.nextReads ??= { context: `${this.readContextPrefix}:${++this.readSequence}`, waiters: new Set() });
  }

  /** Asks Raft for the next read group's index unless a request is in flight. */
  private askReadIndex(): void {
    const group = this.nextReads;
    if (this.readInFlight !== undefined || group === undefined) return;
    this.nextReads = undefined;
    if (!awaitsConfirmation(group)) return;
    if (!this.node.readIndex(group.context)) {
      failUnconfirmed(group, new RampartError('NoLeader'));
      return;
    }
    this.reads.set(group.context, group);
    const retry = setTimeout(() => {
      if (this.readInFlight?.group !== group) return;
      this.readInFlight = undefined;
      // Its reads began before the next request is asked, so that request's index covers them too.
      const waiting = [...group.waiters].filter((waiter) => !waiter.settled && !waiter.confirmed);
      if (waiting.length > 0) {
        const next = this.nextReadGroup();
        for (const waiter of waiting) next.waiters.add(waiter);
      }
      this.forgetAbandonedReads();
      this.askReadIndex();
    }, readIndexRetryMs);
    this.readInFlight = { group, retry };
    this.sendUrgent();
    // A lone voter confirms at once.
    this.takeReadStates(this.node.takeReadStates());
    this.kick();
  }

  /**
   * Read indexes Raft confirmed: taken as soon as they are, not when the next Ready is handled
   * (which waits behind the fsync and apply in progress). Confirmation-only waiters are answered
   * now; the others once the index is applied (`releaseReads`).
   */
  private takeReadStates(states: readonly ReadState[]): void {
    if (states.length === 0) return;
    for (const state of states) {
      const group = this.reads.get(state.context);
      if (group === undefined || group.index !== undefined) continue;
      group.index = state.index;
      for (const waiter of group.waiters) {
        waiter.confirmed = true;
        if (waiter.confirmationOnly) answer(waiter, state.index);
      }
      this.readAnswered(group);
    }
    this.forgetAbandonedReads();
    this.releaseReads();
  }

  /** Drops unconfirmed groups, other than the one in flight, that nobody waits for any more (their reads were answered through a later request, or timed out). */
  private forgetAbandonedReads(): void {
    for (const [context, group] of this.reads) {
      if (group.index === undefined && group !== this.readInFlight?.group && !awaitsConfirmation(group)) this.reads.delete(context);
    }
  }

  /** The read group in flight got its index (or was failed): the next one may be asked. */
  private readAnswered(group: ReadGroup): void {
    if (this.readInFlight?.group !== group) return;
    clearTimeout(this.readInFlight.retry);
    this.readInFlight = undefined;
    this.askReadIndex();
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
        // Applying batch N overlaps persisting batch N+1: committed entries before this Ready's
        // first entry were made durable by an earlier Ready (and this one replaces none of them),
        // so they are applied, and their callers answered, while this Ready's fsync runs. Entries
        // this Ready persists (a follower may learn them committed in the same append) wait for it.
        const durable = ready.snapshot === undefined ? durablePrefix(ready) : 0;
        const early = ready.committedEntries.slice(0, durable);
        const late = ready.committedEntries.slice(durable);
        await settleBoth(this.persistAndSend(ready), early.length > 0 ? this.host.applyEntries(early) : undefined);
        if (ready.snapshot !== undefined) await this.host.installSnapshot(ready.snapshot);
        if (late.length > 0) await this.host.applyEntries(late);
        this.takeReadStates(ready.readStates);
        this.node.advance(ready);
        this.takeReadStates(this.node.takeReadStates());
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

  private async persistAndSend(ready: Ready): Promise<void> {
    const persistStarted = performance.now();
    if (ready.softState.role === 'leader') {
      // Overlap the leader's fsync with the followers' (see Ready).
      this.host.send(ready.messages);
      await this.host.persist(ready);
    } else {
      await this.host.persist(ready);
      this.host.send(ready.messages);
    }
    if (ready.snapshot === undefined && ready.entries.length > 0) {
      // A leader's own copy counts toward commit now, not once the apply running beside this
      // persist (and waiting for the previous batch's database write) is done too: the appends
      // carrying the new commit index go out with this turn's others (see RaftNode.persisted).
      this.node.persisted(ready);
      if (this.node.role === 'leader') this.sendUrgentSoon();
    }
    if (ready.entries.length > 0) instruments.writeStageSeconds.recordSince(persistStarted, 'persist');
  }

  private releaseReads(): void {
    const applied = this.node.appliedIndex;
    for (const [context, group] of this.reads) {
      if (group.index !== undefined && group.index <= applied) {
        this.reads.delete(context);
        for (const waiter of group.waiters) answer(waiter, group.index);
      }
    }
  }

  private failReads(error: RampartError): void {
    // Already confirmed groups only wait for apply; the others fail (then the next group is asked).
    const unconfirmed = [...this.reads.values()].filter((group) => group.index === undefined);
    for (const group of unconfirmed) {
      this.reads.delete(group.context);
      failUnconfirmed(group, error);
    }
    for (const group of unconfirmed) this.readAnswered(group);
  }

  async close(): Promise<void> {
    this.closed = true;
    if (this.ticker !== undefined) clearInterval(this.ticker);
    if (this.readInFlight !== undefined) clearTimeout(this.readInFlight.retry);
    this.readInFlight = undefined;
    clearTimeout(this.readDeadlineTimer);
    this.readDeadlineTimer = undefined;
    this.readDeadlines = [];
    this.readDeadlinesHead = 0;
    for (const group of [...this.reads.values(), ...(this.nextReads === undefined ? [] : [this.nextReads])]) {
      for (const waiter of group.waiters) fail(waiter, new RampartError('Stopped'));
    }
    this.reads.clear();
    this.nextReads = undefined;
    await this.idle;
  }
}

function answer(waiter: ReadWaiter, index: number): void {
  if (waiter.settled) return;
  waiter.settled = true;
  waiter.resolve(index);
}

function fail(waiter: ReadWaiter, error: unknown): void {
  if (waiter.settled) return;
  waiter.settled = true;
  waiter.reject(error);
}

/** Fails the group's reads that no other group has confirmed (those are answered once their index is applied). */
function failUnconfirmed(group: ReadGroup, error: RampartError): void {
  for (const waiter of group.waiters) if (!waiter.confirmed) fail(waiter, error);
  group.waiters.clear();
}

/** Whether a read of the group still needs a read index (it is neither settled nor confirmed through another group). */
function awaitsConfirmation(group: ReadGroup): boolean {
  for (const waiter of group.waiters) if (!waiter.settled && !waiter.confirmed) return true;
  return false;
}

/** How many of the Ready's committed entries precede its first entry to persist (all when it has none). */
function durablePrefix(ready: Ready): number {
  const firstNew = ready.entries[0]?.index ?? Number.POSITIVE_INFINITY;
  const index = ready.committedEntries.findIndex((entry) => entry.index >= firstNew);
  return index === -1 ? ready.committedEntries.length : index;
}

/** Waits for both to finish, then fails with the first failure: neither is left running behind a throw. */
async function settleBoth(first: Promise<void>, second: Promise<void> | undefined): Promise<void> {
  const [a, b] = await Promise.allSettled([first, second]);
  if (a.status === 'rejected') throw a.reason;
  if (b.status === 'rejected') throw b.reason;
}
