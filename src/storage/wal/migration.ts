/**
 * Opens a member's Raft log in `<data dir>/wal/`, moving it there first from the member's LevelDB
 * database, where members before the segment files kept it ('e' entries, the 'h' hard state and
 * the log start, see `schema.ts`).
 *
 * The move is crash-safe at every point: the log is written into `wal.tmp/`, fsynced, and renamed
 * to `wal/` (the data directory fsynced): until the rename a restart discards `wal.tmp/` and moves
 * again from the database; after it, `wal/` is the log and the database's copy is deleted (again,
 * at every start, until it is gone).
 */
import { existsSync } from 'node:fs';
import { rename, rm } from 'node:fs/promises';
import path from 'node:path';
import type { Database } from '../database.js';
import { LogStore, encodeLogKey, hardStateKey, type LoadedLog } from '../log.js';
import { metaKey, prefix } from '../schema.js';
import { syncDirectory } from './segment-file.js';
import { SegmentedLog, type LogSealer } from './segmented-log.js';

export const walDirectoryName = 'wal';
const walBuildingName = 'wal.tmp';

export interface RaftLogOptions {
  readonly dataDir: string;
  readonly db: Database;
  readonly sealer: LogSealer | undefined;
  readonly segmentBytes?: number | undefined;
}

const legacyEntries = { gte: encodeLogKey(0), lt: Buffer.of(prefix.logEntry + 1) };

async function hasLegacyLog(db: Database): Promise<boolean> {
  if ((await db.get(hardStateKey)) !== undefined || (await db.get(metaKey.logStart)) !== undefined) return true;
  for await (const _key of db.keys(legacyEntries)) return true;
  return false;
}

async function deleteLegacyLog(db: Database): Promise<void> {
  await db.clear(legacyEntries);
  await db.batch([{ type: 'del', key: hardStateKey }, { type: 'del', key: metaKey.logStart }], { sync: true });
}

/** Whether `loaded` holds anything (a new member's database holds no log). */
function holdsLog(loaded: LoadedLog): boolean {
  return loaded.entries.length > 0 || loaded.logStart.index > 0 || loaded.hardState.term > 0 || loaded.hardState.commit > 0;
}

export async function openRaftLog(options: RaftLogOptions): Promise<{ store: SegmentedLog; loaded: LoadedLog; migrated: boolean }> {
  const { dataDir, db } = options;
  const directory = path.join(dataDir, walDirectoryName);
  let migrated = false;
  if (!existsSync(directory)) {
    const building = path.join(dataDir, walBuildingName);
    await rm(building, { recursive: true, force: true });
    const legacy = (await LogStore.open(db)).loaded;
    const { store } = await SegmentedLog.open({ directory: building, sealer: options.sealer, segmentBytes: options.segmentBytes });
    try {
      if (holdsLog(legacy)) {
        await store.save({ hardState: legacy.hardState, entries: legacy.entries, resetTo: legacy.logStart });
        migrated = true;
      }
    } finally {
      await store.close();
    }
    await syncDirectory(building);
    await rename(building, directory);
    await syncDirectory(dataDir);
  }
  if (await hasLegacyLog(db)) await deleteLegacyLog(db);
  const opened = await SegmentedLog.open({ directory, sealer: options.sealer, segmentBytes: options.segmentBytes });
  return { ...opened, migrated };
}
