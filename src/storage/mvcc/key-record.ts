/**
 * One key's entry in the MVCC index: its revisions, oldest first, and the fields of its live value
 * when the newest revision is a put.
 *
 * Packed for the garbage collector, which walks every object of the index on each full collection
 * (GC was 17-27% of a member's main thread under write load): a key costs its index string, this
 * object and its value buffer. Before, it also had a key buffer, a revisions array (two objects),
 * an object per revision and a KeyValue object for the live value (~10 heap objects a key, 350
 * bytes). The newest revision is held in fields, older ones (a key with history) in one array of
 * numbers; the key is the index string (latin1, one char a byte); the live KeyValue, and its key
 * buffer, are made when read (young garbage, cheap to collect).
 *
 * Revisions, versions and sub revisions are plain numbers: they are uint64 on disk and int64 on the
 * wire, and exact here up to 2^53 (`readUint64` refuses larger ones when reading, and a revision
 * only grows by one per write). Small ones (< 2^31) stay unboxed integers.
 */
import { assert } from '../../errors.js';
import type { KeyValue } from '../encoding.js';

/** The value of every tombstone (never written to: a zero-length buffer has no bytes to change). */
export const emptyValue = Buffer.alloc(0);
/** Every key without a lease shares one 0n (a lease id decoded per request is a new BigInt each). */
const noLease = 0n;

/** A record's fields, as the index checkpoint stores them. */
export interface KeyRecordParts {
  /** Older revisions, oldest first, two numbers each: main, then sub × 2 (+ 1 for a tombstone). */
  readonly history: number[] | undefined;
  readonly newestMain: number;
  readonly newestSub: number;
  /** The newest revision's value when it is a put; undefined for a tombstone. */
  readonly live: { readonly value: Buffer; readonly createRevision: number; readonly version: number; readonly lease: bigint } | undefined;
}

export class KeyRecord {
  /** Older revisions, oldest first, two numbers each: main, then sub × 2 (+ 1 for a tombstone). Undefined while the key has one revision. */
  private history: number[] | undefined = undefined;
  private newestMain: number;
  private newestSub: number;
  private newestTombstone: boolean;
  /** The live value's fields; meaningful only while the newest revision is a put. */
  private value: Buffer;
  private createRevision: number;
  private version: number;
  private lease: bigint;

  constructor(
    /** The key as the index holds it (`toIndexKey`): the tree's own string, not a copy. */
    readonly indexKey: string,
    main: number,
    sub: number,
    live: KeyValue | undefined,
  ) {
    this.newestMain = main;
    this.newestSub = sub;
    this.newestTombstone = live === undefined;
    this.value = live === undefined ? emptyValue : live.value;
    this.createRevision = live === undefined ? 0 : live.createRevision;
    this.version = live === undefined ? 0 : live.version;
    this.lease = live === undefined || live.lease === noLease ? noLease : live.lease;
  }

  /**
   * A record as `parts` described it (the index checkpoint, `index-checkpoint.ts`): `history` is
   * the older revisions as `parts` gives them (owned by the record from now on).
   */
  static fromParts(indexKey: string, parts: KeyRecordParts): KeyRecord {
    const record = new KeyRecord(indexKey, parts.newestMain, parts.newestSub, undefined);
    record.history = parts.history;
    if (parts.live !== undefined) {
      record.newestTombstone = false;
      record.value = parts.live.value;
      record.createRevision = parts.live.createRevision;
      record.version = parts.live.version;
      record.lease = parts.live.lease === noLease ? noLease : parts.live.lease;
    }
    return record;
  }

  /** What `fromParts` makes this record again from (the history array is this record's own, not a copy). */
  parts(): KeyRecordParts {
    return {
      history: this.history,
      newestMain: this.newestMain,
      newestSub: this.newestSub,
      live: this.newestTombstone ? undefined : { value: this.value, createRevision: this.createRevision, version: this.version, lease: this.lease },
    };
  }

  /** How many revisions the index holds for this key (at least one). */
  get revisionCount(): number {
    return this.history === undefined ? 1 : this.history.length / 2 + 1;
  }

  /** The main revision at `position` (0 is the oldest). */
  mainAt(position: number): number {
    const history = this.history;
    return history === undefined || position * 2 === history.length ? this.newestMain : (history[position * 2] as number);
  }

  subAt(position: number): number {
    const history = this.history;
    return history === undefined || position * 2 === history.length ? this.newestSub : Math.floor((history[position * 2 + 1] as number) / 2);
  }

  tombstoneAt(position: number): boolean {
    const history = this.history;
    return history === undefined || position * 2 === history.length ? this.newestTombstone : (history[position * 2 + 1] as number) % 2 === 1;
  }

  /** The position of the newest revision at or below `revision`, or -1. */
  visibleAt(revision: number): number {
    for (let position = this.revisionCount - 1; position >= 0; position--) {
      if (this.mainAt(position) <= revision) return position;
    }
    return -1;
  }

  isNewest(position: number): boolean {
    return position === this.revisionCount - 1;
  }

  /**
   * The live value (a new object each call), or undefined when the newest revision is a tombstone.
   * `key` is this key's bytes when the caller has them; otherwise a buffer is made from the index key.
   */
  live(key?: Buffer): KeyValue | undefined {
    if (this.newestTombstone) return undefined;
    return { key: key ?? Buffer.from(this.indexKey, 'latin1'), value: this.value, createRevision: this.createRevision, modRevision: this.newestMain, version: this.version, lease: this.lease };
  }

  /** The key's length in bytes. */
  get keyBytes(): number {
    return this.indexKey.length;
  }

  get hasLive(): boolean {
    return !this.newestTombstone;
  }

  /** The live value's lease (0n for none or a tombstone), without making the KeyValue. */
  get liveLease(): bigint {
    return this.newestTombstone ? noLease : this.lease;
  }

  /** Adds a newer revision: `live` is its value, or undefined for a tombstone. */
  append(main: number, sub: number, live: KeyValue | undefined): void {
    assert(this.newestMain < main || (this.newestMain === main && this.newestSub < sub), 'key revisions must increase');
    assert(Number.isSafeInteger(sub * 2 + 1), 'sub revision beyond safe integer range');
    const olderSub = this.newestSub * 2 + (this.newestTombstone ? 1 : 0);
    if (this.history === undefined) {
      this.history = [this.newestMain, olderSub];
    } else {
      this.history.push(this.newestMain, olderSub);
    }
    this.newestMain = main;
    this.newestSub = sub;
    this.newestTombstone = live === undefined;
    this.value = live === undefined ? emptyValue : live.value;
    this.createRevision = live === undefined ? 0 : live.createRevision;
    this.version = live === undefined ? 0 : live.version;
    this.lease = live === undefined || live.lease === noLease ? noLease : live.lease;
  }

  /**
   * Drops the revisions a compaction at `revision` removes: all below the newest one at or below
   * it, and that one too if it is a tombstone. Pushes each dropped (main, sub) to `removed`.
   * Returns whether no revision is left (the key leaves the index).
   */
  compact(revision: number, removed: number[]): boolean {
    let keepFrom = 0;
    const count = this.revisionCount;
    for (let position = 0; position < count; position++) {
      if (this.mainAt(position) > revision) break;
      // The newest revision at or below the compaction point stays readable, unless it is a tombstone.
      keepFrom = this.tombstoneAt(position) ? position + 1 : position;
    }
    if (keepFrom === 0) return false;
    for (let position = 0; position < keepFrom; position++) removed.push(this.mainAt(position), this.subAt(position));
    if (keepFrom === count) return true;
    const history = this.history as number[];
    this.history = keepFrom === count - 1 ? undefined : history.slice(keepFrom * 2);
    return false;
  }

  /** Replaces the live value's buffer with `value`, equal bytes (a copy out of a larger buffer it was a view into). */
  replaceValue(value: Buffer): void {
    assert(!this.newestTombstone && value.equals(this.value), 'a replaced value holds the same bytes');
    this.value = value;
  }

  /** The live value's buffer (emptyValue for a tombstone). */
  get liveValue(): Buffer {
    return this.value;
  }
}
