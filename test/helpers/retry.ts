/**
 * Waiting on conditions and retrying idempotent steps, for e2e tests that run on a loaded 2-core
 * CI: after a fault (a kill, a pause, a partition, a leader change) the next call may meet an
 * election, so a test waits for what it needs instead of sleeping and hoping, and retries a step
 * only where doing it twice is the same as doing it once (a put of the same value, a read).
 */
import { etcdctl, type CommandResult } from './processes.js';

export const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

/** Whether `promise` settles within `ms` (it is left running either way). */
export async function within(promise: Promise<unknown>, ms: number): Promise<boolean> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<false>((resolve) => (timer = setTimeout(() => resolve(false), ms)));
  try {
    return await Promise.race([promise.then(() => true, () => true), late]);
  } finally {
    clearTimeout(timer);
  }
}

/** Polls `predicate` every `everyMs` until it holds; throws naming `what` after `timeoutMs`. */
export async function waitFor(predicate: () => Promise<boolean> | boolean, timeoutMs: number, what: string, everyMs = 50): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await predicate())) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(everyMs);
  }
}

/**
 * Runs an idempotent etcdctl command until it exits 0 (every 250 ms, for up to `timeoutMs`,
 * default 30 s: an election on a loaded machine has taken several seconds) and returns that run;
 * after the deadline, returns the last failed run so the test's own expectation shows its stderr.
 */
export async function etcdctlUntilOk(endpoints: string, args: readonly string[], timeoutMs = 30_000): Promise<CommandResult> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const result = await etcdctl(endpoints, args);
    if (result.code === 0 || Date.now() > deadline) return result;
    await sleep(250);
  }
}

/**
 * Runs an idempotent step (a read, a put of the same value) until it does not throw, every
 * 250 ms for up to `timeoutMs` (default 30 s); the last error is thrown, naming `what`.
 */
export async function retrying<T>(step: () => Promise<T>, what: string, timeoutMs = 30_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      return await step();
    } catch (error) {
      if (Date.now() > deadline) throw new Error(`${what}: still failing after ${timeoutMs} ms: ${error instanceof Error ? error.message : String(error)}`);
      await sleep(250);
    }
  }
}
