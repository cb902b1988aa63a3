/**
 * The leader's view of one follower: how far its log matches, what to send next, and flow control.
 * probe: one append at a time until the match point is found; replicate: pipelined appends, at most
 * `inflightMax` unacknowledged; snapshot: waiting for a snapshot to be installed.
 */
export type ProgressState = 'probe' | 'replicate' | 'snapshot';

export class Progress {
  match = 0;
  next: number;
  state: ProgressState = 'probe';
  probeSent = false;
  pendingSnapshot = 0;
  recentActive = false;
  /** Ticks spent waiting for a snapshot to be acknowledged. */
  snapshotWaitTicks = 0;
  /** `match` when the follower last answered a heartbeat (-1: never), to tell a stalled follower from a busy one. */
  matchAtHeartbeat = -1;
  /** Last index of each append in flight, ascending. */
  private inflight: number[] = [];

  constructor(
    next: number,
    readonly isLearner: boolean,
    private readonly inflightMax: number,
  ) {
    this.next = next;
  }

  becomeProbe(): void {
    if (this.state === 'snapshot') {
      this.next = Math.max(this.match + 1, this.pendingSnapshot + 1);
    } else {
      this.next = this.match + 1;
    }
    this.state = 'probe';
    this.probeSent = false;
    this.pendingSnapshot = 0;
    this.inflight = [];
  }

  becomeReplicate(): void {
    this.state = 'replicate';
    this.next = this.match + 1;
    this.probeSent = false;
    this.pendingSnapshot = 0;
    this.inflight = [];
  }

  becomeSnapshot(index: number): void {
    this.state = 'snapshot';
    this.snapshotWaitTicks = 0;
    this.pendingSnapshot = index;
    this.probeSent = false;
    this.inflight = [];
  }

  /** An acknowledgement up to `index`; returns whether the match point advanced. */
  maybeUpdate(index: number): boolean {
    let updated = false;
    if (this.match < index) {
      this.match = index;
      updated = true;
      this.probeSent = false;
    }
    this.next = Math.max(this.next, index + 1);
    this.inflight = this.inflight.filter((last) => last > index);
    return updated;
  }

  /** A rejection of `rejected`; the follower's log ends at `hintLastIndex`. False when stale. */
  maybeDecrease(rejected: number, hintLastIndex: number): boolean {
    if (this.state === 'replicate') {
      if (rejected <= this.match) return false;
      this.next = this.match + 1;
      return true;
    }
    if (this.next - 1 !== rejected) return false;
    this.next = Math.max(Math.min(rejected, hintLastIndex + 1), 1);
    this.probeSent = false;
    return true;
  }

  sentEntries(lastIndex: number): void {
    if (this.state === 'replicate') {
      this.next = lastIndex + 1;
      this.inflight.push(lastIndex);
    } else if (this.state === 'probe') {
      this.probeSent = true;
    }
  }

  /** The follower answered a heartbeat: it is reachable, so let one more append through. */
  heardFrom(): void {
    this.probeSent = false;
    if (this.state === 'replicate' && this.inflight.length >= this.inflightMax) {
      this.inflight.shift();
    }
  }

  isPaused(): boolean {
    switch (this.state) {
      case 'probe':
        return this.probeSent;
      case 'replicate':
        return this.inflight.length >= this.inflightMax;
      case 'snapshot':
        return true;
    }
  }
}
