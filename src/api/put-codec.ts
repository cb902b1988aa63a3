/**
 * The hot messages of a Put — its proposal (encoded and decoded), its request (decoded) and its response (encoded) — by
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
import { fieldKey, integer64, readWhole, signed64Text, varint64Bytes, varintBytes, type WireReader, WireWriter, wireBytes, wireVarint } from '../wire/protobuf.js';

const tagId = fieldKey(1, wireVarint);
const tagPut = fieldKey(2, wireBytes);
const tagCaller = fieldKey(20, wireBytes);

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

/** A bool field set to true (its key is one byte). */
function writeTrue(writer: WireWriter, key: number): void {
  writer.byte(key);
  writer.byte(1);
}

/** A bytes field (its key is one byte). */
function writeBytes(writer: WireWriter, key: number, value: Buffer): void {
  writer.byte(key);
  writer.bytes(value);
}

/** The Put proposal's bytes, or undefined when `request` is not a plain Put (encode it generically). */
export function encodePutProposal(request: InternalRequest): Buffer | undefined {
  const fields = putFieldsOf(request);
  if (fields === undefined) return undefined;
  const { put, lease, id, caller } = fields;
  // Proto3: fields at their default value are left out, as protobufjs does for absent ones.
  const putBytes = (put.key.length > 0 ? 1 + varintBytes(put.key.length) + put.key.length : 0) +
    (put.value.length > 0 ? 1 + varintBytes(put.value.length) + put.value.length : 0) +
    (lease !== 0n ? 1 + varint64Bytes(lease) : 0) +
    (put.prev_kv ? 2 : 0) + (put.ignore_value ? 2 : 0) + (put.ignore_lease ? 2 : 0);
  const callerBytes = caller === undefined ? 0 :
    (caller.user.length > 0 ? 1 + varintBytes(caller.user.length) + caller.user.length : 0) +
    (caller.revision !== 0n ? 1 + varint64Bytes(caller.revision) : 0) + (caller.token ? 2 : 0);
  const total = (id !== 0n ? 1 + varint64Bytes(id) : 0) + 1 + varintBytes(putBytes) + putBytes +
    (caller === undefined ? 0 : 2 + varintBytes(callerBytes) + callerBytes);
  const writer = new WireWriter(Buffer.allocUnsafe(total));
  if (id !== 0n) {
    writer.byte(tagId);
    writer.varint64(id);
  }
  writer.byte(tagPut);
  writer.varint(putBytes);
  if (put.key.length > 0) writeBytes(writer, 0x0a, put.key);
  if (put.value.length > 0) writeBytes(writer, 0x12, put.value);
  if (lease !== 0n) {
    writer.byte(0x18);
    writer.varint64(lease);
  }
  if (put.prev_kv) writeTrue(writer, 0x20);
  if (put.ignore_value) writeTrue(writer, 0x28);
  if (put.ignore_lease) writeTrue(writer, 0x30);
  if (caller !== undefined) {
    writer.varint(tagCaller);
    writer.varint(callerBytes);
    if (caller.user.length > 0) writeBytes(writer, 0x0a, caller.user);
    if (caller.revision !== 0n) {
      writer.byte(0x10);
      writer.varint64(caller.revision);
    }
    if (caller.token) writeTrue(writer, 0x18);
  }
  if (writer.offset !== total) throw new Error(`assertion failed: put proposal encoded to ${writer.offset} bytes, sized ${total}`);
  return writer.buffer;
}

function decodePut(reader: WireReader): PutRequest | undefined {
  let key: Buffer | undefined;
  let value: Buffer | undefined;
  let lease: number | bigint | undefined;
  const flags: (boolean | undefined)[] = [undefined, undefined, undefined];
  while (!reader.done) {
    const tag = reader.key();
    switch (tag) {
      case 0x0a:
        if (key !== undefined) return undefined;
        key = reader.bytes();
        break;
      case 0x12:
        if (value !== undefined) return undefined;
        value = reader.bytes();
        break;
      case 0x18:
        if (lease !== undefined) return undefined;
        lease = reader.varint64();
        break;
      case 0x20:
      case 0x28:
      case 0x30: {
        const position = (tag >> 3) - 4;
        if (flags[position] !== undefined) return undefined;
        flags[position] = reader.uint32() !== 0; // protobufjs reads a bool as a uint32
        break;
      }
      default:
        return undefined;
    }
  }
  return {
    key: key ?? Buffer.alloc(0),
    value: value ?? Buffer.alloc(0),
    lease: lease === undefined ? '0' : signed64Text(lease),
    prev_kv: flags[0] ?? false,
    ignore_value: flags[1] ?? false,
    ignore_lease: flags[2] ?? false,
  };
}

function decodeCaller(reader: WireReader): Caller | undefined {
  let user: string | undefined;
  let revision: number | bigint | undefined;
  let token: boolean | undefined;
  while (!reader.done) {
    const tag = reader.key();
    if (tag === 0x0a && user === undefined) {
      user = reader.string();
    } else if (tag === 0x10 && revision === undefined) {
      revision = reader.varint64();
    } else if (tag === 0x18 && token === undefined) {
      token = reader.uint32() !== 0;
    } else {
      return undefined;
    }
  }
  return { user: user ?? '', revision: String(revision ?? 0), token: token ?? false };
}

/** The Put proposal in `data`, shaped as protobufjs's `toObject` would; undefined for anything else (malformed bytes included). */
export function decodePutProposal(data: Buffer): InternalRequest | undefined {
  return readWhole(data, decodeProposal);
}

function decodeProposal(reader: WireReader): InternalRequest | undefined {
  let id: number | bigint | undefined;
  let put: PutRequest | undefined;
  let caller: Caller | undefined;
  while (!reader.done) {
    const tag = reader.key();
    if (tag === tagId && id === undefined) {
      id = reader.varint64();
    } else if (tag === tagPut && put === undefined) {
      put = decodePut(reader.nested());
      if (put === undefined) return undefined;
    } else if (tag === tagCaller && caller === undefined) {
      caller = decodeCaller(reader.nested());
      if (caller === undefined) return undefined;
    } else {
      return undefined;
    }
  }
  if (put === undefined) return undefined;
  return { id: String(id ?? 0), caller: caller ?? null, put, request: 'put' };
}

/**
 * A client's PutRequest (KV.Put's request message) by hand, shaped as protobufjs's `toObject` with
 * `decodeOptions` gives it (what grpc-js hands the handler): protobufjs's decode and `toObject`
 * were ~1% of a member's main thread under closed-loop puts. Undefined for anything unusual — an
 * unknown field, a field seen twice, a wrong wire type, bytes that do not decode — which then goes
 * the protobufjs way (its errors and its last-one-wins included). A unit test checks it against protobufjs.
 */
export function decodePutRequest(bytes: Buffer): PutRequest | undefined {
  return readWhole(bytes, decodePut);
}

interface Parsed {
  text: unknown;
  value: bigint | undefined;
}

/** The header's cluster and member ids are the same in every answer: the last one's parse is kept (a regex and a BigInt parse each). */
const clusterIds: Parsed = { text: undefined, value: undefined };
const memberIds: Parsed = { text: undefined, value: undefined };

function repeatedInteger64(last: Parsed, text: unknown): bigint | undefined {
  if (text !== last.text || last.value === undefined) {
    last.text = text;
    last.value = integer64(text, false);
  }
  return last.value;
}

/** A PutResponse without `prev_kv` (the usual answer), or undefined for anything else. */
export function encodePutResponse(response: PutResponse): Buffer | undefined {
  const header = response.header;
  if (header === undefined || header === null || (response.prev_kv !== undefined && response.prev_kv !== null)) return undefined;
  for (const name of Object.keys(response)) {
    if (name !== 'header' && name !== 'prev_kv') return undefined;
  }
  const values = [repeatedInteger64(clusterIds, header.cluster_id), repeatedInteger64(memberIds, header.member_id), integer64(header.revision, true), integer64(header.raft_term, false)];
  let headerBytes = 0;
  for (const value of values) {
    if (value === undefined) return undefined;
    if (value !== 0n) headerBytes += 1 + varint64Bytes(value);
  }
  const writer = new WireWriter(Buffer.allocUnsafe(2 + headerBytes));
  writer.byte(0x0a);
  writer.varint(headerBytes);
  values.forEach((value, position) => {
    if (value === undefined || value === 0n) return;
    writer.byte(fieldKey(position + 1, wireVarint));
    writer.varint64(value);
  });
  return writer.buffer;
}
