import { randomBytes } from 'node:crypto';
import { readFile, readdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import type { Entry } from '../../src/raft/types.js';
import { SealedRecordError, looksSealed, openRecord, sealRecord, sealedDekId } from '../../src/encryption/sealed-record.js';
import { LogCorruptionError, encodeHardState, encodeLogKey, encodeLogRecord, hardStateKey } from '../../src/storage/log.js';
import { encodeFrame, scanFrames } from '../../src/storage/wal/frame.js';
import { decodeRecords, encodeRecords, type LogRecord } from '../../src/storage/wal/log-records.js';
import { SegmentFile } from '../../src/storage/wal/segment-file.js';
import { SegmentedLog, type LogSealer } from '../../src/storage/wal/segmented-log.js';
import { removeDirectory, temporaryDirectory } from '../helpers/processes.js';

const entry = (index: number, term = 1, data = `entry-${index}`): Entry => ({ index, term, type: 'normal', data: Buffer.from(data) });
const summary = (entries: readonly Entry[]): [number, number, string][] => entries.map((read) => [read.index, read.term, read.data.toString()]);

/** A keyring stand-in with real AES-GCM sealing under numbered keys. */
class TestSealer implements LogSealer {
  readonly keys = new Map<number, Buffer>([[1, randomBytes(32)]]);
  activeDekId = 1;
  /** The additional data (key) of every record sealed, in order. */
  readonly sealedKeys: Buffer[] = [];
  /** As the keyring while a plaintext member migrates: plaintext values open as themselves. */
  migrating = false;
  rotate(): void {
    this.activeDekId += 1;
    this.keys.set(this.activeDekId, randomBytes(32));
  }
  seal(records: readonly (readonly [Buffer, Buffer])[]): Promise<Buffer[]> {
    const key = this.keys.get(this.activeDekId) as Buffer;
    for (const [name] of records) this.sealedKeys.push(name);
    return Promise.resolve(records.map(([name, plain]) => sealRecord(this.activeDekId, key, name, plain)));
  }
  open(name: Buffer, stored: Buffer): Buffer {
    if (!looksSealed(stored) && this.migrating) return stored;
    const key = this.keys.get(sealedDekId(stored));
    if (key === undefined) throw new Error(`no key ${sealedDekId(stored)}`);
    return openRecord(key, name, stored);
  }
}

describe('frames', () => {
  // The last frame: header at 32, payload [40, 1340), over sectors [0, 512), [512, 1024), [1024, 1536).
  const frames = [encodeFrame(Buffer.from('one')), encodeFrame(Buffer.from('two-two')), encodeFrame(Buffer.alloc(1300, 7))];
  const file = Buffer.concat([...frames, Buffer.alloc(4096)]);
  const lastOffset = (frames[0]?.length ?? 0) + (frames[1]?.length ?? 0);

  it('reads frames up to the zero fill, and tells a torn tail from corruption before it', () => {
    const scan = scanFrames(file, 'f');
    expect(scan.frames.map((frame) => frame.payload.toString('latin1').slice(0, 7))).toEqual(['one', 'two-two', '\x07'.repeat(7)]);
    expect(scan.dirtyEnd).toBe(scan.end);
    // Built in place from unzeroed memory: the padding after each payload is still zeros.
    for (let length = 1; length <= 40; length++) {
      const built = encodeFrame(Buffer.alloc(length, 0xff));
      expect(built.length % 8).toBe(0);
      expect(built.subarray(8 + length).equals(Buffer.alloc(built.length - 8 - length))).toBe(true);
      expect(scanFrames(Buffer.concat([built, Buffer.alloc(16)]), 'f').frames[0]?.payload.equals(Buffer.alloc(length, 0xff))).toBe(true);
    }

    // Torn: a sector of the last frame (its second) never reached the disk.
    const torn = Buffer.from(file);
    torn.fill(0, 512, 1024);
    const tornScan = scanFrames(torn, 'f');
    expect(tornScan.frames).toHaveLength(2);
    expect(tornScan.end).toBe(lastOffset);
    expect(tornScan.dirtyEnd).toBeGreaterThan(lastOffset);
    // Torn in its last sector: the frame's share of it (316 bytes) is zeros.
    const tornEnd = Buffer.from(file);
    tornEnd.fill(0, 1024, 1536);
    expect(scanFrames(tornEnd, 'f').end).toBe(lastOffset);
    // The header's sector never reached the disk, later ones did: the data ends before it.
    const noHeader = Buffer.from(file);
    noHeader.fill(0, lastOffset, 512);
    expect(scanFrames(noHeader, 'f')).toMatchObject({ end: lastOffset, dirtyEnd: expect.any(Number) as unknown });

    // Corrupt: a flipped bit in the second frame, the third still valid after it.
    const corrupt = Buffer.from(file);
    corrupt.writeUInt8((corrupt.readUInt8((frames[0]?.length ?? 0) + 10) ^ 1), (frames[0]?.length ?? 0) + 10);
    expect(() => scanFrames(corrupt, 'seg-file')).toThrow(new LogCorruptionError(`seg-file: the record at offset ${frames[0]?.length} is damaged and a valid record follows it at offset ${lastOffset} (not a torn last write); refusing to use the log`));
  });

  it('refuses a last frame that fails its CRC with every sector of it written (was cut off as a torn tail)', () => {
    const whole = `seg-file: the record at offset ${lastOffset} is whole (no sector of it unwritten) but fails its checksum (not a torn last write); refusing to use the log`;
    // A flipped bit, in each sector of the last frame, in its CRC, in a frame within one sector.
    for (const at of [lastOffset + 8, 700, 1300, lastOffset + 4]) {
      const flipped = Buffer.from(file);
      flipped.writeUInt8(flipped.readUInt8(at) ^ 0x10, at);
      expect(() => scanFrames(flipped, 'seg-file')).toThrow(new LogCorruptionError(whole));
    }
    const small = Buffer.concat([frames[0] as Buffer, encodeFrame(Buffer.from('last')), Buffer.alloc(512)]);
    small.writeUInt8(small.readUInt8(25) ^ 0x01, 25);
    expect(() => scanFrames(small, 'f')).toThrow(/the record at offset 16 is whole \(no sector of it unwritten\) but fails its checksum/);
    // Zeros within the header's own sector are not a torn write: that sector reached the disk whole, header and all.
    const zerosByHeader = Buffer.from(file);
    zerosByHeader.fill(0, lastOffset + 8, 512);
    expect(() => scanFrames(zerosByHeader, 'seg-file')).toThrow(new LogCorruptionError(whole));
  });

  it('refuses a last frame whose header is damaged: a length past the file, or 0 with a checksum', () => {
    const past = Buffer.from(file);
    past.writeUInt32BE(past.length, lastOffset);
    expect(() => scanFrames(past, 'f')).toThrow(new LogCorruptionError(`f: the record at offset ${lastOffset} has a length of ${past.length}, past the end of the file (not a torn last write); refusing to use the log`));
    const zeroLength = Buffer.from(file);
    zeroLength.writeUInt32BE(0, lastOffset);
    expect(() => scanFrames(zeroLength, 'f')).toThrow(new RegExp(`the record at offset ${lastOffset} has a length of 0 and a checksum`));
  });
});

describe('SegmentedLog', () => {
  let directory: string;
  let opened: SegmentedLog[] = [];

  // A commit index is written with every frame here (0) unless a test says otherwise.
  const open = async (sealer?: LogSealer, segmentBytes = 64 * 1024, commitWriteIntervalMs = 0): Promise<Awaited<ReturnType<typeof SegmentedLog.open>>> => {
    const result = await SegmentedLog.open({ directory, sealer, segmentBytes, commitWriteIntervalMs });
    opened.push(result.store);
    return result;
  };
  const reopen = async (store: SegmentedLog, sealer?: LogSealer, segmentBytes?: number, commitWriteIntervalMs?: number): ReturnType<typeof open> => {
    await store.close();
    return open(sealer, segmentBytes, commitWriteIntervalMs);
  };
  const segmentFiles = async (): Promise<string[]> => (await readdir(directory)).filter((name) => name.endsWith('.seg')).sort();

  beforeEach(async () => {
    directory = await temporaryDirectory('segmented-log');
    opened = [];
  });

  afterEach(async () => {
    for (const store of opened) await store.close();
    await removeDirectory(directory);
  });

  it('reads back entries and hard state after a reopen, sealed, with no entry data in plaintext', async () => {
    const sealer = new TestSealer();
    const { store } = await open(sealer);
    await store.save({ hardState: { term: 2, vote: 'abc', commit: 2 }, entries: [entry(1, 1, 'secret-one'), entry(2), entry(3, 2)] });
    const { loaded } = await reopen(store, sealer);
    expect(loaded.hardState).toEqual({ term: 2, vote: 'abc', commit: 2 });
    expect(summary(loaded.entries)).toEqual([[1, 1, 'secret-one'], [2, 1, 'entry-2'], [3, 2, 'entry-3']]);
    for (const name of await segmentFiles()) expect((await readFile(path.join(directory, name))).includes('secret-one')).toBe(false);
  });

  it('refuses every write after a failed one (an EIO cannot be retried over), and reads back what was whole after a reopen', async () => {
    const { store } = await open();
    await store.save({ hardState: { term: 1, vote: '', commit: 1 }, entries: [entry(1), entry(2)] });
    // A disk error on the next frame's write (cannot be made to happen on this machine's disk).
    const append = vi.spyOn(SegmentFile.prototype, 'append').mockRejectedValueOnce(Object.assign(new Error('EIO: i/o error, write'), { code: 'EIO' }));
    try {
      await expect(store.save({ entries: [entry(3)] })).rejects.toThrow('EIO: i/o error, write');
      // The disk answers again, but what reached it is unknown: no write is tried.
      await expect(store.save({ entries: [entry(3)] })).rejects.toThrow('the Raft log refuses writes after a failed write (EIO: i/o error, write); restart the member');
      await expect(store.compactThrough(1, 1)).rejects.toThrow(/refuses writes after a failed write/);
      expect(append).toHaveBeenCalledTimes(1);
    } finally {
      append.mockRestore();
    }
    const { store: reopened, loaded } = await reopen(store);
    expect(summary(loaded.entries)).toEqual([[1, 1, 'entry-1'], [2, 1, 'entry-2']]);
    await reopened.save({ entries: [entry(3)] });
    expect(summary((await reopen(reopened)).loaded.entries).map(([index]) => index)).toEqual([1, 2, 3]);
  });

  it('replaces a conflicting suffix', async () => {
    const { store } = await open();
    await store.save({ entries: [entry(1), entry(2), entry(3)] });
    await store.save({ entries: [entry(2, 2, 'new')] });
    expect(store.lastIndex).toBe(2);
    await store.save({ entries: [entry(3, 2, 'newer')] });
    const { loaded } = await reopen(store);
    expect(summary(loaded.entries)).toEqual([[1, 1, 'entry-1'], [2, 2, 'new'], [3, 2, 'newer']]);
  });

  it('writes a commit index alone with the next frame that must be durable', async () => {
    const { store } = await open();
    await store.save({ hardState: { term: 1, vote: 'a', commit: 0 }, entries: [entry(1), entry(2)] });
    await store.save({ hardState: { term: 1, vote: 'a', commit: 2 }, entries: [] });
    const { store: second, loaded } = await reopen(store);
    expect(loaded.hardState.commit).toBe(0);
    await second.save({ hardState: { term: 1, vote: 'a', commit: 2 }, entries: [] });
    await second.save({ entries: [entry(3)] });
    const { loaded: after } = await reopen(second);
    expect(after.hardState).toEqual({ term: 1, vote: 'a', commit: 2 });
  });

  it('writes a commit index that moved alone at most once an interval, but term, vote and a new segment at once', async () => {
    const { store } = await open(undefined, 4096, 60_000);
    await store.save({ hardState: { term: 1, vote: 'a', commit: 0 }, entries: [entry(1)] });
    await store.save({ hardState: { term: 1, vote: 'a', commit: 1 }, entries: [entry(2)] });
    await store.save({ hardState: { term: 1, vote: 'a', commit: 2 }, entries: [entry(3)] });
    let reopened = await reopen(store, undefined, 4096, 60_000);
    // The first frame (the segment's) carried commit 0; the later ones within the interval none.
    expect(reopened.loaded.hardState).toEqual({ term: 1, vote: 'a', commit: 0 });
    expect(reopened.loaded.entries.map((read) => read.index)).toEqual([1, 2, 3]);
    // Reopened, the interval starts again: the next frame carries the commit, the one after does not.
    await reopened.store.save({ hardState: { term: 1, vote: 'a', commit: 3 }, entries: [entry(4)] });
    await reopened.store.save({ hardState: { term: 1, vote: 'a', commit: 4 }, entries: [entry(5)] });
    reopened = await reopen(reopened.store, undefined, 4096, 60_000);
    expect(reopened.loaded.hardState).toEqual({ term: 1, vote: 'a', commit: 3 });
    // A new term is written at once, with the commit it comes with.
    await reopened.store.save({ hardState: { term: 1, vote: 'a', commit: 4 }, entries: [entry(6)] });
    await reopened.store.save({ hardState: { term: 2, vote: 'b', commit: 5 }, entries: [entry(7, 2)] });
    reopened = await reopen(reopened.store, undefined, 4096, 60_000);
    expect(reopened.loaded.hardState).toEqual({ term: 2, vote: 'b', commit: 5 });
    // A new segment's first frame carries it too.
    await reopened.store.save({ hardState: { term: 2, vote: 'b', commit: 6 }, entries: [entry(8, 2)] });
    let index = 9;
    while ((await segmentFiles()).length < 2) {
      await reopened.store.save({ hardState: { term: 2, vote: 'b', commit: index - 1 }, entries: [entry(index, 2, 'x'.repeat(300))] });
      index += 1;
    }
    const rolledAt = index - 1;
    const { loaded } = await reopen(reopened.store, undefined, 4096, 60_000);
    expect(loaded.hardState).toEqual({ term: 2, vote: 'b', commit: rolledAt - 1 });
    expect(loaded.entries.at(-1)?.index).toBe(rolledAt);
  });

  it('writes a moved commit index again once the interval has passed', async () => {
    const { store } = await open(undefined, 64 * 1024, 50);
    await store.save({ hardState: { term: 1, vote: 'a', commit: 0 }, entries: [entry(1)] });
    await store.save({ hardState: { term: 1, vote: 'a', commit: 1 }, entries: [entry(2)] });
    await new Promise((resolve) => setTimeout(resolve, 80));
    await store.save({ hardState: { term: 1, vote: 'a', commit: 2 }, entries: [entry(3)] });
    const { loaded } = await reopen(store);
    expect(loaded.hardState).toEqual({ term: 1, vote: 'a', commit: 2 });
  });

  it('rolls over to new segments when one fills, and deletes those wholly behind a compaction', async () => {
    const { store } = await open(undefined, 4096);
    for (let index = 1; index <= 60; index++) await store.save({ hardState: { term: 1, vote: '', commit: index - 1 }, entries: [entry(index, 1, 'x'.repeat(200))] });
    expect((await segmentFiles()).length).toBeGreaterThan(3);
    const before = await segmentFiles();
    await store.compactThrough(40, 1);
    const after = await segmentFiles();
    expect(after.length).toBeLessThan(before.length);
    expect(after.at(-1)).toBe(before.at(-1));
    const { loaded } = await reopen(store, undefined, 4096);
    expect(loaded.logStart).toEqual({ index: 40, term: 1 });
    expect(loaded.entries.map((read) => read.index)).toEqual(Array.from({ length: 20 }, (_, position) => 41 + position));
    expect(loaded.hardState.commit).toBe(59);
  });

  it('a snapshot install (reset) starts a new segment and deletes the old ones', async () => {
    const { store } = await open();
    await store.save({ hardState: { term: 1, vote: 'a', commit: 3 }, entries: [entry(1), entry(2), entry(3)] });
    await store.save({ hardState: { term: 3, vote: 'a', commit: 100 }, entries: [], resetTo: { index: 100, term: 3 } });
    expect(await segmentFiles()).toEqual(['0000000000000002.seg']);
    await store.save({ entries: [entry(101, 3)] });
    const { loaded } = await reopen(store);
    expect(loaded.logStart).toEqual({ index: 100, term: 3 });
    expect(summary(loaded.entries)).toEqual([[101, 3, 'entry-101']]);
    expect(loaded.hardState).toEqual({ term: 3, vote: 'a', commit: 100 });
  });

  it('a crash between a reset segment and deleting the older ones replays to the reset log', async () => {
    const { store } = await open();
    await store.save({ hardState: { term: 1, vote: 'a', commit: 3 }, entries: [entry(1), entry(2), entry(3)] });
    const older = await readFile(path.join(directory, '0000000000000001.seg'));
    await store.save({ hardState: { term: 3, vote: 'a', commit: 100 }, entries: [], resetTo: { index: 100, term: 3 } });
    await store.close();
    await writeFile(path.join(directory, '0000000000000001.seg'), older);
    const { loaded } = await open();
    expect(loaded.logStart).toEqual({ index: 100, term: 3 });
    expect(loaded.entries).toEqual([]);
    expect(await segmentFiles()).toEqual(['0000000000000002.seg']);
  });

  it('cuts off a torn last write, keeps every write before it, and appends after the cut', async () => {
    const { store } = await open();
    await store.save({ hardState: { term: 1, vote: '', commit: 0 }, entries: [entry(1), entry(2)] });
    const file = path.join(directory, (await segmentFiles())[0] ?? '');
    const beforeLast = scanFrames(await readFile(file), file).end;
    await store.save({ entries: [entry(3, 1, 'y'.repeat(2000))] });
    await store.close();
    // A crash mid-write: only the first sector of the last frame reached the disk.
    const contents = await readFile(file);
    contents.fill(0, beforeLast + 512, beforeLast + 4096);
    await writeFile(file, contents);
    const { store: reopened, loaded } = await open();
    expect(loaded.entries.map((read) => read.index)).toEqual([1, 2]);
    await reopened.save({ entries: [entry(3, 1, 'again')] });
    const { loaded: after } = await reopen(reopened);
    expect(summary(after.entries)).toEqual([[1, 1, 'entry-1'], [2, 1, 'entry-2'], [3, 1, 'again']]);
  });

  it('refuses to open a log whose last write has a flipped bit, and leaves the file as it was', async () => {
    const { store } = await open();
    await store.save({ hardState: { term: 1, vote: '', commit: 0 }, entries: [entry(1), entry(2)] });
    const file = path.join(directory, (await segmentFiles())[0] ?? '');
    const beforeLast = scanFrames(await readFile(file), file).end;
    // Acknowledged once save resolved: cutting it off as a torn tail would lose it silently.
    await store.save({ entries: [entry(3, 1, 'y'.repeat(2000))] });
    await store.close();
    const contents = await readFile(file);
    contents.writeUInt8(contents.readUInt8(beforeLast + 1000) ^ 0x04, beforeLast + 1000);
    await writeFile(file, contents);
    await expect(SegmentedLog.open({ directory, sealer: undefined })).rejects.toThrow(new LogCorruptionError(`${file}: the record at offset ${beforeLast} is whole (no sector of it unwritten) but fails its checksum (not a torn last write); refusing to use the log`));
    expect((await readFile(file)).equals(contents)).toBe(true);
  });

  it('refuses a damaged record before the tail, naming the file and offset', async () => {
    const { store } = await open();
    await store.save({ hardState: { term: 1, vote: '', commit: 0 }, entries: [entry(1)] });
    await store.save({ entries: [entry(2)] });
    await store.save({ entries: [entry(3)] });
    await store.close();
    const file = path.join(directory, (await segmentFiles())[0] ?? '');
    const contents = await readFile(file);
    contents.writeUInt8(contents.readUInt8(20) ^ 0x40, 20);
    await writeFile(file, contents);
    await expect(SegmentedLog.open({ directory, sealer: undefined })).rejects.toThrow(new RegExp(`${file}: the record at offset 0 is damaged and a valid record follows it at offset \\d+`));
    await expect(SegmentedLog.open({ directory, sealer: undefined })).rejects.toBeInstanceOf(LogCorruptionError);
  });

  it('refuses a log whose older segment was deleted', async () => {
    const { store } = await open(undefined, 4096);
    for (let index = 1; index <= 30; index++) await store.save({ entries: [entry(index, 1, 'x'.repeat(200))] });
    await store.close();
    const first = (await segmentFiles())[0] ?? '';
    const { rm } = await import('node:fs/promises');
    await rm(path.join(directory, first));
    await expect(SegmentedLog.open({ directory, sealer: undefined })).rejects.toThrow(/log entries 1 to \d+ are missing/);
  });

  it('re-seals the live log under the active key after a rotation, and drops the old segments', async () => {
    const sealer = new TestSealer();
    const { store } = await open(sealer);
    await store.save({ hardState: { term: 1, vote: '', commit: 2 }, entries: [entry(1), entry(2), entry(3)] });
    await store.compactThrough(1, 1);
    expect(store.resealDue).toBe(false);
    // What `rampart encryption status` counts: 3 entries and the hard state, under DEK 1.
    expect(store.recordCounts()).toEqual(new Map([[1, 4]]));
    sealer.rotate();
    expect(store.resealDue).toBe(true);
    await store.resealIfNeeded();
    expect(store.resealDue).toBe(false);
    // The live entries (2 and 3) and the hard state, rewritten under DEK 2; the old segment is gone.
    expect(store.recordCounts()).toEqual(new Map([[2, 3]]));
    sealer.keys.delete(1);
    const { store: reopened, loaded } = await reopen(store, sealer);
    expect(reopened.recordCounts()).toEqual(new Map([[2, 3]]));
    expect(loaded.logStart).toEqual({ index: 1, term: 1 });
    expect(summary(loaded.entries)).toEqual([[2, 1, 'entry-2'], [3, 1, 'entry-3']]);
    expect(loaded.hardState.commit).toBe(2);
  });

  it('a re-seal after a compaction resolves only once the segments behind it are deleted (the caller then retires their key)', async () => {
    const sealer = new TestSealer();
    const { store } = await open(sealer, 4096);
    for (let index = 1; index <= 30; index++) await store.save({ hardState: { term: 1, vote: '', commit: index - 1 }, entries: [entry(index, 1, 'x'.repeat(200))] });
    sealer.rotate();
    for (let index = 31; index <= 60; index++) await store.save({ hardState: { term: 1, vote: '', commit: index - 1 }, entries: [entry(index, 1, 'y'.repeat(200))] });
    // The compaction's deletions run outside the queue of writes; the re-seal pass comes meanwhile.
    const compaction = store.compactThrough(40, 1);
    await store.resealIfNeeded();
    // What a crash here would leave: every file must open without DEK 1, retired once this resolves.
    const left = await segmentFiles();
    await compaction;
    expect(await segmentFiles()).toEqual(left);
    sealer.keys.delete(1);
    const { loaded } = await reopen(store, sealer, 4096);
    expect(loaded.entries.map((read) => read.index)).toEqual(Array.from({ length: 20 }, (_, position) => 41 + position));
  });

  it('seals a plaintext log when the member starts encrypting', async () => {
    const { store } = await open();
    await store.save({ hardState: { term: 1, vote: '', commit: 1 }, entries: [entry(1, 1, 'plain-secret')] });
    const sealer = new TestSealer();
    sealer.migrating = true;
    const { store: sealing } = await reopen(store, sealer);
    expect(sealing.resealDue).toBe(true);
    // Plaintext counts under DEK 0 (status: records under no known DEK).
    expect(sealing.recordCounts()).toEqual(new Map([[0, 2]]));
    await sealing.resealIfNeeded();
    expect(sealing.recordCounts()).toEqual(new Map([[1, 2]]));
    for (const name of await segmentFiles()) expect((await readFile(path.join(directory, name))).includes('plain-secret')).toBe(false);
    sealer.migrating = false;
    const { loaded } = await reopen(sealing, sealer);
    expect(summary(loaded.entries)).toEqual([[1, 1, 'plain-secret']]);
  });

  /** A segment file as the earlier version wrote it: one seal per entry (record type 4), hand-built. */
  const writeOneSealPerEntrySegment = async (sealer: TestSealer, entries: readonly Entry[]): Promise<void> => {
    const [sealedHard, ...sealedEntries] = await sealer.seal([
      [hardStateKey, encodeHardState({ term: 1, vote: 'a', commit: 0 })],
      ...entries.map((written) => [encodeLogKey(written.index), encodeLogRecord(written)] as const),
    ]);
    const records: LogRecord[] = [
      { type: 'header', firstIndex: 1 },
      { type: 'logStart', reset: false, index: 0, term: 0 },
      { type: 'hardState', value: sealedHard as Buffer },
      ...entries.map((written, position): LogRecord => ({ type: 'entry', index: written.index, value: sealedEntries[position] as Buffer })),
    ];
    await writeFile(path.join(directory, '0000000000000001.seg'), Buffer.concat([encodeFrame(encodeRecords(records)), Buffer.alloc(8192)]));
  };
  const framesOf = async (name: string): Promise<LogRecord[][]> => {
    const file = path.join(directory, name);
    return scanFrames(await readFile(file), file).frames.map((frame) => decodeRecords(frame.payload, file));
  };

  it('seals the entries of one write as one record, and reads a log sealed one entry at a time before it', async () => {
    const sealer = new TestSealer();
    await writeOneSealPerEntrySegment(sealer, [entry(1, 1, 'old-secret'), entry(2), entry(3)]);
    const { store, loaded } = await open(sealer);
    expect(summary(loaded.entries)).toEqual([[1, 1, 'old-secret'], [2, 1, 'entry-2'], [3, 1, 'entry-3']]);
    // The values of the earlier format, counted as before: 3 entries and the hard state.
    expect(store.recordCounts()).toEqual(new Map([[1, 4]]));
    sealer.sealedKeys.length = 0;
    await store.save({ entries: [4, 5, 6, 7, 8].map((index) => entry(index, 2, `new-secret-${index}`)) });
    await store.save({ entries: [entry(9, 2)] });
    // One seal for the five entries (additional data 'e' + first index + count), one for the lone entry.
    expect(sealer.sealedKeys.map((key) => key.toString('hex'))).toEqual(['65000000000000000400000005', encodeLogKey(9).toString('hex')]);
    expect(store.recordCounts()).toEqual(new Map([[1, 10]]));
    const frames = await framesOf('0000000000000001.seg');
    expect(frames.map((records) => records.map((record) => record.type))).toEqual([['header', 'logStart', 'hardState', 'entry', 'entry', 'entry'], ['sealedEntries'], ['entry']]);
    expect(frames[1]?.[0]).toMatchObject({ firstIndex: 4, count: 5 });
    const { store: reopened, loaded: after } = await reopen(store, sealer);
    expect(summary(after.entries)).toEqual([[1, 1, 'old-secret'], [2, 1, 'entry-2'], [3, 1, 'entry-3'], ...[4, 5, 6, 7, 8].map((index): [number, number, string] => [index, 2, `new-secret-${index}`]), [9, 2, 'entry-9']]);
    expect(reopened.recordCounts()).toEqual(new Map([[1, 10]]));
    const contents = await readFile(path.join(directory, '0000000000000001.seg'));
    expect(contents.includes('secret')).toBe(false);
    // A rotation re-seals the live log in the new format, under the new key; the old key is not needed after.
    await reopened.compactThrough(2, 1);
    sealer.rotate();
    await reopened.resealIfNeeded();
    expect(reopened.recordCounts()).toEqual(new Map([[2, 8]]));
    sealer.keys.delete(1);
    const { loaded: resealed } = await reopen(reopened, sealer);
    expect(resealed.entries.map((read) => read.index)).toEqual([3, 4, 5, 6, 7, 8, 9]);
    expect((await framesOf((await segmentFiles())[0] ?? '')).flat().filter((record) => record.type === 'sealedEntries')).toMatchObject([{ firstIndex: 3, count: 7 }]);
  });

  it('splits a large write into groups, and a group acts as its entries: a conflicting suffix, a compaction inside it', async () => {
    const sealer = new TestSealer();
    const { store } = await open(sealer, 8 * 1024 * 1024);
    // 1,030 entries (over 1,024 a group), then 3 of 400 KiB (over 1 MiB a group).
    await store.save({ hardState: { term: 1, vote: '', commit: 0 }, entries: Array.from({ length: 1030 }, (_, position) => entry(position + 1)) });
    await store.save({ entries: [1031, 1032, 1033].map((index) => entry(index, 1, 'z'.repeat(400 * 1024))) });
    const groups = (await framesOf('0000000000000001.seg')).flat().filter((record) => record.type === 'sealedEntries' || record.type === 'entry');
    expect(groups.map((record) => (record.type === 'sealedEntries' ? [record.firstIndex, record.count] : [record.index, 1]))).toEqual([[1, 1024], [1025, 6], [1031, 2], [1033, 1]]);
    // A new leader's entries replace 1,029 on, from inside the second group.
    await store.save({ hardState: { term: 2, vote: '', commit: 0 }, entries: [entry(1029, 2, 'replaced'), entry(1030, 2, 'replaced')] });
    await store.compactThrough(1000, 1);
    const { loaded } = await reopen(store, sealer, 8 * 1024 * 1024);
    expect(loaded.logStart).toEqual({ index: 1000, term: 1 });
    expect(summary(loaded.entries)).toEqual([...Array.from({ length: 28 }, (_, position): [number, number, string] => [1001 + position, 1, `entry-${1001 + position}`]), [1029, 2, 'replaced'], [1030, 2, 'replaced']]);
  });

  it('refuses a group moved, cut or swapped, even with the frame checksum made again (someone who can write the disk)', async () => {
    const sealer = new TestSealer();
    const { store } = await open(sealer);
    await store.save({ hardState: { term: 1, vote: '', commit: 0 }, entries: [entry(1), entry(2), entry(3)] });
    await store.save({ entries: [entry(4)] });
    await store.close();
    const name = '0000000000000001.seg';
    const original = await readFile(path.join(directory, name));
    const [first, second] = await framesOf(name);
    const group = first?.find((record) => record.type === 'sealedEntries');
    const lone = second?.[0];
    if (group?.type !== 'sealedEntries' || lone?.type !== 'entry') throw new Error('unexpected frames');
    const rewrite = async (changed: LogRecord): Promise<void> => {
      const records = (first ?? []).map((record) => (record === group ? changed : record));
      await writeFile(path.join(directory, name), Buffer.concat([encodeFrame(encodeRecords(records)), Buffer.alloc(original.length)]));
    };
    const flipped = Buffer.from(group.value);
    flipped[40] = (flipped[40] as number) ^ 0x01;
    for (const changed of [
      { ...group, value: flipped },
      // Moved to other indexes, or said to hold fewer entries.
      { ...group, firstIndex: 2 },
      { ...group, count: 2 },
      // A lone entry's sealed value (entry 4's) in a group's place.
      { ...group, value: lone.value },
    ]) {
      await rewrite(changed);
      await expect(SegmentedLog.open({ directory, sealer })).rejects.toThrow(SealedRecordError);
    }
    // And the other way: the group's sealed value as lone entry 1.
    await rewrite({ type: 'entry', index: 1, value: group.value });
    await expect(SegmentedLog.open({ directory, sealer })).rejects.toThrow(/record 'e'\+0000000000000001: authentication failed/);
    await writeFile(path.join(directory, name), original);
    const { loaded } = await open(sealer);
    expect(loaded.entries.map((read) => read.index)).toEqual([1, 2, 3, 4]);
  });
});
