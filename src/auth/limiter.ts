/**
 * Failed-login limiting per (user, source address): after a few failures in a row, further attempts
 * from that source for that user are refused for a lockout that doubles with each failure (capped),
 * before any password is checked. A success clears the record. In memory; a cluster keeps the
 * records on its leader (src/server/member.ts, loginAttempt), so the limit holds cluster-wide.
 *
 * Records are bounded without ever being cleared all at once: the least recently failed record
 * goes first. Names that are no user have a pool of their own, so a flood of junk names cannot
 * push out the records that protect real users.
 */
export interface LoginLimiterOptions {
  readonly freeFailures: number;
  readonly baseLockoutMs: number;
  readonly maxLockoutMs: number;
  readonly now: () => number;
}

interface FailureRecord {
  failures: number;
  lockedUntil: number;
  lastFailure: number;
}

/** (user, source) records kept for existing users, and for names that are no user. */
export const loginRecordsMax = { knownUsers: 100_000, unknownNames: 20_000 } as const;

/** A bounded map in least-recently-failed order (a Map iterates in insertion order). */
class RecordPool {
  readonly records = new Map<string, FailureRecord>();
  constructor(private readonly capacity: number) {}

  get(key: string): FailureRecord | undefined {
    return this.records.get(key);
  }

  /** Stores `record` as the most recent, evicting the least recent one when full. */
  touch(key: string, record: FailureRecord): void {
    this.records.delete(key);
    if (this.records.size >= this.capacity) {
      const oldest = this.records.keys().next();
      if (oldest.done !== true) this.records.delete(oldest.value);
    }
    this.records.set(key, record);
  }

  delete(key: string): void {
    this.records.delete(key);
  }
}

export class LoginLimiter {
  private readonly known = new RecordPool(loginRecordsMax.knownUsers);
  private readonly unknown = new RecordPool(loginRecordsMax.unknownNames);
  private readonly options: LoginLimiterOptions;

  constructor(options: Partial<LoginLimiterOptions> = {}) {
    this.options = { freeFailures: 5, baseLockoutMs: 1_000, maxLockoutMs: 5 * 60_000, now: () => Date.now(), ...options };
  }

  private key(user: string, source: string): string {
    return `${user}\u0000${source}`;
  }

  get recordCount(): number {
    return this.known.records.size + this.unknown.records.size;
  }

  /** Milliseconds until the next attempt is allowed; 0 when it is allowed now. */
  blockedFor(user: string, source: string): number {
    const key = this.key(user, source);
    const record = this.known.get(key) ?? this.unknown.get(key);
    if (record === undefined) return 0;
    return Math.max(0, record.lockedUntil - this.options.now());
  }

  /** `known`: whether `user` names an existing user (its records are kept apart from junk names'). */
  failed(user: string, source: string, known = true): void {
    const key = this.key(user, source);
    const pool = known ? this.known : this.unknown;
    const now = this.options.now();
    let record = pool.get(key);
    if (record === undefined || now - record.lastFailure > this.options.maxLockoutMs) {
      record = { failures: 0, lockedUntil: 0, lastFailure: now };
    }
    record.failures += 1;
    record.lastFailure = now;
    const over = record.failures - this.options.freeFailures;
    if (over >= 0) record.lockedUntil = now + Math.min(this.options.maxLockoutMs, this.options.baseLockoutMs * 2 ** Math.min(over, 20));
    pool.touch(key, record);
  }

  succeeded(user: string, source: string): void {
    const key = this.key(user, source);
    this.known.delete(key);
    this.unknown.delete(key);
  }
}
