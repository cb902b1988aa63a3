/**
 * The applied batches' way to the database (member.ts applyEntries): one LevelDB write at a time,
 * in apply order; a batch waits up to `appliedWriteDelayMs` for later ones, and the batches
 * applied while a write is in flight or waits are merged into one write (one thread-pool trip
 * instead of one per Ready). The Raft loop hands a batch over and goes on; it waits only when too
 * much is queued (`appliedBytesQueuedMax`).
 *
 * Why this is safe (see applyEntries): every batch ends with the consistent index of its last
 * entry, so a merged write is the batches' operations in apply order, one atomic write whose
 * consistent index covers exactly the effects it holds (a later put of the same key wins, as it
 * would in separate writes). Callers are answered from the in-memory apply; the entries are
 * durable in the Raft log, and after a crash every entry past the stored consistent index is
 * applied again. Until a write lands, reads find its records in the store's overlay (`landed`
 * calls `markFlushed`).
 *
 * Owns: the queue of applied batches not yet written. Never: applies, answers callers, or writes
 * anything but what it was handed; after a failed write it writes nothing more (the member stops).
 */
import type { BatchOperation } from '../storage/mvcc/store.js';

/**
 * Bytes (keys and values) of applied batches queued behind the write in flight, past which the
 * next apply waits for that write: what the store's overlay holds beyond one write is bounded.
 */
export const appliedBytesQueuedMax = 8 * 1024 * 1024;

/**
 * How long an applied batch may wait for later ones to share its database write, when none is in
 * flight: each write is a thread-pool trip (25-130 us of main thread per call whatever its size,
 * plus the pool thread and the wake-ups), and a Ready at a few hundred writes a second carries 1-2
 * entries. etcd's backend commits its batch every 100 ms; reads here find unwritten records in
 * the store's overlay, and whoever needs the database itself asks for the write (`flush`). One
 * member in-process at 300 puts/s: ~2,000 writes in 10 s before, ~670 at 10 ms, ~315 at 25 ms.
 */
export const appliedWriteDelayMs = 25;

/** Queued bytes from which a write starts at once instead of after `appliedWriteDelayMs`. */
export const appliedBytesWriteNow = 256 * 1024;

export interface AppliedWritesHost {
  /** Writes one batch to the database (`sync`: durable before it resolves). */
  write(operations: BatchOperation[], sync: boolean): Promise<void>;
  /**
   * A write landed: `operations` (the merged batches) are in the database through `revision`;
   * `appliedMs` is when the first of them began to be applied, `startedMs` when the write began.
   */
  landed(operations: readonly BatchOperation[], revision: number, appliedMs: number, startedMs: number): void;
  /** A write failed: the member stops; nothing more is written. */
  fail(error: unknown): void;
}

/** One database write: one applied batch, or several merged. */
interface Group {
  readonly operations: BatchOperation[];
  bytes: number;
  /** The store's revision once the last batch in it was applied. */
  revision: number;
  /** When the first batch in it began to be applied (performance.now()). */
  readonly appliedMs: number;
  /** When it was queued (performance.now()): it is written at the latest `delayMs` after. */
  readonly queuedMs: number;
  sync: boolean;
  /** Closed groups take no more batches: a snapshot's view is taken as it lands. */
  closed: boolean;
  /** Run in the turn the write lands, before the next write starts. */
  readonly onLanded: (() => void)[];
  readonly settled: Promise<void>;
  settle: () => void;
}

export class AppliedWrites {
  /** Groups not yet handed to the database, in apply order; only the last may be open. */
  private readonly queue: Group[] = [];
  private inFlight: Group | undefined;
  private queuedBytes = 0;
  private stopped = false;
  /** The next write's delay timer (none while a write is in flight or nothing is queued). */
  private timer: NodeJS.Timeout | undefined;
  /** Someone waits for what is queued now: write it without delay. */
  private flushing = false;
  /** Counters for tests and metrics: batches handed over and database writes started. */
  batches = 0;
  writes = 0;

  constructor(
    private readonly host: AppliedWritesHost,
    private readonly delayMs = appliedWriteDelayMs,
  ) {}

  /**
   * Queues an applied batch (ending with its consistent index) for the database; the writer takes
   * `operations` over (the caller must not change it). `snapshot`: the
   * write holding it is synced and `snapshot.onLanded` runs in the turn it lands, before any later
   * batch is written (the database is at exactly that batch's index then).
   */
  add(operations: BatchOperation[], revision: number, appliedMs: number, snapshot?: { onLanded: () => void }): void {
    if (this.stopped) return;
    this.batches += 1;
    const bytes = batchBytes(operations);
    let group = this.queue[this.queue.length - 1];
    if (group === undefined || group.closed) {
      let settle = (): void => undefined;
      const settled = new Promise<void>((resolve) => (settle = resolve));
      // The first batch of a group is the group's array (handed over, not copied).
      group = { operations, bytes: 0, revision, appliedMs, queuedMs: performance.now(), sync: false, closed: false, onLanded: [], settled, settle };
      this.queue.push(group);
    } else {
      for (const operation of operations) group.operations.push(operation);
    }
    group.bytes += bytes;
    this.queuedBytes += bytes;
    group.revision = revision;
    if (snapshot !== undefined) {
      group.sync = true;
      group.closed = true;
      group.onLanded.push(snapshot.onLanded);
    }
    if (this.inFlight === undefined) this.schedule();
  }

  /** Writes what is queued now without delay (someone reads the database or waits for it). */
  flush(): void {
    if (this.queue.length === 0) return;
    this.flushing = true;
    if (this.inFlight === undefined) this.schedule();
  }

  /** Whether the next batch may be applied without waiting (see appliedBytesQueuedMax). */
  get hasRoom(): boolean {
    return this.queuedBytes < appliedBytesQueuedMax || this.stopped;
  }

  /** Resolves once the write in flight has landed (or failed): call while `hasRoom` is false. */
  async room(): Promise<void> {
    while (!this.hasRoom && this.inFlight !== undefined) await this.inFlight.settled;
  }

  /** Writes everything added so far now; resolves once it is in the database, or a write failed. Never rejects. */
  drained(): Promise<void> {
    const last = this.queue[this.queue.length - 1] ?? this.inFlight;
    this.flush();
    return last === undefined ? Promise.resolve() : last.settled;
  }

  /** Whether a batch is queued or being written. */
  get idle(): boolean {
    return this.inFlight === undefined && this.queue.length === 0;
  }

  /**
   * With no write in flight: writes the first queued group now if it must not wait (a snapshot's,
   * a large one, one waited for, or one queued `delayMs` ago), else when it will have waited that long.
   */
  private schedule(): void {
    const group = this.queue[0];
    if (group === undefined) {
      this.flushing = false;
      return;
    }
    const waitMs = this.delayMs - (performance.now() - group.queuedMs);
    if (this.flushing || group.closed || this.queuedBytes >= appliedBytesWriteNow || waitMs <= 0) {
      if (this.timer !== undefined) clearTimeout(this.timer);
      this.timer = undefined;
      this.startNext();
      return;
    }
    // Armed once for the first queued group (it stays first until written).
    this.timer ??= setTimeout(() => {
      this.timer = undefined;
      if (this.inFlight === undefined && !this.stopped) this.startNext();
    }, waitMs);
  }

  private startNext(): void {
    const group = this.queue.shift();
    this.inFlight = group;
    if (group === undefined) return;
    this.queuedBytes -= group.bytes;
    this.writes += 1;
    const startedMs = performance.now();
    this.host.write(group.operations, group.sync).then(
      () => {
        if (this.stopped) return;
        this.host.landed(group.operations, group.revision, group.appliedMs, startedMs);
        for (const onLanded of group.onLanded) onLanded();
        group.settle();
        this.inFlight = undefined;
        this.schedule();
      },
      (error: unknown) => this.stop(error),
    );
  }

  /** A failed write: nothing after it is written (the member stops); every waiter is released. */
  private stop(error: unknown): void {
    this.stopped = true;
    if (this.timer !== undefined) clearTimeout(this.timer);
    this.timer = undefined;
    this.host.fail(error);
    this.inFlight?.settle();
    for (const group of this.queue) group.settle();
    this.queue.length = 0;
    this.queuedBytes = 0;
    this.inFlight = undefined;
  }
}

function batchBytes(operations: readonly BatchOperation[]): number {
  let bytes = 0;
  for (const operation of operations) bytes += operation.key.length + (operation.type === 'put' ? operation.value.length : 0);
  return bytes;
}
