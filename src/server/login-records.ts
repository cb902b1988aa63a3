/**
 * Failed-login records in the replicated state, so that guessing limits survive a leader change and
 * a restart (issue 8, item 4). Owns: the `f` records and the meaning of a `login_records` entry.
 * Never: deciding a lockout (src/auth/limiter.ts does, on the leader) or reading a clock (applied
 * deterministically like every entry; the times come in the entry).
 *
 * A failed login is not a log entry: the leader collects the changes of existing users' records and
 * proposes them together at most every `loginRecordsFlushIntervalMs`, at most
 * `loginRecordsPerEntryMax` a time (src/server/member.ts). Names that are no user are never
 * replicated. So a flood of failed logins costs the log a few bounded entries a second, whatever
 * its size, and a leader killed loses at most one interval of counting.
 *
 * Record: 'f' + the first 16 bytes of SHA-256(user 0 source) → JSON {user, source, failures,
 * lockedUntilMs, changedMs}. The key holds no client bytes; the value is sealed like every record.
 * At most `loginRecordsMax.knownUsers` records are kept; past it the least recently changed goes
 * (one at a time, never all at once).
 */
import { createHash } from 'node:crypto';
import { RampartError } from '../errors.js';
import { loginRecordsMax, type LoginRecord } from '../auth/limiter.js';
import type { BatchOperation } from '../storage/mvcc/store.js';
import { prefix } from '../storage/schema.js';

/** How often the leader proposes the login records that changed since its last proposal. */
export const loginRecordsFlushIntervalMs = 250;
/** Records in one `login_records` entry, at most (each is a few hundred bytes). */
export const loginRecordsPerEntryMax = 512;
/** Longest user name or source address a record may hold (longer logins are refused unrecorded). */
const loginRecordFieldBytesMax = 256;

function keyOf(user: string, source: string): Buffer {
  const digest = createHash('sha256').update(user, 'utf8').update('\0').update(source, 'utf8').digest();
  return Buffer.concat([Buffer.of(prefix.loginRecord), digest.subarray(0, 16)]);
}

export function encodeLoginRecords(records: readonly LoginRecord[]): string {
  return JSON.stringify({ records });
}

function decodeRecord(value: unknown): LoginRecord | string {
  if (typeof value !== 'object' || value === null) return 'a record is not an object';
  const { user, source, failures, lockedUntilMs, changedMs } = value as Record<string, unknown>;
  if (typeof user !== 'string' || typeof source !== 'string') return 'user and source must be strings';
  if (Buffer.byteLength(user) > loginRecordFieldBytesMax || Buffer.byteLength(source) > loginRecordFieldBytesMax) return 'user or source too long';
  for (const number of [failures, lockedUntilMs, changedMs]) {
    if (typeof number !== 'number' || !Number.isSafeInteger(number) || number < 0) return 'counts and times must be non-negative integers';
  }
  return { user, source, failures: failures as number, lockedUntilMs: lockedUntilMs as number, changedMs: changedMs as number };
}

export function decodeLoginRecords(encoded: string): LoginRecord[] | string {
  let parsed: unknown;
  try {
    parsed = JSON.parse(encoded);
  } catch {
    return 'not JSON';
  }
  const records = (parsed as { records?: unknown } | null)?.records;
  if (!Array.isArray(records) || records.length > loginRecordsPerEntryMax) return `records must be an array of at most ${loginRecordsPerEntryMax}`;
  const decoded: LoginRecord[] = [];
  for (const value of records) {
    const record = decodeRecord(value);
    if (typeof record === 'string') return record;
    decoded.push(record);
  }
  return decoded;
}

export class LoginRecords {
  /** Stored records by key (latin1 of the storage key), least recently changed first. */
  private readonly records = new Map<string, LoginRecord>();

  /** `onRecord`: every record applied or loaded, for the member's limiter to merge. */
  constructor(private readonly onRecord: (record: LoginRecord) => void) {}

  get size(): number {
    return this.records.size;
  }

  clear(): void {
    this.records.clear();
  }

  /** Rebuilds the table from a stored record (start, snapshot install). */
  load(value: Buffer): void {
    const record = decodeRecord(JSON.parse(value.toString('utf8')) as unknown);
    if (typeof record === 'string') throw new Error(`assertion failed: a stored login record is invalid: ${record}`);
    this.records.set(keyOf(record.user, record.source).toString('latin1'), record);
    this.onRecord(record);
  }

  /** The records an applied entry writes and deletes. A cleared record (0 failures) is deleted. */
  apply(encoded: string, batch: BatchOperation[]): void {
    const records = decodeLoginRecords(encoded);
    if (typeof records === 'string') throw new RampartError('InvalidArgument', `login records: ${records}`);
    for (const record of records) {
      const key = keyOf(record.user, record.source);
      const name = key.toString('latin1');
      const previous = this.records.get(name);
      // An older version (a batch a deposed leader proposed late) never undoes a newer one.
      if (previous !== undefined && previous.changedMs > record.changedMs) continue;
      this.records.delete(name);
      if (record.failures === 0) {
        if (previous !== undefined) batch.push({ type: 'del', key });
      } else {
        if (this.records.size >= loginRecordsMax.knownUsers) this.evictOldest(batch);
        this.records.set(name, record);
        batch.push({ type: 'put', key, value: Buffer.from(JSON.stringify(record), 'utf8') });
      }
      this.onRecord(record);
    }
  }

  private evictOldest(batch: BatchOperation[]): void {
    const oldest = this.records.keys().next();
    if (oldest.done === true) return;
    this.records.delete(oldest.value);
    batch.push({ type: 'del', key: Buffer.from(oldest.value, 'latin1') });
  }

  /**
   * Records whose lockout and counting window are over at `nowMs` (the leader's clock), as
   * clearing records for the leader to propose: they protect nothing any more. At most `max`.
   */
  expired(nowMs: number, windowMs: number, max: number): LoginRecord[] {
    const expired: LoginRecord[] = [];
    // Least recently changed first, and a lockout never outlasts its window: the first record still
    // in its window ends the scan (times from different leaders' clocks may interleave a little).
    for (const record of this.records.values()) {
      if (expired.length >= max || nowMs - record.changedMs <= windowMs) break;
      if (record.lockedUntilMs > nowMs) continue;
      expired.push({ user: record.user, source: record.source, failures: 0, lockedUntilMs: 0, changedMs: record.changedMs });
    }
    return expired;
  }
}
