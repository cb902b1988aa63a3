/**
 * The bytes a LevelDB directory holds on disk: the figure the backend quota (NOSPACE) and Status's
 * `dbSize` use, measured once a second by the member. Stat'ing every file every second costs a
 * thread-pool round trip and a promise per file (5-6% of a loaded member's CPU profile samples
 * with the certificate polls, issue 13) and grows with the data: ~250 table files at 500,000 keys.
 *
 * LevelDB's table files (`.ldb`, `.sst`) never change once written: they are only deleted, and
 * their numbers are never reused. So a table file's size is remembered once it is complete, and
 * later passes stat only what still changes: the write-ahead log, the manifest, the info log,
 * CURRENT, and table files still being written. A table file counts as complete once two passes saw
 * the same size and it was last modified more than `tableSettledMs` ago (a compaction writes its
 * output in one go, well within that). A file deleted between listing and stat counts as gone.
 */
import { readdir, stat } from 'node:fs/promises';
import path from 'node:path';

/** A table file untouched this long (and the same size on two passes) is complete. */
export const tableSettledMs = 10_000;

const tableFile = /\.(ldb|sst)$/;

export class DirectorySize {
  /** Complete table files: their sizes, never stat'ed again while they exist. */
  private readonly settled = new Map<string, number>();
  /** Table files still being watched: the size the last pass saw. */
  private readonly growing = new Map<string, number>();

  constructor(private readonly directory: string) {}

  private running: Promise<number> | undefined;

  /** Bytes in the directory now; rejects only when the directory cannot be listed. A call while one runs shares it. */
  measure(nowMs = Date.now()): Promise<number> {
    this.running ??= this.pass(nowMs).finally(() => {
      this.running = undefined;
    });
    return this.running;
  }

  private async pass(nowMs: number): Promise<number> {
    const names = await readdir(this.directory);
    const present = new Set(names);
    for (const name of this.settled.keys()) if (!present.has(name)) this.settled.delete(name);
    for (const name of this.growing.keys()) if (!present.has(name)) this.growing.delete(name);
    let total = 0;
    const sizes = await Promise.all(names.map(async (name) => {
      const known = this.settled.get(name);
      if (known !== undefined) return known;
      const info = await stat(path.join(this.directory, name)).catch(() => undefined);
      if (info === undefined) return 0;
      if (tableFile.test(name)) {
        if (this.growing.get(name) === info.size && nowMs - info.mtimeMs > tableSettledMs) {
          this.growing.delete(name);
          this.settled.set(name, info.size);
        } else {
          this.growing.set(name, info.size);
        }
      }
      return info.size;
    }));
    for (const size of sizes) total += size;
    return total;
  }

  /** How many files a pass stats (the rest are remembered): for tests and measurements. */
  get watchedTables(): number {
    return this.growing.size;
  }

  get settledTables(): number {
    return this.settled.size;
  }
}
