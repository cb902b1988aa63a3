/**
 * The index rebuild at start (and after a snapshot install): every 'k' record of the database read
 * once, in revision order, into each key's revisions and live value, handed back in key order so
 * the store builds its tree in one pass.
 *
 * Owns: the read of the 'k' bucket and the memory the loaded keys and values sit in. Never: writes,
 * or skips a record it cannot read (the sealing layer's error, naming the record, stops the start).
 *
 * Live values stay views into the batch they were read with (the sealed database opens a whole
 * batch into one buffer): copying each out cost 500,000 allocations and copies at 500,000 keys, and
 * the garbage collection of the batches. A batch buffer lives as long as one view into it does, so
 * once every record is read, the views into a batch that is mostly dead (history, tombstones,
 * values overwritten later) are copied out and the batch is freed: loaded values never hold more
 * than `batchLiveShareMin`'s inverse times their own bytes. (Keys are kept as index strings.)
 */
import { decodeKeyValueRecord, decodeRevisionKey, recordKind } from '../encoding.js';
import { prefix, prefixEnd } from '../schema.js';
import type { Database } from '../database.js';
import { toIndexKey } from './range.js';
import { KeyRecord } from './key-record.js';

/** Records, and bytes, read from the database per batch. */
const batchRecordsMax = 1_000;
const batchBytesMax = 4 * 1024 * 1024;
/** A batch buffer whose bytes still referenced are fewer than this share of it is copied out of. */
const batchLiveShareMin = 0.5;

export interface RebuiltIndex {
  /** Every key's record, in index-key order. */
  readonly records: [string, KeyRecord][];
  /** The newest main revision of any record (1 for an empty store). */
  readonly currentRevision: number;
}

export async function rebuildIndex(db: Database): Promise<RebuiltIndex> {
  // Records come in revision order, keys in no order: they are gathered in a hash map and sorted
  // once. Inserting each key into the tree where it fell took ~4 s of CPU at 500,000 keys
  // (descents, node splits and the garbage they leave); in order, under 1 s.
  const loaded = new Map<string, KeyRecord>();
  let currentRevision = 1;
  const iterator = db.iterator({ gte: Buffer.of(prefix.keyValue), lt: prefixEnd(prefix.keyValue), highWaterMarkBytes: batchBytesMax, bulk: true });
  try {
    for (;;) {
      const batch = await iterator.nextv(batchRecordsMax);
      if (batch.length === 0) break;
      for (const [key, value] of batch) {
        const revision = decodeRevisionKey(key);
        const { kind, kv } = decodeKeyValueRecord(value, false);
        const tombstone = kind === recordKind.tombstone;
        const indexKey = toIndexKey(kv.key);
        const live = tombstone ? undefined : kv;
        const known = loaded.get(indexKey);
        if (known === undefined) {
          loaded.set(indexKey, new KeyRecord(indexKey, revision.main, revision.sub, live));
        } else {
          known.append(revision.main, revision.sub, live);
        }
        currentRevision = Math.max(currentRevision, revision.main);
      }
    }
  } finally {
    await iterator.close();
  }
  const records = [...loaded];
  copyOutOfSparseBatches(records);
  records.sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
  return { records, currentRevision };
}

/** Copies out, in place, the live values that are views into a mostly dead buffer (the index holds keys as strings). */
function copyOutOfSparseBatches(records: [string, KeyRecord][]): void {
  const referencedBytes = new Map<ArrayBufferLike, number>();
  const count = (view: Buffer): void => {
    referencedBytes.set(view.buffer, (referencedBytes.get(view.buffer) ?? 0) + view.length);
  };
  for (const [, record] of records) {
    if (record.hasLive) count(record.liveValue);
  }
  const sparse = (view: Buffer): boolean => (referencedBytes.get(view.buffer) ?? 0) < view.buffer.byteLength * batchLiveShareMin;
  for (const [, record] of records) {
    if (record.hasLive && sparse(record.liveValue)) record.replaceValue(Buffer.from(record.liveValue));
  }
}
