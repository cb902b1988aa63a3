/**
 * Watchers and event delivery.
 *
 * A watcher is "synced" when every event before `nextRevision` has been handed to its stream;
 * synced watchers get new events straight from the applier. A watcher that starts in the past,
 * or whose stream stops accepting data (a slow client), is unsynced: it catches up by reading
 * history from the store, one bounded batch at a time, and only while its stream drains. So a slow
 * watcher costs a bounded amount of memory; if the history it needs gets compacted meanwhile it is
 * canceled with the compact revision, as etcd does.
 */
import type { MvccStore, StoreEvent } from '../storage/mvcc/store.js';
import { rangeContains, type KeyRange } from '../storage/mvcc/range.js';

export interface WatchFilters {
  readonly noPut: boolean;
  readonly noDelete: boolean;
}

export interface WatchSink {
  /** Hands a batch to the stream; false when the stream is congested (the batch is still taken). */
  sendEvents(watchId: number, events: StoreEvent[], withPrevKv: boolean): boolean;
  sendCompacted(watchId: number, compactRevision: number): void;
  sendProgress(watchId: number): void;
  /** Resolves when the stream can take more, or is closed. */
  drained(): Promise<void>;
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

export class WatchHub {
  private readonly synced = new Set<Watcher>();
  private readonly all = new Set<Watcher>();

  constructor(private readonly store: MvccStore) {}

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
      watcher.nextRevision = revision + 1;
      if (selected.length === 0) {
        continue;
      }
      const accepted = watcher.sink.sendEvents(watcher.id, selected, watcher.prevKv);
      if (!accepted) {
        this.unsync(watcher);
      }
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
      await this.store.whenFlushed(target);
      const from = watcher.nextRevision;
      const { events, revisions } = await this.store.history(from, target, catchUpEventsMax, watcher.prevKv);
      if (watcher.canceled || watcher.sink.closed) {
        return;
      }
      if (from < this.store.compactRevision) {
        // Compacted while reading: what was read may be incomplete.
        continue;
      }
      const complete = events.length < catchUpEventsMax;
      const lastRevision = complete ? target : (revisions[revisions.length - 1] ?? target);
      // History goes out as one response per catch-up batch, as etcd does when it syncs a watcher.
      const selected = select(watcher, events);
      if (selected.length > 0) {
        watcher.sink.sendEvents(watcher.id, selected, watcher.prevKv);
      }
      watcher.nextRevision = lastRevision + 1;
    }
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
