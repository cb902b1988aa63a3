/**
 * Long scans (the index rebuild and the log load at start) open sealed records on a worker
 * thread. The worker runs compiled code only (`dist/`, as every e2e test uses), so this test loads
 * the compiled storage modules: a clean store loads whole, and a damaged or moved record is
 * refused with the key named, exactly as when this thread opens it.
 */
import path from 'node:path';
import { ClassicLevel } from 'classic-level';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type * as KekFile from '../../src/encryption/kek-file.js';
import type * as RecordOpener from '../../src/encryption/record-opener.js';
import type * as Database from '../../src/storage/database.js';
import { encodeRevisionKey } from '../../src/storage/encoding.js';
import type * as Log from '../../src/storage/log.js';
import type * as Store from '../../src/storage/mvcc/store.js';
import { projectRoot, removeDirectory, temporaryDirectory } from '../helpers/processes.js';

type Compiled = typeof Database & typeof Store & typeof KekFile & typeof RecordOpener & typeof Log;

async function compiled(): Promise<Compiled> {
  const modules = ['storage/database.js', 'storage/mvcc/store.js', 'encryption/kek-file.js', 'encryption/record-opener.js', 'storage/log.js'];
  const loaded = await Promise.all(modules.map((module) => import(path.join(projectRoot, 'dist/src', module)) as Promise<object>));
  return Object.assign({}, ...loaded) as Compiled;
}

const keyCount = 3_000;
const keyOf = (index: number): Buffer => Buffer.from(`/registry/pods/object-${String(index).padStart(6, '0')}`);
const valueOf = (index: number): Buffer => Buffer.alloc(600, `value ${index} `);

describe('bulk opening of sealed records on a worker thread', () => {
  let directory: string;
  let modules: Compiled;
  const dataDir = (): string => path.join(directory, 'data');
  const keyFile = (): string => path.join(directory, 'kek');

  beforeEach(async () => {
    directory = await temporaryDirectory('bulk-open');
    modules = await compiled();
    await modules.FileKekProvider.create(keyFile());
    const db = await modules.SealedDatabase.open(dataDir(), await modules.FileKekProvider.open(keyFile()));
    try {
      const store = await modules.MvccStore.open(db);
      for (let first = 0; first < keyCount; first += 100) {
        const transaction = store.beginWrite();
        for (let index = first; index < first + 100; index++) transaction.put(keyOf(index), valueOf(index), 0n);
        const revision = transaction.commit();
        await db.batch(transaction.batch);
        store.markFlushed(transaction.batch, revision);
      }
      const { store: log } = await modules.LogStore.open(db);
      await log.save({ hardState: { term: 1, vote: '', commit: 0 }, entries: Array.from({ length: 50 }, (_, position) => ({ index: position + 1, term: 1, type: 'normal' as const, data: valueOf(position) })) });
    } finally {
      await db.close();
    }
  });

  afterEach(async () => {
    await removeDirectory(directory);
  });

  const raw = async <T>(use: (level: ClassicLevel<Buffer, Buffer>) => Promise<T>): Promise<T> => {
    const level = new ClassicLevel<Buffer, Buffer>(path.join(dataDir(), 'db'), { keyEncoding: 'buffer', valueEncoding: 'buffer' });
    await level.open();
    try {
      return await use(level);
    } finally {
      await level.close();
    }
  };

  const load = async (): Promise<{ keys: number; values: string[]; entries: number }> => {
    const db = await modules.SealedDatabase.open(dataDir(), await modules.FileKekProvider.open(keyFile()));
    try {
      const { loaded } = await modules.LogStore.open(db);
      const store = await modules.MvccStore.open(db);
      return { keys: store.keyCount, values: [0, 1_234, keyCount - 1].map((index) => store.get(keyOf(index))?.value.toString() ?? ''), entries: loaded.entries.length };
    } finally {
      await db.close();
    }
  };

  it('uses the worker, and loads every key and log entry', async () => {
    const opener = modules.ParallelOpener.start(new Map());
    expect(opener).toBeDefined();
    await opener?.close();
    expect(await load()).toEqual({ keys: keyCount, values: [0, 1_234, keyCount - 1].map((index) => valueOf(index).toString()), entries: 50 });
  });

  it('refuses a flipped byte or a record moved to another revision, naming the key', async () => {
    // Revision 2 holds the first transaction's puts; sub revision 7 is one of them.
    const target = encodeRevisionKey(2, 7);
    const stored = await raw(async (level) => (await level.get(target)) as Buffer);
    for (const offset of [3, 10, 200, stored.length - 1]) {
      const damaged = Buffer.from(stored);
      damaged[offset] = (damaged[offset] ?? 0) ^ 0x01;
      await raw((level) => level.put(target, damaged));
      await expect(load()).rejects.toThrow(/record 'k'\+0000000000000002000000000000000[7]: (authentication failed|sealed under data key)/);
    }
    await raw((level) => level.put(target, stored));
    expect((await load()).keys).toBe(keyCount);
    await raw(async (level) => level.put(encodeRevisionKey(2, 8), stored));
    await expect(load()).rejects.toThrow(/record 'k'\+00000000000000020000000000000008: authentication failed/);
  });
});
