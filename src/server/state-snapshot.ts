/**
 * State snapshots for followers too far behind the log, at any size, in bounded memory.
 *
 * A snapshot is the state machine's logical records (every replicated key and value, through the
 * `Database` seam: sealed at rest, plaintext here) at one applied index. Raft carries only its
 * metadata; the records travel beside it:
 * - the leader streams them from a LevelDB snapshot (a point-in-time view) taken when the state was
 *   at exactly that index, framed into chunks of about `chunkBytes` (no record spans two chunks);
 * - the follower stages each chunk as it arrives under the staging prefix, one bounded batch per
 *   chunk, and marks the staged snapshot durable only once the last chunk is written;
 * - installing moves the staged records into place in bounded batches. A durable marker written
 *   first makes the move crash-safe: a restart that finds it finishes the move (deleting and
 *   copying again is idempotent) before anything reads the state.
 * Never: one buffer, array or argument list holding the whole state.
 *
 * Chunk layout: records back to back, each `u32 key length, key, u32 value length, value` (big-endian).
 */
import { assert } from '../errors.js';
import type { HardState, SnapshotMetadata } from '../raft/types.js';
import type { Database, DatabaseSnapshot } from '../storage/database.js';
import { decodeHardState, encodeHardState } from '../storage/log.js';
import type { SegmentedLog } from '../storage/wal/segmented-log.js';
import type { BatchOperation } from '../storage/mvcc/store.js';
import { encodeMetaNumber } from '../storage/mvcc/store.js';
import { isMemberLocalKey, metaKey, prefix, prefixEnd } from '../storage/schema.js';

export const snapshotChunkBytesDefault = 1024 * 1024;
/** Records moved per batch while installing a staged snapshot. */
export const snapshotMoveBatchRecordsMax = 4096;

const stagingRange = { gte: Buffer.of(prefix.snapshotStaging), lt: prefixEnd(prefix.snapshotStaging) };
/** Every key of the state machine lies in [0x00, 0xff). */
const stateRange = { gte: Buffer.of(0), lt: Buffer.of(0xff) };

/** The replicated records of a database view, framed into chunks of about `chunkBytes`. */
export async function* snapshotChunks(db: Database, view: DatabaseSnapshot, chunkBytes: number): AsyncGenerator<Buffer> {
  let parts: Buffer[] = [];
  let pending = 0;
  const iterator = db.iterator({ ...stateRange, snapshot: view });
  try {
    for await (const [key, value] of iterator) {
      if (isMemberLocalKey(key)) continue;
      const header = Buffer.allocUnsafe(8);
      header.writeUInt32BE(key.length, 0);
      header.writeUInt32BE(value.length, 4);
      parts.push(header.subarray(0, 4), key, header.subarray(4), value);
      pending += 8 + key.length + value.length;
      if (pending >= chunkBytes) {
        yield Buffer.concat(parts, pending);
        parts = [];
        pending = 0;
      }
    }
    if (pending > 0) yield Buffer.concat(parts, pending);
  } finally {
    await iterator.close();
  }
}

/** The records of one chunk; a truncated or malformed chunk is refused whole. */
export function decodeChunk(chunk: Buffer): [Buffer, Buffer][] {
  const records: [Buffer, Buffer][] = [];
  let offset = 0;
  const read = (): Buffer => {
    if (offset + 4 > chunk.length) throw new Error('truncated snapshot chunk');
    const length = chunk.readUInt32BE(offset);
    offset += 4;
    if (offset + length > chunk.length) throw new Error('truncated snapshot chunk');
    // Views into the chunk, not copies: the records are written before the chunk is dropped.
    const bytes = chunk.subarray(offset, offset + length);
    offset += length;
    return bytes;
  };
  while (offset < chunk.length) {
    const key = read();
    const value = read();
    if (key.length === 0 || isMemberLocalKey(key)) throw new Error('snapshot chunk holds a member-local key');
    records.push([key, value]);
  }
  return records;
}

function encodePosition(index: number, term: number): Buffer {
  const bytes = Buffer.alloc(16);
  bytes.writeBigUInt64BE(BigInt(index), 0);
  bytes.writeBigUInt64BE(BigInt(term), 8);
  return bytes;
}

function decodePosition(bytes: Buffer): { index: number; term: number } {
  assert(bytes.length === 16, 'snapshot marker of the wrong length');
  return { index: Number(bytes.readBigUInt64BE(0)), term: Number(bytes.readBigUInt64BE(8)) };
}

function stagedKey(key: Buffer): Buffer {
  return Buffer.concat([Buffer.of(prefix.snapshotStaging), key]);
}

/**
 * Stages a snapshot received chunk by chunk; resolves once every record is written and the staged
 * marker is fsynced. Whatever was staged before is discarded first, and what this one staged is
 * discarded if it fails.
 */
export async function stageSnapshot(db: Database, metadata: SnapshotMetadata, chunks: AsyncIterable<Buffer>): Promise<{ records: number; bytes: number; chunks: number }> {
  await db.batch([{ type: 'del', key: metaKey.snapshotStaged }], { sync: true });
  await db.clear(stagingRange);
  let records = 0;
  let bytes = 0;
  let count = 0;
  try {
    for await (const chunk of chunks) {
      const batch: BatchOperation[] = decodeChunk(chunk).map(([key, value]) => ({ type: 'put', key: stagedKey(key), value }));
      await db.batch(batch);
      records += batch.length;
      bytes += chunk.length;
      count += 1;
    }
  } catch (error) {
    // A transfer that did not finish (cancelled, failed, idle): its records are only part of a
    // snapshot and are never marked staged; they go now rather than hold disk until the next one.
    await db.clear(stagingRange).catch(() => undefined);
    throw error;
  }
  await db.batch([{ type: 'put', key: metaKey.snapshotStaged, value: encodePosition(metadata.index, metadata.term) }], { sync: true });
  return { records, bytes, chunks: count };
}

/** Whether the staged snapshot is complete and is the one at (index, term). */
export async function isStaged(db: Database, index: number, term: number): Promise<boolean> {
  const staged = await db.get(metaKey.snapshotStaged);
  if (staged === undefined) return false;
  const position = decodePosition(staged);
  return position.index === index && position.term === term;
}

/**
 * Replaces the state machine with the staged snapshot at (index, term) and resets the log after
 * it. The installing marker is durable before the first record moves; it carries the hard state
 * to write at the end (written earlier, its commit index would lie beyond the stored log, which a
 * restart refuses as corruption).
 */
export async function installStaged(db: Database, logStore: SegmentedLog, index: number, term: number, hardState: HardState | undefined): Promise<void> {
  assert(await isStaged(db, index, term), 'installing a snapshot that is not staged');
  const marker = Buffer.concat([encodePosition(index, term), hardState === undefined ? Buffer.alloc(0) : encodeHardState(hardState)]);
  await db.batch([{ type: 'put', key: metaKey.snapshotInstalling, value: marker }], { sync: true });
  await moveStagedIntoPlace(db, logStore, index, term, hardState);
}

/** After a crash in the middle of an install: finishes it. Returns whether there was one. */
export async function finishInterruptedInstall(db: Database, logStore: SegmentedLog): Promise<boolean> {
  const marker = await db.get(metaKey.snapshotInstalling);
  if (marker === undefined) return false;
  const { index, term } = decodePosition(marker.subarray(0, 16));
  const hardState = marker.length > 16 ? decodeHardState(marker.subarray(16)) : undefined;
  await moveStagedIntoPlace(db, logStore, index, term, hardState);
  return true;
}

async function moveStagedIntoPlace(db: Database, logStore: SegmentedLog, index: number, term: number, hardState: HardState | undefined): Promise<void> {
  let batch: BatchOperation[] = [];
  const flush = async (): Promise<void> => {
    if (batch.length === 0) return;
    await db.batch(batch);
    batch = [];
  };
  for await (const key of db.keys(stateRange)) {
    if (isMemberLocalKey(key)) continue;
    batch.push({ type: 'del', key });
    if (batch.length >= snapshotMoveBatchRecordsMax) await flush();
  }
  await flush();
  for await (const [key, value] of db.iterator(stagingRange)) {
    batch.push({ type: 'put', key: key.subarray(1), value });
    if (batch.length >= snapshotMoveBatchRecordsMax) await flush();
  }
  await flush();
  // The last steps, each fsynced: the log reset, then the applied index with the markers gone. A
  // crash between them leaves the installing marker, and the restart does the move again.
  await logStore.save({ hardState, entries: [], resetTo: { index, term } });
  await db.batch([
    { type: 'put', key: metaKey.consistentIndex, value: encodeMetaNumber(index) },
    { type: 'del', key: metaKey.snapshotInstalling },
    { type: 'del', key: metaKey.snapshotStaged },
  ], { sync: true });
  await db.clear(stagingRange);
}
