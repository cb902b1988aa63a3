/**
 * Noticing that a few small files changed (certificates, keys, CA bundles, a CRL) for next to
 * nothing: one timer per interval for every watched file of the process stats each file once
 * (readers of the same file, such as the client and peer ports' CA bundle, share its stat) and
 * calls a reader's `onChange` only when one of its files changed, appeared or disappeared (inode,
 * size, modification or change time differ).
 *
 * The stats are synchronous on purpose: a stat of a local file takes ~2.5 µs on the event loop,
 * while an asynchronous one costs ~15-25 µs of CPU, a promise and a thread-pool round trip, and on
 * a CPU-starved machine its submission now and then stalls the event loop for milliseconds (measured:
 * 18 of 20,000 submissions over 1 ms, up to 13 ms, at load average 27; in member profiles a single
 * stat call held the loop for 100 ms). Before, each reader's timer stat'ed its files through
 * promises: 8-9% of a loaded member's busy CPU profile samples (issue 13). The price: a certificate
 * directory on a hung network filesystem would block the event loop, as it would block reading
 * the files anyway.
 *
 * The first stat is taken when the watch starts, so a change after watchFiles() returns is always
 * reported: callers start the watch, then read their files. The timer never keeps the process alive.
 */
import { statSync } from 'node:fs';
import path from 'node:path';

export interface FileWatch {
  close(): void;
}

interface WatchedFile {
  signature: string;
  readonly listeners: Set<() => void>;
}

interface Poller {
  readonly timer: NodeJS.Timeout;
  readonly files: Map<string, WatchedFile>;
}

/** One poller per interval: every file watched at that interval, stat'ed once per tick. */
const pollers = new Map<number, Poller>();

/** What tells a changed file: inode (a file renamed over it), size, modification and change times. */
function signatureOf(file: string): string {
  try {
    const info = statSync(file, { throwIfNoEntry: false });
    return info === undefined ? 'missing' : `${info.ino}:${info.size}:${info.mtimeMs}:${info.ctimeMs}`;
  } catch (error) {
    return `unreadable:${(error as NodeJS.ErrnoException).code ?? String(error)}`;
  }
}

function tick(files: Map<string, WatchedFile>): void {
  for (const [file, watched] of files) {
    const signature = signatureOf(file);
    if (signature === watched.signature) continue;
    watched.signature = signature;
    for (const listener of [...watched.listeners]) listener();
  }
}

function pollerFor(intervalMs: number): Poller {
  let poller = pollers.get(intervalMs);
  if (poller === undefined) {
    const files = new Map<string, WatchedFile>();
    const timer = setInterval(() => tick(files), intervalMs);
    timer.unref();
    poller = { timer, files };
    pollers.set(intervalMs, poller);
  }
  return poller;
}

export function watchFiles(files: readonly string[], intervalMs: number, onChange: () => void): FileWatch {
  const unique = [...new Set(files.map((file) => path.resolve(file)))];
  // One listener function of our own, so closing removes ours and leaves other readers' in place.
  const listener = (): void => onChange();
  const poller = pollerFor(intervalMs);
  for (const file of unique) {
    let watched = poller.files.get(file);
    if (watched === undefined) {
      watched = { signature: signatureOf(file), listeners: new Set() };
      poller.files.set(file, watched);
    }
    watched.listeners.add(listener);
  }
  let closed = false;
  return {
    close: () => {
      if (closed) return;
      closed = true;
      for (const file of unique) {
        const watched = poller.files.get(file);
        watched?.listeners.delete(listener);
        if (watched?.listeners.size === 0) poller.files.delete(file);
      }
      if (poller.files.size === 0 && pollers.get(intervalMs) === poller) {
        clearInterval(poller.timer);
        pollers.delete(intervalMs);
      }
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
