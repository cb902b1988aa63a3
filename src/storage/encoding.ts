/**
 * Fixed-width big-endian encodings, so that byte order of encoded keys is numeric order.
 *
 * KeyValue record value layout (version 1):
 *   offset 0   u8   kind: 1 = put, 2 = tombstone
 *   offset 1   u64  create_revision
 *   offset 9   u64  mod_revision
 *   offset 17  u64  version
 *   offset 25  i64  lease id
 *   offset 33  u32  key length K
 *   offset 37  K    key bytes
 *   offset 37+K     value bytes (to the end of the record)
 * Integrity of the bytes on disk is LevelDB's (block CRCs, checked on every read).
 */
import { assert } from '../errors.js';
import { prefix } from './schema.js';

export interface KeyValue {
  readonly key: Buffer;
  readonly value: Buffer;
  readonly createRevision: number;
  readonly modRevision: number;
  readonly version: number;
  readonly lease: bigint;
}

export interface Revision {
  readonly main: number;
  readonly sub: number;
}

const twoTo32 = 2 ** 32;

export function writeUint64(buffer: Buffer, value: number, offset: number): void {
  // The message is built only on failure: this runs several times for every record written.
  assert(Number.isSafeInteger(value) && value >= 0, () => `uint64 out of range: ${value}`);
  buffer.writeUInt32BE(Math.floor(value / twoTo32), offset);
  buffer.writeUInt32BE(value >>> 0, offset + 4);
}

export function readUint64(buffer: Buffer, offset: number): number {
  const high = buffer.readUInt32BE(offset);
  const low = buffer.readUInt32BE(offset + 4);
  // Below 2^32 the low word is the value, a small integer V8 keeps unboxed. The product below is
  // a float even when integral: every revision read at start stored that way was a heap number
  // (5 a key in the index after a restart, and the objects holding them kept boxing).
  if (high === 0) return low;
  const value = high * twoTo32 + low;
  assert(Number.isSafeInteger(value), 'uint64 beyond safe integer range');
  return value;
}

export const revisionKeyBytes = 17;

export function encodeRevisionKey(main: number, sub: number): Buffer {
  const key = Buffer.allocUnsafe(revisionKeyBytes);
  key[0] = prefix.keyValue;
  writeUint64(key, main, 1);
  writeUint64(key, sub, 9);
  return key;
}

export function decodeRevisionKey(key: Buffer): Revision {
  assert(key.length === revisionKeyBytes && key[0] === prefix.keyValue, 'malformed revision key');
  return { main: readUint64(key, 1), sub: readUint64(key, 9) };
}

export const recordKind = { put: 1, tombstone: 2 } as const;
const headerBytes = 37;

export function keyValueRecordBytes(keyBytes: number, valueBytes: number): number {
  return headerBytes + keyBytes + valueBytes;
}

export function encodeKeyValueRecord(kind: number, kv: KeyValue): Buffer {
  return encodeKeyValueRecordInto(Buffer.allocUnsafe(keyValueRecordBytes(kv.key.length, kv.value.length)), kind, kv);
}

/** Encodes into `record`, exactly `keyValueRecordBytes` long (a slice of a larger allocation). */
export function encodeKeyValueRecordInto(record: Buffer, kind: number, kv: KeyValue): Buffer {
  record[0] = kind;
  writeUint64(record, kv.createRevision, 1);
  writeUint64(record, kv.modRevision, 9);
  writeUint64(record, kv.version, 17);
  record.writeBigInt64BE(kv.lease, 25);
  record.writeUInt32BE(kv.key.length, 33);
  kv.key.copy(record, headerBytes);
  kv.value.copy(record, headerBytes + kv.key.length);
  return record;
}

/**
 * With `copy` false the key and value are views into `record`, which lives as long as they do (the
 * index rebuild reads whole batches and bounds what its views keep alive).
 */
export function decodeKeyValueRecord(record: Buffer, copy = true): { kind: number; kv: KeyValue } {
  assert(record.length >= headerBytes, 'key-value record shorter than its header');
  const kind = record[0] ?? 0;
  assert(kind === recordKind.put || kind === recordKind.tombstone, () => `unknown key-value record kind ${kind}`);
  const keyLength = record.readUInt32BE(33);
  assert(headerBytes + keyLength <= record.length, 'key-value record key overruns record');
  return {
    kind,
    kv: {
      createRevision: readUint64(record, 1),
      modRevision: readUint64(record, 9),
      version: readUint64(record, 17),
      lease: readLease(record, 25),
      key: copy ? Buffer.from(record.subarray(headerBytes, headerBytes + keyLength)) : record.subarray(headerBytes, headerBytes + keyLength),
      value: copy ? Buffer.from(record.subarray(headerBytes + keyLength)) : record.subarray(headerBytes + keyLength),
    },
  };
}

/** No lease is by far the common case: one shared 0n, not a new BigInt per record read. */
const noLease = 0n;

function readLease(record: Buffer, offset: number): bigint {
  return record.readUInt32BE(offset) === 0 && record.readUInt32BE(offset + 4) === 0 ? noLease : record.readBigInt64BE(offset);
}

export function encodeBigUint64(value: bigint): Buffer {
  const buffer = Buffer.allocUnsafe(8);
  buffer.writeBigUInt64BE(BigInt.asUintN(64, value));
  return buffer;
}
