/**
 * The stored forms of Raft log entries and the hard state (the values the segment files hold, see
 * `wal/`), and `LogStore`: where members before the segment files kept the log, in the LevelDB
 * database. It is kept to read such a log once, when `wal/migration.ts` moves it into segment files.
 *
 * Log entry record: key 'e' + index (u64 BE); value layout (version 1):
 *   offset 0   u32  CRC-32 of bytes [4, end)
 *   offset 4   u8   record format version (1)
 *   offset 5   u64  term
 *   offset 13  u8   entry type (0 = normal, 1 = configuration change)
 *   offset 14       entry data
 * Hard state record: key 'h'; value: u32 CRC-32 of the rest, u8 version (1), u64 term,
 *   u64 commit, then the vote (member id, UTF-8).
 * Log start record: key 'm' + 'logStart'; value: u32 CRC, u8 version, u64 index, u64 term — the
 *   entry just before the first stored one (0, 0 until the log is first compacted).
 *
 * A record whose CRC does not match, a gap in indexes, or entries that do not follow the log start
 * is corruption: `open` refuses it with a message naming the record, and the member does not start.
 * LevelDB's own write-ahead log drops a torn last write; that write was never acknowledged, because
 * every save fsyncs before anything that depends on it is sent or applied.
 */
import { crc32 } from 'node:zlib';
import type { Entry, EntryType, HardState } from '../raft/types.js';
import { readUint64, writeUint64 } from './encoding.js';
import type { BatchOperation, Database } from './mvcc/store.js';
import { metaKey, prefix } from './schema.js';
import { instruments } from '../instruments.js';

export class LogCorruptionError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'LogCorruptionError';
  }
}

const recordFormatVersion = 1;
/** Entries, and bytes, read from the database per batch while loading the log. */
const loadBatchEntriesMax = 1_000;
const loadBatchBytesMax = 4 * 1024 * 1024;
const entryHeaderBytes = 14;
const entryTypeCodes: Record<EntryType, number> = { normal: 0, configurationChange: 1 };

export function encodeLogKey(index: number): Buffer {
  const key = Buffer.allocUnsafe(9);
  key[0] = prefix.logEntry;
  writeUint64(key, index, 1);
  return key;
}

export const hardStateKey = Buffer.of(prefix.hardState);

/**
 * The additional data a sealed group of `count` log entries from `firstIndex` is sealed under (the
 * Raft log's segment files, `wal/log-records.ts`): 'e' + index(8) + count(4). Never a database key;
 * its length (13) differs from a single entry's key (9), so neither opens as the other.
 */
export function encodeLogGroupKey(firstIndex: number, count: number): Buffer {
  const key = Buffer.allocUnsafe(13);
  key[0] = prefix.logEntry;
  writeUint64(key, firstIndex, 1);
  key.writeUInt32BE(count, 9);
  return key;
}

function sealed(body: Buffer): Buffer {
  const record = Buffer.allocUnsafe(4 + body.length);
  body.copy(record, 4);
  record.writeUInt32BE(crc32(body), 0);
  return record;
}

function unsealed(what: string, record: Buffer, minimumBytes: number): Buffer {
  if (record.length < 4 + minimumBytes) {
    throw new LogCorruptionError(`${what}: record is ${record.length} bytes, shorter than its header`);
  }
  const body = record.subarray(4);
  if (record.readUInt32BE(0) !== crc32(body)) {
    throw new LogCorruptionError(`${what}: checksum mismatch`);
  }
  if (body[0] !== recordFormatVersion) {
    throw new LogCorruptionError(`${what}: unknown record format ${body[0]}`);
  }
  return body;
}

export function encodeLogRecord(entry: Entry): Buffer {
  const record = Buffer.allocUnsafe(logRecordBytes(entry));
  writeLogRecord(entry, record, 0);
  return record;
}

/** The bytes `encodeLogRecord(entry)` takes. */
export function logRecordBytes(entry: Entry): number {
  return entryHeaderBytes + entry.data.length;
}

/**
 * Writes `encodeLogRecord(entry)` into `target` from `offset` (`logRecordBytes(entry)` bytes): in
 * place, one copy of the entry's data (this runs for every entry; the segment files' frame takes it
 * this way, without a record of its own in between).
 */
export function writeLogRecord(entry: Entry, target: Buffer, offset: number): void {
  const end = offset + logRecordBytes(entry);
  target[offset + 4] = recordFormatVersion;
  writeUint64(target, entry.term, offset + 5);
  target[offset + 13] = entryTypeCodes[entry.type];
  entry.data.copy(target, offset + entryHeaderBytes);
  target.writeUInt32BE(crc32(target.subarray(offset + 4, end)), offset);
}

export function decodeLogRecord(index: number, record: Buffer): Entry {
  const body = unsealed(`log entry ${index}`, record, entryHeaderBytes - 4);
  const code = body[9];
  const type: EntryType | undefined = code === 0 ? 'normal' : code === 1 ? 'configurationChange' : undefined;
  if (type === undefined) throw new LogCorruptionError(`log entry ${index}: unknown entry type ${code}`);
  return { index, term: readUint64(body, 1), type, data: Buffer.from(body.subarray(10)) };
}

export function encodeHardState(state: HardState): Buffer {
  const vote = Buffer.from(state.vote, 'utf8');
  const body = Buffer.allocUnsafe(17 + vote.length);
  body[0] = recordFormatVersion;
  writeUint64(body, state.term, 1);
  writeUint64(body, state.commit, 9);
  vote.copy(body, 17);
  return sealed(body);
}

export function decodeHardState(record: Buffer): HardState {
  const body = unsealed('hard state', record, 17);
  return { term: readUint64(body, 1), commit: readUint64(body, 9), vote: body.subarray(17).toString('utf8') };
}

function encodeLogStart(start: { index: number; term: number }): Buffer {
  const body = Buffer.allocUnsafe(17);
  body[0] = recordFormatVersion;
  writeUint64(body, start.index, 1);
  writeUint64(body, start.term, 9);
  return sealed(body);
}

function decodeLogStart(record: Buffer): { index: number; term: number } {
  const body = unsealed('log start', record, 17);
  return { index: readUint64(body, 1), term: readUint64(body, 9) };
}

export interface LoadedLog {
  readonly hardState: HardState;
  readonly logStart: { index: number; term: number };
  readonly entries: Entry[];
}

export interface LogUpdate {
  readonly hardState?: HardState | undefined;
  readonly entries: readonly Entry[];
  /** Discard every entry and start the log after this point (a snapshot was installed). */
  readonly resetTo?: { index: number; term: number } | undefined;
  /** More operations to commit atomically with this update (state machine changes). */
  readonly extra?: readonly BatchOperation[];
}

export class LogStore {
  private lastIndexValue: number;
  private syncedHardState: HardState;

  private constructor(
    private readonly db: Database,
    private startValue: { index: number; term: number },
    lastIndex: number,
    hardState: HardState,
  ) {
    this.lastIndexValue = lastIndex;
    this.syncedHardState = hardState;
  }

  /** Loads and verifies everything; throws LogCorruptionError on any damage. */
  static async open(db: Database): Promise<{ store: LogStore; loaded: LoadedLog }> {
    const rawHard = await db.get(hardStateKey);
    const hardState = rawHard === undefined ? { term: 0, vote: '', commit: 0 } : decodeHardState(rawHard);
    const rawStart = await db.get(metaKey.logStart);
    const logStart = rawStart === undefined ? { index: 0, term: 0 } : decodeLogStart(rawStart);
    const entries: Entry[] = [];
    let expected = logStart.index + 1;
    // In batches, the next one read (and opened on a worker thread) while this one is decoded.
    const iterator = db.iterator({ gte: encodeLogKey(0), lt: Buffer.of(prefix.logEntry + 1), highWaterMarkBytes: loadBatchBytesMax, bulk: true });
    try {
      for (;;) {
        const batch = await iterator.nextv(loadBatchEntriesMax);
        if (batch.length === 0) break;
        for (const [key, value] of batch) {
          const index = readUint64(key, 1);
          if (index <= logStart.index) continue; // left behind by an interrupted compaction
          if (index !== expected) {
            throw new LogCorruptionError(`log has a gap: entry ${expected} is missing before ${index}`);
          }
          entries.push(decodeLogRecord(index, value));
          expected = index + 1;
        }
      }
    } finally {
      await iterator.close();
    }
    const lastIndex = logStart.index + entries.length;
    if (hardState.commit > lastIndex) {
      throw new LogCorruptionError(`hard state commit ${hardState.commit} is beyond the last log entry ${lastIndex}`);
    }
    return { store: new LogStore(db, logStart, lastIndex, hardState), loaded: { hardState, logStart, entries } };
  }

  get logStart(): { index: number; term: number } {
    return this.startValue;
  }

  get lastIndex(): number {
    return this.lastIndexValue;
  }

  /** Writes the update in one atomic batch and fsyncs before resolving. */
  async save(update: LogUpdate): Promise<void> {
    const operations: BatchOperation[] = [];
    if (update.resetTo !== undefined) {
      for await (const key of this.db.keys({ gte: encodeLogKey(0), lt: Buffer.of(prefix.logEntry + 1) })) {
        operations.push({ type: 'del', key });
      }
      operations.push({ type: 'put', key: metaKey.logStart, value: encodeLogStart(update.resetTo) });
    }
    const first = update.entries[0];
    if (first !== undefined && update.resetTo === undefined) {
      // Entries from `first` on replace whatever the log held there (a conflicting suffix).
      for (let index = first.index; index <= this.lastIndexValue; index++) {
        operations.push({ type: 'del', key: encodeLogKey(index) });
      }
    }
    for (const entry of update.entries) {
      operations.push({ type: 'put', key: encodeLogKey(entry.index), value: encodeLogRecord(entry) });
    }
    if (update.hardState !== undefined) {
      operations.push({ type: 'put', key: hardStateKey, value: encodeHardState(update.hardState) });
    }
    operations.push(...(update.extra ?? []));
    if (operations.length === 0) return;
    // A commit index alone need not be durable (it is learned again from the leader); entries, a
    // new term or a vote must be on disk before anything that depends on them is sent.
    const hard = update.hardState;
    const mustSync = update.entries.length > 0 || update.resetTo !== undefined || (update.extra ?? []).length > 0 ||
      (hard !== undefined && (hard.term !== this.syncedHardState.term || hard.vote !== this.syncedHardState.vote));
    const started = performance.now();
    await this.db.batch(operations, { sync: mustSync });
    if (mustSync) instruments.walFsyncSeconds.recordSince(started);
    if (hard !== undefined && mustSync) this.syncedHardState = hard;
    if (update.resetTo !== undefined) {
      this.startValue = update.resetTo;
      this.lastIndexValue = update.resetTo.index;
    }
    const last = update.entries[update.entries.length - 1];
    if (last !== undefined) this.lastIndexValue = last.index;
  }

  /** Drops entries up to and including `index` (their effects are in a snapshot or applied state). */
  async compactThrough(index: number, term: number): Promise<void> {
    if (index <= this.startValue.index) return;
    await this.db.batch([{ type: 'put', key: metaKey.logStart, value: encodeLogStart({ index, term }) }], { sync: true });
    this.startValue = { index, term };
    await this.db.clear({ gte: encodeLogKey(0), lte: encodeLogKey(index) });
  }
}
