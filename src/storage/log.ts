/**
 * The durable log: entries appended in index order, each record checksummed.
 *
 * Record: key 'e' + index (u64 BE); value layout (version 1):
 *   offset 0   u32  CRC-32 of bytes [4, end)
 *   offset 4   u8   record format version (1)
 *   offset 5   u64  term
 *   offset 13  u8   entry type (0 = normal, 1 = configuration change)
 *   offset 14       entry data
 * A record whose CRC does not match, or a gap in indexes, is corruption: `open` refuses it with a
 * message naming the index, and the member does not start. LevelDB's own write-ahead log repairs a
 * torn tail (an incomplete last write is dropped, and was never acknowledged: appends fsync first).
 */
import { crc32 } from 'node:zlib';
import { assert } from '../errors.js';
import { readUint64, writeUint64 } from './encoding.js';
import type { Database } from './mvcc/store.js';
import { prefix } from './schema.js';

export const entryType = { normal: 0, configurationChange: 1 } as const;

export interface LogEntry {
  readonly index: number;
  readonly term: number;
  readonly type: number;
  readonly data: Buffer;
}

export class LogCorruptionError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'LogCorruptionError';
  }
}

const recordFormatVersion = 1;
const headerBytes = 14;

export function encodeLogKey(index: number): Buffer {
  const key = Buffer.allocUnsafe(9);
  key[0] = prefix.logEntry;
  writeUint64(key, index, 1);
  return key;
}

export function encodeLogRecord(entry: LogEntry): Buffer {
  const record = Buffer.allocUnsafe(headerBytes + entry.data.length);
  record[4] = recordFormatVersion;
  writeUint64(record, entry.term, 5);
  record[13] = entry.type;
  entry.data.copy(record, headerBytes);
  record.writeUInt32BE(crc32(record.subarray(4)), 0);
  return record;
}

export function decodeLogRecord(index: number, record: Buffer): LogEntry {
  if (record.length < headerBytes) {
    throw new LogCorruptionError(`log entry ${index}: record is ${record.length} bytes, shorter than its header`);
  }
  if (record.readUInt32BE(0) !== crc32(record.subarray(4))) {
    throw new LogCorruptionError(`log entry ${index}: checksum mismatch`);
  }
  if (record[4] !== recordFormatVersion) {
    throw new LogCorruptionError(`log entry ${index}: unknown record format ${record[4]}`);
  }
  return { index, term: readUint64(record, 5), type: record[13] ?? 0, data: Buffer.from(record.subarray(headerBytes)) };
}

export class DurableLog {
  private firstIndexValue = 1;
  private lastIndexValue = 0;
  private lastTermValue = 0;

  private constructor(private readonly db: Database) {}

  /** Opens the log and verifies every record; throws LogCorruptionError on any damage. */
  static async open(db: Database): Promise<DurableLog> {
    const log = new DurableLog(db);
    let expected: number | undefined;
    for await (const [key, value] of db.iterator({ gte: encodeLogKey(0), lt: Buffer.of(prefix.logEntry + 1) })) {
      const index = readUint64(key, 1);
      if (expected === undefined) {
        log.firstIndexValue = index;
      } else if (index !== expected) {
        throw new LogCorruptionError(`log has a gap: entry ${expected} is missing before ${index}`);
      }
      const entry = decodeLogRecord(index, value);
      log.lastIndexValue = index;
      log.lastTermValue = entry.term;
      expected = index + 1;
    }
    if (expected === undefined) {
      log.firstIndexValue = 1;
    }
    return log;
  }

  get firstIndex(): number {
    return this.firstIndexValue;
  }

  get lastIndex(): number {
    return this.lastIndexValue;
  }

  get lastTerm(): number {
    return this.lastTermValue;
  }

  /**
   * For an empty log (new, or restored from a snapshot): the next entry will be `index + 1`.
   */
  startAfter(index: number, term: number): void {
    assert(this.lastIndexValue === 0 || this.lastIndexValue >= index, 'log cannot move backwards past its entries');
    if (this.lastIndexValue < index) {
      this.firstIndexValue = index + 1;
      this.lastIndexValue = index;
      this.lastTermValue = term;
    }
  }

  /** Appends entries and fsyncs before resolving: an appended entry survives a crash. */
  async append(entries: readonly LogEntry[]): Promise<void> {
    if (entries.length === 0) {
      return;
    }
    const operations = entries.map((entry, position) => {
      assert(entry.index === this.lastIndexValue + 1 + position, 'log entries must be contiguous');
      return { type: 'put' as const, key: encodeLogKey(entry.index), value: encodeLogRecord(entry) };
    });
    await this.db.batch(operations, { sync: true });
    const last = entries[entries.length - 1];
    assert(last !== undefined, 'non-empty append');
    this.lastIndexValue = last.index;
    this.lastTermValue = last.term;
  }

  /** Entries in [from, to], verified. */
  async entries(from: number, to: number): Promise<LogEntry[]> {
    const entries: LogEntry[] = [];
    if (from > to) {
      return entries;
    }
    for await (const [key, value] of this.db.iterator({ gte: encodeLogKey(from), lte: encodeLogKey(to) })) {
      entries.push(decodeLogRecord(readUint64(key, 1), value));
    }
    return entries;
  }

  /**
   * Drops entries up to and including `index` once the state they produced is durable elsewhere.
   * The last entry is always kept, so the log still knows its last index and term after a restart.
   */
  async compactThrough(index: number): Promise<void> {
    const through = Math.min(index, this.lastIndexValue - 1);
    if (through < this.firstIndexValue) {
      return;
    }
    await this.db.clear({ gte: encodeLogKey(this.firstIndexValue), lte: encodeLogKey(through) });
    this.firstIndexValue = through + 1;
  }
}
