/**
 * One member in this process, real Raft loop and database: a compaction deletes the compacted
 * records in the background, after the Compact call is answered. When that write fails (a full
 * disk: LevelDB's "No space left on device"), the member goes through its failure path (logged,
 * closed, exit 1) instead of dying of an unhandled promise rejection (seen in the disk-full soak),
 * and writes nothing more.
 */
import { rm } from 'node:fs/promises';
import { Writable } from 'node:stream';
import * as grpc from '@grpc/grpc-js';
import pino from 'pino';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { Member } from '../../src/server/member.js';
import type { BatchOperation } from '../../src/storage/mvcc/store.js';
import { metaKey } from '../../src/storage/schema.js';
import { putRetrying, until } from '../helpers/in-process-cluster.js';
import { freePort, temporaryDirectory } from '../helpers/processes.js';

type BatchWriter = { batch(operations: BatchOperation[], options?: { sync?: boolean }): Promise<void> };

describe('a failed compaction write', () => {
  let dataDir: string | undefined;
  afterEach(async () => {
    if (dataDir !== undefined) await rm(dataDir, { recursive: true, force: true });
  });

  it('fails the member through its failure path, with no unhandled rejection', async () => {
    dataDir = await temporaryDirectory('compaction-failed-write');
    const logLines: string[] = [];
    const logs = new Writable({
      write(chunk: Buffer, _encoding, done) {
        logLines.push(chunk.toString('utf8'));
        done();
      },
    });
    const peerUrl = `http://127.0.0.1:${await freePort()}`;
    const member = await Member.open({
      dataDir, name: 'm1', clientUrls: ['http://127.0.0.1:1'], peerUrls: [peerUrl], listenPeerUrls: [peerUrl],
      initialCluster: [{ name: 'm1', peerUrls: [peerUrl] }], initialClusterState: 'new', initialClusterToken: 'compaction-failed-write',
      quotaBackendBytes: 1 << 30, maxRequestBytes: 1.5 * 1024 * 1024, watchProgressNotifyIntervalMs: 600_000, requestTimeoutMs: 2_000,
      heartbeatMs: 100, electionMs: 1_000, snapshotCount: 100_000, snapshotCatchUpEntries: 100,
      peerServerCredentials: grpc.ServerCredentials.createInsecure(), peerClientCredentials: grpc.credentials.createInsecure(), peerTls: false,
      logger: pino({ level: 'info' }, logs),
    });
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
      const failed = logLines.map((line) => JSON.parse(line) as { msg: string; err?: string }).filter((line) => line.msg === 'member failed; stopping');
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
