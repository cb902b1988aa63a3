/**
 * A synced write to the member's database first makes every earlier write durable, in whichever of
 * LevelDB's log files it landed: LevelDB syncs only the log it is writing, and starts a new one
 * without syncing the old when its memtable fills. Without this, unsynced applied batches in the
 * old log could be lost to a power cut while the synced consistent index after them survived (and
 * the Raft log behind it was compacted away). Seen here through the log files' fdatasync calls.
 */
import type * as fsPromises from 'node:fs/promises';
import { readdir, rm } from 'node:fs/promises';
import path from 'node:path';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { SealedDatabase } from '../../src/storage/database.js';
import type { BatchOperation } from '../../src/storage/mvcc/store.js';
import { temporaryDirectory } from '../helpers/processes.js';

const events = vi.hoisted(() => ({ list: [] as string[], failSync: undefined as Error | undefined }));

vi.mock('node:fs/promises', async (importOriginal) => {
  const actual = await importOriginal<typeof fsPromises>();
  const open: typeof actual.open = async (file, ...rest) => {
    const handle = await actual.open(file, ...rest);
    const name = path.basename(String(file));
    if (/^\d+\.log$/.test(name)) {
      const datasync = handle.datasync.bind(handle);
      handle.datasync = async () => {
        if (events.failSync !== undefined) throw events.failSync;
        await datasync();
        events.list.push(`sync ${name}`);
      };
    }
    return handle;
  };
  return { ...actual, default: { ...actual, open }, open };
});

const puts = (count: number, tag: string): BatchOperation[] =>
  Array.from({ length: count }, (_, index) => ({ type: 'put', key: Buffer.from(`k${tag}${index}`), value: Buffer.alloc(100, index) }));

const logFiles = async (dataDir: string): Promise<string[]> => (await readdir(path.join(dataDir, 'db'))).filter((name) => /^\d+\.log$/.test(name)).sort();

describe("a synced write to the member's database", () => {
  let dataDir: string | undefined;
  afterEach(async () => {
    events.list.length = 0;
    events.failSync = undefined;
    if (dataDir !== undefined) await rm(dataDir, { recursive: true, force: true });
  });

  it('syncs every LevelDB log file after the writes before it settled, and unsynced writes sync none', async () => {
    dataDir = await temporaryDirectory('log-sync');
    const db = await SealedDatabase.open(dataDir, undefined);
    try {
      await db.batch(puts(20, 'a'));
      expect(events.list).toEqual([]);

      const logs = await logFiles(dataDir);
      expect(logs.length).toBeGreaterThan(0);
      // An unsynced write still in flight when the synced one is made (the apply path overlaps them).
      const earlier = db.batch(puts(200, 'b')).then(() => events.list.push('earlier settled'));
      const synced = db.batch(puts(1, 'c'), { sync: true }).then(() => events.list.push('synced settled'));
      await Promise.all([earlier, synced]);
      expect(events.list[0]).toBe('earlier settled');
      expect(events.list.slice(1, 1 + logs.length).sort()).toEqual(logs.map((name) => `sync ${name}`));
      expect(events.list.at(-1)).toBe('synced settled');

      // A synced write made in steps (one chained batch) as well.
      events.list.length = 0;
      await db.batch(puts(1500, 'd'), { sync: true });
      expect(events.list.filter((event) => event.startsWith('sync ')).length).toBeGreaterThan(0);

      events.list.length = 0;
      await db.batch(puts(5, 'e'));
      await db.put(Buffer.from('p'), Buffer.from('v'));
      expect(events.list).toEqual([]);
    } finally {
      await db.close();
    }
  });

  it('fails closed when a log cannot be synced: reported as a write failure, nothing written', async () => {
    dataDir = await temporaryDirectory('log-sync');
    const db = await SealedDatabase.open(dataDir, undefined);
    const reported: unknown[] = [];
    db.onWriteFailure = (error) => reported.push(error);
    try {
      await db.batch(puts(3, 'a'));
      const failure = Object.assign(new Error('EIO: i/o error, fdatasync'), { code: 'EIO' });
      events.failSync = failure;
      await expect(db.batch(puts(1, 'z'), { sync: true })).rejects.toBe(failure);
      expect(reported).toEqual([failure]);
      expect(await db.get(Buffer.from('kz0'))).toBeUndefined();
    } finally {
      events.failSync = undefined;
      await db.close();
    }
  });

  it('closes only after a synced write still syncing the logs has landed', async () => {
    dataDir = await temporaryDirectory('log-sync');
    const db = await SealedDatabase.open(dataDir, undefined);
    await db.batch(puts(3, 'a'));
    const synced = db.batch(puts(1, 's'), { sync: true });
    await db.close();
    await synced;
    const reopened = await SealedDatabase.open(dataDir, undefined);
    try {
      expect(await reopened.get(Buffer.from('ks0'))).toEqual(Buffer.alloc(100, 0));
    } finally {
      await reopened.close();
    }
  });
});
