/**
 * etcd's Watch stream over any transport: creates and cancels watchers on the member's watch hub,
 * writes their events in order, honours transport backpressure, and removes every watcher when the
 * stream ends. Never: keeps anything beyond the stream's lifetime.
 */
import type { Logger } from 'pino';
import type { Member } from '../server/member.js';
import { parseInt64, toKeyValueMessage } from '../server/kv.js';
import type { StoreEvent } from '../storage/mvcc/store.js';
import type { Watcher, WatchSink } from '../server/watch-hub.js';
import { authorizeRange } from '../server/authorize.js';
import type { Caller, EventMessage, WatchCreateRequest, WatchRequest, WatchResponse } from './messages.js';
import type { DuplexStream } from './rpc.js';

/** etcd puts the whole gRPC error text into a watch's cancel_reason. */
const permissionDeniedReason = 'rpc error: code = PermissionDenied desc = etcdserver: permission denied';

/**
 * Watchers one user (without auth, one client address) may hold on a member, over all its streams
 * (stricter than etcd, which has no bound): each costs ~1 KB, and 200,000 create requests on one
 * stream, ~6 MB of them, took a member from 200 to 400 MiB.
 */
export const watchersPerOwnerMax = 100_000;
const tooManyWatchersReason = `rpc error: code = ResourceExhausted desc = rampart: too many watchers for this user (at most ${watchersPerOwnerMax})`;
/** Each member's watchers by owner (the owner of the watch budget's share). */
const watchersByOwner = new WeakMap<object, Map<string, number>>();

/**
 * One message per event (with and without prev_kv), shared by every watcher it goes to: the
 * Watch serializer (proto.ts) encodes a shared message once, whatever the number of watchers.
 */
const eventMessages = new WeakMap<StoreEvent, { plain?: EventMessage; withPrevKv?: EventMessage }>();

function eventMessage(event: StoreEvent, withPrevKv: boolean): EventMessage {
  let cached = eventMessages.get(event);
  if (cached === undefined) {
    cached = {};
    eventMessages.set(event, cached);
  }
  const wantPrevKv = withPrevKv && event.prevKv !== undefined;
  const existing = wantPrevKv ? cached.withPrevKv : cached.plain;
  if (existing !== undefined) return existing;
  const message: EventMessage = { type: event.type === 'put' ? 0 : 1, kv: toKeyValueMessage(event.kv) };
  if (wantPrevKv && event.prevKv !== undefined) {
    message.prev_kv = toKeyValueMessage(event.prevKv);
    cached.withPrevKv = message;
  } else {
    cached.plain = message;
  }
  return message;
}

function eventBytes(event: EventMessage): number {
  return event.kv.key.length + event.kv.value.length + (event.prev_kv === undefined ? 0 : event.prev_kv.key.length + event.prev_kv.value.length) + 64;
}

export interface WatchStreamOptions {
  readonly member: Member;
  readonly logger: Logger;
  readonly stream: DuplexStream<WatchRequest, WatchResponse>;
  /** The caller, identified again for every new watch (a token may expire while the stream lives). */
  readonly identify: () => Promise<Caller>;
  /** The client's address (`host:port`): without auth, the watch budget is shared per address. */
  readonly peer: string;
  /** Called for every create request with its authorization decision (the audit event). */
  readonly onCreate: (request: WatchCreateRequest, allowed: boolean) => void;
}

export function serveWatch({ member, logger, stream, identify, peer, onCreate }: WatchStreamOptions): void {
  const watchers = new Map<number, Watcher>();
  const fragmentById = new Set<number>();
  let nextWatchId = 0;
  let congested = false;
  let closed = false;
  let drainWaiters: (() => void)[] = [];
  /** Bytes this stream holds of the member's watch budget (released as they flush, or on close). */
  let budgetHeldBytes = 0;
  const budget = member.watchHub.budget;
  /** Whose share of the budget this stream uses: its user once known, else its client address. */
  let owner = `address:${peer.replace(/:\d+$/, '')}`;
  let ownerCounts = watchersByOwner.get(member.watchHub);
  if (ownerCounts === undefined) {
    ownerCounts = new Map();
    watchersByOwner.set(member.watchHub, ownerCounts);
  }
  const counts = ownerCounts;
  /** The owner each watcher of this stream is counted under. */
  const countedAs = new Map<number, string>();
  const uncount = (id: number): void => {
    const countedOwner = countedAs.get(id);
    if (countedOwner === undefined) return;
    countedAs.delete(id);
    const left = (counts.get(countedOwner) ?? 1) - 1;
    if (left > 0) counts.set(countedOwner, left);
    else counts.delete(countedOwner);
  };

  const releaseDrainWaiters = (): void => {
    const waiting = drainWaiters;
    drainWaiters = [];
    for (const resolve of waiting) resolve();
  };
  const write = (response: WatchResponse, onFlushed?: () => void): boolean => {
    if (closed) return true;
    const accepted = stream.write(response, onFlushed);
    if (!accepted && !congested) {
      congested = true;
      void stream.drained().then(() => {
        congested = false;
        releaseDrainWaiters();
      });
    }
    return accepted;
  };

  /** Writes events counted against the budget (taken by the caller); they are released as each response flushes. */
  const writeEvents = (response: WatchResponse, bytes: number): void => {
    let released = false;
    write(response, () => {
      if (released || closed) return;
      released = true;
      budgetHeldBytes -= bytes;
      budget.give(bytes, owner);
    });
  };

  const sink: WatchSink = {
    sendEvents(watchId, events, withPrevKv) {
      if (closed) return true;
      // A congested stream gets no more: its watchers catch up from history once it drains.
      if (congested) return false;
      const messages = events.map((event) => eventMessage(event, withPrevKv));
      const sizes = messages.map(eventBytes);
      const totalBytes = sizes.reduce((sum, size) => sum + size, 0);
      if (!budget.tryTake(totalBytes, owner)) return false;
      budgetHeldBytes += totalBytes;
      const limit = member.options.maxRequestBytes;
      if (!fragmentById.has(watchId) || totalBytes <= limit) {
        writeEvents({ header: member.header(), watch_id: watchId, events: messages }, totalBytes);
        return true;
      }
      let chunk: EventMessage[] = [];
      let chunkBytes = 0;
      messages.forEach((message, index) => {
        const size = sizes[index] ?? 0;
        if (chunk.length > 0 && chunkBytes + size > limit) {
          writeEvents({ header: member.header(), watch_id: watchId, events: chunk, fragment: true }, chunkBytes);
          chunk = [];
          chunkBytes = 0;
        }
        chunk.push(message);
        chunkBytes += size;
      });
      writeEvents({ header: member.header(), watch_id: watchId, events: chunk }, chunkBytes);
      return true;
    },
    sendCompacted(watchId, compactRevision) {
      watchers.delete(watchId);
      uncount(watchId);
      // etcd reports no revision on a compaction cancel.
      write({ header: member.headerWithoutRevision(), watch_id: watchId, canceled: true, compact_revision: compactRevision, events: [] });
    },
    sendProgress(watchId) {
      if (congested) return; // the next one will do; a congested stream gets no more writes
      write({ header: member.header(), watch_id: watchId, events: [] });
    },
    drained() {
      if (!congested || closed) return Promise.resolve();
      return new Promise((resolve) => drainWaiters.push(resolve));
    },
    get congested() {
      return congested;
    },
    get owner() {
      return owner;
    },
    get closed() {
      return closed;
    },
  };

  // Requests are handled in order; identifying the caller may wait (token verification). The
  // caller is identified again for every new watch: a token may expire while the stream lives.
  let queue: Promise<void> = Promise.resolve();
  const permitted = async (request: WatchCreateRequest): Promise<boolean> => {
    try {
      const caller = await identify();
      // Set before any watcher of this stream holds budget: a stream has one identity.
      if (caller.user !== '' && budgetHeldBytes === 0) owner = `user:${caller.user}`;
      authorizeRange(member.auth.decider, caller, { key: request.key, range_end: request.range_end });
      return true;
    } catch {
      return !member.auth.state.enabled;
    }
  };

  const create = async (request: WatchCreateRequest): Promise<void> => {
    const allowed = await permitted(request);
    onCreate(request, allowed);
    if (!allowed) {
      write({ header: member.header(), watch_id: parseInt64(request.watch_id), created: true, canceled: true, cancel_reason: permissionDeniedReason, events: [] });
      return;
    }
    if (closed) return;
    let id = parseInt64(request.watch_id);
    if (id !== 0 && watchers.has(id)) {
      write({ header: member.header(), watch_id: -1, created: true, canceled: true, cancel_reason: 'mvcc: duplicate watch ID provided on the WatchStream', events: [] });
      return;
    }
    const held = counts.get(owner) ?? 0;
    if (held >= watchersPerOwnerMax) {
      write({ header: member.header(), watch_id: id === 0 ? -1 : id, created: true, canceled: true, cancel_reason: tooManyWatchersReason, events: [] });
      return;
    }
    if (id === 0) {
      while (watchers.has(nextWatchId)) nextWatchId += 1;
      id = nextWatchId++;
    }
    counts.set(owner, held + 1);
    countedAs.set(id, owner);
    const currentRevision = member.store.currentRevision;
    const start = parseInt64(request.start_revision);
    const watcher: Watcher = {
      id,
      range: { key: request.key, rangeEnd: request.range_end },
      filters: { noPut: request.filters.includes(0), noDelete: request.filters.includes(1) },
      prevKv: request.prev_kv,
      progressNotify: request.progress_notify,
      sink,
      nextRevision: start > 0 ? start : currentRevision + 1,
      synced: false,
      canceled: false,
    };
    watchers.set(id, watcher);
    if (request.fragment) fragmentById.add(id);
    write({ header: member.header(currentRevision), watch_id: id, created: true, events: [] });
    member.watchHub.add(watcher);
  };

  const handle = async (request: WatchRequest): Promise<void> => {
    try {
      switch (request.request_union) {
        case 'create_request':
          if (request.create_request !== undefined) await create(request.create_request);
          break;
        case 'cancel_request': {
          const id = parseInt64(request.cancel_request?.watch_id);
          const watcher = watchers.get(id);
          if (watcher !== undefined) {
            watchers.delete(id);
            uncount(id);
            fragmentById.delete(id);
            member.watchHub.remove(watcher);
            write({ header: member.header(), watch_id: id, canceled: true, events: [] });
          }
          break;
        }
        case 'progress_request': {
          // Every event up to the reported revision has been sent to every watcher of this stream.
          let revision = member.store.currentRevision;
          for (const watcher of watchers.values()) {
            if (!watcher.synced) revision = Math.min(revision, watcher.nextRevision - 1);
          }
          write({ header: member.header(revision), watch_id: -1, events: [] });
          break;
        }
        default:
          break;
      }
    } catch (error) {
      logger.warn({ err: error instanceof Error ? `${error.name}: ${error.message}` : String(error) }, 'watch request rejected');
      stream.fail(error);
    }
  };
  stream.onRequest((request) => {
    queue = queue.then(() => handle(request));
  });

  const cleanup = (): void => {
    if (closed) return;
    closed = true;
    for (const watcher of watchers.values()) member.watchHub.remove(watcher);
    for (const id of watchers.keys()) uncount(id);
    watchers.clear();
    // What was not flushed is dropped with the stream.
    budget.give(budgetHeldBytes, owner);
    budgetHeldBytes = 0;
    releaseDrainWaiters();
  };
  stream.onRequestsEnd(() => {
    cleanup();
    stream.end();
  });
  stream.onClose(cleanup);
}
