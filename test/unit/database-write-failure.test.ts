/**
 * Every LevelDB write of the member's database (an array batch, a large batch written as a chained
 * batch, a clear, a put) that LevelDB fails with an I/O error (a full disk) is reported to
 * `onWriteFailure` before its caller sees it, whoever made it: the member fails closed on it even
 * when the caller does not await the write. Other refusals (a closed database) are not reported.
 */
import { rm } from 'node:fs/promises';
import { ClassicLevel } from 'classic-level';
import { afterEach, describe, expect, it, vi, type MockInstance } from 'vitest';
import type { Member } from '../../src/server/member.js';
import { SealedDatabase } from '../../src/storage/database.js';
import type { BatchOperation } from '../../src/storage/mvcc/store.js';
import { openOneMember, putRetrying, recordedLog, until } from '../helpers/in-process-cluster.js';
import { temporaryDirectory } from '../helpers/processes.js';

type Direct = Record<'_batch' | '_clear' | '_put' | '_del' | 'compactRange', (...args: unknown[]) => Promise<unknown>>;
type Chained = { _write: (options: unknown) => Promise<void>; close: () => Promise<void> };

const diskFull = (): Error => Object.assign(new Error('IO error: /tmp/db/000123.log: No space left on device'), { code: 'LEVEL_IO_ERROR' });
const puts = (count: number, tag: string): BatchOperation[] =>
  Array.from({ length: count }, (_, index) => ({ type: 'put', key: Buffer.from(`k${tag}${index}`), value: Buffer.from('v') }));

/**
 * Stands in for a LevelDB compaction that fails (a full disk) as LevelDB's does: CompactRange
 * returns nothing (classic-level's compactRange resolves) and keeps the failure as its background
 * error, which every later write is answered with (seen on a real ENOSPC, a filled tmpfs).
 */
function failCompactions(backgroundError: Error): void {
  const direct = ClassicLevel.prototype as unknown as Direct;
  const originals = { _put: direct._put, _del: direct._del, _batch: direct._batch };
  let failed = false;
  vi.spyOn(direct, 'compactRange').mockImplementation(() => {
    failed = true;
    return Promise.resolve();
  });
  for (const name of ['_put', '_del', '_batch'] as const) {
    vi.spyOn(direct, name).mockImplementation(function (this: unknown, ...args: unknown[]) {
      return failed ? Promise.reject(backgroundError) : originals[name].apply(this, args);
    });
  }
}

describe('a failed LevelDB write', () => {
  let dataDir: string | undefined;
  afterEach(async () => {
    vi.restoreAllMocks();
    if (dataDir !== undefined) await rm(dataDir, { recursive: true, force: true });
  });

  it('is reported to onWriteFailure before its caller sees it, for every kind of write', async () => {
    dataDir = await temporaryDirectory('write-failure');
    const db = await SealedDatabase.open(dataDir, undefined);
    const reported: unknown[] = [];
    db.onWriteFailure = (error) => reported.push(error);
    try {
      await db.batch(puts(3, 'a'));
      expect(reported).toEqual([]);
      const direct = ClassicLevel.prototype as unknown as Direct;

      // An array batch (the apply path's, a compaction's), also through put.
      const error = diskFull();
      const batchSpy = vi.spyOn(direct, '_batch').mockRejectedValue(error);
      let seenByCaller = -1;
      await expect(db.batch(puts(3, 'b')).catch((thrown: unknown) => {
        seenByCaller = reported.length;
        throw thrown;
      })).rejects.toBe(error);
      expect(seenByCaller).toBe(1);
      await expect(db.put(Buffer.from('p'), Buffer.from('v'))).rejects.toBe(error);
      expect(reported).toEqual([error, error]);
      batchSpy.mockRestore();

      // A batch large enough to be written in steps, as one chained batch.
      const level = (db as unknown as { level: { batch(): Chained } }).level;
      const probe = level.batch();
      const chainedPrototype = Object.getPrototypeOf(probe) as Chained;
      await probe.close();
      const chainedError = diskFull();
      vi.spyOn(chainedPrototype, '_write').mockRejectedValue(chainedError);
      await expect(db.batch(puts(1500, 'c'))).rejects.toBe(chainedError);
      expect(reported).toEqual([error, error, chainedError]);

      // A clear (a snapshot's staging, the log's compaction).
      const clearError = diskFull();
      vi.spyOn(direct, '_clear').mockRejectedValue(clearError);
      await expect(db.clear({ gte: Buffer.from('ka'), lt: Buffer.from('kb') })).rejects.toBe(clearError);
      expect(reported).toEqual([error, error, chainedError, clearError]);
      vi.restoreAllMocks();

      // Not an I/O failure: not reported.
      const other = Object.assign(new Error('not open'), { code: 'LEVEL_DATABASE_NOT_OPEN' });
      vi.spyOn(direct, '_batch').mockRejectedValue(other);
      await expect(db.batch(puts(2, 'd'))).rejects.toBe(other);
      expect(reported).toHaveLength(4);
      vi.restoreAllMocks();

      // The real writes go through again.
      await db.batch(puts(2, 'e'));
      expect(await db.get(Buffer.from('ke1'))).toEqual(Buffer.from('v'));
    } finally {
      vi.restoreAllMocks();
      await db.close();
    }
  });

  it('includes a compaction: one that failed is reported and its caller sees the error', async () => {
    dataDir = await temporaryDirectory('write-failure-compaction');
    const db = await SealedDatabase.open(dataDir, undefined);
    const reported: unknown[] = [];
    db.onWriteFailure = (error) => reported.push(error);
    try {
      await db.batch(puts(3, 'a'));
      // A compaction that succeeds: nothing reported, the records still there.
      await db.compactRange(Buffer.of(0), Buffer.of(0xff));
      expect(reported).toEqual([]);
      expect(await db.get(Buffer.from('ka1'))).toEqual(Buffer.from('v'));

      const backgroundError = diskFull();
      failCompactions(backgroundError);
      let seenByCaller = -1;
      await expect(db.compactRange(Buffer.of(0), Buffer.of(0xff)).catch((thrown: unknown) => {
        seenByCaller = reported.length;
        throw thrown;
      })).rejects.toBe(backgroundError);
      expect(seenByCaller).toBe(1);
      expect(reported).toEqual([backgroundError]);
    } finally {
      vi.restoreAllMocks();
      await db.close();
    }
  });

  /**
   * A one-member cluster (process.exit stood in for) in which `provoke` starts a write that fails
   * as on a full disk and gives how its caller saw it: the caller is refused, and the member fails
   * once, through its failure path, and exits 1.
   */
  async function expectMemberFailsOnce(directoryName: string, clusterToken: string, provoke: (member: Member, exit: MockInstance) => Promise<{ outcome: Promise<string> }>): Promise<void> {
    dataDir = await temporaryDirectory(directoryName);
    const log = recordedLog();
    const member = await openOneMember(dataDir, log.stream, { initialClusterToken: clusterToken, requestTimeoutMs: 2_000 });
    const exit = vi.spyOn(process, 'exit').mockImplementation((() => undefined) as never);
    try {
      await member.whenReady();
      await putRetrying(member, 'a', 'v0');
      const { outcome } = await provoke(member, exit);
      await until(() => exit.mock.calls.length > 0, 'the failed member to close and exit', 10_000);
      expect(await outcome).toBe('refused');
      expect(exit).toHaveBeenCalledWith(1);
      const failed = log.records('member failed; stopping');
      expect(failed).toHaveLength(1);
      expect(failed[0]?.err).toContain('No space left on device');
    } finally {
      vi.restoreAllMocks();
      process.exitCode = 0;
      await member.close().catch(() => undefined);
    }
  }

  it('fails the member when a Defragment\'s compaction failed, and the Defragment is not answered as done', async () => {
    await expectMemberFailsOnce('write-failure-defragment', 'write-failure-defragment', async (member, exit) => {
      await member.defragment();
      expect(exit).not.toHaveBeenCalled();
      failCompactions(diskFull());
      return { outcome: member.defragment().then(() => 'done', () => 'refused') };
    });
  });

  it('fails the member once, even when the write is not one the member awaits', async () => {
    await expectMemberFailsOnce('write-failure-member', 'write-failure', async (member) => {
      // A clear outside the apply path (as a snapshot's staging makes) fails as on a full disk; its
      // caller only logs it.
      vi.spyOn(ClassicLevel.prototype as unknown as Direct, '_clear').mockRejectedValue(diskFull());
      const db = (member as unknown as { db: SealedDatabase }).db;
      return { outcome: db.clear({ gte: Buffer.from('ka'), lt: Buffer.from('kb') }).then(() => 'cleared', () => 'refused') };
    });
  });
});
