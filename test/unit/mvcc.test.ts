import { ClassicLevel } from 'classic-level';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { RampartError } from '../../src/errors.js';
import { MvccStore, type BatchOperation } from '../../src/storage/mvcc/store.js';
import { prefixRangeEnd } from '../../src/storage/mvcc/range.js';
import { prefix, prefixEnd } from '../../src/storage/schema.js';
import { removeDirectory, temporaryDirectory } from '../helpers/processes.js';

const key = (text: string): Buffer => Buffer.from(text);
const single = (text: string): { key: Buffer; rangeEnd: Buffer } => ({ key: key(text), rangeEnd: Buffer.alloc(0) });
const all = { key: Buffer.of(0), rangeEnd: Buffer.of(0) };

describe('MvccStore', () => {
  let directory: string;
  let db: ClassicLevel<Buffer, Buffer>;
  let store: MvccStore;

  const write = async (change: (transaction: ReturnType<MvccStore['beginWrite']>) => void): Promise<number> => {
    const transaction = store.beginWrite();
    change(transaction);
    const revision = transaction.commit();
    const batch: BatchOperation[] = transaction.batch;
    await db.batch(batch);
    store.markFlushed(batch, revision);
    return revision;
  };

  beforeEach(async () => {
    directory = await temporaryDirectory('mvcc');
    db = new ClassicLevel<Buffer, Buffer>(directory, { keyEncoding: 'buffer', valueEncoding: 'buffer' });
    await db.open();
    store = await MvccStore.open(db);
  });

  afterEach(async () => {
    await db.close();
    await removeDirectory(directory);
  });

  it('tracks create/mod revision and version, and restarts them after a delete', async () => {
    expect(await write((t) => t.put(key('a'), key('1'), 0n))).toBe(2);
    expect(await write((t) => t.put(key('a'), key('2'), 0n))).toBe(3);
    expect(store.range(single('a')).kvs[0]).toMatchObject({ createRevision: 2, modRevision: 3, version: 2 });
    expect(await write((t) => t.deleteRange(single('a')))).toBe(4);
    expect(store.range(single('a')).kvs).toEqual([]);
    await write((t) => t.put(key('a'), key('3'), 0n));
    expect(store.range(single('a')).kvs[0]).toMatchObject({ createRevision: 5, modRevision: 5, version: 1 });
  });

  it('shares one main revision across a transaction and does not advance for no change', async () => {
    const revision = await write((t) => {
      t.put(key('x'), key('1'), 0n);
      t.put(key('y'), key('1'), 0n);
    });
    expect(store.range({ key: key('x'), rangeEnd: key('z') }).kvs.map((kv) => kv.modRevision)).toEqual([revision, revision]);
    expect(await write((t) => t.deleteRange(single('missing')))).toBe(revision);
  });

  it('reads history at any uncompacted revision, and refuses compacted and future ones', async () => {
    await write((t) => t.put(key('k'), key('v1'), 0n));
    await write((t) => t.put(key('k'), key('v2'), 0n));
    await write((t) => t.deleteRange(single('k')));
    expect(store.range(single('k'), { revision: 2 }).kvs[0]?.value.toString()).toBe('v1');
    expect(store.range(single('k'), { revision: 3 }).kvs[0]?.value.toString()).toBe('v2');
    expect(store.range(single('k'), { revision: 4 }).kvs).toEqual([]);
    expect(() => store.range(single('k'), { revision: 5 })).toThrow(new RampartError('FutureRevision'));
    const batch: BatchOperation[] = [];
    store.compact(3, batch);
    await db.batch(batch);
    await store.whenCompacted();
    expect(() => store.range(single('k'), { revision: 2 })).toThrow(new RampartError('Compacted'));
    expect(store.range(single('k'), { revision: 3 }).kvs[0]?.value.toString()).toBe('v2');
    expect(() => store.compact(3, [])).toThrow(new RampartError('Compacted'));
  });

  it('counts and limits ranges, with prefix and from-key ends', async () => {
    for (const name of ['p/a', 'p/b', 'p/c', 'q']) {
      await write((t) => t.put(key(name), key(name), 0n));
    }
    const prefix = { key: key('p/'), rangeEnd: prefixRangeEnd(key('p/')) };
    const limited = store.range(prefix, { limit: 2 });
    expect(limited.count).toBe(3);
    expect(limited.kvs.map((kv) => kv.key.toString())).toEqual(['p/a', 'p/b']);
    expect(store.range({ key: key('p/b'), rangeEnd: Buffer.of(0) }).kvs.map((kv) => kv.key.toString())).toEqual(['p/b', 'p/c', 'q']);
    expect(store.range(all, { countOnly: true })).toMatchObject({ count: 4, kvs: [] });
    expect(store.range({ key: key('b'), rangeEnd: key('a') }).count).toBe(0);
    expect(prefixRangeEnd(Buffer.from([0x61, 0xff]))).toEqual(Buffer.from([0x62]));
    expect(prefixRangeEnd(Buffer.from([0xff]))).toEqual(Buffer.of(0));
  });

  it('rebuilds the same index from disk, compaction included', async () => {
    await write((t) => t.put(key('a'), key('1'), 7n));
    await write((t) => t.put(key('a'), key('2'), 7n));
    await write((t) => t.put(key('b'), key('1'), 0n));
    await write((t) => t.deleteRange(single('b')));
    const batch: BatchOperation[] = [];
    store.compact(3, batch);
    await db.batch(batch);
    await store.whenCompacted();
    const before = store.range(all);
    const reopened = await MvccStore.open(db);
    expect(reopened.range(all)).toEqual(before);
    expect(reopened.currentRevision).toBe(5);
    expect(reopened.compactRevision).toBe(3);
    expect(reopened.range(single('a'), { revision: 3 }).kvs[0]).toMatchObject({ lease: 7n, version: 2 });
  });

  it('deletes compacted records only once the apply write holding them has landed', async () => {
    // A member answers once a batch is applied in memory and writes it to LevelDB afterwards; a
    // compaction applied in that same batch must not delete its records before they land, or the
    // write puts them back: records the index no longer has, a HashKV that differs from the other
    // members' (seen in the soak) until the next start compacts them again.
    await write((t) => t.put(key('a'), key('1'), 0n));
    const batch: BatchOperation[] = [];
    const put = store.beginWrite();
    put.put(key('a'), key('2'), 0n);
    put.commit();
    batch.push(...put.batch);
    const remove = store.beginWrite();
    remove.deleteRange(single('a'));
    const revision = remove.commit();
    batch.push(...remove.batch);
    store.compact(revision, batch);
    await new Promise((resolve) => setTimeout(resolve, 50)); // the apply write is still on its way
    await db.batch(batch);
    store.markFlushed(batch, revision);
    await store.whenCompacted();
    const left: Buffer[] = [];
    for await (const stored of db.keys({ gte: Buffer.of(prefix.keyValue), lt: prefixEnd(prefix.keyValue) })) left.push(stored);
    expect(left).toEqual([]);
    expect(store.range(all).kvs).toEqual([]);
  });

  it('reports history in revision order with previous values', async () => {
    await write((t) => t.put(key('h'), key('1'), 0n));
    await write((t) => t.put(key('h'), key('2'), 0n));
    await write((t) => t.deleteRange(single('h')));
    const { events, revisions } = await store.history(2, 4, 100, true);
    expect(revisions).toEqual([2, 3, 4]);
    expect(events.map((event) => [event.type, event.kv.value.toString(), event.prevKv?.value.toString()])).toEqual([
      ['put', '1', undefined],
      ['put', '2', '1'],
      ['delete', '', '2'],
    ]);
  });

  it('compacts the index in slices with the event loop running between them, reads answering as after the pass', async () => {
    // A compaction's index pass over 60,000 keys in one synchronous stretch stalled a member for
    // 0.5-1.9 s (etcdctl check perf ends with one). Between slices, requests run: their reads must
    // see what they would after the pass, and their writes must survive it.
    const keys = 5_000;
    const name = (index: number): string => `k/${String(index).padStart(5, '0')}`;
    for (let start = 0; start < keys; start += 500) {
      await write((t) => {
        for (let index = start; index < start + 500; index++) t.put(key(name(index)), key('v1'), 0n);
      });
    }
    await write((t) => t.deleteRange({ key: key('k/'), rangeEnd: key(name(keys / 2)) }));
    const revision = await write((t) => t.put(key(name(keys - 1)), key('v2'), 0n));
    const expected = store.range(all);
    expect(expected.count).toBe(keys / 2);

    const batch: BatchOperation[] = [];
    store.compact(revision, batch);
    await db.batch(batch);
    let finished = false;
    const compacted = store.whenCompacted().then(() => {
      finished = true;
    });
    const sizes: number[] = [];
    let readsDuringPass = 0;
    let rewritten = 0;
    while (!finished) {
      sizes.push(store.keyCount);
      if (store.keyCount > keys / 2) {
        readsDuringPass += 1;
        expect(store.range(all, { revision }).kvs).toEqual(expected.kvs);
        expect(() => store.range(all, { revision: revision - 1 })).toThrow(new RampartError('Compacted'));
        if (rewritten === 0) rewritten = await write((t) => t.put(key(name(0)), key('again'), 0n));
      }
      await new Promise((resolve) => setImmediate(resolve));
    }
    await compacted;
    // The index shrank in steps (keys between "all" and "the live ones" at some point) while reads ran.
    expect(sizes.some((size) => size > keys / 2 + 1 && size < keys)).toBe(true);
    expect(readsDuringPass).toBeGreaterThan(1);
    // The write made during the pass (to a key whose tombstone the pass drops) survived it.
    expect(store.range(single(name(0))).kvs[0]).toMatchObject({ createRevision: rewritten, modRevision: rewritten, version: 1 });
    expect(store.keyCount).toBe(keys / 2 + 1);
    expect(store.range(all, { revision }).kvs).toEqual(expected.kvs);
  });

  it('deletes a range in one revision, readable before and after its batch is written', async () => {
    for (const name of ['d/a', 'd/b', 'd/c', 'e']) await write((t) => t.put(key(name), key(`${name}-v`), 0n));
    const transaction = store.beginWrite();
    const deleted = transaction.deleteRange({ key: key('d/'), rangeEnd: prefixRangeEnd(key('d/')) });
    const revision = transaction.commit();
    expect(deleted.map((kv) => kv.key.toString())).toEqual(['d/a', 'd/b', 'd/c']);
    expect(transaction.batch).toHaveLength(3);
    expect(transaction.events.map((event) => [event.type, event.kv.key.toString(), event.kv.modRevision, event.prevKv?.value.toString()])).toEqual([
      ['delete', 'd/a', revision, 'd/a-v'],
      ['delete', 'd/b', revision, 'd/b-v'],
      ['delete', 'd/c', revision, 'd/c-v'],
    ]);
    // Not yet written: older revisions still read (from the database), the tombstones from memory.
    expect(store.range(all).kvs.map((kv) => kv.key.toString())).toEqual(['e']);
    expect(store.range(all, { revision: revision - 1 }).kvs.map((kv) => kv.key.toString())).toEqual(['d/a', 'd/b', 'd/c', 'e']);
    expect(store.previousValue(key('d/b'), revision, 1)?.value.toString()).toBe('d/b-v');
    await db.batch(transaction.batch);
    store.markFlushed(transaction.batch, revision);
    const { events } = await store.history(revision, revision, 10, true);
    expect(events.map((event) => [event.type, event.kv.key.toString(), event.kv.value.length, event.prevKv?.value.toString()])).toEqual([
      ['delete', 'd/a', 0, 'd/a-v'],
      ['delete', 'd/b', 0, 'd/b-v'],
      ['delete', 'd/c', 0, 'd/c-v'],
    ]);
    const reopened = await MvccStore.open(db);
    expect(reopened.range(all).kvs.map((kv) => kv.key.toString())).toEqual(['e']);
  });
});
