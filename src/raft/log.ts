/**
 * The Raft log as the core sees it: a compacted prefix (described by the last snapshot), the
 * entries after it, how far they are stable (persisted by the caller), committed and applied.
 */
import { assert } from '../errors.js';
import type { Entry, SnapshotMetadata } from './types.js';

export class RaftLog {
  /** Index and term of the last entry folded into a snapshot. */
  private snapshotIndex: number;
  private snapshotTerm: number;
  /** entries[i] has index snapshotIndex + 1 + i. */
  private entries: Entry[];
  stableIndex: number;
  committed: number;
  applied: number;

  constructor(snapshot: { index: number; term: number }, entries: readonly Entry[], committed: number) {
    this.snapshotIndex = snapshot.index;
    this.snapshotTerm = snapshot.term;
    this.entries = [...entries];
    entries.forEach((entry, position) => assert(entry.index === snapshot.index + 1 + position, 'restored entries must follow the snapshot'));
    this.stableIndex = this.lastIndex;
    this.committed = Math.max(committed, snapshot.index);
    assert(this.committed <= this.lastIndex, 'commit index beyond the log');
    this.applied = snapshot.index;
  }

  get firstIndex(): number {
    return this.snapshotIndex + 1;
  }

  get lastIndex(): number {
    return this.snapshotIndex + this.entries.length;
  }

  get lastTerm(): number {
    return this.term(this.lastIndex) ?? this.snapshotTerm;
  }

  get snapshotBoundary(): { index: number; term: number } {
    return { index: this.snapshotIndex, term: this.snapshotTerm };
  }

  /** The term of an entry, or undefined when it is compacted away or beyond the log. */
  term(index: number): number | undefined {
    if (index === this.snapshotIndex) return this.snapshotTerm;
    if (index < this.snapshotIndex || index > this.lastIndex) return undefined;
    return this.entries[index - this.snapshotIndex - 1]?.term;
  }

  matchTerm(index: number, term: number): boolean {
    return this.term(index) === term;
  }

  /** Entries in [from, to], or undefined if any is compacted away. */
  slice(from: number, to: number): Entry[] | undefined {
    if (from <= this.snapshotIndex) return undefined;
    if (from > to) return [];
    assert(to <= this.lastIndex, 'slice beyond the log');
    return this.entries.slice(from - this.snapshotIndex - 1, to - this.snapshotIndex);
  }

  /** Raft's up-to-date check (§5.4.1). */
  isUpToDate(lastIndex: number, lastTerm: number): boolean {
    return lastTerm > this.lastTerm || (lastTerm === this.lastTerm && lastIndex >= this.lastIndex);
  }

  append(entries: readonly Entry[]): void {
    for (const entry of entries) {
      assert(entry.index === this.lastIndex + 1, 'appended entries must be contiguous');
      this.entries.push(entry);
    }
  }

  /**
   * Appends the leader's entries after (prevIndex, prevTerm), truncating any conflicting suffix.
   * Returns the index of the last new entry, or undefined when the log does not match at prevIndex.
   */
  tryAppend(prevIndex: number, prevTerm: number, entries: readonly Entry[]): number | undefined {
    if (!this.matchTerm(prevIndex, prevTerm)) return undefined;
    const lastNew = prevIndex + entries.length;
    for (const entry of entries) {
      if (entry.index <= this.snapshotIndex) continue;
      const existing = this.term(entry.index);
      if (existing === entry.term) continue;
      if (existing !== undefined) {
        assert(entry.index > this.committed, () => `conflict at committed index ${entry.index}`);
        this.entries.length = entry.index - this.snapshotIndex - 1;
        this.stableIndex = Math.min(this.stableIndex, entry.index - 1);
      }
      this.append([entry]);
    }
    return lastNew;
  }

  commitTo(index: number): boolean {
    if (index <= this.committed) return false;
    assert(index <= this.lastIndex, () => `commit ${index} beyond last index ${this.lastIndex}`);
    this.committed = index;
    return true;
  }

  unstableEntries(): Entry[] {
    return this.entries.slice(this.stableIndex - this.snapshotIndex);
  }

  /** Committed entries not yet handed out for applying. */
  nextCommitted(maxEntries: number): Entry[] {
    const to = Math.min(this.committed, this.applied + maxEntries);
    return this.slice(this.applied + 1, to) ?? [];
  }

  /** Drops entries up to `index` (already in a snapshot the caller keeps). */
  compact(index: number): void {
    assert(index <= this.applied, 'cannot compact unapplied entries');
    if (index <= this.snapshotIndex) return;
    const term = this.term(index);
    assert(term !== undefined, 'compact index outside the log');
    this.entries = this.entries.slice(index - this.snapshotIndex);
    this.snapshotIndex = index;
    this.snapshotTerm = term;
  }

  /** Replaces the whole log with a snapshot's boundary (a follower far behind). */
  restore(metadata: SnapshotMetadata): void {
    this.entries = [];
    this.snapshotIndex = metadata.index;
    this.snapshotTerm = metadata.term;
    this.committed = metadata.index;
    this.applied = metadata.index;
    this.stableIndex = metadata.index;
  }
}
