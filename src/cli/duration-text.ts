/**
 * A duration in milliseconds as the CLI's duration flags take it (7d, 12h, 30m, 45s), for their
 * help: a default shown as 86400000 reads like a value to give back, which the flag refuses.
 */
const units = [['d', 86_400_000], ['h', 3_600_000], ['m', 60_000], ['s', 1000]] as const;

export function durationText(milliseconds: number): string {
  for (const [unit, size] of units) {
    if (milliseconds >= size && milliseconds % size === 0) return `${milliseconds / size}${unit}`;
  }
  return `${milliseconds}ms`;
}
