/**
 * One member in this process, real Raft loop and database, its applied batches' LevelDB writes held
 * by the test: batches applied while a write is in flight are answered, readable (the store's
 * overlay, older revisions included) and merged into one later write; and when that merged write
 * is lost (the process dies before it lands), the restarted member applies again exactly the
 * entries past the consistent index that did land: same values, revisions and versions.
 */
import { rm } from 'node:fs/promises';
import { Writable } from 'node:stream';
import * as grpc from '@grpc/grpc-js';
import pino from 'pino';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { Member } from '../../src/server/member.js';
import type { BatchOperation } from '../../src/storage/mvcc/store.js';
import { metaKey } from '../../src/storage/schema.js';
import { putOf, putRetrying, until } from '../helpers/in-process-cluster.js';
import { freePort, temporaryDirectory } from '../helpers/processes.js';

const quiet = new Writable({ write(_chunk, _encoding, done) { done(); } });

async function openMember(dataDir: string, peerUrl: string, snapshotCount = 100_000): Promise<Member> {
  const member = await Member.open({
    dataDir, name: 'm1', clientUrls: ['http://127.0.0.1:1'], peerUrls: [peerUrl], listenPeerUrls: [peerUrl],
    initialCluster: [{ name: 'm1', peerUrls: [peerUrl] }], initialClusterState: 'new', initialClusterToken: 'applied-writes',
    quotaBackendBytes: 1 << 30, maxRequestBytes: 1.5 * 1024 * 1024, watchProgressNotifyIntervalMs: 600_000, requestTimeoutMs: 10_000,
    heartbeatMs: 100, electionMs: 1_000, snapshotCount, snapshotCatchUpEntries: 100,
    peerServerCredentials: grpc.ServerCredentials.createInsecure(), peerClientCredentials: grpc.credentials.createInsecure(), peerTls: false,
    logger: pino({ level: 'info' }, quiet),
  });
  await member.whenReady();
  return member;
}

const rangeOf = (key: string, revision = 0) =>
  ({ key: Buffer.from(key), range_end: Buffer.alloc(0), limit: '0', revision: String(revision), sort_order: 0, sort_target: 0, serializable: true, keys_only: false, count_only: false, min_mod_revision: '0', max_mod_revision: '0', min_create_revision: '0', max_create_revision: '0' }) as never;

async function read(member: Member, key: string, revision = 0): Promise<{ value: string; modRevision: number; version: number } | undefined> {
  const { kvs } = await member.range(rangeOf(key, revision));
  const kv = kvs[0];
  return kv === undefined ? undefined : { value: kv.value.toString(), modRevision: Number(kv.mod_revision), version: Number(kv.version) };
}

interface HeldWrite {
  readonly operations: BatchOperation[];
  readonly sync: boolean;
  /** Lands the write in the database, or (false) drops it as a crash before it landed would. */
  release(write: boolean): void;
  /** The write fails, as on a disk error. */
  fail(error: Error): void;
}

type BatchWriter = { batch(operations: BatchOperation[], options?: { sync?: boolean }): Promise<void> };

/** Set after each test: nothing more is held, so the member can close. */
let holding = true;

/** Holds the member's applied batches' writes (those carrying a consistent index) that `which` picks, in `held`. */
function holdWrites(member: Member, held: HeldWrite[], which: (sync: boolean) => boolean): void {
  const db = (member as unknown as { db: BatchWriter }).db;
  const realBatch = db.batch.bind(db);
  db.batch = (operations, options) => {
    const sync = options?.sync === true;
    if (!holding || !operations.some((operation) => operation.key.equals(metaKey.consistentIndex)) || !which(sync)) return realBatch(operations, options);
    return new Promise<void>((resolve, reject) => {
      held.push({ operations, sync, release: (write) => (write ? realBatch(operations, options).then(resolve, reject) : resolve()), fail: reject });
    });
  };
}

describe('applied batches merged while a write is in flight', () => {
  let member: Member | undefined;
  let dataDir: string | undefined;
  const held: HeldWrite[] = [];
  afterEach(async () => {
    // A failed assertion may leave writes held: land them (and hold no more), or close would wait for them.
    holding = false;
    for (const write of held.splice(0)) write.release(true);
    await member?.close();
    member = undefined;
    holding = true;
    if (dataDir !== undefined) await rm(dataDir, { recursive: true, force: true });
  });

  it('answers and reads them before they land, and after a crash re-applies exactly what the database misses', async () => {
    dataDir = await temporaryDirectory('applied-writes');
    const peerUrl = `http://127.0.0.1:${await freePort()}`;
    member = await openMember(dataDir, peerUrl);
    await putRetrying(member, 'a', 'v0');

    // The applied batches' writes (those carrying a consistent index) wait for the test.
    holdWrites(member, held, () => true);

    const first = (await member.put(putOf('a', 'v1'))).revision;
    await until(() => held.length === 1, 'the first batch written');
    // Applied and answered while that write is in flight: not written yet, and not waiting for it.
    const second = (await member.put(putOf('b', 'v2'))).revision;
    const third = (await member.put(putOf('a', 'v3'))).revision;
    expect([second, third]).toEqual([first + 1, first + 2]);
    expect(held).toHaveLength(1);
    // Readable meanwhile, the overwritten revision too (from the overlay: the live value is v3).
    expect(await read(member, 'a', first)).toEqual({ value: 'v1', modRevision: first, version: 2 });
    expect(await read(member, 'b')).toEqual({ value: 'v2', modRevision: second, version: 1 });
    expect(await read(member, 'a')).toEqual({ value: 'v3', modRevision: third, version: 3 });

    // The first write lands; the two batches applied meanwhile go out as one write, consistent
    // index last.
    held[0]?.release(true);
    await until(() => held.length === 2, 'the merged write');
    const merged = held[1]?.operations ?? [];
    const consistentIndexes = merged.filter((operation) => operation.key.equals(metaKey.consistentIndex));
    expect(consistentIndexes.length).toBeGreaterThanOrEqual(2);
    expect(merged[merged.length - 1]?.key.equals(metaKey.consistentIndex)).toBe(true);

    // The process dies before the merged write lands: the database holds the first batch only (the
    // member is marked failed, so closing it writes no index checkpoint, as a crash would not).
    held[1]?.release(false);
    held.length = 0;
    (member as unknown as { failed: boolean }).failed = true;
    await member.close();
    member = undefined;

    // Restarted: the entries past the stored consistent index are applied again from the Raft
    // log, once each: same values, revisions and versions as answered, nothing applied twice.
    member = await openMember(dataDir, peerUrl);
    expect(await read(member, 'a')).toEqual({ value: 'v3', modRevision: third, version: 3 });
    expect(await read(member, 'b')).toEqual({ value: 'v2', modRevision: second, version: 1 });
    expect(await read(member, 'a', first)).toEqual({ value: 'v1', modRevision: first, version: 2 });
    expect(member.store.currentRevision).toBe(third);
    expect(await putRetrying(member, 'c', 'v4')).toBe(third + 1);
  });

  it('takes one scheduled snapshot while its write is held, at its index and with the membership then', async () => {
    dataDir = await temporaryDirectory('applied-writes');
    const peerUrl = `http://127.0.0.1:${await freePort()}`;
    member = await openMember(dataDir, peerUrl, 10);
    // Only the synced writes (a scheduled snapshot's batch) wait for the test.
    holdWrites(member, held, (sync) => sync);
    for (let put = 0; held.length === 0; put++) {
      if (put > 40) throw new Error('no snapshot was scheduled after 40 puts with a snapshot count of 10');
      await putRetrying(member, `k${put}`, 'v');
    }
    // The index the snapshot is of: its batch's (last) consistent index.
    const indexes = (held[0]?.operations ?? []).filter((operation) => operation.key.equals(metaKey.consistentIndex));
    const last = indexes[indexes.length - 1];
    const snapshotAt = last?.type === 'put' ? Number(last.value.readBigUInt64BE(0)) : 0;
    expect(snapshotAt).toBeGreaterThanOrEqual(10);
    // Applied while the snapshot's write is held: a learner added, then more puts than the count.
    const learner = await member.memberAdd([`http://127.0.0.1:${await freePort()}`], true);
    expect(learner.isLearner).toBe(true);
    for (let put = 0; put < 12; put++) await putRetrying(member, `after${put}`, 'v');
    held[0]?.release(true);
    held.splice(0, 1);
    // The batches applied meanwhile are written as any others: not one synced snapshot each.
    await until(() => held.length > 0 || member?.store.flushedRevision === member?.store.currentRevision, 'the queued batches written');
    expect(held.map((write) => write.sync)).toEqual([]);
    const internals = member as unknown as { loop: { node: { latestSnapshot?: { metadata: { index: number; configuration: { voters: string[]; learners: string[] } } } } } };
    const snapshot = internals.loop.node.latestSnapshot;
    expect(snapshot?.metadata.index).toBe(snapshotAt);
    // The membership as of that index: the learner was added after it.
    expect(snapshot?.metadata.configuration.learners).toEqual([]);
    expect(snapshot?.metadata.configuration.voters).toHaveLength(1);
  });

  it('stops after a failed write: waiters for the unwritten batches are let go and the process exits', async () => {
    dataDir = await temporaryDirectory('applied-writes');
    const peerUrl = `http://127.0.0.1:${await freePort()}`;
    member = await openMember(dataDir, peerUrl);
    await putRetrying(member, 'a', 'v0');
    holdWrites(member, held, () => true);
    await member.put(putOf('a', 'v1'));
    await until(() => held.length === 1, 'the first batch written');
    const revision = (await member.put(putOf('b', 'v2'))).revision;
    // A compaction to a revision not written yet waits for it (close waits for the compaction).
    await member.compact({ revision: String(revision), physical: false } as never);
    expect(member.store.flushedRevision).toBeLessThan(revision);
    const exit = vi.spyOn(process, 'exit').mockImplementation((() => undefined) as never);
    try {
      held[0]?.fail(Object.assign(new Error('EIO: i/o error, write'), { code: 'EIO' }));
      held.length = 0;
      await until(() => exit.mock.calls.length > 0, 'the failed member to close and exit', 10_000);
      expect(exit).toHaveBeenCalledWith(1);
    } finally {
      exit.mockRestore();
      process.exitCode = 0;
    }
    member = undefined;
  });
});
