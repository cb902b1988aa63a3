/**
 * The hot messages of a Put — its proposal (encoded and decoded) and its response (encoded) — by
 * hand: protobufjs's reflective `fromObject` and `toObject` (a Long parsed from a string for every
 * 64-bit field, an object per field written) were ~7% (proposal) and ~2.5% (response) of a
 * member's main-thread time under closed-loop puts. Same wire format
 * (internal.proto `rampart.InternalRequest` with `put` and `caller`), same decoded shape as
 * `toObject` with `decodeOptions`; anything else — another request, an unexpected field or type, a
 * field seen twice — answers `undefined` and goes the generic protobufjs way, so entries written
 * by any version decode the same. A unit test checks both against protobufjs.
 *
 *   InternalRequest: 1 id uint64 (varint), 2 put PutRequest, 20 caller Caller
 *   PutRequest:      1 key bytes, 2 value bytes, 3 lease int64, 4 prev_kv, 5 ignore_value, 6 ignore_lease (bools)
 *   Caller:          1 user string, 2 revision uint64, 3 token bool
 *   PutResponse:     1 header ResponseHeader (rpc.proto; a `prev_kv` answer is left to protobufjs)
 *   ResponseHeader:  1 cluster_id uint64, 2 member_id uint64, 3 revision int64, 4 raft_term uint64
 */
import type { Caller, InternalRequest, PutRequest, PutResponse } from './messages.js';

const wireVarint = 0;
const wireBytes = 2;
const tagId = (1 << 3) | wireVarint;
const tagPut = (2 << 3) | wireBytes;
const tagCaller = (20 << 3) | wireBytes;
const decimalInteger = /^-?\d{1,20}$/;
const twoTo63 = 2n ** 63n;
const twoTo64 = 2n ** 64n;

/** A 64-bit integer field's value as two's complement (BigInt), or undefined when it is not one. */
function integer64(value: unknown, signed: boolean): bigint | undefined {
  let parsed: bigint;
  if (typeof value === 'number') {
    if (!Number.isSafeInteger(value)) return undefined;
    parsed = BigInt(value);
  } else if (typeof value === 'string' && decimalInteger.test(value)) {
    parsed = BigInt(value);
  } else {
    return undefined;
  }
  if (signed ? parsed < -twoTo63 || parsed >= twoTo63 : parsed < 0n || parsed >= twoTo64) return undefined;
  return BigInt.asUintN(64, parsed);
}

function varintBytes(value: bigint): number {
  let bytes = 1;
  for (let rest = value >> 7n; rest > 0n; rest >>= 7n) bytes += 1;
  return bytes;
}

function smallVarintBytes(value: number): number {
  let bytes = 1;
  for (let rest = value >>> 7; rest > 0; rest >>>= 7) bytes += 1;
  return bytes;
}

class Writer {
  offset = 0;
  constructor(readonly buffer: Buffer) {}

  byte(value: number): void {
    this.buffer[this.offset++] = value;
  }

  varint(value: number): void {
    while (value > 0x7f) {
      this.byte((value & 0x7f) | 0x80);
      value >>>= 7;
    }
    this.byte(value);
  }

  bigVarint(value: bigint): void {
    if (value < 0x80000000n) {
      this.varint(Number(value));
      return;
    }
    while (value > 0x7fn) {
      this.byte(Number(value & 0x7fn) | 0x80);
      value >>= 7n;
    }
    this.byte(Number(value));
  }

  /** A bool field set to true. */
  flag(tag: number): void {
    this.byte(tag);
    this.byte(1);
  }

  bytes(tag: number, value: Buffer): void {
    this.byte(tag);
    this.varint(value.length);
    this.offset += value.copy(this.buffer, this.offset);
  }
}

interface PutFields {
  readonly put: PutRequest;
  readonly lease: bigint;
  readonly id: bigint;
  readonly caller: { user: Buffer; revision: bigint; token: boolean } | undefined;
}

function putFieldsOf(request: InternalRequest): PutFields | undefined {
  const put = request.put;
  if (request.request !== 'put' || put === undefined || put === null) return undefined;
  for (const name of Object.keys(request)) {
    if (name !== 'id' && name !== 'request' && name !== 'put' && name !== 'caller') return undefined;
  }
  if (!Buffer.isBuffer(put.key) || !Buffer.isBuffer(put.value)) return undefined;
  if (typeof put.prev_kv !== 'boolean' || typeof put.ignore_value !== 'boolean' || typeof put.ignore_lease !== 'boolean') return undefined;
  const lease = put.lease === undefined ? 0n : integer64(put.lease, true);
  const id = integer64(request.id, false);
  if (lease === undefined || id === undefined) return undefined;
  const caller = request.caller;
  if (caller === undefined || caller === null) return { put, lease, id, caller: undefined };
  if (typeof caller.user !== 'string' || typeof caller.token !== 'boolean') return undefined;
  const revision = integer64(caller.revision, false);
  if (revision === undefined) return undefined;
  return { put, lease, id, caller: { user: Buffer.from(caller.user, 'utf8'), revision, token: caller.token } };
}

/** The Put proposal's bytes, or undefined when `request` is not a plain Put (encode it generically). */
export function encodePutProposal(request: InternalRequest): Buffer | undefined {
  const fields = putFieldsOf(request);
  if (fields === undefined) return undefined;
  const { put, lease, id, caller } = fields;
  // Proto3: fields at their default value are left out, as protobufjs does for absent ones.
  const putBytes = (put.key.length > 0 ? 1 + smallVarintBytes(put.key.length) + put.key.length : 0) +
    (put.value.length > 0 ? 1 + smallVarintBytes(put.value.length) + put.value.length : 0) +
    (lease !== 0n ? 1 + varintBytes(lease) : 0) +
    (put.prev_kv ? 2 : 0) + (put.ignore_value ? 2 : 0) + (put.ignore_lease ? 2 : 0);
  const callerBytes = caller === undefined ? 0 :
    (caller.user.length > 0 ? 1 + smallVarintBytes(caller.user.length) + caller.user.length : 0) +
    (caller.revision !== 0n ? 1 + varintBytes(caller.revision) : 0) + (caller.token ? 2 : 0);
  const total = (id !== 0n ? 1 + varintBytes(id) : 0) + 1 + smallVarintBytes(putBytes) + putBytes +
    (caller === undefined ? 0 : 2 + smallVarintBytes(callerBytes) + callerBytes);
  const writer = new Writer(Buffer.allocUnsafe(total));
  if (id !== 0n) {
    writer.byte(tagId);
    writer.bigVarint(id);
  }
  writer.byte(tagPut);
  writer.varint(putBytes);
  if (put.key.length > 0) writer.bytes(0x0a, put.key);
  if (put.value.length > 0) writer.bytes(0x12, put.value);
  if (lease !== 0n) {
    writer.byte(0x18);
    writer.bigVarint(lease);
  }
  if (put.prev_kv) writer.flag(0x20);
  if (put.ignore_value) writer.flag(0x28);
  if (put.ignore_lease) writer.flag(0x30);
  if (caller !== undefined) {
    writer.varint(tagCaller);
    writer.varint(callerBytes);
    if (caller.user.length > 0) writer.bytes(0x0a, caller.user);
    if (caller.revision !== 0n) {
      writer.byte(0x10);
      writer.bigVarint(caller.revision);
    }
    if (caller.token) writer.flag(0x18);
  }
  if (writer.offset !== total) throw new Error(`assertion failed: put proposal encoded to ${writer.offset} bytes, sized ${total}`);
  return writer.buffer;
}

class Reader {
  offset: number;
  constructor(
    readonly buffer: Buffer,
    start: number,
    readonly end: number,
  ) {
    this.offset = start;
  }

  /** A varint of at most 10 bytes as an unsigned 64-bit value; undefined when malformed. */
  varint(): bigint | undefined {
    let small = 0;
    let shift = 0;
    // Up to 4 bytes (28 bits) as a number; longer ones continue as a BigInt.
    for (; shift < 28; shift += 7) {
      if (this.offset >= this.end) return undefined;
      const byte = this.buffer[this.offset++] as number;
      small |= (byte & 0x7f) << shift;
      if (byte < 0x80) return BigInt(small);
    }
    let value = BigInt(small);
    for (let bigShift = 28n; bigShift < 70n; bigShift += 7n) {
      if (this.offset >= this.end) return undefined;
      const byte = this.buffer[this.offset++] as number;
      value |= BigInt(byte & 0x7f) << bigShift;
      if (byte < 0x80) return BigInt.asUintN(64, value);
    }
    return undefined;
  }

  /** A varint known to be small (a tag, a length); undefined when malformed or too large. */
  length(): number | undefined {
    const value = this.varint();
    return value === undefined || value > 0x7fffffffn ? undefined : Number(value);
  }

  bytes(): Buffer | undefined {
    const length = this.length();
    if (length === undefined || this.offset + length > this.end) return undefined;
    const start = this.offset;
    this.offset += length;
    return this.buffer.subarray(start, this.offset);
  }
}

function signed64(value: bigint): string {
  return (value >= twoTo63 ? value - twoTo64 : value).toString();
}

function decodePut(reader: Reader): PutRequest | undefined {
  let key: Buffer | undefined;
  let value: Buffer | undefined;
  let lease: bigint | undefined;
  const flags: (boolean | undefined)[] = [undefined, undefined, undefined];
  while (reader.offset < reader.end) {
    const tag = reader.length();
    switch (tag) {
      case 0x0a:
        if (key !== undefined) return undefined;
        key = reader.bytes();
        if (key === undefined) return undefined;
        break;
      case 0x12:
        if (value !== undefined) return undefined;
        value = reader.bytes();
        if (value === undefined) return undefined;
        break;
      case 0x18:
        if (lease !== undefined) return undefined;
        lease = reader.varint();
        if (lease === undefined) return undefined;
        break;
      case 0x20:
      case 0x28:
      case 0x30: {
        const position = (tag >> 3) - 4;
        if (flags[position] !== undefined) return undefined;
        const flag = reader.varint();
        if (flag === undefined) return undefined;
        flags[position] = BigInt.asUintN(32, flag) !== 0n; // protobufjs reads a bool as a uint32
        break;
      }
      default:
        return undefined;
    }
  }
  return {
    key: key ?? Buffer.alloc(0),
    value: value ?? Buffer.alloc(0),
    lease: lease === undefined ? '0' : signed64(lease),
    prev_kv: flags[0] ?? false,
    ignore_value: flags[1] ?? false,
    ignore_lease: flags[2] ?? false,
  };
}

function decodeCaller(reader: Reader): Caller | undefined {
  let user: string | undefined;
  let revision: bigint | undefined;
  let token: boolean | undefined;
  while (reader.offset < reader.end) {
    const tag = reader.length();
    if (tag === 0x0a && user === undefined) {
      const bytes = reader.bytes();
      if (bytes === undefined) return undefined;
      user = bytes.toString('utf8');
    } else if (tag === 0x10 && revision === undefined) {
      revision = reader.varint();
      if (revision === undefined) return undefined;
    } else if (tag === 0x18 && token === undefined) {
      const flag = reader.varint();
      if (flag === undefined) return undefined;
      token = BigInt.asUintN(32, flag) !== 0n;
    } else {
      return undefined;
    }
  }
  return { user: user ?? '', revision: (revision ?? 0n).toString(), token: token ?? false };
}

/** The Put proposal in `data`, shaped as protobufjs's `toObject` would; undefined for anything else. */
export function decodePutProposal(data: Buffer): InternalRequest | undefined {
  const reader = new Reader(data, 0, data.length);
  let id: bigint | undefined;
  let put: PutRequest | undefined;
  let caller: Caller | undefined;
  while (reader.offset < reader.end) {
    const tag = reader.length();
    if (tag === tagId && id === undefined) {
      id = reader.varint();
      if (id === undefined) return undefined;
    } else if ((tag === tagPut && put === undefined) || (tag === tagCaller && caller === undefined)) {
      const length = reader.length();
      if (length === undefined || reader.offset + length > reader.end) return undefined;
      const inner = new Reader(data, reader.offset, reader.offset + length);
      reader.offset += length;
      if (tag === tagPut) {
        put = decodePut(inner);
        if (put === undefined) return undefined;
      } else {
        caller = decodeCaller(inner);
        if (caller === undefined) return undefined;
      }
    } else {
      return undefined;
    }
  }
  if (put === undefined) return undefined;
  return { id: (id ?? 0n).toString(), caller: caller ?? null, put, request: 'put' };
}

/** A PutResponse without `prev_kv` (the usual answer), or undefined for anything else. */
export function encodePutResponse(response: PutResponse): Buffer | undefined {
  const header = response.header;
  if (header === undefined || header === null || (response.prev_kv !== undefined && response.prev_kv !== null)) return undefined;
  for (const name of Object.keys(response)) {
    if (name !== 'header' && name !== 'prev_kv') return undefined;
  }
  const values = [integer64(header.cluster_id, false), integer64(header.member_id, false), integer64(header.revision, true), integer64(header.raft_term, false)];
  let headerBytes = 0;
  for (const value of values) {
    if (value === undefined) return undefined;
    if (value !== 0n) headerBytes += 1 + varintBytes(value);
  }
  const writer = new Writer(Buffer.allocUnsafe(2 + headerBytes));
  writer.byte(0x0a);
  writer.varint(headerBytes);
  values.forEach((value, position) => {
    if (value === undefined || value === 0n) return;
    writer.byte(((position + 1) << 3) | wireVarint);
    writer.bigVarint(value);
  });
  return writer.buffer;
}
