/**
 * The key index checkpoint: at a clean shutdown the member writes its key index (every key's
 * revisions and live value) to one file, `index-checkpoint` in the data directory, so the next start
 * loads it instead of reading, opening and decoding every 'k' record of the database (issue 13: at
 * 500,000 keys the rebuild was most of a restart's CPU, ~8 µs of AES-GCM setup a record alone).
 *
 * File: frames, each `u32 length` (big-endian) then the frame. A frame is a chunk of up to
 * `chunkBytes` of encoded records in key order (a larger record gets a chunk of its own), then one
 * trailer frame (records, chunks, the consistent index and the newest revision key on disk when it
 * was written). With encryption at rest every frame is sealed (`sealed-record.ts`: AES-256-GCM under
 * the active DEK) and without it carries a SHA-256; either way over the frame's additional data:
 * `frameLabel`, the token, the frame's number and whether it is the trailer. So a frame cannot be
 * edited, reordered, dropped, cut short or moved to another checkpoint.
 *
 * Valid only together with the database: the writer puts a fresh random token into the database
 * (`metaKey.indexCheckpoint`, synced; the token, then a u32: the longest frame it wrote) after the
 * file is written and after the member's last write;
 * a start takes the token out (synced) before anything writes, reads the file with it and deletes
 * the file. It is used only when every frame opens, the records are in strict key order, the counts
 * match, and the database's consistent index and newest revision key are the trailer's. Anything
 * else (no token, no file, a frame that does not open or is longer than the longest the writer
 * wrote, a crash before the token was written, a
 * version that did not know of the token writing in between) is the full rebuild
 * (`index-rebuild.ts`), as is every start after a crash: the token is gone once a start took it.
 *
 * Owns: the file and the token. Never: decides when the index is quiescent (the member does), or
 * writes a checkpoint of a database whose plaintext is being sealed (a plaintext frame would be
 * taken as one while migrating).
 *
 * Record: u32 key length, key, u32 history numbers (even), each u64, u64 newest main revision,
 * u64 newest sub × 2 (+1 for a tombstone), then for a put: u64 create revision, u64 version,
 * i64 lease, u32 value length, value.
 */
import { createHash, randomBytes } from 'node:crypto';
import { open, unlink, type FileHandle } from 'node:fs/promises';
import path from 'node:path';
import { looksSealed } from '../../encryption/sealed-record.js';
import { decodeRevisionKey, readUint64, writeUint64 } from '../encoding.js';
import { metaKey, prefix, prefixEnd } from '../schema.js';
import type { Database } from '../database.js';
import { KeyRecord, type KeyRecordParts } from './key-record.js';
import { readMetaNumber } from './store.js';
import type { RebuiltIndex } from './index-rebuild.js';

export const indexCheckpointFileName = 'index-checkpoint';
/** Plaintext bytes of records a chunk holds (a record larger than this has a chunk of its own). */
const chunkBytes = 4 * 1024 * 1024;
const frameLabel = Buffer.from('rampart index checkpoint v1\0', 'latin1');
const tokenBytes = 16;
/**
 * The database's record of a checkpoint: its token, then the longest frame written (u32). A frame
 * is a chunk (`chunkBytes`), or one record larger than that (a value up to --max-request-bytes, a
 * long history), plus the seal or digest. The reader allocates no frame longer than that: before,
 * a frame's length was bounded only by the file's size, so anyone who could write the data
 * directory could make a start allocate (and read) as much as a sparse file claims before the
 * frame failed to open.
 */
const tokenRecordBytes = tokenBytes + 4;
const noLease = 0n;
const digestBytes = 32;
/** Keys, frames before it, consistent index, then the newest revision key's length and bytes (at most 17). */
const trailerBytes = 8 + 8 + 8 + 1 + 17;

/** Seals and opens the frames with the member's keys (the database's `outsideSealer`); undefined when it does not encrypt. */
export interface CheckpointSealer {
  /** Each [additional data, plaintext] sealed, as buffers whose concatenation is the sealed record. */
  sealParts(records: readonly (readonly [Buffer, Buffer])[]): Promise<Buffer[][]>;
  open(key: Buffer, stored: Buffer): Buffer;
}

export interface CheckpointStorage {
  readonly dataDir: string;
  readonly db: Pick<Database, 'get' | 'batch' | 'keys'>;
  readonly sealer: CheckpointSealer | undefined;
}

function checkpointPath(dataDir: string): string {
  return path.join(dataDir, indexCheckpointFileName);
}

function frameAad(token: Buffer, frame: number, trailer: boolean): Buffer {
  const tail = Buffer.allocUnsafe(5);
  tail.writeUInt32BE(frame, 0);
  tail[4] = trailer ? 1 : 0;
  return Buffer.concat([frameLabel, token, tail]);
}

function digest(aad: Buffer, plaintext: Buffer): Buffer {
  return createHash('sha256').update(aad).update(plaintext).digest();
}

/** The newest 'k' key in the database (its revision key), or an empty buffer. */
async function newestRevisionKey(db: CheckpointStorage['db']): Promise<Buffer> {
  for await (const key of db.keys({ gte: Buffer.of(prefix.keyValue), lt: prefixEnd(prefix.keyValue), reverse: true, limit: 1 })) return Buffer.from(key);
  return Buffer.alloc(0);
}

function recordBytes(indexKey: string, parts: KeyRecordParts): number {
  return 4 + indexKey.length + 4 + 8 * (parts.history?.length ?? 0) + 16 + (parts.live === undefined ? 0 : 28 + parts.live.value.length);
}

function encodeRecord(target: Buffer, offset: number, indexKey: string, parts: KeyRecordParts): number {
  let at = offset;
  target.writeUInt32BE(indexKey.length, at);
  at += 4;
  at += target.write(indexKey, at, 'latin1');
  const history = parts.history ?? [];
  target.writeUInt32BE(history.length, at);
  at += 4;
  for (const number of history) {
    writeUint64(target, number, at);
    at += 8;
  }
  writeUint64(target, parts.newestMain, at);
  writeUint64(target, parts.newestSub * 2 + (parts.live === undefined ? 1 : 0), at + 8);
  at += 16;
  if (parts.live !== undefined) {
    writeUint64(target, parts.live.createRevision, at);
    writeUint64(target, parts.live.version, at + 8);
    target.writeBigInt64BE(parts.live.lease, at + 16);
    target.writeUInt32BE(parts.live.value.length, at + 24);
    at += 28;
    at += parts.live.value.copy(target, at);
  }
  return at;
}

/**
 * What a checkpoint write did: `written` (file and token), `applied index differs` (the database
 * holds another applied index than the index reflects: nothing written) or `past deadline` (the
 * write ran past `deadlineMs`: the file removed, no token). Either of the last two means the next
 * start rebuilds.
 */
export type IndexCheckpointOutcome = 'written' | 'applied index differs' | 'past deadline';

/**
 * Writes the checkpoint of `records` (every key of the index, in key order), then the token. Call
 * once nothing writes to the database any more (the member's last write done, its compaction
 * finished) and the index equals what a rebuild would read. `consistentIndex` is the applied index
 * the index reflects: when the database holds another, nothing is written.
 */
export async function writeIndexCheckpoint(storage: CheckpointStorage, records: Iterable<[string, KeyRecord]>, consistentIndex: number, deadlineMs = Number.POSITIVE_INFINITY): Promise<IndexCheckpointOutcome> {
  const { dataDir, db, sealer } = storage;
  const file = checkpointPath(dataDir);
  await db.batch([{ type: 'del', key: metaKey.indexCheckpoint }], { sync: true });
  await unlink(file).catch(() => undefined);
  if ((await readMetaNumber(db, metaKey.consistentIndex)) !== consistentIndex) return 'applied index differs';
  const token = randomBytes(tokenBytes);
  const handle = await open(file, 'wx', 0o600);
  let written = false;
  let longestFrame = 0;
  try {
    let frame = 0;
    const writeFrame = async (plaintext: Buffer, trailer: boolean): Promise<void> => {
      if (performance.now() > deadlineMs) throw new CheckpointAbandoned();
      const aad = frameAad(token, frame, trailer);
      // Sealed as parts (header, ciphertext, tag) written one after another: copying a 4 MiB
      // ciphertext into one buffer, freshly allocated a frame, cost about as much as sealing it.
      const parts = sealer === undefined ? [plaintext, digest(aad, plaintext)] : ((await sealer.sealParts([[aad, plaintext]]))[0] as Buffer[]);
      const stored = parts.reduce((total, part) => total + part.length, 0);
      longestFrame = Math.max(longestFrame, stored);
      const length = Buffer.allocUnsafe(4);
      length.writeUInt32BE(stored);
      await handle.writev([length, ...parts]);
      frame += 1;
    };
    let chunk = Buffer.allocUnsafe(chunkBytes);
    let used = 0;
    let keys = 0;
    for (const [indexKey, record] of records) {
      const parts = record.parts();
      const bytes = recordBytes(indexKey, parts);
      if (used > 0 && used + bytes > chunk.length) {
        await writeFrame(chunk.subarray(0, used), false);
        used = 0;
      }
      if (bytes > chunk.length) chunk = Buffer.allocUnsafe(bytes);
      used = encodeRecord(chunk, used, indexKey, parts);
      keys += 1;
    }
    if (used > 0) await writeFrame(chunk.subarray(0, used), false);
    const newest = await newestRevisionKey(db);
    const trailer = Buffer.alloc(trailerBytes);
    writeUint64(trailer, keys, 0);
    writeUint64(trailer, frame, 8);
    writeUint64(trailer, consistentIndex, 16);
    trailer[24] = newest.length;
    newest.copy(trailer, 25);
    await writeFrame(trailer, true);
    written = true;
  } catch (error) {
    if (error instanceof CheckpointAbandoned) return 'past deadline';
    throw error;
  } finally {
    await handle.close();
    if (!written) await unlink(file).catch(() => undefined);
  }
  // The file is not synced (at 500,000 keys that was seconds of a stop): a power loss that keeps
  // the token but not all of the file leaves frames that do not open, and the start rebuilds.
  const record = Buffer.allocUnsafe(tokenRecordBytes);
  token.copy(record, 0);
  record.writeUInt32BE(longestFrame, tokenBytes);
  await db.batch([{ type: 'put', key: metaKey.indexCheckpoint, value: record }], { sync: true });
  return 'written';
}

/** The write ran past its deadline: the file is removed and no token written. */
class CheckpointAbandoned extends Error {}

export type TakenCheckpoint = { readonly index: RebuiltIndex; readonly reason?: undefined } | { readonly index?: undefined; readonly reason: string | undefined };

/**
 * Takes the checkpoint a clean shutdown left: removes the token from the database (synced) and the
 * file, and returns the index the file holds when it is valid for this database, or why not
 * (undefined reason: there was none). Call before anything else writes to the database.
 */
export async function takeIndexCheckpoint(storage: CheckpointStorage): Promise<TakenCheckpoint> {
  const { dataDir, db, sealer } = storage;
  const file = checkpointPath(dataDir);
  const tokenRecord = await db.get(metaKey.indexCheckpoint);
  if (tokenRecord === undefined) {
    const existed = await unlink(file).then(() => true, () => false);
    return { reason: existed ? 'no token in the database (the member did not stop cleanly after writing it)' : undefined };
  }
  await db.batch([{ type: 'del', key: metaKey.indexCheckpoint }], { sync: true });
  try {
    if (tokenRecord.length !== tokenRecordBytes) return { reason: 'malformed token' };
    const token = tokenRecord.subarray(0, tokenBytes);
    const longestFrame = tokenRecord.readUInt32BE(tokenBytes);
    let handle: FileHandle;
    try {
      handle = await open(file, 'r');
    } catch {
      return { reason: 'no checkpoint file' };
    }
    let loaded: { records: [string, KeyRecord][]; trailer: Buffer };
    try {
      loaded = await readFrames(handle, token, longestFrame, sealer);
    } catch (error) {
      return { reason: (error as Error).message };
    } finally {
      await handle.close();
    }
    const { records, trailer } = loaded;
    if (readUint64(trailer, 0) !== records.length) return { reason: 'key count differs from the trailer' };
    if (readUint64(trailer, 16) !== (await readMetaNumber(db, metaKey.consistentIndex))) return { reason: 'the database applied other entries since' };
    const newest = await newestRevisionKey(db);
    if (trailer[24] !== newest.length || !trailer.subarray(25, 25 + newest.length).equals(newest)) return { reason: 'the newest revision in the database differs' };
    // As the rebuild: the newest main revision of any record on disk (1 for an empty store).
    const currentRevision = newest.length === 0 ? 1 : Math.max(1, decodeRevisionKey(newest).main);
    return { index: { records, currentRevision } };
  } finally {
    await unlink(file).catch(() => undefined);
  }
}

async function readExactly(handle: FileHandle, position: number, length: number): Promise<Buffer> {
  const buffer = Buffer.allocUnsafe(length);
  let done = 0;
  while (done < length) {
    const { bytesRead } = await handle.read(buffer, done, length - done, position + done);
    if (bytesRead === 0) throw new Error('checkpoint file cut short');
    done += bytesRead;
  }
  return buffer;
}

async function readFrames(handle: FileHandle, token: Buffer, longestFrame: number, sealer: CheckpointSealer | undefined): Promise<{ records: [string, KeyRecord][]; trailer: Buffer }> {
  const size = (await handle.stat()).size;
  const records: [string, KeyRecord][] = [];
  let position = 0;
  let frame = 0;
  let previousKey: string | undefined;
  for (;;) {
    if (position + 4 > size) throw new Error('checkpoint file cut short');
    const length = (await readExactly(handle, position, 4)).readUInt32BE(0);
    position += 4;
    if (length > longestFrame) throw new Error(`checkpoint frame of ${length} bytes, longer than any written (${longestFrame})`);
    if (length > size - position) throw new Error('checkpoint frame overruns the file');
    const stored = await readExactly(handle, position, length);
    position += length;
    const trailer = position === size;
    const plaintext = openFrame(stored, frameAad(token, frame, trailer), sealer);
    if (trailer) {
      if (plaintext.length !== trailerBytes || readUint64(plaintext, 8) !== frame) throw new Error('malformed checkpoint trailer');
      return { records, trailer: plaintext };
    }
    previousKey = decodeChunk(plaintext, records, previousKey);
    frame += 1;
  }
}

function openFrame(stored: Buffer, aad: Buffer, sealer: CheckpointSealer | undefined): Buffer {
  if (sealer !== undefined) {
    // A plaintext frame is never taken as sealed (the keyring passes plaintext through while migrating).
    if (!looksSealed(stored)) throw new Error('checkpoint frame not sealed');
    return sealer.open(aad, stored);
  }
  if (stored.length < digestBytes) throw new Error('checkpoint frame shorter than its digest');
  const plaintext = stored.subarray(0, stored.length - digestBytes);
  if (!digest(aad, plaintext).equals(stored.subarray(stored.length - digestBytes))) throw new Error('checkpoint frame digest mismatch');
  return plaintext;
}

/** Appends the chunk's records; the keys must follow `previousKey` in strict order. Returns the last key. */
function decodeChunk(chunk: Buffer, records: [string, KeyRecord][], previousKey: string | undefined): string | undefined {
  let last = previousKey;
  let at = 0;
  const need = (bytes: number): void => {
    if (at + bytes > chunk.length) throw new Error('checkpoint record overruns its chunk');
  };
  while (at < chunk.length) {
    need(4);
    const keyLength = chunk.readUInt32BE(at);
    at += 4;
    need(keyLength + 4);
    const indexKey = chunk.toString('latin1', at, at + keyLength);
    at += keyLength;
    if (last !== undefined && !(last < indexKey)) throw new Error('checkpoint keys out of order');
    last = indexKey;
    const historyLength = chunk.readUInt32BE(at);
    at += 4;
    if (historyLength % 2 !== 0) throw new Error('malformed checkpoint history');
    need(8 * historyLength + 16);
    let history: number[] | undefined;
    if (historyLength > 0) {
      history = [];
      for (let index = 0; index < historyLength; index++) history.push(readUint64(chunk, at + 8 * index));
      at += 8 * historyLength;
    }
    const newestMain = readUint64(chunk, at);
    const newestSubTombstone = readUint64(chunk, at + 8);
    at += 16;
    let live: { value: Buffer; createRevision: number; version: number; lease: bigint } | undefined;
    if (newestSubTombstone % 2 === 0) {
      need(28);
      const createRevision = readUint64(chunk, at);
      const version = readUint64(chunk, at + 8);
      // No lease is the common case: the shared 0n, not a new BigInt a key.
      const lease = chunk.readUInt32BE(at + 16) === 0 && chunk.readUInt32BE(at + 20) === 0 ? noLease : chunk.readBigInt64BE(at + 16);
      const valueLength = chunk.readUInt32BE(at + 24);
      at += 28;
      need(valueLength);
      live = { value: chunk.subarray(at, at + valueLength), createRevision, version, lease };
      at += valueLength;
    }
    records.push([indexKey, KeyRecord.fromParts(indexKey, { history, newestMain, newestSub: Math.floor(newestSubTombstone / 2), live })]);
  }
  return last;
}
