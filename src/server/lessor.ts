/**
 * Leases: a TTL that, when it runs out, deletes every key attached to it.
 *
 * Grant and revoke are replicated (applied from the log); keep-alives are not: expiry times live in
 * the memory of one member, the *primary* lessor. As etcd's lessor: a member becomes primary only
 * once it leads and has applied every entry committed before its term (so it knows every lease the
 * previous leader granted), and promotion gives every lease its full TTL plus an election timeout
 * (a keep-alive the previous leader acknowledged is always covered). Any other lessor keeps no
 * deadline at all: it never expires a lease and answers no keep-alive. The Raft role alone is not
 * enough: it flips before the new leader has caught up, and a follower's deadlines are stale.
 * Owns: the lease table, key attachments, and the primary's deadlines. Never: deletes keys itself
 * (the applier does, in one revision, when a revoke is applied).
 */
import { RampartError } from '../errors.js';

export interface Lease {
  readonly id: bigint;
  readonly grantedTtlSeconds: number;
  /** The user who granted it ('' when auth was off): only they or root may use it (lease-ownership.ts). */
  readonly owner: string;
  expiresAtMs: number;
  readonly keys: Set<string>;
}

/** etcd's floor for a lease TTL with a 1 s election timeout: shorter leases could expire across an election. */
export const leaseTtlMinSeconds = 2;
/**
 * Rampart's ceiling (etcd's is 9e9 s, ~285 years): a lease outliving its holder keeps its keys for
 * this long at most. Kubernetes' leases last seconds to an hour (--event-ttl, 1 h by default).
 */
export const leaseTtlMaxSeconds = 30 * 86_400;
/** Leases one user may hold at once (Rampart's limit; etcd has none). */
export const leasesPerUserMax = 10_000;

/** What decides whether this member's lessor is primary; see `Lessor.followLeadership`. */
export interface Leadership {
  /** The Raft term this member leads, or undefined when it does not lead. */
  readonly leaderTerm: number | undefined;
  /** This member has applied an entry of its own leader term (hence everything committed before it). */
  readonly appliedOwnTerm: boolean;
}

export class Lessor {
  private readonly leases = new Map<bigint, Lease>();
  private readonly ownedCounts = new Map<string, number>();
  /** The term whose leader promoted this lessor; undefined while not primary. */
  private primaryTerm: number | undefined;

  constructor(private readonly nowMs: () => number) {}

  has(id: bigint): boolean {
    return this.leases.has(id);
  }

  get(id: bigint): Lease | undefined {
    return this.leases.get(id);
  }

  /** Leases `owner` holds now. */
  ownedBy(owner: string): number {
    return this.ownedCounts.get(owner) ?? 0;
  }

  grant(id: bigint, ttlSeconds: number, owner = ''): Lease {
    if (this.leases.has(id)) {
      throw new RampartError('LeaseExists');
    }
    const grantedTtlSeconds = Math.max(ttlSeconds, leaseTtlMinSeconds);
    // Only the primary keeps deadlines; it starts a new lease's TTL at the grant.
    const expiresAtMs = this.isPrimary ? this.nowMs() + grantedTtlSeconds * 1000 : Infinity;
    const lease: Lease = { id, grantedTtlSeconds, owner, expiresAtMs, keys: new Set() };
    this.leases.set(id, lease);
    this.ownedCounts.set(owner, this.ownedBy(owner) + 1);
    return lease;
  }

  /** Removes the lease and returns the keys (index form) that were attached to it. */
  revoke(id: bigint): string[] {
    const lease = this.leases.get(id);
    if (lease === undefined) {
      throw new RampartError('LeaseNotFound');
    }
    this.leases.delete(id);
    const owned = this.ownedBy(lease.owner) - 1;
    if (owned > 0) this.ownedCounts.set(lease.owner, owned);
    else this.ownedCounts.delete(lease.owner);
    return [...lease.keys];
  }

  attach(id: bigint, indexKey: string): void {
    this.leases.get(id)?.keys.add(indexKey);
  }

  detach(id: bigint, indexKey: string): void {
    this.leases.get(id)?.keys.delete(indexKey);
  }

  get isPrimary(): boolean {
    return this.primaryTerm !== undefined;
  }

  /**
   * Called whenever the Raft role or the applied index may have changed. Demotes when this member
   * no longer leads the term it was promoted in; promotes once it leads and has caught up.
   * `extensionMs` (an election timeout) covers keep-alives the previous primary answered until it
   * learned it was deposed.
   */
  followLeadership(leadership: Leadership, extensionMs: number): void {
    if (this.primaryTerm !== undefined && this.primaryTerm !== leadership.leaderTerm) {
      this.primaryTerm = undefined;
      for (const lease of this.leases.values()) lease.expiresAtMs = Infinity;
    }
    if (this.primaryTerm === undefined && leadership.leaderTerm !== undefined && leadership.appliedOwnTerm) {
      this.primaryTerm = leadership.leaderTerm;
      const now = this.nowMs();
      for (const lease of this.leases.values()) {
        lease.expiresAtMs = now + lease.grantedTtlSeconds * 1000 + extensionMs;
      }
    }
  }

  /**
   * Keep-alive: restarts the lease's full TTL. Returns the TTL in seconds. Only the primary
   * answers (NoLeader otherwise: the caller retries at the leader); an expired lease is gone, as
   * in etcd, even before its revoke is applied.
   */
  renew(id: bigint): number {
    if (!this.isPrimary) {
      throw new RampartError('NoLeader');
    }
    const lease = this.leases.get(id);
    if (lease === undefined || lease.expiresAtMs <= this.nowMs()) {
      throw new RampartError('LeaseNotFound');
    }
    lease.expiresAtMs = this.nowMs() + lease.grantedTtlSeconds * 1000;
    return lease.grantedTtlSeconds;
  }

  /** Seconds left, rounded up as etcd does; -1 when unknown. */
  remainingSeconds(id: bigint): number {
    const lease = this.leases.get(id);
    if (lease === undefined) {
      return -1;
    }
    if (lease.expiresAtMs === Infinity) {
      return lease.grantedTtlSeconds;
    }
    return Math.max(0, Math.ceil((lease.expiresAtMs - this.nowMs()) / 1000));
  }

  /** Leases past their deadline; always none unless primary. */
  expired(): bigint[] {
    if (!this.isPrimary) {
      return [];
    }
    const now = this.nowMs();
    const ids: bigint[] = [];
    for (const lease of this.leases.values()) {
      if (lease.expiresAtMs <= now) {
        ids.push(lease.id);
      }
    }
    return ids;
  }

  clear(): void {
    this.leases.clear();
    this.ownedCounts.clear();
  }

  ids(): bigint[] {
    return [...this.leases.keys()];
  }
}
