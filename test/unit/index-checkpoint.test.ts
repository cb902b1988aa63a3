import { readFile, stat, truncate, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { FileKekProvider } from '../../src/encryption/kek-file.js';
import { SealedDatabase } from '../../src/storage/database.js';
import { indexCheckpointFileName, takeIndexCheckpoint, writeIndexCheckpoint } from '../../src/storage/mvcc/index-checkpoint.js';
import { rebuildIndex, type RebuiltIndex } from '../../src/storage/mvcc/index-rebuild.js';
import { MvccStore, encodeMetaNumber, type BatchOperation } from '../../src/storage/mvcc/store.js';
import { metaKey } from '../../src/storage/schema.js';
import { removeDirectory, temporaryDirectory } from '../helpers/processes.js';

/** Everything a rebuilt index holds, as plain data: each key's revisions and live value. */
function describeIndex(index: RebuiltIndex): unknown {
  return {
    currentRevision: index.currentRevision,
    records: index.records.map(([indexKey, record]) => ({
      indexKey,
      revisions: Array.from({ length: record.revisionCount }, (_, position) => [record.mainAt(position), record.subAt(position), record.tombstoneAt(position)]),
      live: record.live() === undefined ? undefined : { ...record.live(), key: record.live()?.key.toString('hex'), value: record.live()?.value.toString('hex') },
    })),
  };
}

for (const encrypted of [true, false]) {
  describe(`key index checkpoint (${encrypted ? 'sealed' : 'no encryption'})`, () => {
    let directory: string;
    let db: SealedDatabase;
    let store: MvccStore;
    let applied = 0;

    const dataDir = (): string => path.join(directory, 'data');
    const file = (): string => path.join(dataDir(), indexCheckpointFileName);
    const openDb = async (): Promise<SealedDatabase> => SealedDatabase.open(dataDir(), encrypted ? await FileKekProvider.open(path.join(directory, 'kek')) : undefined);
    const storage = (): { dataDir: string; db: SealedDatabase; sealer: ReturnType<SealedDatabase['outsideSealer']> } => ({ dataDir: dataDir(), db, sealer: db.outsideSealer() });

    /** One applied entry: the changes and the consistent index in one batch, as the member writes them. */
    const write = async (change: (transaction: ReturnType<MvccStore['beginWrite']>, batch: BatchOperation[]) => void): Promise<void> => {
      const transaction = store.beginWrite();
      const extra: BatchOperation[] = [];
      change(transaction, extra);
      const revision = transaction.commit();
      applied += 1;
      const batch = [...transaction.batch, ...extra, { type: 'put' as const, key: metaKey.consistentIndex, value: encodeMetaNumber(applied) }];
      await db.batch(batch);
      store.markFlushed(batch, revision);
    };

    /** Keys with history, tombstones, leases, a compaction, values of many sizes (one larger than a chunk). */
    const fill = async (): Promise<void> => {
      for (let round = 0; round < 3; round++) {
        await write((t) => {
          for (let index = 0; index < 300; index++) t.put(Buffer.from(`/registry/pods/ns-${index % 7}/pod-${index}`), Buffer.alloc((index * 37) % 2000, round + index), index % 5 === 0 ? BigInt(1000 + index) : 0n);
        });
      }
      await write((t) => t.deleteRange({ key: Buffer.from('/registry/pods/ns-3/'), rangeEnd: Buffer.from('/registry/pods/ns-30') }));
      await write((t) => t.put(Buffer.from([0, 0xff, 0x80, 1]), Buffer.from('binary key'), 0n));
      await write((t) => t.put(Buffer.from('big'), Buffer.alloc(5 * 1024 * 1024, 7), -5n));
      await write((t, batch) => store.compact(store.currentRevision - 2, batch));
      await store.whenCompacted();
      await write((t) => t.deleteRange({ key: Buffer.from('/registry/pods/ns-1/pod-1'), rangeEnd: Buffer.alloc(0) }));
    };

    beforeEach(async () => {
      directory = await temporaryDirectory('index-checkpoint');
      if (encrypted) await FileKekProvider.create(path.join(directory, 'kek'));
      db = await openDb();
      store = await MvccStore.open(db);
      applied = 0;
    });

    afterEach(async () => {
      await db.close();
      await removeDirectory(directory);
    });

    const reopen = async (): Promise<void> => {
      await db.close();
      db = await openDb();
    };

    it('loads exactly the index a full rebuild reads, once', async () => {
      await fill();
      expect(await writeIndexCheckpoint(storage(), store.indexRecords(), applied)).toBe('written');
      await reopen();
      const taken = await takeIndexCheckpoint(storage());
      expect(taken.reason).toBeUndefined();
      const fromCheckpoint = taken.index as RebuiltIndex;
      expect(describeIndex(fromCheckpoint)).toEqual(describeIndex(await rebuildIndex(db)));
      expect(fromCheckpoint.records.length).toBeGreaterThan(200);
      // Taken: the token and the file are gone, so a second start (or one after a crash) rebuilds.
      expect(await db.get(metaKey.indexCheckpoint)).toBeUndefined();
      await expect(stat(file())).rejects.toThrow();
      expect(await takeIndexCheckpoint(storage())).toEqual({ reason: undefined });
      // A store opened from it reads as one rebuilt from the database.
      const loaded = await MvccStore.open(db, fromCheckpoint);
      const rebuilt = await MvccStore.open(db);
      const all = { key: Buffer.of(0), rangeEnd: Buffer.of(0) };
      const plain = (store: MvccStore): unknown => store.range(all).kvs.map((kv) => ({ ...kv, key: kv.key.toString('hex'), value: kv.value.toString('hex') }));
      expect(plain(loaded)).toEqual(plain(rebuilt));
      expect(loaded.currentRevision).toBe(rebuilt.currentRevision);
    });

    it.skipIf(!encrypted)('holds no client byte in the clear when the member encrypts', async () => {
      await write((t) => t.put(Buffer.from('/registry/secrets/the-key-name'), Buffer.from('the-secret-value'), 0n));
      await writeIndexCheckpoint(storage(), store.indexRecords(), applied);
      const bytes = await readFile(file());
      expect(bytes.includes(Buffer.from('the-key-name'))).toBe(false);
      expect(bytes.includes(Buffer.from('the-secret-value'))).toBe(false);
      expect((await stat(file())).mode & 0o077).toBe(0);
    });

    it('is not used when the database applied anything after it was written', async () => {
      await fill();
      await writeIndexCheckpoint(storage(), store.indexRecords(), applied);
      // A version that does not know of the token, writing after it.
      await write((t) => t.put(Buffer.from('later'), Buffer.from('x'), 0n));
      const taken = await takeIndexCheckpoint(storage());
      expect(taken).toEqual({ reason: 'the database applied other entries since' });
      expect(await db.get(metaKey.indexCheckpoint)).toBeUndefined();
    });

    it('is not used when the newest revision on disk differs', async () => {
      await fill();
      await writeIndexCheckpoint(storage(), store.indexRecords(), applied);
      const transaction = store.beginWrite();
      transaction.put(Buffer.from('unindexed'), Buffer.from('x'), 0n);
      transaction.commit();
      await db.batch(transaction.batch);
      expect(await takeIndexCheckpoint(storage())).toEqual({ reason: 'the newest revision in the database differs' });
    });

    it('is not written when the database holds another applied index', async () => {
      await fill();
      expect(await writeIndexCheckpoint(storage(), store.indexRecords(), applied - 1)).toBe('applied index differs');
      await expect(stat(file())).rejects.toThrow();
      expect(await db.get(metaKey.indexCheckpoint)).toBeUndefined();
    });

    it('is not written, and leaves no file or token, when the write runs past its deadline', async () => {
      await fill();
      expect(await writeIndexCheckpoint(storage(), store.indexRecords(), applied, performance.now() - 1)).toBe('past deadline');
      await expect(stat(file())).rejects.toThrow();
      expect(await db.get(metaKey.indexCheckpoint)).toBeUndefined();
      expect(await takeIndexCheckpoint(storage())).toEqual({ reason: undefined });
    });

    it('falls back on a file without a token, a missing file, and every changed, cut or swapped byte', async () => {
      await fill();
      // No token (a stop that did not finish writing it): the file is removed and not read.
      await writeIndexCheckpoint(storage(), store.indexRecords(), applied);
      await db.batch([{ type: 'del', key: metaKey.indexCheckpoint }]);
      expect((await takeIndexCheckpoint(storage())).reason).toMatch(/no token/);
      await expect(stat(file())).rejects.toThrow();
      // A token without its file.
      await writeIndexCheckpoint(storage(), store.indexRecords(), applied);
      await writeFile(file(), Buffer.alloc(0));
      expect((await takeIndexCheckpoint(storage())).reason).toMatch(/cut short/);
      const good = async (): Promise<Buffer> => {
        await writeIndexCheckpoint(storage(), store.indexRecords(), applied);
        return readFile(file());
      };
      const original = await good();
      const damaged: [string, (bytes: Buffer) => Buffer][] = [
        ['a flipped bit in the first frame', (bytes) => flip(bytes, 100)],
        ['a flipped bit in the last frame', (bytes) => flip(bytes, bytes.length - 3)],
        ['a flipped bit in a frame length', (bytes) => flip(bytes, 2)],
        ['cut short', (bytes) => bytes.subarray(0, bytes.length - 1000)],
        ['trailer dropped', (bytes) => bytes.subarray(0, lastFrameStart(bytes))],
        ['a frame appended', (bytes) => Buffer.concat([bytes, bytes.subarray(lastFrameStart(bytes))])],
      ];
      for (const [what, damage] of damaged) {
        const bytes = await good();
        await writeFile(file(), damage(bytes));
        const taken = await takeIndexCheckpoint(storage());
        expect(taken.index, what).toBeUndefined();
        expect(taken.reason, what).toBeDefined();
        expect(await db.get(metaKey.indexCheckpoint), what).toBeUndefined();
      }
      // A first frame claiming more than the writer ever wrote, in a file (sparse) that long: refused
      // from its length, before anything is allocated or read (before, 64 MiB were read first).
      const bytes = await good();
      const claimed = 64 * 1024 * 1024;
      const swollen = Buffer.from(bytes);
      swollen.writeUInt32BE(claimed, 0);
      await writeFile(file(), swollen);
      await truncate(file(), 4 + claimed + bytes.length);
      const refused = await takeIndexCheckpoint(storage());
      expect(refused.index).toBeUndefined();
      expect(refused.reason).toMatch(new RegExp(`^checkpoint frame of ${claimed} bytes, longer than any written \\((\\d+)\\)$`));
      // The longest written: the frame holding the 5 MiB value, with its seal or digest.
      const longest = Number(/\((\d+)\)$/.exec(refused.reason ?? '')?.[1]);
      expect(longest).toBeGreaterThan(5 * 1024 * 1024);
      expect(longest).toBeLessThan(5 * 1024 * 1024 + 4096);
      // An earlier checkpoint's (valid) file under the current token: another token, does not open.
      await good();
      await writeFile(file(), original);
      expect((await takeIndexCheckpoint(storage())).index).toBeUndefined();
    });
  });
}

function flip(bytes: Buffer, at: number): Buffer {
  const copy = Buffer.from(bytes);
  copy[at] = (copy[at] as number) ^ 0x04;
  return copy;
}

/** Where the last frame (the trailer) starts. */
function lastFrameStart(bytes: Buffer): number {
  let position = 0;
  let last = 0;
  while (position < bytes.length) {
    last = position;
    position += 4 + bytes.readUInt32BE(position);
  }
  return last;
}
