/**
 * Leases: a TTL that, when it runs out, deletes every key attached to it.
 *
 * Grant and revoke are replicated (applied from the log); keep-alives are not: the leader keeps
 * expiry times in memory and refreshes every lease to its full TTL when it becomes leader (or
 * restarts), as etcd does, so a lease never expires early because of a leader change.
 * Owns: the lease table and key attachments. Never: deletes keys itself (the applier does, in one
 * revision, when a revoke is applied).
 */
import { RampartError } from '../errors.js';

export interface Lease {
  readonly id: bigint;
  readonly grantedTtlSeconds: number;
  expiresAtMs: number;
  readonly keys: Set<string>;
}

/** etcd's floor for a lease TTL with a 1 s election timeout: shorter leases could expire across an election. */
export const leaseTtlMinSeconds = 2;
export const leaseTtlMaxSeconds = 9_000_000_000;

export class Lessor {
  private readonly leases = new Map<bigint, Lease>();

  constructor(private readonly nowMs: () => number) {}

  has(id: bigint): boolean {
    return this.leases.has(id);
  }

  get(id: bigint): Lease | undefined {
    return this.leases.get(id);
  }

  grant(id: bigint, ttlSeconds: number): Lease {
    if (this.leases.has(id)) {
      throw new RampartError('LeaseExists');
    }
    const grantedTtlSeconds = Math.max(ttlSeconds, leaseTtlMinSeconds);
    const lease: Lease = { id, grantedTtlSeconds, expiresAtMs: this.nowMs() + grantedTtlSeconds * 1000, keys: new Set() };
    this.leases.set(id, lease);
    return lease;
  }

  /** Removes the lease and returns the keys (index form) that were attached to it. */
  revoke(id: bigint): string[] {
    const lease = this.leases.get(id);
    if (lease === undefined) {
      throw new RampartError('LeaseNotFound');
    }
    this.leases.delete(id);
    return [...lease.keys];
  }

  attach(id: bigint, indexKey: string): void {
    this.leases.get(id)?.keys.add(indexKey);
  }

  detach(id: bigint, indexKey: string): void {
    this.leases.get(id)?.keys.delete(indexKey);
  }

  /** Keep-alive: restarts the lease's full TTL. Returns the TTL in seconds. */
  renew(id: bigint): number {
    const lease = this.leases.get(id);
    if (lease === undefined) {
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
    return Math.max(0, Math.ceil((lease.expiresAtMs - this.nowMs()) / 1000));
  }

  /** On becoming leader: every lease gets its full TTL again. */
  refreshAll(): void {
    const now = this.nowMs();
    for (const lease of this.leases.values()) {
      lease.expiresAtMs = now + lease.grantedTtlSeconds * 1000;
    }
  }

  expired(): bigint[] {
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
  }

  ids(): bigint[] {
    return [...this.leases.keys()];
  }
}
