/**
 * etcd's Lock and Election services, built as etcd builds them: on keys under `name/`, one per
 * lease (`name/<lease id in hex>`), ordered by create revision. Whoever holds the oldest key owns
 * the lock or leads; the others wait for the deletion of the key just older than theirs. Every read
 * and write goes through the member's ordinary KV path as the caller, so RBAC applies unchanged.
 * A caller that gives up while waiting has its key removed.
 */
import { RampartError } from '../errors.js';
import type { Caller, Compare, KeyValueMessage, RangeRequest, RequestOp, TxnRequest } from '../api/messages.js';
import type { StoreEvent } from '../storage/mvcc/store.js';
import type { Member } from './member.js';
import type { Watcher } from './watch-hub.js';
import { prefixRangeEnd } from '../storage/mvcc/range.js';

const none = Buffer.alloc(0);
const sortByCreate = 2;
const ascend = 1;
const descend = 2;

function rangeOf(key: Buffer, options: Partial<RangeRequest> = {}): RangeRequest {
  return {
    key, range_end: none, limit: '0', revision: '0', sort_order: 0, sort_target: 0, serializable: false, keys_only: false, count_only: false,
    min_mod_revision: '0', max_mod_revision: '0', min_create_revision: '0', max_create_revision: '0', ...options,
  };
}

function createdAt(key: Buffer, revision: number): Compare {
  return { result: 0, target: 1, key, range_end: none, target_union: 'create_revision', create_revision: String(revision) };
}

function put(key: Buffer, value: Buffer, lease: bigint): RequestOp {
  return { request: 'request_put', request_put: { key, value, lease: lease.toString(), prev_kv: false, ignore_value: false, ignore_lease: false } };
}

/** The keys of lock or election `name` live under `name/`. */
function prefixOf(name: Buffer): Buffer {
  return Buffer.concat([name, Buffer.from('/')]);
}

/** A key claimed under a lock or election: its create revision, whether this call created it, and what it held. */
interface Claim {
  readonly key: Buffer;
  readonly revision: number;
  readonly created: boolean;
  readonly current?: KeyValueMessage;
}

export interface LeaderKey {
  readonly name: Buffer;
  readonly key: Buffer;
  readonly rev: number;
  readonly lease: bigint;
}

export class Concurrency {
  constructor(private readonly member: Member) {}

  /** Resolves with the first event on [key, rangeEnd) after `revision` that `wanted` accepts. */
  private nextEvent(key: Buffer, rangeEnd: Buffer, revision: number, wanted: (event: StoreEvent) => boolean, signal: AbortSignal): Promise<StoreEvent | 'compacted'> {
    return new Promise((resolve, reject) => {
      let done = false;
      const finish = (settle: () => void): void => {
        if (done) return;
        done = true;
        this.member.watchHub.remove(watcher);
        signal.removeEventListener('abort', abort);
        settle();
      };
      const watcher: Watcher = {
        id: 0,
        range: { key, rangeEnd },
        filters: { noPut: false, noDelete: false },
        prevKv: false,
        progressNotify: false,
        nextRevision: revision + 1,
        synced: false,
        canceled: false,
        sink: {
          sendEvents: (_id, events) => {
            const match = events.find(wanted);
            if (match !== undefined) finish(() => resolve(match));
            return true;
          },
          sendCompacted: () => finish(() => resolve('compacted')),
          sendProgress: () => undefined,
          drained: () => Promise.resolve(),
          congested: false, // in-process: nothing is queued for a network stream
          owner: 'member',
          get closed() {
            return done;
          },
        },
      };
      const abort = (): void => finish(() => reject(new RampartError('Stopped', 'canceled')));
      if (signal.aborted) return reject(new RampartError('Stopped', 'canceled'));
      signal.addEventListener('abort', abort);
      this.member.watchHub.add(watcher);
    });
  }

  /** Waits until no key under `prefix` was created before `ownRevision`. */
  private async waitForOlder(prefix: Buffer, ownRevision: number, caller: Caller, signal: AbortSignal): Promise<void> {
    for (;;) {
      const { kvs, revision } = await this.member.range(rangeOf(prefix, { range_end: prefixRangeEnd(prefix), sort_target: sortByCreate, sort_order: descend, limit: '1', max_create_revision: String(ownRevision - 1) }), caller);
      const older = kvs[0];
      if (older === undefined) return;
      await this.nextEvent(older.key, none, revision, (event) => event.type === 'delete', signal);
    }
  }

  /** Creates `name/<lease>` (or finds it) and returns its create revision and whether it was new. */
  private async claim(prefix: Buffer, lease: bigint, value: Buffer, caller: Caller): Promise<Claim> {
    if (lease === 0n) throw new RampartError('LeaseNotFound');
    const key = Buffer.concat([prefix, Buffer.from(lease.toString(16))]);
    const txn: TxnRequest = { compare: [createdAt(key, 0)], success: [put(key, value, lease)], failure: [{ request: 'request_range', request_range: rangeOf(key) }] };
    const { revision, response } = await this.member.txn(txn, caller);
    const result = response as { succeeded: boolean; responses: { response_range?: { kvs: KeyValueMessage[] } }[] };
    if (result.succeeded) return { key, revision, created: true };
    const current = result.responses[0]?.response_range?.kvs[0];
    if (current === undefined) throw new RampartError('Stopped', 'key vanished');
    return { key, revision: Number(current.create_revision), created: false, current };
  }

  private async release(key: Buffer, revision: number, caller: Caller): Promise<number> {
    const txn: TxnRequest = { compare: [createdAt(key, revision)], success: [{ request: 'request_delete_range', request_delete_range: { key, range_end: none, prev_kv: false } }], failure: [] };
    return (await this.member.txn(txn, caller)).revision;
  }

  private async held(key: Buffer, revision: number, caller: Caller): Promise<boolean> {
    const { kvs } = await this.member.range(rangeOf(key), caller);
    return kvs[0] !== undefined && Number(kvs[0].create_revision) === revision;
  }

  /**
   * Claims `name/<lease>` and waits until it is the oldest key under `name/` (its lease still alive).
   * `claimed` runs first (a campaign updates its value there). A claim this call made is removed
   * again when it gives up or fails.
   */
  private async acquire(name: Buffer, lease: bigint, value: Buffer, caller: Caller, signal: AbortSignal, claimed: (claim: Claim) => Promise<unknown> = async () => undefined): Promise<Claim> {
    const prefix = prefixOf(name);
    const claim = await this.claim(prefix, lease, value, caller);
    try {
      await claimed(claim);
      await this.waitForOlder(prefix, claim.revision, caller, signal);
      if (!(await this.held(claim.key, claim.revision, caller))) throw new RampartError('LeaseNotFound');
    } catch (error) {
      if (claim.created) await this.release(claim.key, claim.revision, caller).catch(() => undefined);
      throw error;
    }
    return claim;
  }

  /** Waits until the lock is held; returns its key. */
  async lock(name: Buffer, lease: bigint, caller: Caller, signal: AbortSignal): Promise<Buffer> {
    return (await this.acquire(name, lease, none, caller, signal)).key;
  }

  async unlock(key: Buffer, caller: Caller): Promise<number> {
    return (await this.member.deleteRange({ key, range_end: none, prev_kv: false }, caller)).revision;
  }

  async campaign(name: Buffer, lease: bigint, value: Buffer, caller: Caller, signal: AbortSignal): Promise<LeaderKey> {
    const leaderOf = (claim: Claim): LeaderKey => ({ name, key: claim.key, rev: claim.revision, lease });
    const claim = await this.acquire(name, lease, value, caller, signal, async (found) => {
      // Campaigning again with the same lease and a new value proclaims it, as etcd does.
      if (found.current !== undefined && !Buffer.from(found.current.value).equals(value)) await this.proclaim(leaderOf(found), value, caller);
    });
    return leaderOf(claim);
  }

  async proclaim(leader: LeaderKey, value: Buffer, caller: Caller): Promise<number> {
    const txn: TxnRequest = { compare: [createdAt(leader.key, leader.rev)], success: [put(leader.key, value, leader.lease)], failure: [] };
    const { revision, response } = await this.member.txn(txn, caller);
    if (!(response as { succeeded: boolean }).succeeded) throw new RampartError('ElectionNotLeader');
    return revision;
  }

  async resign(leader: LeaderKey, caller: Caller): Promise<number> {
    return this.release(leader.key, leader.rev, caller);
  }

  async leader(name: Buffer, caller: Caller): Promise<{ kv: KeyValueMessage | undefined; revision: number }> {
    const prefix = prefixOf(name);
    const { kvs, revision } = await this.member.range(rangeOf(prefix, { range_end: prefixRangeEnd(prefix), sort_target: sortByCreate, sort_order: ascend, limit: '1' }), caller);
    return { kv: kvs[0], revision };
  }

  /** Calls `send` with the leader each time it changes (another key, or a new value), until aborted. */
  async observe(name: Buffer, caller: Caller, signal: AbortSignal, send: (kv: KeyValueMessage) => void): Promise<void> {
    const prefix = prefixOf(name);
    let last = '';
    while (!signal.aborted) {
      const { kv, revision } = await this.leader(name, caller);
      const identity = kv === undefined ? '' : `${Buffer.from(kv.key).toString('hex')}@${String(kv.mod_revision)}`;
      if (kv !== undefined && identity !== last) {
        last = identity;
        send(kv);
      }
      // Any change under the prefix may change the leader: look again after it.
      await this.nextEvent(prefix, prefixRangeEnd(prefix), revision, () => true, signal);
    }
  }
}
