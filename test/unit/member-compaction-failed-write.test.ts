/**
 * One member in this process, real Raft loop and database: a compaction deletes the compacted
 * records in the background, after the Compact call is answered. When that write fails (a full
 * disk: LevelDB's "No space left on device"), the member goes through its failure path (logged,
 * closed, exit 1) instead of dying of an unhandled promise rejection (seen in the disk-full soak),
 * and writes nothing more.
 */
import { rm } from 'node:fs/promises';
import { afterEach, describe, expect, it, vi } from 'vitest';
import type { BatchOperation } from '../../src/storage/mvcc/store.js';
import { metaKey } from '../../src/storage/schema.js';
import { openOneMember, putRetrying, recordedLog, until } from '../helpers/in-process-cluster.js';
import { temporaryDirectory } from '../helpers/processes.js';

type BatchWriter = { batch(operations: BatchOperation[], options?: { sync?: boolean }): Promise<void> };

describe('a failed compaction write', () => {
  let dataDir: string | undefined;
  afterEach(async () => {
    if (dataDir !== undefined) await rm(dataDir, { recursive: true, force: true });
  });

  it('fails the member through its failure path, with no unhandled rejection', async () => {
    dataDir = await temporaryDirectory('compaction-failed-write');
    const log = recordedLog();
    const member = await openOneMember(dataDir, log.stream, { initialClusterToken: 'compaction-failed-write', requestTimeoutMs: 2_000 });
    const exit = vi.spyOn(process, 'exit').mockImplementation((() => undefined) as never);
    try {
      await member.whenReady();
      let revision = 0;
      for (let version = 0; version < 5; version++) revision = await putRetrying(member, 'a', `v${version}`);

      // Every write of the compaction (its deletions, then its finished mark) fails as on a full
      // disk; applied batches (they carry the consistent index) go through until the member fails.
      const db = (member as unknown as { db: BatchWriter }).db;
      const realBatch = db.batch.bind(db);
      const compactionWrites: BatchOperation[][] = [];
      db.batch = (operations, options) => {
        const applied = operations.some((operation) => operation.key.equals(metaKey.consistentIndex));
        const compaction = operations.every((operation) => operation.type === 'del' || operation.key.equals(metaKey.finishedCompactRevision));
        if (applied || !compaction) return realBatch(operations, options);
        compactionWrites.push(operations);
        return Promise.reject(Object.assign(new Error('IO error: /tmp/db/000123.log: No space left on device'), { code: 'LEVEL_IO_ERROR' }));
      };
      // Answered once applied, before the deletions are written.
      await member.compact({ revision: String(revision), physical: false });

      await until(() => exit.mock.calls.length > 0, 'the failed member to close and exit', 10_000);
      expect(exit).toHaveBeenCalledWith(1);
      const failed = log.records('member failed; stopping');
      expect(failed).toHaveLength(1);
      expect(failed[0]?.err).toContain('No space left on device');
      // The first failed write was the last one the compaction tried.
      expect(compactionWrites).toHaveLength(1);
      expect(compactionWrites[0]?.every((operation) => operation.type === 'del')).toBe(true);
    } finally {
      exit.mockRestore();
      process.exitCode = 0;
      await member.close().catch(() => undefined);
    }
  });
});
