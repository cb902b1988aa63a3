/**
 * The soak's check for locks and elections: no two workers hold at once.
 *
 * A worker holds from the moment the Lock or Campaign answer reached it (`acquired`) until it asked
 * to release, or until its lease was no longer covered by acknowledged keep-alives, whichever came
 * first (`end`). An answer that arrives after the lease's coverage ended gives no hold at all: the
 * key may already be gone and a successor elected in the meantime (etcd promises nothing more), so
 * such a hold is counted apart, never compared.
 */

export interface Hold {
  readonly worker: number;
  readonly acquired: number;
  readonly end: number;
  /** What the report shows about this hold (lease, key revision, serving member, ...). */
  readonly detail: string;
}

export interface Overlap {
  /** The hold that began while `previous` still held. */
  readonly current: Hold;
  readonly previous: Hold;
}

/** Holds with nothing held: the answer came after the lease's coverage had ended. */
export function emptyHolds(holds: readonly Hold[]): Hold[] {
  return holds.filter((hold) => hold.end <= hold.acquired);
}

/**
 * Every hold that began while another worker's hold had not ended, paired with that hold. Compared
 * with the longest-reaching earlier hold, not only the one just before: a short hold in between
 * must not hide a long one it sits inside.
 */
export function overlappingHolds(holds: readonly Hold[]): Overlap[] {
  const sorted = holds.filter((hold) => hold.end > hold.acquired).sort((a, b) => a.acquired - b.acquired);
  const overlaps: Overlap[] = [];
  // A worker's holds follow one another (it asks for the next only after releasing), so the
  // earlier hold reaching furthest is the only one a new hold can overlap without overlapping it.
  let reaching: Hold | undefined;
  for (const current of sorted) {
    if (reaching !== undefined && current.acquired < reaching.end && current.worker !== reaching.worker) {
      overlaps.push({ current, previous: reaching });
    }
    if (reaching === undefined || current.end > reaching.end) reaching = current;
  }
  return overlaps;
}
