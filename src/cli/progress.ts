/**
 * Progress lines for operations that can take more than a few seconds (snapshot save and restore,
 * backups, audit export): nothing for a quick one, then one line on stderr every interval while it
 * runs, and a last line when it ends. stderr, so the command's stdout stays its result.
 */

/** Quiet for this long, then a line at this interval. */
export const progressIntervalMs = 2000;

export interface Progress {
  /** `done` units of `total` (undefined when the total is not known) so far. */
  update(done: number, total?: number): void;
  /** The operation ended; prints the final line only if a progress line was printed before. */
  finish(): void;
}

export function startProgress(label: string, unit: 'bytes' | 'records', write: (line: string) => void = (line) => process.stderr.write(`${line}\n`), intervalMs = progressIntervalMs, now: () => number = Date.now): Progress {
  const started = now();
  let lastPrinted = started;
  let printed = false;
  let done = 0;
  let total: number | undefined;
  const describe = (): string => {
    const amount = (value: number): string => (unit === 'bytes' ? `${(value / (1024 * 1024)).toFixed(1)} MiB` : `${value} records`);
    const share = total !== undefined && total > 0 ? ` of ${amount(total)} (${Math.floor((done / total) * 100)}%)` : '';
    return `${label}: ${amount(done)}${share}, ${((now() - started) / 1000).toFixed(0)} s`;
  };
  return {
    update(value, newTotal) {
      done = value;
      total = newTotal ?? total;
      if (now() - lastPrinted < intervalMs) return;
      lastPrinted = now();
      printed = true;
      write(describe());
    },
    finish() {
      if (printed) write(`${describe()}, done`);
    },
  };
}
