import { ClassicLevel } from 'classic-level';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { Entry } from '../../src/raft/types.js';
import { LogCorruptionError, LogStore, encodeLogKey, hardStateKey } from '../../src/storage/log.js';
import { removeDirectory, temporaryDirectory } from '../helpers/processes.js';

const entry = (index: number, term = 1, data = `entry-${index}`): Entry => ({ index, term, type: 'normal', data: Buffer.from(data) });

describe('LogStore', () => {
  let directory: string;
  let db: ClassicLevel<Buffer, Buffer>;

  beforeEach(async () => {
    directory = await temporaryDirectory('log');
    db = new ClassicLevel<Buffer, Buffer>(directory, { keyEncoding: 'buffer', valueEncoding: 'buffer' });
    await db.open();
  });

  afterEach(async () => {
    await db.close();
    await removeDirectory(directory);
  });

  it('reads back entries and hard state after a reopen', async () => {
    const { store } = await LogStore.open(db);
    await store.save({ hardState: { term: 2, vote: 'abc', commit: 2 }, entries: [entry(1), entry(2), entry(3, 2)] });
    const { loaded } = await LogStore.open(db);
    expect(loaded.hardState).toEqual({ term: 2, vote: 'abc', commit: 2 });
    expect(loaded.entries.map((read) => [read.index, read.term, read.data.toString()])).toEqual([
      [1, 1, 'entry-1'],
      [2, 1, 'entry-2'],
      [3, 2, 'entry-3'],
    ]);
  });

  it('replaces a conflicting suffix', async () => {
    const { store } = await LogStore.open(db);
    await store.save({ entries: [entry(1), entry(2), entry(3)] });
    await store.save({ entries: [entry(2, 2, 'new')] });
    const { loaded } = await LogStore.open(db);
    expect(loaded.entries.map((read) => [read.index, read.term])).toEqual([
      [1, 1],
      [2, 2],
    ]);
  });

  it('detects a flipped bit and names the entry', async () => {
    const { store } = await LogStore.open(db);
    await store.save({ entries: [entry(1), entry(2)] });
    const record = Buffer.from((await db.get(encodeLogKey(2))) ?? Buffer.alloc(0));
    record[record.length - 1] = (record[record.length - 1] ?? 0) ^ 0x01;
    await db.put(encodeLogKey(2), record);
    await expect(LogStore.open(db)).rejects.toThrow(new LogCorruptionError('log entry 2: checksum mismatch'));
  });

  it('detects a damaged hard state, a truncated record and a missing entry', async () => {
    const { store } = await LogStore.open(db);
    await store.save({ hardState: { term: 1, vote: '', commit: 1 }, entries: [entry(1), entry(2), entry(3)] });
    const hard = Buffer.from((await db.get(hardStateKey)) ?? Buffer.alloc(0));
    hard[6] = (hard[6] ?? 0) ^ 0xff;
    await db.put(hardStateKey, hard);
    await expect(LogStore.open(db)).rejects.toThrow(/hard state: checksum mismatch/);
    await db.del(hardStateKey);
    await db.put(encodeLogKey(3), Buffer.from([1, 2, 3]));
    await expect(LogStore.open(db)).rejects.toThrow(/log entry 3: record is 3 bytes/);
    await db.del(encodeLogKey(2));
    await expect(LogStore.open(db)).rejects.toThrow(/entry 2 is missing before 3/);
  });

  it('refuses a commit index beyond the log', async () => {
    const { store } = await LogStore.open(db);
    await store.save({ hardState: { term: 1, vote: '', commit: 5 }, entries: [entry(1)] });
    await expect(LogStore.open(db)).rejects.toThrow(/commit 5 is beyond the last log entry 1/);
  });

  it('compacts through an index and starts after it on reopen', async () => {
    const { store } = await LogStore.open(db);
    await store.save({ entries: [entry(1), entry(2), entry(3, 2)] });
    await store.compactThrough(2, 1);
    const { loaded } = await LogStore.open(db);
    expect(loaded.logStart).toEqual({ index: 2, term: 1 });
    expect(loaded.entries.map((read) => read.index)).toEqual([3]);
  });

  it('resets to a snapshot point, dropping every entry', async () => {
    const { store } = await LogStore.open(db);
    await store.save({ entries: [entry(1), entry(2)] });
    await store.save({ entries: [], resetTo: { index: 10, term: 3 } });
    const { loaded } = await LogStore.open(db);
    expect(loaded.logStart).toEqual({ index: 10, term: 3 });
    expect(loaded.entries).toEqual([]);
  });
});
