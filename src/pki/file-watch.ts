/**
 * Noticing that a few small files changed (certificates, keys, CA bundles, a CRL) at the cost of
 * nothing per interval on the event loop: libuv stats each file once per interval on its thread
 * pool and compares the result in C (inode, size, modification and change times), so an unchanged
 * file runs no JavaScript, makes no promise and allocates nothing; `onChange` runs only when one of
 * the files changed (or appeared, or disappeared). Node keeps one poller per path, so readers of the
 * same file (the client and peer ports' CA bundle) share one stat per interval.
 *
 * Before, each reader ran a timer that stat'ed its files through promises every interval: 5-6% of
 * a loaded member's CPU profile samples (issue 13).
 *
 * A change just before the poller's first stat is not reported (that stat is its baseline): callers
 * read their files after starting the watch and check once more a little later (`settledMs`).
 * The watch never keeps the process alive.
 */
import { unwatchFile, watchFile } from 'node:fs';

export interface FileWatch {
  close(): void;
}

/** How long after starting a watch its baseline stats are surely taken: twice the interval. */
export function settledMs(intervalMs: number): number {
  return intervalMs * 2;
}

export function watchFiles(files: readonly string[], intervalMs: number, onChange: () => void): FileWatch {
  const unique = [...new Set(files)];
  // One listener function of our own, so unwatching removes ours and leaves other readers' in place.
  const listener = (): void => onChange();
  for (const file of unique) watchFile(file, { interval: intervalMs, persistent: false }, listener);
  return {
    close: () => {
      for (const file of unique) unwatchFile(file, listener);
    },
  };
}

/**
 * Runs `check` now, or once more after the running one when called while it runs: checks never
 * overlap (two would both see a change and reload twice) and a change during one is not lost.
 */
export function serialized(check: () => Promise<void>): () => Promise<void> {
  let running: Promise<void> | undefined;
  let again = false;
  const run = async (): Promise<void> => {
    if (running !== undefined) {
      again = true;
      return running;
    }
    running = (async () => {
      try {
        do {
          again = false;
          await check();
        } while (again);
      } finally {
        running = undefined;
      }
    })();
    return running;
  };
  return run;
}
