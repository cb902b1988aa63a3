/**
 * Sizes a TxnRequest from its protobuf wire bytes without decoding it: decoding builds an object
 * per op, and 1.5 MiB of tiny nested ops (≈200,000) takes the event loop for most of a second
 * before any check could refuse them. This walk allocates nothing and stops as soon as the Txn is
 * past the limits of src/server/validate.ts.
 *
 * Wire layout (rpc.proto): TxnRequest { 1: repeated Compare, 2: repeated RequestOp success,
 * 3: repeated RequestOp failure }; RequestOp { oneof: 1 range, 2 put, 3 delete_range, 4 TxnRequest }.
 * Malformed bytes are reported as within limits: the decoder then refuses them with its own error.
 */
import { txnDepthMax, txnOpsTotalMax } from '../server/validate.js';

const wireVarint = 0;
const wireFixed64 = 1;
const wireLengthDelimited = 2;
const wireFixed32 = 5;

class Malformed extends Error {}
class OverLimit extends Error {}

interface Cursor {
  readonly bytes: Uint8Array;
  position: number;
  opsCounted: number;
}

function readVarint(cursor: Cursor, end: number): number {
  let value = 0;
  let scale = 1;
  for (let index = 0; index < 10; index++) {
    if (cursor.position >= end) throw new Malformed();
    const byte = cursor.bytes[cursor.position++] as number;
    // Lengths and tags fit in 2^53; larger values are only ever skipped.
    value += (byte & 0x7f) * scale;
    scale *= 128;
    if ((byte & 0x80) === 0) return value;
  }
  throw new Malformed();
}

/** Skips a field of `wireType`, or returns the [start, end) of a length-delimited one. */
function skipOrBound(cursor: Cursor, wireType: number, end: number): { start: number; end: number } | undefined {
  switch (wireType) {
    case wireVarint:
      readVarint(cursor, end);
      return undefined;
    case wireFixed64:
      cursor.position += 8;
      break;
    case wireFixed32:
      cursor.position += 4;
      break;
    case wireLengthDelimited: {
      const length = readVarint(cursor, end);
      const start = cursor.position;
      cursor.position += length;
      if (cursor.position > end) throw new Malformed();
      return { start, end: cursor.position };
    }
    default:
      throw new Malformed();
  }
  if (cursor.position > end) throw new Malformed();
  return undefined;
}

function scanTxn(cursor: Cursor, end: number, depth: number): void {
  if (depth > txnDepthMax) throw new OverLimit();
  while (cursor.position < end) {
    const tag = readVarint(cursor, end);
    const field = Math.floor(tag / 8);
    const body = skipOrBound(cursor, tag % 8, end);
    if (body === undefined || field < 1 || field > 3) continue;
    if (++cursor.opsCounted > txnOpsTotalMax) throw new OverLimit();
    if (field !== 1) scanOp(cursor, body.start, body.end, depth);
  }
}

function scanOp(cursor: Cursor, start: number, end: number, depth: number): void {
  const resume = end;
  cursor.position = start;
  while (cursor.position < end) {
    const tag = readVarint(cursor, end);
    const field = Math.floor(tag / 8);
    const body = skipOrBound(cursor, tag % 8, end);
    if (body !== undefined && field === 4) {
      const after = cursor.position;
      cursor.position = body.start;
      scanTxn(cursor, body.end, depth + 1);
      cursor.position = after;
    }
  }
  cursor.position = resume;
}

/** Whether the encoded TxnRequest stays within txnOpsTotalMax ops and txnDepthMax levels. */
export function txnWithinLimits(bytes: Uint8Array): boolean {
  const cursor: Cursor = { bytes, position: 0, opsCounted: 0 };
  try {
    scanTxn(cursor, bytes.length, 1);
    return true;
  } catch (error) {
    if (error instanceof OverLimit) return false;
    if (error instanceof Malformed) return true;
    throw error;
  }
}
