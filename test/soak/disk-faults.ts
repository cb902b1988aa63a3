/**
 * Disk faults for the soak, on real processes:
 * - full disk: each member's data directory is its own small tmpfs mount (needs root and a
 *   container that allows mounts); filling it with a ballast file makes every write of the member
 *   fail with a real ENOSPC from the kernel, until the ballast is removed;
 * - slow disk: a test-only LD_PRELOAD shim (slow-fsync.c, compiled here with the system C
 *   compiler) delays every fsync/fdatasync of a member by what its delay file says, LevelDB's
 *   native syncs included. The writes themselves are not slowed, only their durability point.
 * Either is reported unavailable (with why) rather than faked when this machine cannot do it.
 */
import { execFile } from 'node:child_process';
import { mkdir, open, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const shimSource = path.join(path.dirname(fileURLToPath(import.meta.url)), 'slow-fsync.c');
const ballastName = 'soak-ballast';
const ballastChunkBytes = 1024 * 1024;

function execute(command: string, args: readonly string[]): Promise<string | undefined> {
  return new Promise((resolve) => {
    execFile(command, args, { timeout: 60_000 }, (error, _stdout, stderr) => resolve(error === null ? undefined : `${command}: ${stderr.toString().trim() || error.message}`));
  });
}

export interface SlowDisk {
  /** The shim, for LD_PRELOAD (with another shim when there is one). */
  readonly library: string;
  /** Environment for a member whose fsyncs `delayFile` can slow. */
  readonly env: (delayFile: string) => Record<string, string>;
}

/** Compiles the fsync shim into `directory`; the reason it cannot when it cannot. */
export async function prepareSlowDisk(directory: string): Promise<SlowDisk | string> {
  const library = path.join(directory, 'slow-fsync.so');
  const problem = await execute('cc', ['-shared', '-fPIC', '-O2', '-o', library, shimSource, '-ldl']);
  if (problem !== undefined) return problem;
  return { library, env: (delayFile) => ({ LD_PRELOAD: library, RAMPART_TEST_FSYNC_DELAY_FILE: delayFile }) };
}

/** Makes every fsync behind `delayFile` take `delayMs` more (0: back to normal). */
export async function setFsyncDelay(delayFile: string, delayMs: number): Promise<void> {
  await writeFile(delayFile, delayMs > 0 ? String(delayMs) : '');
}

/** Mounts a tmpfs of `sizeMiB` on `directory`; the reason it cannot when it cannot. */
export async function mountSmallDisk(directory: string, sizeMiB: number): Promise<string | undefined> {
  await mkdir(directory, { recursive: true });
  return execute('mount', ['-t', 'tmpfs', '-o', `size=${sizeMiB}m,mode=0700`, 'tmpfs', directory]);
}

export async function unmountSmallDisk(directory: string): Promise<void> {
  await execute('umount', ['-l', directory]);
}

/** Fills the file system holding `directory` until the kernel answers ENOSPC; returns bytes written. */
export async function fillDisk(directory: string): Promise<number> {
  const handle = await open(path.join(directory, ballastName), 'w');
  const chunk = Buffer.alloc(ballastChunkBytes, 0x5a);
  let written = 0;
  try {
    for (;;) {
      const { bytesWritten } = await handle.write(chunk, 0, chunk.length);
      written += bytesWritten;
      if (bytesWritten < chunk.length) break;
    }
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'ENOSPC') throw error;
  } finally {
    await handle.close().catch(() => undefined);
  }
  // Whatever is left is smaller than a chunk: take it too, a page at a time.
  const tail = await open(path.join(directory, `${ballastName}-tail`), 'w');
  try {
    const page = Buffer.alloc(4096, 0x5a);
    for (;;) {
      const { bytesWritten } = await tail.write(page, 0, page.length);
      written += bytesWritten;
      if (bytesWritten < page.length) break;
    }
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'ENOSPC') throw error;
  } finally {
    await tail.close().catch(() => undefined);
  }
  return written;
}

export async function drainDisk(directory: string): Promise<void> {
  await rm(path.join(directory, ballastName), { force: true });
  await rm(path.join(directory, `${ballastName}-tail`), { force: true });
}
