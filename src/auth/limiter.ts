/**
 * Failed-login limiting per (user, source address): after a few failures in a row, further attempts
 * from that source for that user are refused for a lockout that doubles with each failure (capped),
 * before any password is checked. A success clears the record. Member-local and in memory.
 */
export interface LoginLimiterOptions {
  readonly freeFailures: number;
  readonly baseLockoutMs: number;
  readonly maxLockoutMs: number;
  readonly now: () => number;
}

interface Record {
  failures: number;
  lockedUntil: number;
  lastFailure: number;
}

const maxTracked = 100_000;

export class LoginLimiter {
  private readonly records = new Map<string, Record>();
  private readonly options: LoginLimiterOptions;

  constructor(options: Partial<LoginLimiterOptions> = {}) {
    this.options = { freeFailures: 5, baseLockoutMs: 1_000, maxLockoutMs: 5 * 60_000, now: () => Date.now(), ...options };
  }

  private key(user: string, source: string): string {
    return `${user}\u0000${source}`;
  }

  /** Milliseconds until the next attempt is allowed; 0 when it is allowed now. */
  blockedFor(user: string, source: string): number {
    const record = this.records.get(this.key(user, source));
    if (record === undefined) return 0;
    return Math.max(0, record.lockedUntil - this.options.now());
  }

  failed(user: string, source: string): void {
    const key = this.key(user, source);
    const now = this.options.now();
    let record = this.records.get(key);
    if (record === undefined || now - record.lastFailure > this.options.maxLockoutMs) {
      record = { failures: 0, lockedUntil: 0, lastFailure: now };
      if (this.records.size >= maxTracked) this.evict(now);
      this.records.set(key, record);
    }
    record.failures += 1;
    record.lastFailure = now;
    const over = record.failures - this.options.freeFailures;
    if (over >= 0) record.lockedUntil = now + Math.min(this.options.maxLockoutMs, this.options.baseLockoutMs * 2 ** Math.min(over, 20));
  }

  succeeded(user: string, source: string): void {
    this.records.delete(this.key(user, source));
  }

  private evict(now: number): void {
    for (const [key, record] of this.records) {
      if (now - record.lastFailure > this.options.maxLockoutMs) this.records.delete(key);
    }
    if (this.records.size >= maxTracked) this.records.clear();
  }
}
