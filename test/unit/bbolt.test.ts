/**
 * The bbolt writer and reader against each other (real etcd files are covered by
 * test/e2e/etcd-snapshot.test.ts): multi-level trees, values larger than a page, empty buckets,
 * and damage found rather than read past.
 */
import { describe, expect, it } from 'vitest';
import { BboltFormatError, fnv1a64 } from '../../src/storage/bbolt/format.js';
import { BboltReader } from '../../src/storage/bbolt/reader.js';
import { writeBbolt } from '../../src/storage/bbolt/writer.js';
import { readEtcdSnapshot, writeEtcdSnapshot, type EtcdState } from '../../src/storage/etcd-snapshot.js';

const key = (index: number): Buffer => Buffer.from(`key/${String(index).padStart(6, '0')}`);

describe('bbolt', () => {
  it('computes FNV-1a 64 as specified', () => {
    expect(fnv1a64(Buffer.alloc(0))).toBe(0xcbf29ce484222325n);
    expect(fnv1a64(Buffer.from('a'))).toBe(0xaf63dc4c8601ec8cn);
  });

  it('reads back what it wrote: a three-level tree, an overflowing value, an empty bucket', () => {
    const many = Array.from({ length: 40_000 }, (_, index) => [key(index), Buffer.from(`value-${index}`)] as const);
    const large = Buffer.alloc(20_000, 7);
    const file = writeBbolt([
      { name: 'many', entries: many },
      { name: 'large', entries: [[Buffer.from('a'), Buffer.from('small')], [Buffer.from('b'), large], [Buffer.from('c'), Buffer.from('after')]] },
      { name: 'empty', entries: [] },
    ]);
    expect(file.length % 4096).toBe(0);
    const reader = BboltReader.open(file);
    expect(reader.topLevel().map((entry) => entry.key.toString())).toEqual(['empty', 'large', 'many']);
    const readMany = reader.bucket('many') ?? [];
    expect(readMany).toHaveLength(many.length);
    expect(readMany.every((entry, index) => entry.key.equals(key(index)) && entry.value.toString() === `value-${index}`)).toBe(true);
    expect(reader.bucket('large')?.map((entry) => entry.value.length)).toEqual([5, large.length, 5]);
    expect(reader.bucket('empty')).toEqual([]);
    expect(reader.bucket('missing')).toBeUndefined();
  });

  it('refuses damage: a truncated file, bad meta checksums, a page pointing outside the file', () => {
    const file = writeBbolt([{ name: 'many', entries: Array.from({ length: 2000 }, (_, index) => [key(index), Buffer.from('v')] as const) }]);
    expect(() => BboltReader.open(file.subarray(0, file.length - 4096))).toThrow(BboltFormatError);
    const badMetas = Buffer.from(file);
    badMetas.writeUInt8(badMetas.readUInt8(16 + 20) ^ 0xff, 16 + 20);
    badMetas.writeUInt8(badMetas.readUInt8(4096 + 16 + 20) ^ 0xff, 4096 + 16 + 20);
    expect(() => BboltReader.open(badMetas)).toThrow(/no valid bbolt meta page/);
    // One damaged meta is survivable: the other names the same tree.
    const oneMeta = Buffer.from(file);
    oneMeta.writeUInt8(oneMeta.readUInt8(16 + 20) ^ 0xff, 16 + 20);
    expect(BboltReader.open(oneMeta).bucket('many')).toHaveLength(2000);
    // A branch element pointing past the end of the database.
    const reader = BboltReader.open(file);
    const rootPage = Number(reader.meta.rootPage);
    const element = rootPage * 4096 + 16; // the root bucket's one element: "many" → its bucket header
    const bucketRoot = Number(file.readBigUInt64LE(element + file.readUInt32LE(element + 4) + file.readUInt32LE(element + 8)));
    const damaged = Buffer.from(file);
    expect(damaged.readUInt16LE(bucketRoot * 4096 + 8)).toBe(0x01);
    damaged.writeBigUInt64LE(999_999n, bucketRoot * 4096 + 16 + 8);
    expect(() => BboltReader.open(damaged).bucket('many')).toThrow(/outside the database/);
  });

  it('writes etcd snapshots that read back with the same state, and checks their SHA-256', () => {
    const state: EtcdState = {
      keyValues: [
        { main: 2, sub: 0, tombstone: false, key: Buffer.from('a'), value: Buffer.from('1'), createRevision: 2, modRevision: 2, version: 1, lease: 0n },
        { main: 3, sub: 0, tombstone: false, key: Buffer.from('a'), value: Buffer.from('2'), createRevision: 2, modRevision: 3, version: 2, lease: 7587862345789234n },
        { main: 4, sub: 0, tombstone: true, key: Buffer.from('a'), value: Buffer.alloc(0), createRevision: 0, modRevision: 4, version: 0, lease: 0n },
      ],
      leases: [{ id: 7587862345789234n, ttl: 60 }],
      scheduledCompactRevision: 2,
      finishedCompactRevision: 2,
      authEnabled: true,
      authRevision: 9,
      users: [{ name: 'root', password: '$2a$10$abcdefghijklmnopqrstuv', roles: ['root'], noPassword: false }, { name: 'svc', password: '', roles: [], noPassword: true }],
      roles: [{ name: 'r', permissions: [{ type: 2, key: Buffer.from('/x/'), rangeEnd: Buffer.from('/x0') }, { type: 0, key: Buffer.from('k'), rangeEnd: Buffer.alloc(0) }] }, { name: 'root', permissions: [] }],
    };
    const file = writeEtcdSnapshot(state);
    expect(file.length % 512).toBe(32);
    expect(readEtcdSnapshot(file)).toEqual(state);
    const damaged = Buffer.from(file);
    damaged.writeUInt8(damaged.readUInt8(5000) ^ 1, 5000);
    expect(() => readEtcdSnapshot(damaged)).toThrow(/SHA-256 mismatch/);
  });
});

describe('bbolt reader on damaged input', () => {
  it('throws an Error or reads something for every random damage, never hangs or crashes', () => {
    const state: EtcdState = {
      keyValues: Array.from({ length: 500 }, (_, index) => ({
        main: index + 2, sub: 0, tombstone: false, key: key(index % 97), value: Buffer.from(`v${index}`),
        createRevision: index + 2, modRevision: index + 2, version: 1, lease: 0n,
      })).map((kv, index, all) => ({ ...kv, createRevision: all.findIndex((other) => other.key.equals(kv.key)) + 2, version: all.slice(0, index + 1).filter((other) => other.key.equals(kv.key)).length })),
      leases: [], scheduledCompactRevision: 0, finishedCompactRevision: 0, authEnabled: false, authRevision: 0, users: [], roles: [],
    };
    const database = writeEtcdSnapshot(state).subarray(0, -32); // without the checksum, so damage reaches the parser
    expect(readEtcdSnapshot(database).keyValues).toHaveLength(500);
    let seed = 12345;
    const random = (limit: number): number => {
      seed = (seed * 1103515245 + 12345) % 2 ** 31;
      return seed % limit;
    };
    let refused = 0;
    for (let round = 0; round < 400; round++) {
      const damaged = Buffer.from(database);
      for (let flips = 1 + random(8); flips > 0; flips--) damaged.writeUInt8(random(256), random(damaged.length));
      try {
        readEtcdSnapshot(damaged);
      } catch (error) {
        expect(error).toBeInstanceOf(Error);
        refused += 1;
      }
    }
    expect(refused).toBeGreaterThan(0);
  });
});
