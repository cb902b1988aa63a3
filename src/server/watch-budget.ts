/**
 * The bytes of watch responses a member has handed to its streams and that are not yet flushed to
 * the network, summed over every stream: the member's memory for watch fan-out is bounded by
 * `watchQueuedBytesMax` (`--watch-queued-bytes-max`) whatever the number of watchers or streams.
 *
 * A send that does not fit is not made: its watcher falls back to catching up from stored history
 * once bytes are released (watch-hub.ts). When nothing is queued, one batch is taken whatever its
 * size, so an event larger than the budget still goes out, alone.
 *
 * One owner (a user; without auth, a client address) may hold at most a quarter of the budget: a
 * client that opens thousands of watchers and never reads holds its share until its streams close,
 * and the others' watches still flow.
 */
export const watchQueuedOwnerShare = 0.25;

export class WatchQueueBudget {
  private queuedBytes = 0;
  private readonly byOwner = new Map<string, number>();
  private releaseWaiters: (() => void)[] = [];
  readonly ownerBytesMax: number;

  constructor(readonly queuedBytesMax: number) {
    this.ownerBytesMax = Math.floor(queuedBytesMax * watchQueuedOwnerShare);
  }

  get used(): number {
    return this.queuedBytes;
  }

  /** Whether `owner` could take a batch now (one that fits what is left). */
  hasRoom(owner: string): boolean {
    const held = this.byOwner.get(owner) ?? 0;
    return this.queuedBytes < this.queuedBytesMax && (held === 0 || held < this.ownerBytesMax);
  }

  /** Reserves `bytes` for `owner` if they fit; false (nothing reserved) if they do not. */
  tryTake(bytes: number, owner: string): boolean {
    if (this.queuedBytes > 0 && this.queuedBytes + bytes > this.queuedBytesMax) return false;
    const held = this.byOwner.get(owner) ?? 0;
    if (held > 0 && held + bytes > this.ownerBytesMax) return false;
    this.queuedBytes += bytes;
    this.byOwner.set(owner, held + bytes);
    return true;
  }

  /** Releases bytes `owner` took earlier (flushed, or their stream closed). */
  give(bytes: number, owner: string): void {
    if (bytes <= 0) return;
    const held = (this.byOwner.get(owner) ?? 0) - bytes;
    if (held > 0) this.byOwner.set(owner, held);
    else this.byOwner.delete(owner);
    this.queuedBytes = Math.max(0, this.queuedBytes - bytes);
    const released = this.releaseWaiters;
    this.releaseWaiters = [];
    for (const resolve of released) resolve();
  }

  /** Resolves at the next release of bytes (at once when nothing is queued: any batch fits then). */
  released(): Promise<void> {
    if (this.queuedBytes === 0) return Promise.resolve();
    return new Promise((resolve) => this.releaseWaiters.push(resolve));
  }
}
