/**
 * The Raft log (entries, hard state, where the log starts) in append-only segment files of its
 * own, as etcd's WAL keeps it: one frame per Ready, fdatasynced before the Ready's messages go
 * out or its entries are applied; a new preallocated segment when one fills; segments wholly
 * behind the log's start deleted. The member's LevelDB database holds the state machine only, so
 * its writes never queue behind the log's sync, and LevelDB never flushes or compacts log entries.
 *
 * Replaying the segments in order rebuilds the log (`log-records.ts` says how each record acts).
 * Each segment's first frame carries the segment header, the log start and the hard state, so
 * older segments can go once the log starts at or after the new segment's first index.
 *
 * A torn last write (crash mid-write: a sector of it still zeros) is cut off at open; damage
 * anywhere else, the last write's included (whole, but failing its CRC), is refused with a
 * LogCorruptionError naming the file and offset (`frame.ts`). A commit index alone is not synced:
 * it is written with a later frame that must be durable, at most every `commitWriteIntervalMs`
 * (Raft learns it again from the leader, and a restarted member counts what it applied as
 * committed; acknowledged entries are durable either way, as they are written before any answer).
 *
 * Sealing: every stored entry and hard state is sealed by the member's keyring exactly as in the
 * database (additional data: the LevelDB key the record would have); the entries of one write are
 * sealed together as one record (`log-records.ts` type 5, at most `sealedGroupEntriesMax` entries
 * and `sealedGroupBytesMax` bytes a group), a lone entry alone as before. After a key rotation, or
 * while a plaintext member migrates to encryption, `resealIfNeeded` rewrites the live log into a
 * new segment under the active key and deletes the older segments, before any older key is retired.
 */
import { mkdir, rm, type FileHandle } from 'node:fs/promises';
import path from 'node:path';
import type { Entry, HardState } from '../../raft/types.js';
import { looksSealed, sealedDekId } from '../../encryption/sealed-record.js';
import { instruments } from '../../instruments.js';
import { LogCorruptionError, decodeHardState, decodeLogRecord, encodeHardState, encodeLogGroupKey, encodeLogKey, encodeLogRecord, hardStateKey, logRecordBytes, writeLogRecord, type LoadedLog } from '../log.js';
import { buildFrame, frameBytes } from './frame.js';
import { decodeEntryGroup, decodeRecords, encodeEntryGroup, recordsBytes, writeRecords, type LogRecord, type WrittenRecord } from './log-records.js';
import { SegmentFile, listSegments, openDirectory, preallocatingName, prepareSpare, syncDirectory, type Spare } from './segment-file.js';

/** Preallocated size of a segment file (a frame larger than this gets a segment its own size). */
export const segmentBytesDefault = 8 * 1024 * 1024;
/**
 * A commit index that moved, with nothing else of the hard state, is written with a frame of
 * entries at most this often (and in every segment's first frame, and whenever term or vote
 * change). Each hard state written is one more record to seal, once per Ready on every member;
 * a commit index read back older than the one reached costs nothing but a later apply (see above).
 */
export const commitWriteIntervalMsDefault = 100;

/** The most entries, and plaintext bytes, one sealed group holds (a write with more seals several). */
export const sealedGroupEntriesMax = 1024;
export const sealedGroupBytesMax = 1024 * 1024;

/** The keyring as the log sees it: seals and opens values, keyed like the database's records. */
export interface LogSealer {
  readonly activeDekId: number;
  /** Seals each [key, plaintext] (waiting for room under the active key when needed). */
  seal(records: readonly (readonly [Buffer, Buffer])[]): Promise<Buffer[]>;
  open(key: Buffer, stored: Buffer): Buffer;
}

export interface LogUpdate {
  readonly hardState?: HardState | undefined;
  readonly entries: readonly Entry[];
  /** Discard every entry and start the log after this point (a snapshot was installed). */
  readonly resetTo?: { index: number; term: number } | undefined;
}

export interface SegmentedLogOptions {
  readonly directory: string;
  readonly sealer: LogSealer | undefined;
  readonly segmentBytes?: number | undefined;
  /** `commitWriteIntervalMsDefault` unless given (0: with every frame). */
  readonly commitWriteIntervalMs?: number | undefined;
}

interface Segment {
  readonly file: SegmentFile;
  readonly firstIndex: number;
  /** Values stored in it (entries and hard states, superseded ones too) per DEK id (0: plaintext). */
  readonly dekRecords: Map<number, number>;
}

function dekIdOf(stored: Buffer, sealer: LogSealer | undefined): number {
  return sealer !== undefined && looksSealed(stored) ? sealedDekId(stored) : 0;
}

function countRecord(segment: Segment, dekId: number, values = 1): void {
  segment.dekRecords.set(dekId, (segment.dekRecords.get(dekId) ?? 0) + values);
}

/** Counts the values a record stores (entries and hard states) under their DEK in `segment`. */
function countStored(segment: Segment, record: WrittenRecord, sealer: LogSealer | undefined): void {
  if (record.type === 'entry' || record.type === 'hardState') countRecord(segment, dekIdOf(record.value, sealer));
  else if (record.type === 'sealedEntries') countRecord(segment, dekIdOf(record.value, sealer), record.count);
  else if (record.type === 'plainEntry') countRecord(segment, 0);
}

/**
 * Runs of `entries` sealed as one record each, as [start, end) positions: consecutive indexes, at
 * most `sealedGroupEntriesMax` entries and `sealedGroupBytesMax` bytes (an entry larger than that
 * alone).
 */
function sealedRuns(entries: readonly Entry[]): [number, number][] {
  const runs: [number, number][] = [];
  let start = 0;
  let bytes = 0;
  for (let position = 0; position < entries.length; position++) {
    const entry = entries[position] as Entry;
    const entryBytes = 4 + logRecordBytes(entry);
    const previous = entries[position - 1];
    if (position > start && (position - start >= sealedGroupEntriesMax || bytes + entryBytes > sealedGroupBytesMax || previous === undefined || entry.index !== previous.index + 1)) {
      runs.push([start, position]);
      start = position;
      bytes = 0;
    }
    bytes += entryBytes;
  }
  if (entries.length > start) runs.push([start, entries.length]);
  return runs;
}

/** Replays segments' records into the log they describe. */
class Replay {
  logStart = { index: 0, term: 0 };
  /** Entries from `knownFrom` on; entries between the log start and `knownFrom` are missing. */
  entries: Entry[] = [];
  knownFrom = 1;
  hardState: HardState = { term: 0, vote: '', commit: 0 };
  private started = false;
  private pendingFirstIndex: number | undefined;

  constructor(private readonly sealer: LogSealer | undefined) {}

  get lastIndex(): number {
    return this.knownFrom + this.entries.length - 1;
  }

  apply(record: LogRecord, where: string): void {
    switch (record.type) {
      case 'header':
        if (!this.started) {
          this.knownFrom = record.firstIndex;
          this.started = true;
        } else {
          // Checked at the log start that follows: a reset segment may start anywhere (a crash
          // can leave the segments it replaced behind it).
          this.pendingFirstIndex = record.firstIndex;
        }
        return;
      case 'logStart': {
        const first = this.pendingFirstIndex;
        this.pendingFirstIndex = undefined;
        if (first !== undefined && !record.reset && first > this.lastIndex + 1) {
          throw new LogCorruptionError(`${where}: segment starts at entry ${first}, after the last entry ${this.lastIndex} of the one before`);
        }
        this.applyStart(record);
        return;
      }
      case 'hardState':
        this.hardState = decodeHardState(this.sealer === undefined ? record.value : this.sealer.open(hardStateKey, record.value));
        return;
      case 'entry': {
        const index = record.index;
        if (index <= this.logStart.index) return;
        this.checkNoGap(index, where);
        const key = encodeLogKey(index);
        this.put(decodeLogRecord(index, this.sealer === undefined ? record.value : this.sealer.open(key, record.value)));
        return;
      }
      case 'sealedEntries': {
        // A group wholly behind the log start is not opened, as a lone entry there is not.
        if (record.firstIndex + record.count - 1 <= this.logStart.index) return;
        const key = encodeLogGroupKey(record.firstIndex, record.count);
        const group = this.sealer === undefined ? record.value : this.sealer.open(key, record.value);
        for (const [position, stored] of decodeEntryGroup(group, record.count, where).entries()) {
          const index = record.firstIndex + position;
          if (index <= this.logStart.index) continue;
          this.checkNoGap(index, where);
          this.put(decodeLogRecord(index, stored));
        }
      }
    }
  }

  private checkNoGap(index: number, where: string): void {
    if (index > this.lastIndex + 1) throw new LogCorruptionError(`${where}: log has a gap: entry ${this.lastIndex + 1} is missing before ${index}`);
  }

  /** Stores `entry`, replacing the entry at its index and every one after it. */
  private put(entry: Entry): void {
    const index = entry.index;
    if (index < this.knownFrom) {
      this.entries = [];
      this.knownFrom = index;
    } else {
      this.entries.length = index - this.knownFrom;
    }
    this.entries.push(entry);
  }

  private applyStart(start: { reset: boolean; index: number; term: number }): void {
    if (start.reset || start.index >= this.lastIndex) {
      this.entries = [];
      this.knownFrom = start.index + 1;
    } else if (start.index >= this.knownFrom) {
      this.entries = this.entries.slice(start.index - this.knownFrom + 1);
      this.knownFrom = start.index + 1;
    }
    if (start.reset || start.index > this.logStart.index) this.logStart = { index: start.index, term: start.term };
  }

  /** The log, checked whole. */
  finish(): LoadedLog {
    if (this.knownFrom > this.logStart.index + 1) {
      throw new LogCorruptionError(`log entries ${this.logStart.index + 1} to ${this.knownFrom - 1} are missing (a segment file was deleted?)`);
    }
    if (this.hardState.commit > this.lastIndex) {
      throw new LogCorruptionError(`hard state commit ${this.hardState.commit} is beyond the last log entry ${this.lastIndex}`);
    }
    return { hardState: this.hardState, logStart: this.logStart, entries: this.entries };
  }
}

export class SegmentedLog {
  private readonly segments: Segment[];
  private startValue: { index: number; term: number };
  private lastIndexValue: number;
  /** The hard state last handed to `save`, and the one in the segments. */
  private latestHardState: HardState;
  private storedHardState: HardState;
  /** Every operation on the files, one at a time. */
  private queue: Promise<void> = Promise.resolve();
  /** The next segment, being preallocated in the background (undefined when that failed: the roll tries again). */
  private spare: Promise<Spare | undefined> | undefined;
  /** The log directory, open for the fsync after each roll (opened with the first spare). */
  private directoryHandle: FileHandle | undefined;
  /** Deleting segments behind a compaction, outside the queue of writes (one deletion at a time). */
  private removals: Promise<void> = Promise.resolve();
  /** A deletion of segments behind the log start failed: files may be left under old keys. */
  private removalFailed = false;
  private readonly segmentBytes: number;
  private readonly commitWriteIntervalMs: number;
  /** When the hard state was last written (performance.now()); -Infinity: not since open. */
  private hardStateWrittenMs = Number.NEGATIVE_INFINITY;
  private closed = false;
  /**
   * A frame write failed (EIO, ENOSPC, ...): what reached the disk past the last good frame is
   * unknown, and after a failed sync the kernel may have dropped the dirty pages, so a later sync
   * could succeed over them. No further write is tried until the log is opened again (its scan
   * decides what is whole).
   */
  private writeFailure: Error | undefined;

  private constructor(
    private readonly options: SegmentedLogOptions,
    segments: Segment[],
    loaded: LoadedLog,
  ) {
    this.segments = segments;
    this.segmentBytes = options.segmentBytes ?? segmentBytesDefault;
    this.commitWriteIntervalMs = options.commitWriteIntervalMs ?? commitWriteIntervalMsDefault;
    this.startValue = loaded.logStart;
    this.lastIndexValue = loaded.logStart.index + loaded.entries.length;
    this.latestHardState = loaded.hardState;
    this.storedHardState = loaded.hardState;
  }

  /** Reads and verifies every segment, cutting off a torn last write; throws LogCorruptionError on damage. */
  static async open(options: SegmentedLogOptions): Promise<{ store: SegmentedLog; loaded: LoadedLog }> {
    const directory = options.directory;
    await mkdir(directory, { recursive: true, mode: 0o700 });
    await rm(path.join(directory, preallocatingName), { force: true });
    const sequences = await listSegments(directory);
    const replay = new Replay(options.sealer);
    const segments: Segment[] = [];
    try {
      for (const [position, sequence] of sequences.entries()) {
        const isLast = position === sequences.length - 1;
        const { segment: file, scan } = await SegmentFile.open(directory, sequence);
        if (scan.frames.length === 0 && isLast) {
          // Created, and the process stopped before its first write: it holds nothing.
          await file.remove();
          await syncDirectory(directory);
          break;
        }
        const segment: Segment = { file, firstIndex: 0, dekRecords: new Map() };
        segments.push(segment);
        if (scan.frames.length === 0) throw new LogCorruptionError(`${file.file}: an empty segment before the last one; refusing to use the log`);
        if (scan.dirtyEnd > scan.end) {
          if (!isLast) throw new LogCorruptionError(`${file.file}: the record at offset ${scan.end} is damaged, and later segments follow; refusing to use the log`);
          // A torn last write: never acknowledged (acknowledgements wait for its sync). Cut off.
          await file.zeroRange(scan.end, scan.dirtyEnd);
        }
        for (const frame of scan.frames) {
          const where = `${file.file} offset ${frame.offset}`;
          const records = decodeRecords(frame.payload, where);
          const first = records[0];
          if (frame.offset === 0) {
            if (first?.type !== 'header') throw new LogCorruptionError(`${where}: a segment that does not start with its header`);
            segments[segments.length - 1] = { ...segment, firstIndex: first.firstIndex };
          }
          for (const record of records) {
            countStored(segment, record, options.sealer);
            replay.apply(record, where);
          }
        }
      }
      const loaded = replay.finish();
      const store = new SegmentedLog(options, segments, loaded);
      // Segments a crash left behind a reset or a compaction.
      await store.dropSegmentsBehindStart();
      return { store, loaded };
    } catch (error) {
      for (const segment of segments) await segment.file.close().catch(() => undefined);
      throw error;
    }
  }

  get logStart(): { index: number; term: number } {
    return this.startValue;
  }

  get lastIndex(): number {
    return this.lastIndexValue;
  }

  /** Segment files in use (for tests and status). */
  get segmentCount(): number {
    return this.segments.length;
  }

  /** Runs `operation` after every one queued before it. */
  private exclusive<T>(operation: () => Promise<T>): Promise<T> {
    const result = this.queue.then(() => {
      if (this.closed) throw new Error('the Raft log is closed');
      return operation();
    });
    this.queue = result.then(() => undefined, () => undefined);
    return result;
  }

  /** As exclusive, for an operation that writes frames: refused after a failed write, and latches one. */
  private exclusiveWrite<T>(operation: () => Promise<T>): Promise<T> {
    return this.exclusive(async () => {
      if (this.writeFailure !== undefined) throw new Error(`the Raft log refuses writes after a failed write (${this.writeFailure.message}); restart the member`);
      try {
        return await operation();
      } catch (error) {
        this.writeFailure = error instanceof Error ? error : new Error(String(error));
        throw error;
      }
    });
  }

  /** Writes the update as one frame and fdatasyncs it before resolving (a commit index alone waits). */
  save(update: LogUpdate): Promise<void> {
    return this.exclusiveWrite(() => this.write(update));
  }

  private async write(update: LogUpdate): Promise<void> {
    const hard = update.hardState;
    if (hard !== undefined) this.latestHardState = hard;
    const stored = this.storedHardState;
    const mustSync = update.entries.length > 0 || update.resetTo !== undefined ||
      (hard !== undefined && (hard.term !== stored.term || hard.vote !== stored.vote));
    if (!mustSync) return;
    const records = await this.entryRecords(update.entries);
    const started = performance.now();
    if (update.resetTo !== undefined) {
      await this.startSegment(update.resetTo, true, records);
      this.startValue = update.resetTo;
      this.lastIndexValue = update.resetTo.index;
    } else {
      await this.appendFrame(records);
    }
    instruments.walFsyncSeconds.recordSince(started);
    const last = update.entries[update.entries.length - 1];
    if (last !== undefined) this.lastIndexValue = last.index;
    if (update.resetTo !== undefined) await this.dropSegmentsBehindStart();
  }

  private async entryRecords(entries: readonly Entry[]): Promise<WrittenRecord[]> {
    const sealer = this.options.sealer;
    if (sealer === undefined) return entries.map((entry) => ({ type: 'plainEntry', index: entry.index, entry }));
    const runs = sealedRuns(entries);
    const plaintexts = runs.map(([start, end]): readonly [Buffer, Buffer] => {
      const first = entries[start] as Entry;
      if (end - start === 1) return [encodeLogKey(first.index), encodeLogRecord(first)];
      const group = encodeEntryGroup(end - start, (position) => logRecordBytes(entries[start + position] as Entry), (position, target, offset) => writeLogRecord(entries[start + position] as Entry, target, offset));
      return [encodeLogGroupKey(first.index, end - start), group];
    });
    const values = await sealer.seal(plaintexts);
    return runs.map(([start, end], position): LogRecord => {
      const first = entries[start] as Entry;
      const value = values[position] ?? Buffer.alloc(0);
      return end - start === 1 ? { type: 'entry', index: first.index, value } : { type: 'sealedEntries', firstIndex: first.index, count: end - start, value };
    });
  }

  private async hardStateRecord(): Promise<LogRecord> {
    const plain = encodeHardState(this.latestHardState);
    const sealer = this.options.sealer;
    const value = sealer === undefined ? plain : (await sealer.seal([[hardStateKey, plain]]))[0] ?? plain;
    return { type: 'hardState', value };
  }

  /** Whether the next frame carries the hard state: term or vote changed, or a commit not written for a while. */
  private hardStateDue(): boolean {
    const hard = this.latestHardState;
    const stored = this.storedHardState;
    if (hard.term !== stored.term || hard.vote !== stored.vote) return true;
    return hard.commit !== stored.commit && performance.now() - this.hardStateWrittenMs >= this.commitWriteIntervalMs;
  }

  /** Appends one frame of `records` (and the hard state, when due) to the last segment. */
  private async appendFrame(records: WrittenRecord[]): Promise<void> {
    const withHard = this.hardStateDue();
    const all = withHard ? [...records, await this.hardStateRecord()] : records;
    const payloadBytes = recordsBytes(all);
    const segment = this.segments[this.segments.length - 1];
    if (segment === undefined || frameBytes(payloadBytes) > segment.file.free) {
      await this.startSegment(this.startValue, false, records);
      return;
    }
    await segment.file.append(buildFrame(payloadBytes, (frame, offset) => writeRecords(all, frame, offset)));
    this.noteStored(segment, all, withHard);
    // The next segment is preallocated while this one fills (not before: most logs never fill one).
    if (this.spare === undefined && segment.file.free < segment.file.size / 2) {
      this.spare = this.prepareSpare().catch(() => undefined);
    }
  }

  private async prepareSpare(): Promise<Spare> {
    this.directoryHandle ??= await openDirectory(this.options.directory);
    return prepareSpare(this.options.directory, this.segmentBytes);
  }

  /**
   * Starts a new segment whose first frame holds the header, the log start (a reset when
   * `reset`), the hard state, then `records`; durable when this resolves.
   */
  private async startSegment(start: { index: number; term: number }, reset: boolean, records: WrittenRecord[]): Promise<void> {
    const firstIndex = reset ? start.index + 1 : this.lastIndexValue + 1;
    const head: WrittenRecord[] = [
      { type: 'header', firstIndex },
      { type: 'logStart', reset, index: start.index, term: start.term },
      await this.hardStateRecord(),
    ];
    const all = [...head, ...records];
    const frame = buildFrame(recordsBytes(all), (target, offset) => writeRecords(all, target, offset));
    const sequence = (this.segments[this.segments.length - 1]?.file.sequence ?? 0) + 1;
    const spare = await this.spare;
    this.spare = undefined;
    const file = await SegmentFile.create(this.options.directory, sequence, Math.max(this.segmentBytes, frame.length), spare, this.directoryHandle);
    const segment: Segment = { file, firstIndex, dekRecords: new Map() };
    try {
      await file.append(frame);
    } catch (error) {
      await file.close().catch(() => undefined);
      throw error;
    }
    this.segments.push(segment);
    this.noteStored(segment, all, true);
  }

  private noteStored(segment: Segment, records: readonly WrittenRecord[], withHardState: boolean): void {
    for (const record of records) countStored(segment, record, this.options.sealer);
    if (withHardState) {
      this.storedHardState = this.latestHardState;
      this.hardStateWrittenMs = performance.now();
    }
  }

  /**
   * Drops entries up to and including `index` (their effects are in a snapshot or applied state).
   * The segments wholly behind it are deleted before this resolves, but outside the queue of
   * writes: the next Ready's write does not wait for the unlinks and the directory's fsync (a file
   * a crash leaves behind the durable log start is deleted at the next open).
   */
  async compactThrough(index: number, term: number): Promise<void> {
    let removal: Promise<void> | undefined;
    await this.exclusiveWrite(async () => {
      if (index <= this.startValue.index) return;
      await this.appendFrame([{ type: 'logStart', reset: false, index, term }]);
      this.startValue = { index, term };
      const behind = this.detachSegmentsBehindStart();
      if (behind.length === 0) return;
      // Chained here, inside the queue, so that a later turn of the queue (resealIfNeeded) finds
      // this removal in `removals` and can wait for it.
      removal = this.removals.then(() => this.removeSegments(behind));
      this.removals = removal.catch(() => {
        this.removalFailed = true;
      });
    });
    await removal;
  }

  /** Takes the oldest segments out of the log while everything they hold is behind the log start. */
  private detachSegmentsBehindStart(): Segment[] {
    const behind: Segment[] = [];
    for (;;) {
      const [oldest, next] = this.segments;
      if (oldest === undefined || next === undefined || this.startValue.index < next.firstIndex - 1) break;
      behind.push(oldest);
      this.segments.shift();
    }
    return behind;
  }

  private async removeSegments(segments: readonly Segment[]): Promise<void> {
    if (segments.length === 0) return;
    for (const segment of segments) await segment.file.remove();
    await syncDirectory(this.options.directory);
  }

  /** Deletes the oldest segments while everything they hold is behind the log start. */
  private async dropSegmentsBehindStart(): Promise<void> {
    await this.removeSegments(this.detachSegmentsBehindStart());
  }

  /** Whether a stored value is sealed under another key than the active one (or is plaintext). */
  get resealDue(): boolean {
    const sealer = this.options.sealer;
    if (sealer === undefined) return false;
    return this.segments.some((segment) => [...segment.dekRecords.keys()].some((id) => id !== sealer.activeDekId));
  }

  /**
   * Values stored in the segment files on disk (entries, superseded ones too, and hard states) per
   * DEK id (0: plaintext), for `rampart encryption status`.
   */
  recordCounts(): Map<number, number> {
    const counts = new Map<number, number>();
    for (const segment of this.segments) {
      for (const [id, count] of segment.dekRecords) counts.set(id, (counts.get(id) ?? 0) + count);
    }
    return counts;
  }

  /**
   * Rewrites the live log under the active key into a new segment and deletes every older
   * segment, when any stored value is under another key or in plaintext. Called by the re-seal
   * pass before it retires keys; a crash midway leaves the old segments, or old and new (which
   * replay to the same log).
   */
  resealIfNeeded(): Promise<void> {
    return this.exclusive(async () => {
      // Segments a compaction took out of the log are deleted outside the queue: wait until they
      // are gone (and the directory synced), since the caller retires the old keys once this
      // resolves and a file left under one of them would not open at the next start.
      await this.removals;
      if (this.removalFailed) throw new Error('segment files behind the log start could not be deleted: old keys are kept until the next start deletes them');
      if (!this.resealDue) return;
      const loaded = await this.readLive();
      await this.startSegment(this.startValue, true, await this.entryRecords(loaded.entries));
      await this.dropSegmentsBehindStart();
    });
  }

  /** Reads the live log back from the segment files. */
  private async readLive(): Promise<LoadedLog> {
    const replay = new Replay(this.options.sealer);
    for (const segment of this.segments) {
      const { segment: file, scan } = await SegmentFile.open(this.options.directory, segment.file.sequence);
      try {
        for (const frame of scan.frames) {
          const where = `${file.file} offset ${frame.offset}`;
          for (const record of decodeRecords(frame.payload, where)) replay.apply(record, where);
        }
      } finally {
        await file.close();
      }
    }
    const loaded = replay.finish();
    if (loaded.logStart.index !== this.startValue.index || loaded.logStart.index + loaded.entries.length !== this.lastIndexValue) {
      throw new Error(`assertion failed: the Raft log read back (${loaded.logStart.index}..${loaded.logStart.index + loaded.entries.length}) differs from the one written (${this.startValue.index}..${this.lastIndexValue})`);
    }
    return loaded;
  }

  /** Waits for the writes under way, then closes the files. */
  async close(): Promise<void> {
    await this.exclusive(async () => {
      this.closed = true;
      const spare = await this.spare;
      await spare?.handle.close();
      await this.removals;
      await this.directoryHandle?.close();
      for (const segment of this.segments) await segment.file.close();
    }).catch(() => undefined);
  }
}
