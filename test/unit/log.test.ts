import { ClassicLevel } from 'classic-level';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { DurableLog, LogCorruptionError, encodeLogKey, entryType } from '../../src/storage/log.js';
import type { Database } from '../../src/storage/mvcc/store.js';
import { removeDirectory, temporaryDirectory } from '../helpers/processes.js';

const entry = (index: number, data = `entry-${index}`): { index: number; term: number; type: number; data: Buffer } => ({ index, term: 1, type: entryType.normal, data: Buffer.from(data) });

describe('DurableLog', () => {
  let directory: string;
  let db: Database;

  beforeEach(async () => {
    directory = await temporaryDirectory('log');
    db = new ClassicLevel<Buffer, Buffer>(directory, { keyEncoding: 'buffer', valueEncoding: 'buffer' });
    await db.open();
  });

  afterEach(async () => {
    await db.close();
    await removeDirectory(directory);
  });

  it('reads back what it appended after a reopen', async () => {
    const log = await DurableLog.open(db);
    await log.append([entry(1), entry(2), entry(3)]);
    const reopened = await DurableLog.open(db);
    expect(reopened.lastIndex).toBe(3);
    expect((await reopened.entries(2, 3)).map((read) => read.data.toString())).toEqual(['entry-2', 'entry-3']);
  });

  it('refuses non-contiguous appends', async () => {
    const log = await DurableLog.open(db);
    await log.append([entry(1)]);
    await expect(log.append([entry(3)])).rejects.toThrow(/contiguous/);
  });

  it('detects a flipped bit and names the entry', async () => {
    const log = await DurableLog.open(db);
    await log.append([entry(1), entry(2)]);
    const record = Buffer.from((await db.get(encodeLogKey(2))) ?? Buffer.alloc(0));
    record[record.length - 1] = (record[record.length - 1] ?? 0) ^ 0x01;
    await db.put(encodeLogKey(2), record);
    await expect(DurableLog.open(db)).rejects.toThrow(new LogCorruptionError('log entry 2: checksum mismatch'));
  });

  it('detects a truncated record and a missing entry', async () => {
    const log = await DurableLog.open(db);
    await log.append([entry(1), entry(2), entry(3)]);
    await db.put(encodeLogKey(3), Buffer.from([1, 2, 3]));
    await expect(DurableLog.open(db)).rejects.toThrow(/log entry 3: record is 3 bytes/);
    await db.del(encodeLogKey(2));
    await expect(DurableLog.open(db)).rejects.toThrow(/entry 2 is missing before 3/);
  });

  it('compacts old entries but keeps the last one', async () => {
    const log = await DurableLog.open(db);
    await log.append([entry(1), entry(2), entry(3)]);
    await log.compactThrough(10);
    const reopened = await DurableLog.open(db);
    expect(reopened.firstIndex).toBe(3);
    expect(reopened.lastIndex).toBe(3);
  });
});
