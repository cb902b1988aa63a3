/**
 * Key-range permissions as etcd defines them, and the one decision function every check uses.
 *
 * A permission covers [key, range_end): an empty range_end means the single key, range_end "\0"
 * means every key from `key` on. A request is allowed only when its whole range is covered by the
 * union of the caller's grants of the needed kind (READWRITE counts as both), and — Rampart's
 * addition, only in policy files — no explicit deny of that kind touches any part of it. The `root`
 * role allows everything, as in etcd.
 */
export const permissionType = { read: 0, write: 1, readwrite: 2 } as const;
export type PermissionType = (typeof permissionType)[keyof typeof permissionType];
export type Access = 'read' | 'write';

export interface KeyPermission {
  readonly type: PermissionType;
  readonly key: Buffer;
  readonly rangeEnd: Buffer;
}

export const rootName = 'root';

/** [start, end) over byte strings; `end` null is unbounded. */
export interface Interval {
  readonly start: Buffer;
  readonly end: Buffer | null;
}

const zeroByte = Buffer.of(0);

/** The interval a (key, range_end) pair names, in etcd's conventions. */
export function intervalOf(key: Buffer, rangeEnd: Buffer): Interval {
  if (rangeEnd.length === 0) return { start: key, end: Buffer.concat([key, zeroByte]) };
  if (rangeEnd.length === 1 && rangeEnd[0] === 0) return { start: key, end: null };
  return { start: key, end: rangeEnd };
}

export function grants(type: PermissionType, access: Access): boolean {
  return type === permissionType.readwrite || (access === 'read' ? type === permissionType.read : type === permissionType.write);
}

function endBefore(a: Buffer | null, b: Buffer | null): boolean {
  if (a === null) return false;
  if (b === null) return true;
  return Buffer.compare(a, b) < 0;
}

/**
 * Merged, sorted, non-overlapping intervals: coverage of a range is then one binary search.
 * Adjacent intervals ([a, b) and [b, c)) merge, so a range spanning two grants is covered.
 */
export class IntervalSet {
  private readonly intervals: Interval[];

  constructor(input: readonly Interval[]) {
    const sorted = input.filter((interval) => interval.end === null || Buffer.compare(interval.start, interval.end) < 0)
      .sort((a, b) => Buffer.compare(a.start, b.start));
    const merged: { start: Buffer; end: Buffer | null }[] = [];
    for (const interval of sorted) {
      const last = merged[merged.length - 1];
      if (last !== undefined && (last.end === null || Buffer.compare(interval.start, last.end) <= 0)) {
        if (endBefore(last.end, interval.end)) last.end = interval.end;
      } else {
        merged.push({ start: interval.start, end: interval.end });
      }
    }
    this.intervals = merged;
  }

  get size(): number {
    return this.intervals.length;
  }

  /** The index of the last interval starting at or before `key`, or -1. */
  private floor(key: Buffer): number {
    let low = 0;
    let high = this.intervals.length - 1;
    let found = -1;
    while (low <= high) {
      const middle = (low + high) >> 1;
      if (Buffer.compare((this.intervals[middle] as Interval).start, key) <= 0) {
        found = middle;
        low = middle + 1;
      } else {
        high = middle - 1;
      }
    }
    return found;
  }

  covers(range: Interval): boolean {
    const holder = this.intervals[this.floor(range.start)];
    if (holder === undefined) return false;
    if (holder.end !== null && Buffer.compare(range.start, holder.end) >= 0) return false;
    return !endBefore(holder.end, range.end);
  }

  intersects(range: Interval): boolean {
    if (range.end !== null && Buffer.compare(range.start, range.end) >= 0) return false;
    // The interval holding range.start, or the first one starting inside the range.
    const index = this.floor(range.start);
    const holder = this.intervals[index];
    if (holder !== undefined && (holder.end === null || Buffer.compare(range.start, holder.end) < 0)) return true;
    const next = this.intervals[index + 1];
    return next !== undefined && (range.end === null || Buffer.compare(next.start, range.end) < 0);
  }
}
