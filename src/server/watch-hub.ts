/**
 * Watchers and event delivery.
 *
 * A watcher is "synced" when every event before `nextRevision` has been handed to its stream;
 * synced watchers get new events straight from the applier. A watcher that starts in the past,
 * or whose stream stops accepting data (a slow client), is unsynced: it catches up by reading
 * history from the store, one bounded batch at a time, and only while its stream drains. So a slow
 * watcher costs a bounded amount of memory; if the history it needs gets compacted meanwhile it is
 * canceled with the compact revision, as etcd does.
 *
 * Fan-out is bounded member-wide (issue 8, item 3): a sink takes a batch only while its stream is
 * not congested and the member's WatchQueueBudget has room; a batch not taken leaves its watcher
 * unsynced at that revision, to catch up from history later. At most catchUpsConcurrentMax
 * watchers read history at once, each read bounded by catchUpBytesMax: thousands of watchers
 * falling behind together cost a bounded amount of memory, not one copy of history each.
 */
import type { MvccStore, StoreEvent } from '../storage/mvcc/store.js';
import { rangeContains, type KeyRange } from '../storage/mvcc/range.js';
import { WatchQueueBudget } from './watch-budget.js';

export interface WatchFilters {
  readonly noPut: boolean;
  readonly noDelete: boolean;
}

export interface WatchSink {
  /**
   * Hands a batch to the stream if it takes it: false (nothing written) while the stream is
   * congested or the member's watch budget has no room for it.
   */
  sendEvents(watchId: number, events: StoreEvent[], withPrevKv: boolean): boolean;
  sendCompacted(watchId: number, compactRevision: number): void;
  sendProgress(watchId: number): void;
  /** Resolves when the stream can take more, or is closed. */
  drained(): Promise<void>;
  /** Whether the stream's transport is congested (it takes no batch until drained). */
  readonly congested: boolean;
  /** Whose share of the member's watch budget the stream uses. */
  readonly owner: string;
  readonly closed: boolean;
}

export interface Watcher {
  readonly id: number;
  readonly range: KeyRange;
  readonly filters: WatchFilters;
  readonly prevKv: boolean;
  readonly progressNotify: boolean;
  readonly sink: WatchSink;
  nextRevision: number;
  synced: boolean;
  canceled: boolean;
}

/** Events read from history per catch-up step. */
export const catchUpEventsMax = 1000;
/** Bytes of keys and values read from history per catch-up step (past it, the step ends at a revision boundary). */
export const catchUpBytesMax = 4 * 1024 * 1024;
/** Watchers reading history at the same time, member-wide. */
export const catchUpsConcurrentMax = 4;
/** Default of --watch-queued-bytes-max. */
export const watchQueuedBytesMaxDefault = 64 * 1024 * 1024;

export class WatchHub {
  private readonly synced = new Set<Watcher>();
  private readonly all = new Set<Watcher>();
  readonly budget: WatchQueueBudget;
  private catchUpsRunning = 0;
  private catchUpWaiters: (() => void)[] = [];

  constructor(private readonly store: MvccStore, queuedBytesMax: number = watchQueuedBytesMaxDefault) {
    this.budget = new WatchQueueBudget(queuedBytesMax);
  }

  get watcherCount(): number {
    return this.all.size;
  }

  add(watcher: Watcher): void {
    this.all.add(watcher);
    if (watcher.nextRevision > this.store.currentRevision) {
      this.markSynced(watcher);
    } else {
      void this.catchUp(watcher);
    }
  }

  remove(watcher: Watcher): void {
    watcher.canceled = true;
    this.synced.delete(watcher);
    this.all.delete(watcher);
  }

  /** Called by the member after each applied revision that changed keys. */
  notify(revision: number, events: StoreEvent[]): void {
    for (const watcher of this.synced) {
      if (revision < watcher.nextRevision) {
        continue;
      }
      const selected = select(watcher, events);
      if (selected.length > 0 && !watcher.sink.sendEvents(watcher.id, selected, watcher.prevKv)) {
        // Not taken: this revision is read again from history once the stream and budget allow.
        watcher.nextRevision = revision;
        this.unsync(watcher);
        continue;
      }
      watcher.nextRevision = revision + 1;
    }
  }

  /** The store was replaced (snapshot installed): every watcher catches up again from history. */
  resyncAll(): void {
    for (const watcher of this.all) {
      if (watcher.synced) {
        watcher.synced = false;
        this.synced.delete(watcher);
        void this.catchUp(watcher);
      }
    }
  }

  /** Whether every watcher of the sink has been sent everything up to the current revision. */
  allSynced(sink: WatchSink): boolean {
    for (const watcher of this.all) {
      if (watcher.sink === sink && !watcher.synced) return false;
    }
    return true;
  }

  /** Periodic progress notification for watchers that asked for it. */
  notifyProgress(): void {
    for (const watcher of this.synced) {
      if (watcher.progressNotify) {
        watcher.sink.sendProgress(watcher.id);
      }
    }
  }

  private markSynced(watcher: Watcher): void {
    watcher.synced = true;
    this.synced.add(watcher);
  }

  private unsync(watcher: Watcher): void {
    watcher.synced = false;
    this.synced.delete(watcher);
    void this.catchUp(watcher);
  }

  private async catchUp(watcher: Watcher): Promise<void> {
    for (;;) {
      await watcher.sink.drained();
      if (watcher.canceled || watcher.sink.closed) {
        return;
      }
      if (!watcher.sink.congested && !this.budget.hasRoom(watcher.sink.owner)) {
        // Read no history while its owner's budget is used up: wait for bytes to be released.
        await this.budget.released();
        continue;
      }
      const target = this.store.currentRevision;
      if (watcher.nextRevision > target) {
        // No await between this check and joining the synced set: no event can slip in between.
        this.markSynced(watcher);
        return;
      }
      if (watcher.nextRevision < this.store.compactRevision) {
        this.remove(watcher);
        watcher.sink.sendCompacted(watcher.id, this.store.compactRevision);
        return;
      }
      await this.acquireCatchUp();
      let taken: boolean;
      try {
        if (watcher.canceled || watcher.sink.closed) return;
        taken = await this.catchUpStep(watcher, target);
      } catch {
        // The history cannot be read (the member failed before its applied batches were written,
        // or is closing): this watcher gets nothing more; its stream ends with the member.
        this.remove(watcher);
        return;
      } finally {
        this.releaseCatchUp();
      }
      // Refused for lack of budget: wait for bytes to be released rather than read history again at once.
      if (!taken && !watcher.sink.congested && !watcher.sink.closed) await this.budget.released();
    }
  }

  /** Reads one bounded batch of history for `watcher` and sends it if its stream and the budget take it; false if they did not. */
  private async catchUpStep(watcher: Watcher, target: number): Promise<boolean> {
    await this.store.whenFlushed(target);
    const from = watcher.nextRevision;
    const { events, revisions, complete } = await this.store.history(from, target, catchUpEventsMax, watcher.prevKv, catchUpBytesMax);
    if (watcher.canceled || watcher.sink.closed || from < this.store.compactRevision) {
      // Compacted while reading: what was read may be incomplete; the loop checks again.
      return true;
    }
    const lastRevision = complete ? target : (revisions[revisions.length - 1] ?? target);
    // History goes out as one response per catch-up batch, as etcd does when it syncs a watcher.
    const selected = select(watcher, events);
    if (selected.length > 0 && !watcher.sink.sendEvents(watcher.id, selected, watcher.prevKv)) {
      return false; // not taken: the same batch is read again once the stream and budget allow
    }
    watcher.nextRevision = lastRevision + 1;
    return true;
  }

  private acquireCatchUp(): Promise<void> {
    if (this.catchUpsRunning < catchUpsConcurrentMax) {
      this.catchUpsRunning += 1;
      return Promise.resolve();
    }
    return new Promise((resolve) => this.catchUpWaiters.push(resolve));
  }

  private releaseCatchUp(): void {
    const next = this.catchUpWaiters.shift();
    if (next === undefined) this.catchUpsRunning -= 1;
    else next(); // the slot passes on
  }
}

function select(watcher: Watcher, events: StoreEvent[]): StoreEvent[] {
  return events.filter((event) => {
    if (event.type === 'put' ? watcher.filters.noPut : watcher.filters.noDelete) {
      return false;
    }
    return rangeContains(watcher.range, event.kv.key);
  });
}
