/**
 * A member-wide bound on something callers hold (request bytes not yet whole, open streams), and
 * each source address's share of it: one source cannot take the whole member, and the member as a
 * whole stays bounded however many sources there are.
 *
 * Owns: the counts. Never: what is counted or what a refusal means (its callers decide).
 */
export class SourceBudget {
  private total = 0;
  private readonly bySource = new Map<string, number>();

  constructor(
    readonly max: number,
    readonly perSourceMax: number,
  ) {}

  /** What every source holds together. */
  get held(): number {
    return this.total;
  }

  /** What `source` holds. */
  heldBy(source: string): number {
    return this.bySource.get(source) ?? 0;
  }

  /** Takes `amount` for `source`; false (nothing taken) when that would pass a bound. */
  take(source: string, amount: number): boolean {
    const held = this.heldBy(source);
    if (this.total + amount > this.max || held + amount > this.perSourceMax) return false;
    this.total += amount;
    this.bySource.set(source, held + amount);
    return true;
  }

  /** Gives back up to `amount` of what `source` holds. */
  release(source: string, amount: number): void {
    if (amount <= 0) return;
    const held = this.heldBy(source);
    const left = held - amount;
    this.total -= Math.min(amount, held);
    if (left > 0) this.bySource.set(source, left);
    else this.bySource.delete(source);
  }
}
