import { describe, expect, it } from 'vitest';
import type { Database, DatabaseIterator } from '../../src/storage/database.js';
import { encodeKeyValueRecord, encodeRevisionKey, recordKind, type KeyValue } from '../../src/storage/encoding.js';
import { rebuildIndex } from '../../src/storage/mvcc/index-rebuild.js';
import type { KeyRecord } from '../../src/storage/mvcc/key-record.js';

/**
 * A database whose 'k' records arrive as one batch of views into one buffer, as the sealed
 * database's bulk read hands them over (the unit tests run without its worker thread).
 */
function oneBatchDatabase(records: { main: number; kind: number; kv: KeyValue }[]): Database {
  const encoded = records.map((record) => encodeKeyValueRecord(record.kind, record.kv));
  const shared = Buffer.concat(encoded);
  let offset = 0;
  const batch: [Buffer, Buffer][] = records.map((record, position) => {
    const length = (encoded[position] as Buffer).length;
    const view = shared.subarray(offset, offset + length);
    offset += length;
    return [encodeRevisionKey(record.main, 0), view];
  });
  let served = false;
  const iterator: DatabaseIterator = {
    nextv: async () => {
      if (served) return [];
      served = true;
      return batch;
    },
    close: async () => undefined,
    [Symbol.asyncIterator]: () => {
      throw new Error('not used');
    },
  };
  return { iterator: () => iterator } as unknown as Database;
}

const put = (main: number, key: string, valueBytes: number): { main: number; kind: number; kv: KeyValue } => ({
  main,
  kind: recordKind.put,
  kv: { key: Buffer.from(key), value: Buffer.alloc(valueBytes, main % 251), lease: 0n, createRevision: main, modRevision: main, version: 1 },
});

const revisionsOf = (record: KeyRecord | undefined): { main: number; sub: number; tombstone: boolean }[] =>
  record === undefined ? [] : Array.from({ length: record.revisionCount }, (_, position) => ({ main: record.mainAt(position), sub: record.subAt(position), tombstone: record.tombstoneAt(position) }));

describe('index rebuild', () => {
  it('returns every key in key order with its revisions, live value and the newest revision', async () => {
    const tombstone = { main: 4, kind: recordKind.tombstone, kv: { key: Buffer.from('b'), value: Buffer.alloc(0), lease: 0n, createRevision: 0, modRevision: 4, version: 0 } };
    const rebuilt = await rebuildIndex(oneBatchDatabase([put(2, 'c', 10), put(3, 'b', 10), tombstone, put(5, 'a', 10), put(6, 'c', 20)]));
    expect(rebuilt.currentRevision).toBe(6);
    expect(rebuilt.records.map(([indexKey]) => indexKey)).toEqual(['a', 'b', 'c']);
    const [a, b, c] = rebuilt.records.map(([, record]) => record);
    expect(a?.live()?.value).toEqual(Buffer.alloc(10, 5));
    expect(b?.live()).toBeUndefined();
    expect(revisionsOf(b).map((revision) => [revision.main, revision.tombstone])).toEqual([[3, false], [4, true]]);
    expect(revisionsOf(c).map((revision) => revision.main)).toEqual([2, 6]);
    expect(c?.live()?.value).toEqual(Buffer.alloc(20, 6));
  });

  it('keeps keys and values as views into a batch that stays mostly live, and copies them out of one that is mostly history', async () => {
    const dense = await rebuildIndex(oneBatchDatabase(Array.from({ length: 10 }, (_, index) => put(index + 2, `key-${index}`, 1024))));
    const denseValues = dense.records.map(([, record]) => record.live()?.value as Buffer);
    const denseBuffer = (denseValues[0] as Buffer).buffer;
    expect(denseValues.every((value) => value.buffer === denseBuffer)).toBe(true);

    // One key overwritten 50 times with 1 KiB values, one small key written once: the batch holds
    // ~51 KiB of which ~1 KiB is live.
    const history = Array.from({ length: 50 }, (_, index) => put(index + 2, 'overwritten', 1024));
    const sparse = await rebuildIndex(oneBatchDatabase([...history, put(60, 'small', 16)]));
    expect(sparse.records.map(([indexKey]) => indexKey)).toEqual(['overwritten', 'small']);
    for (const [indexKey, record] of sparse.records) {
      const live = record.live() as KeyValue;
      // Copied out: nothing of this key holds the 51 KiB batch buffer any more.
      expect(live.value.buffer.byteLength).toBeLessThan(16 * 1024);
      expect(live.key.toString()).toBe(indexKey);
    }
    expect(sparse.records[0]?.[1].live()?.value).toEqual(Buffer.alloc(1024, 51));
    expect(sparse.records[0]?.[1].revisionCount).toBe(50);
    expect(sparse.records[1]?.[1].live()?.value).toEqual(Buffer.alloc(16, 60));
  });
});
