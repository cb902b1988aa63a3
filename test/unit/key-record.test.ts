import { describe, expect, it } from 'vitest';
import type { KeyValue } from '../../src/storage/encoding.js';
import { KeyRecord } from '../../src/storage/mvcc/key-record.js';

const key = Buffer.from('k');
const put = (main: number, version: number, lease = 0n): KeyValue => ({ key, value: Buffer.from(`v${main}`), createRevision: 2, modRevision: main, version, lease });
const revisions = (record: KeyRecord): [number, number, boolean][] =>
  Array.from({ length: record.revisionCount }, (_, position) => [record.mainAt(position), record.subAt(position), record.tombstoneAt(position)]);

describe('KeyRecord', () => {
  it('keeps revisions in order with sub revisions and tombstones, and the newest put as the live value', () => {
    const record = new KeyRecord('k', 2, 0, put(2, 1));
    expect(revisions(record)).toEqual([[2, 0, false]]);
    record.append(3, 7, undefined);
    expect(record.live()).toBeUndefined();
    expect(record.liveLease).toBe(0n);
    record.append(5, 60_000, put(5, 1, 42n));
    expect(revisions(record)).toEqual([[2, 0, false], [3, 7, true], [5, 60_000, false]]);
    expect(record.live()).toEqual({ key, value: Buffer.from('v5'), createRevision: 2, modRevision: 5, version: 1, lease: 42n });
    expect(record.live(key)?.key).toBe(key);
    expect(record.liveLease).toBe(42n);
    expect([1, 2, 3, 4, 5, 6].map((revision) => record.visibleAt(revision))).toEqual([-1, 0, 1, 1, 2, 2]);
    expect(() => record.append(5, 60_000, undefined)).toThrow('key revisions must increase');
  });

  it('compacts: drops history below the point, keeps the newest put at or below it, drops a tombstone there', () => {
    const record = new KeyRecord('k', 2, 0, put(2, 1));
    record.append(3, 0, put(3, 2));
    record.append(4, 1, undefined);
    record.append(6, 0, put(6, 1));
    const removed: number[] = [];
    expect(record.compact(3, removed)).toBe(false);
    expect(removed).toEqual([2, 0]);
    expect(revisions(record)).toEqual([[3, 0, false], [4, 1, true], [6, 0, false]]);
    expect(record.compact(5, removed)).toBe(false);
    expect(removed).toEqual([2, 0, 3, 0, 4, 1]);
    expect(revisions(record)).toEqual([[6, 0, false]]);
    record.append(7, 0, undefined);
    expect(record.compact(7, removed)).toBe(true);
    expect(removed).toEqual([2, 0, 3, 0, 4, 1, 6, 0, 7, 0]);
  });
});
