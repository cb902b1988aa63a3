/**
 * Failed-login limiting per (user, source address): after a few failures in a row, further attempts
 * from that source for that user are refused for a lockout that doubles with each failure (capped),
 * before any password is checked. A success clears the record. In memory; a cluster decides on its
 * leader (src/server/member.ts, loginAttempt), and the leader replicates the records of existing
 * users through the log in batches (`takeChanges`, src/server/login-records.ts): every member
 * `merge`s them, so a new leader or a restarted member keeps counting where the last one stopped.
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

/**
 * A record as replicated: `failures` 0 means cleared (a success). `changedMs` (wall clock) orders
 * two versions of one record: the later wins, so a replicated copy never undoes a newer local one.
 */
export interface LoginRecord {
  readonly user: string;
  readonly source: string;
  readonly failures: number;
  readonly lockedUntilMs: number;
  readonly changedMs: number;
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
  /**
   * Changes to existing users' records not yet handed out for replication, oldest first. Names
   * that are no user are never replicated: guessing them gains nothing, and a flood of them must
   * not become a flood of log entries. Bounded like the records themselves.
   */
  private readonly changes = new Map<string, LoginRecord>();
  private readonly options: LoginLimiterOptions;

  constructor(options: Partial<LoginLimiterOptions> = {}) {
    this.options = { freeFailures: 5, baseLockoutMs: 1_000, maxLockoutMs: 5 * 60_000, now: () => Date.now(), ...options };
  }

  private key(user: string, source: string): string {
    return `${user}\u0000${source}`;
  }

  /** How long a record counts after its last failure (then it starts again from zero). */
  get windowMs(): number {
    return this.options.maxLockoutMs;
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
    if (known) this.changed(key, { user, source, failures: record.failures, lockedUntilMs: record.lockedUntil, changedMs: now });
  }

  succeeded(user: string, source: string): void {
    const key = this.key(user, source);
    if (this.known.get(key) !== undefined) this.changed(key, { user, source, failures: 0, lockedUntilMs: 0, changedMs: this.options.now() });
    this.known.delete(key);
    this.unknown.delete(key);
  }

  private changed(key: string, record: LoginRecord): void {
    this.changes.delete(key);
    if (this.changes.size >= loginRecordsMax.knownUsers) {
      const oldest = this.changes.keys().next();
      if (oldest.done !== true) this.changes.delete(oldest.value);
    }
    this.changes.set(key, record);
  }

  /** Hands out at most `max` changes for replication, oldest first. */
  takeChanges(max: number): LoginRecord[] {
    const taken: LoginRecord[] = [];
    for (const [key, record] of this.changes) {
      if (taken.length >= max) break;
      this.changes.delete(key);
      taken.push(record);
    }
    return taken;
  }

  /** Gives back changes whose replication failed, unless the record changed again since. */
  returnChanges(records: readonly LoginRecord[]): void {
    for (const record of records) {
      const key = this.key(record.user, record.source);
      if (!this.changes.has(key)) this.changed(key, record);
    }
  }

  /** Takes in a replicated record, unless this limiter holds a newer version of it. */
  merge(record: LoginRecord): void {
    const key = this.key(record.user, record.source);
    const local = this.known.get(key);
    if (local !== undefined && local.lastFailure > record.changedMs) return;
    if (record.failures === 0) {
      this.known.delete(key);
      return;
    }
    this.known.touch(key, { failures: record.failures, lockedUntil: record.lockedUntilMs, lastFailure: record.changedMs });
  }
}
