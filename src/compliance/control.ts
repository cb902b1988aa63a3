/**
 * One compliance control's result: which control, what was seen, and how to fix it. Every check
 * in `src/compliance/` answers with these; the formats (table, JSON, JUnit) print them.
 *
 * A control is `skip` when the facts it needs could not be gathered (a file not given, a member not
 * reachable): the reason is its evidence. A check never guesses a pass.
 */
export type ControlStatus = 'pass' | 'fail' | 'warn' | 'skip';

export interface ControlResult {
  /** e.g. `CIS-2.1`, `CIS-1.1.11`, `RAMPART-AUTH`. */
  readonly id: string;
  readonly title: string;
  readonly status: ControlStatus;
  /** What was observed, one fact a line (member, file or endpoint named). */
  readonly evidence: readonly string[];
  /** How to make it pass. */
  readonly fix: string;
}

/** A fact gathered from the cluster or a host, or why it could not be. */
export type Observed<T> = { readonly value: T } | { readonly unavailable: string };

export function observed<T>(value: T): Observed<T> {
  return { value };
}

export function unavailable<T>(reason: string): Observed<T> {
  return { unavailable: reason };
}

/** The worst of several statuses: fail > warn > pass > skip (all skipped stays skip). */
export function worst(statuses: readonly ControlStatus[]): ControlStatus {
  for (const status of ['fail', 'warn', 'pass'] as const) if (statuses.includes(status)) return status;
  return 'skip';
}

/** Whether results fail a gate: any control failed. */
export function anyFailed(results: readonly ControlResult[]): boolean {
  return results.some((result) => result.status === 'fail');
}
