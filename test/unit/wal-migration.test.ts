/**
 * Moving the Raft log from a member's LevelDB database (where members before the segment files
 * kept it, written here by the old `LogStore`) into `wal/`, sealed as before, and crash-safe at
 * every step: an interrupted move restarts cleanly.
 */
import { existsSync } from 'node:fs';
import { mkdir, readFile, readdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { Entry } from '../../src/raft/types.js';
import { FileKekProvider } from '../../src/encryption/kek-file.js';
import { SealedDatabase } from '../../src/storage/database.js';
import { LogStore, encodeLogKey, hardStateKey } from '../../src/storage/log.js';
import { metaKey } from '../../src/storage/schema.js';
import { openRaftLog } from '../../src/storage/wal/migration.js';
import { removeDirectory, temporaryDirectory } from '../helpers/processes.js';

const entry = (index: number, term = 1, data = `entry-${index}`): Entry => ({ index, term, type: 'normal', data: Buffer.from(data) });

describe('moving the Raft log out of the database', () => {
  let directory: string;
  let keyFile: string;
  const dataDir = (): string => path.join(directory, 'data');

  beforeEach(async () => {
    directory = await temporaryDirectory('wal-migration');
    keyFile = path.join(directory, 'kek');
    await FileKekProvider.create(keyFile);
  });

  afterEach(async () => {
    await removeDirectory(directory);
  });

  const openDb = async (encrypted: boolean): Promise<SealedDatabase> => SealedDatabase.open(dataDir(), encrypted ? await FileKekProvider.open(keyFile) : undefined);

  /** A database as the old code left it: a compacted log of entries 3..6 and a hard state. */
  async function legacyDataDir(encrypted: boolean): Promise<void> {
    const db = await openDb(encrypted);
    const { store } = await LogStore.open(db);
    await store.save({ hardState: { term: 2, vote: 'aa', commit: 5 }, entries: [1, 2, 3, 4, 5, 6].map((index) => entry(index, index > 4 ? 2 : 1, `secret-${index}`)) });
    await store.compactThrough(2, 1);
    await db.close();
  }

  async function expectMovedLog(db: SealedDatabase, encrypted: boolean): Promise<void> {
    const { store, loaded } = await openRaftLog({ dataDir: dataDir(), db, sealer: db.outsideSealer() });
    await store.close();
    expect(loaded.logStart).toEqual({ index: 2, term: 1 });
    expect(loaded.hardState).toEqual({ term: 2, vote: 'aa', commit: 5 });
    expect(loaded.entries.map((read) => [read.index, read.term, read.data.toString()])).toEqual([3, 4, 5, 6].map((index) => [index, index > 4 ? 2 : 1, `secret-${index}`]));
    expect(await db.get(hardStateKey)).toBeUndefined();
    expect(await db.get(metaKey.logStart)).toBeUndefined();
    expect(await db.get(encodeLogKey(3))).toBeUndefined();
    const segments = (await readdir(path.join(dataDir(), 'wal'))).filter((name) => name.endsWith('.seg'));
    expect(segments).toHaveLength(1);
    const contents = await readFile(path.join(dataDir(), 'wal', segments[0] ?? ''));
    expect(contents.includes('secret-3')).toBe(!encrypted);
  }

  for (const encrypted of [false, true]) {
    it(`moves a ${encrypted ? 'sealed' : 'plaintext'} log into segment files and deletes the database's copy`, async () => {
      await legacyDataDir(encrypted);
      const db = await openDb(encrypted);
      try {
        const moved = await openRaftLog({ dataDir: dataDir(), db, sealer: db.outsideSealer() });
        expect(moved.migrated).toBe(true);
        await moved.store.close();
        await expectMovedLog(db, encrypted);
      } finally {
        await db.close();
      }
    });
  }

  it('restarts a move interrupted before the rename from the database', async () => {
    await legacyDataDir(true);
    // Interrupted: a half-built wal.tmp holding garbage.
    await mkdir(path.join(dataDir(), 'wal.tmp'), { recursive: true });
    await writeFile(path.join(dataDir(), 'wal.tmp', '0000000000000001.seg'), Buffer.alloc(4096, 9));
    const db = await openDb(true);
    try {
      await expectMovedLog(db, true);
      expect(existsSync(path.join(dataDir(), 'wal.tmp'))).toBe(false);
    } finally {
      await db.close();
    }
  });

  it('finishes a move interrupted after the rename: the segment files win, the database copy goes', async () => {
    await legacyDataDir(true);
    let db = await openDb(true);
    const moved = await openRaftLog({ dataDir: dataDir(), db, sealer: db.outsideSealer() });
    await moved.store.close();
    await db.close();
    // Put the database's copy back, as if the process stopped right after the rename.
    await legacyDataDir(true);
    db = await openDb(true);
    try {
      expect(await db.get(hardStateKey)).toBeDefined();
      const again = await openRaftLog({ dataDir: dataDir(), db, sealer: db.outsideSealer() });
      expect(again.migrated).toBe(false);
      await again.store.close();
      await expectMovedLog(db, true);
    } finally {
      await db.close();
    }
  });

  it('a new member gets an empty log directory', async () => {
    const db = await openDb(false);
    try {
      const { store, loaded, migrated } = await openRaftLog({ dataDir: dataDir(), db, sealer: undefined });
      await store.close();
      expect(migrated).toBe(false);
      expect(loaded).toEqual({ hardState: { term: 0, vote: '', commit: 0 }, logStart: { index: 0, term: 0 }, entries: [] });
      expect(existsSync(path.join(dataDir(), 'wal'))).toBe(true);
    } finally {
      await db.close();
    }
  });
});
