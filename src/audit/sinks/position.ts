/**
 * Where an event sits in a member's trail: event `seq` of trail file `file`. Trail file names sort
 * in creation order (`audit-<ISO time>.jsonl`), so (file, seq) orders every event of a member.
 */
export interface TrailPosition {
  readonly file: string;
  readonly seq: number;
}

/** Negative when `a` comes before `b`, 0 when equal, positive after. */
export function comparePositions(a: TrailPosition, b: TrailPosition): number {
  if (a.file !== b.file) return a.file < b.file ? -1 : 1;
  return a.seq - b.seq;
}

/**
 * Whether `next` directly follows `after` (the next event of the same file, or the first event of
 * a later file). A later file's first event is taken as next: a file between them would have been
 * seen by the trail reader, which is what a gap sends the sink back to.
 */
export function follows(after: TrailPosition | undefined, next: TrailPosition): boolean {
  if (after === undefined) return false;
  if (next.file === after.file) return next.seq === after.seq + 1;
  return next.file > after.file && next.seq === 0;
}

export const describePosition = (position: TrailPosition | undefined): string =>
  position === undefined ? 'the start of the trail' : `${position.file}#${position.seq}`;
