/**
 * The data directory's size for the quota and Status: the same total as stat'ing every file, while
 * complete LevelDB table files are stat'ed once and then remembered until they are deleted.
 */
import { readdir, rm, stat, utimes, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { DirectorySize, tableSettledMs } from '../../src/storage/directory-size.js';
import { removeDirectory, temporaryDirectory } from '../helpers/processes.js';

async function everyFile(directory: string): Promise<number> {
  let total = 0;
  for (const name of await readdir(directory)) total += (await stat(path.join(directory, name))).size;
  return total;
}

describe('data directory size', () => {
  const directories: string[] = [];
  afterAll(async () => {
    for (const directory of directories) await removeDirectory(directory);
  });

  it('adds every file, remembers complete table files, and follows the ones that change', async () => {
    const directory = await temporaryDirectory('dbsize');
    directories.push(directory);
    const old = new Date(Date.now() - 2 * tableSettledMs);
    for (const [name, bytes] of [['000005.ldb', 2000], ['000007.ldb', 3000], ['000009.log', 100], ['MANIFEST-000004', 50], ['CURRENT', 16], ['LOG', 10]] as const) {
      await writeFile(path.join(directory, name), Buffer.alloc(bytes));
    }
    await utimes(path.join(directory, '000005.ldb'), old, old);
    await utimes(path.join(directory, '000007.ldb'), old, old);
    const size = new DirectorySize(directory);
    expect(await size.measure()).toBe(await everyFile(directory));
    expect(size.settledTables).toBe(0); // one pass is not enough to call a table complete
    expect(await size.measure()).toBe(5176);
    expect(size.settledTables).toBe(2);

    // The log grows, a compaction writes a new table (recent: still followed) and deletes an old one.
    await writeFile(path.join(directory, '000009.log'), Buffer.alloc(900));
    await writeFile(path.join(directory, '000011.ldb'), Buffer.alloc(700));
    await rm(path.join(directory, '000005.ldb'));
    expect(await size.measure()).toBe(await everyFile(directory));
    await writeFile(path.join(directory, '000011.ldb'), Buffer.alloc(1500));
    expect(await size.measure()).toBe(await everyFile(directory));
    expect(size.settledTables).toBe(1);
    expect(size.watchedTables).toBe(1);
    // Once complete (untouched long enough, same size twice) it is remembered too.
    const later = Date.now() + 2 * tableSettledMs;
    await size.measure(later);
    expect(await size.measure(later)).toBe(await everyFile(directory));
    expect(size.settledTables).toBe(2);
    expect(size.watchedTables).toBe(0);
    await expect(new DirectorySize(path.join(directory, 'missing')).measure()).rejects.toThrow();
  });
});
