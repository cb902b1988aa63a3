/**
 * One member in this process, real Raft loop and database: when an applied batch's LevelDB write
 * fails, nothing applied after it is written (a later batch's consistent index would cover effects
 * the database never got), and the member closes and exits.
 */
import { rm } from 'node:fs/promises';
import { Writable } from 'node:stream';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { failedCloseGraceMs, type Member } from '../../src/server/member.js';
import type { BatchOperation } from '../../src/storage/mvcc/store.js';
import { metaKey } from '../../src/storage/schema.js';
import { openOneMember, putOf, putRetrying, until } from '../helpers/in-process-cluster.js';
import { temporaryDirectory } from '../helpers/processes.js';

const quiet = new Writable({ write(_chunk, _encoding, done) { done(); } });

type BatchWriter = { batch(operations: BatchOperation[], options?: { sync?: boolean }): Promise<void> };

describe('a failed applied-batch write', () => {
  let dataDir: string | undefined;
  afterEach(async () => {
    if (dataDir !== undefined) await rm(dataDir, { recursive: true, force: true });
  });

  it('writes nothing applied after it, and the member exits', async () => {
    const { member, failNextWrite, writtenAfter, later } = await failingMember();
    const exit = vi.spyOn(process, 'exit').mockImplementation((() => undefined) as never);
    try {
      failNextWrite();
      await until(() => exit.mock.calls.length > 0, 'the failed member to close and exit', 10_000);
      expect(exit).toHaveBeenCalledWith(1);
      expect(writtenAfter).toEqual([]);
      // The later put is not answered as applied.
      expect(await later).toBeInstanceOf(Error);
    } finally {
      exit.mockRestore();
      process.exitCode = 0;
      await member.close().catch(() => undefined);
    }
  });

  it('exits after a grace even when closing does not finish', async () => {
    const { member, failNextWrite } = await failingMember();
    const realClose = member.close.bind(member);
    // Closing hangs (as one did for ~10 s in the soak, a disk full).
    member.close = () => new Promise<void>(() => undefined);
    const exit = vi.spyOn(process, 'exit').mockImplementation((() => undefined) as never);
    try {
      const failedAt = Date.now();
      failNextWrite();
      await until(() => exit.mock.calls.length > 0, 'the failed member to exit', 10_000);
      expect(exit).toHaveBeenCalledWith(1);
      expect(Date.now() - failedAt).toBeGreaterThanOrEqual(failedCloseGraceMs - 50);
    } finally {
      exit.mockRestore();
      process.exitCode = 0;
      await realClose().catch(() => undefined);
    }
  });

  /** A member whose next applied-batch write fails when `failNextWrite` is called; a later put committed meanwhile. */
  async function failingMember(): Promise<{ member: Member; failNextWrite: () => void; writtenAfter: BatchOperation[][]; later: Promise<unknown> }> {
    dataDir = await temporaryDirectory('failed-write');
    const member = await openOneMember(dataDir, quiet, { initialClusterToken: 'failed-write', requestTimeoutMs: 2_000 });
    await member.whenReady();
    await putRetrying(member, 'a', 'v0');

    // The next applied batch's write (it carries a consistent index) fails when the test says so;
    // every applied-batch write after it is recorded.
    const db = (member as unknown as { db: BatchWriter }).db;
    const realBatch = db.batch.bind(db);
    let failHeld: ((error: Error) => void) | undefined;
    const writtenAfter: BatchOperation[][] = [];
    db.batch = (operations, options) => {
      if (!operations.some((operation) => operation.key.equals(metaKey.consistentIndex))) return realBatch(operations, options);
      if (failHeld === undefined) return new Promise<void>((_resolve, reject) => { failHeld = reject; });
      writtenAfter.push(operations);
      return realBatch(operations, options);
    };
    void member.put(putOf('a', 'v1'));
    await until(() => failHeld !== undefined, 'the batch write');
    // Committed meanwhile; its apply waits for the write in flight.
    const later = member.put(putOf('b', 'v2')).catch((error: unknown) => error);
    await new Promise((resolve) => setTimeout(resolve, 300));
    return { member, failNextWrite: () => failHeld?.(Object.assign(new Error('EIO: i/o error, write'), { code: 'EIO' })), writtenAfter, later };
  }
});
