/**
 * When the leader may answer a lease keep-alive (etcd's LeaseRenew at the primary lessor).
 *
 * What the answer needs, and nothing more:
 * 1. A quorum confirmed this member still led at some time after the keep-alive arrived: a deposed
 *    leader that has not heard of its successor (paused, partitioned) would otherwise acknowledge a
 *    keep-alive the new primary never sees, and the lease could expire inside the TTL just promised.
 * 2. The lessor renews while that confirmation is fresh. A successor is elected only after some
 *    member of the confirming quorum answered (a vote quorum meets it, and a member that voted in
 *    a later term confirms this one no more), so after the keep-alive arrived, and it gives every
 *    lease its TTL plus an election timeout. Renewing within `ageMaxMs` (half an election timeout)
 *    of the arrival ends every acknowledged TTL at least half an election timeout before the
 *    successor's deadline, even after a leadership transfer (which skips the followers' election
 *    timeout); that half absorbs clocks running at different rates: only durations, each on one
 *    member's monotonic clock, are compared, never two clocks' readings.
 * 3. The lessor is primary (it applied an entry of its own term, so it knows every lease granted
 *    before; the caller checks) and no grant or revoke of this lease is committed but not yet
 *    applied here: a lease whose grant a follower already acknowledged must not be reported gone,
 *    nor a revoked one renewed (those wait for the full read barrier; they are rare).
 *
 * It does not need this member to have applied everything committed, which is what a full read
 * barrier waits for. Under a slow leader disk that wait queues behind the leader's own fsyncs (the
 * entries committed meanwhile are applied only after the next Ready's fsync): measured in-process
 * with a 200/300/450 ms leader fsync and writes every 20 ms, 265/465/765 ms — past the bound, so
 * every keep-alive at the leader failed and every lease lapsed while KV stayed available.
 *
 * Options weighed: a leadership-only ReadIndex round (chosen: `RaftLoop.confirmLeadership`, whose
 * heartbeats, answers and resolution bypass the Ready being persisted), or freshness from the last
 * heartbeat round a quorum acknowledged (check-quorum lease reads). The latter answers without a
 * round trip, but its safety rests on the followers' election timers against the leader's clock
 * (bounded drift) and on the round's send time being tracked outside the pure core; the round
 * trip costs about one network delay and keeps the argument of point 1 exactly as it was.
 *
 * Owns: that decision. Never: renews (the lessor does) or waits for more than the rule needs.
 */
import { RampartError } from '../errors.js';
import type { Entry } from '../raft/types.js';

export interface LeadershipConfirmation {
  /** Resolves with the read index once a quorum confirmed the leadership after the call. */
  confirmLeadership(): Promise<number>;
  /** Resolves once a quorum confirmed the leadership and everything then committed is applied. */
  readBarrier(): Promise<void>;
}

/** What the leader holds between its applied and committed indexes. */
export interface CommittedNotApplied {
  appliedIndex(): number;
  /** Entries in [from, to]; undefined when some of them are no longer in the log. */
  entries(from: number, to: number): readonly Entry[] | undefined;
  /** The lease an entry's payload grants or revokes; undefined for any other request. Throws when it cannot tell. */
  leaseChangedBy(payload: Buffer): bigint | undefined;
}

/**
 * Grants and revokes committed but not yet applied here. Each committed entry is read once (a
 * committed entry never changes), so keep-alives under a long apply backlog do not each walk it.
 */
export class UnappliedLeaseChanges {
  /** Entries up to here were scanned (all committed when scanned). */
  private scannedThrough = 0;
  /** Lease → the last index found granting or revoking it; dropped once applied. */
  private readonly changedAt = new Map<bigint, number>();

  constructor(private readonly state: CommittedNotApplied) {}

  /**
   * Whether an entry not yet applied grants or revokes lease `id`, scanning the entries up to
   * `readIndex` (committed) not scanned yet. Conservative: a change after `readIndex` also counts,
   * and so does an entry out of the log or one that does not parse.
   */
  pending(id: bigint, readIndex: number): boolean {
    const applied = this.state.appliedIndex();
    for (const [lease, index] of this.changedAt) if (index <= applied) this.changedAt.delete(lease);
    if (readIndex <= applied) return false;
    const from = Math.max(applied, this.scannedThrough) + 1;
    if (from <= readIndex) {
      const entries = this.state.entries(from, readIndex);
      if (entries === undefined) return true;
      for (const entry of entries) {
        if (entry.type === 'normal' && entry.data.length > 0) {
          let lease: bigint | undefined;
          try {
            lease = this.state.leaseChangedBy(entry.data);
          } catch {
            return true;
          }
          if (lease !== undefined) this.changedAt.set(lease, entry.index);
        }
        this.scannedThrough = entry.index;
      }
    }
    return (this.changedAt.get(id) ?? 0) > applied;
  }
}

/**
 * Resolves when a keep-alive of lease `id` that arrived now may be answered from the lessor;
 * throws NoLeader (the caller retries, then at the next leader) when the confirmation came too
 * late. A pending grant or revoke of the lease waits for the full read barrier.
 */
export async function confirmKeepAlive(
  consensus: LeadershipConfirmation,
  changes: Pick<UnappliedLeaseChanges, 'pending'>,
  id: bigint,
  nowMs: () => number,
  ageMaxMs: number,
): Promise<void> {
  const askedAtMs = nowMs();
  const readIndex = await consensus.confirmLeadership();
  if (changes.pending(id, readIndex)) await consensus.readBarrier();
  if (nowMs() - askedAtMs > ageMaxMs) throw new RampartError('NoLeader', 'leadership confirmation too old');
}
