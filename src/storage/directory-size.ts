/**
 * The bytes a LevelDB directory holds on disk: the figure the backend quota (NOSPACE) and Status's
 * `dbSize` use, measured once a second by the member. Stat'ing every file every second through
 * promises cost a thread-pool round trip per file (with the certificate polls, 8-9% of a loaded
 * member's busy CPU profile samples, issue 13) and grows with the data: ~250 table files at
 * 500,000 keys.
 *
 * LevelDB's table files (`.ldb`, `.sst`) never change once written: they are only deleted, and
 * their numbers are never reused. So a table file's size is remembered once it is complete, and
 * later passes stat only what still changes: the write-ahead log, the manifest, the info log,
 * CURRENT, and table files still being written. A table file counts as complete once two passes saw
 * the same size and it was last modified more than `tableSettledMs` ago (a compaction writes its
 * output in one go, well within that). A file deleted between listing and stat counts as gone.
 */
import { readdirSync, statSync } from 'node:fs';
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

  /**
   * Bytes in the directory now; rejects only when the directory cannot be listed. Synchronous
   * inside, on purpose (see file-watch.ts): a listing and ~5 stats of a local directory take tens
   * of microseconds, less than the promises and thread-pool round trips they would need.
   */
  async measure(nowMs = Date.now()): Promise<number> {
    const names = readdirSync(this.directory);
    const present = new Set(names);
    for (const name of this.settled.keys()) if (!present.has(name)) this.settled.delete(name);
    for (const name of this.growing.keys()) if (!present.has(name)) this.growing.delete(name);
    let total = 0;
    for (const name of names) {
      const known = this.settled.get(name);
      if (known !== undefined) {
        total += known;
        continue;
      }
      const info = statSync(path.join(this.directory, name), { throwIfNoEntry: false });
      if (info === undefined) continue; // deleted since the listing (a compaction's input)
      if (tableFile.test(name)) {
        if (this.growing.get(name) === info.size && nowMs - info.mtimeMs > tableSettledMs) {
          this.growing.delete(name);
          this.settled.set(name, info.size);
        } else {
          this.growing.set(name, info.size);
        }
      }
      total += info.size;
    }
    return total;
  }

  /** Table files a pass still stats, and those it remembers: for tests and measurements. */
  get watchedTables(): number {
    return this.growing.size;
  }

  get settledTables(): number {
    return this.settled.size;
  }
}
