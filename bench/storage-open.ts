/**
 * The storage open of a member's restart, alone and repeatable (issue 13): opens a copy of a
 * member's data directory (sealed database, Raft log, key index) the way `Member.open` does, and
 * prints each step's wall time, the CPU of the main thread and of the other threads (from /proc),
 * and the memory by kind. A restart at 500,000 keys takes minutes to set up (the bench's scale
 * load); this measures the open on one data directory again and again, before and after a change.
 *
 *   node dist/bench/storage-open.js <member directory>
 *
 * The member directory is the one `rampart up` made (holding `data/` and `encryption.key`), of a
 * stopped member. It is copied next to itself (the open writes) and the copy removed. One open per
 * process (a second would run on warm code and a grown heap): run it again for each sample,
 * alternating builds.
 *
 * As `Member.open`, the open takes the key index checkpoint a clean stop left (and loads the index
 * from it when it is valid); the line says which. With `--write-checkpoint` the open is followed by
 * the write of a checkpoint (timed: what a clean stop adds) and the copy is kept as
 * `<member directory>.checkpointed`, a member directory whose next open loads it.
 */
import { cp, readFile, readdir, rm } from 'node:fs/promises';
import path from 'node:path';
import { FileKekProvider } from '../src/encryption/kek-file.js';
import { SealedDatabase } from '../src/storage/database.js';
import { openRaftLog } from '../src/storage/wal/migration.js';
import { takeIndexCheckpoint, writeIndexCheckpoint } from '../src/storage/mvcc/index-checkpoint.js';
import { MvccStore, readMetaNumber } from '../src/storage/mvcc/store.js';
import { metaKey } from '../src/storage/schema.js';
import { loadAverage, statTicks, ticksPerSecond } from './proc.js';

/** User + system CPU seconds of a /proc stat file. */
const cpuSeconds = async (statFile: string): Promise<number> => (await statTicks(statFile)) / ticksPerSecond;

/** CPU of this process: all threads (ended ones included), the main thread, the live others. */
async function threadCpu(): Promise<{ total: number; main: number; others: number }> {
  let others = 0;
  for (const task of await readdir('/proc/self/task')) {
    if (task === String(process.pid)) continue;
    others += await cpuSeconds(`/proc/self/task/${task}/stat`).catch(() => 0);
  }
  return { total: await cpuSeconds('/proc/self/stat'), main: await cpuSeconds(`/proc/self/task/${process.pid}/stat`), others };
}

const mebibytes = (bytes: number): string => (bytes / 1024 / 1024).toFixed(0);

async function openOnce(source: string, writeCheckpoint: boolean): Promise<string> {
  const copy = `${source.replace(/\/$/, '')}.${writeCheckpoint ? 'checkpointed' : 'open-copy'}`;
  await rm(copy, { recursive: true, force: true });
  await cp(source, copy, { recursive: true });
  try {
    const before = await threadCpu();
    const started = performance.now();
    const dataDir = path.join(copy, 'data');
    const db = await SealedDatabase.open(dataDir, await FileKekProvider.open(path.join(copy, 'encryption.key')));
    let written = '';
    try {
      const checkpoint = await takeIndexCheckpoint({ dataDir, db, sealer: db.outsideSealer() });
      const opened = performance.now();
      const { store: log, loaded } = await openRaftLog({ dataDir: path.join(copy, 'data'), db, sealer: db.outsideSealer() });
      await log.close();
      const logLoaded = performance.now();
      const store = await MvccStore.open(db, checkpoint.index);
      const indexed = performance.now();
      const after = await threadCpu();
      if (writeCheckpoint) {
        const writeStarted = performance.now();
        await writeIndexCheckpoint({ dataDir, db, sealer: db.outsideSealer() }, store.indexRecords(), await readMetaNumber(db, metaKey.consistentIndex));
        const writeCpu = await threadCpu();
        written = `; checkpoint written in ${((performance.now() - writeStarted) / 1000).toFixed(2)} s, CPU ${(writeCpu.total - after.total).toFixed(2)} s (main thread ${(writeCpu.main - after.main).toFixed(2)} s), kept in ${copy}`;
      }
      const memory = process.memoryUsage();
      // VmRSS counts LevelDB's memory-mapped table files (RssFile: page cache, read by the rebuild)
      // besides the process's own memory (RssAnon).
      const status = await readFile('/proc/self/status', 'utf8');
      const statusMiB = (field: string): string => (Number(new RegExp(`^${field}:\\s+(\\d+) kB$`, 'm').exec(status)?.[1] ?? Number.NaN) / 1024).toFixed(0);
      return `open ${((opened - started) / 1000).toFixed(2)} s, log ${((logLoaded - opened) / 1000).toFixed(2)} s (${loaded.entries.length} entries), ` +
        `index ${((indexed - logLoaded) / 1000).toFixed(2)} s (${checkpoint.index === undefined ? `rebuilt${checkpoint.reason === undefined ? '' : `: ${checkpoint.reason}`}` : 'from its checkpoint'}), wall ${((indexed - started) / 1000).toFixed(2)} s; ` +
        `CPU ${(after.total - before.total).toFixed(2)} s (main thread ${(after.main - before.main).toFixed(2)} s, live other threads ${(after.others - before.others).toFixed(2)} s, ended threads the rest); ` +
        `RSS ${mebibytes(memory.rss)} MiB (anonymous ${statusMiB('RssAnon')}: V8 heap ${mebibytes(memory.heapTotal)}, external ${mebibytes(memory.external)}; file-backed ${statusMiB('RssFile')}); ` +
        `load average ${await loadAverage()}${written}`;
    } finally {
      await db.close();
    }
  } finally {
    if (!writeCheckpoint) await rm(copy, { recursive: true, force: true });
  }
}

const source = process.argv[2];
if (source === undefined) {
  process.stderr.write('usage: node dist/bench/storage-open.js <member directory (holding data/ and encryption.key)>\n');
  process.exit(2);
}
process.stdout.write(`${await openOnce(source, process.argv.includes('--write-checkpoint'))}\n`);
