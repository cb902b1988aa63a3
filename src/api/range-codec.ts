/**
 * A Range's answer encoded by hand: protobufjs's reflective `fromObject` then `encode` took ~14 µs
 * for an answer with one 1 KiB value (a Long made for every 64-bit field, an object per message),
 * against ~2 µs here, on the member answering each of the bench's ranges. The same bytes as
 * protobufjs: every field the object holds (not null or undefined) is written, zero values and
 * empty bytes included, in field-number order; keys that are no field are ignored, as `fromObject`
 * ignores them. A value of another type than the answers use (Buffers for bytes, booleans, safe
 * integers or decimal strings for 64-bit integers, objects for messages, an array of them for
 * `kvs`) answers `undefined`, and protobufjs encodes it. A unit test checks both against protobufjs.
 *
 *   RangeResponse:  1 header ResponseHeader, 2 kvs KeyValue (repeated), 3 more bool, 4 count int64
 *   KeyValue:       1 key bytes, 2 create_revision int64, 3 mod_revision int64, 4 version int64,
 *                   5 value bytes, 6 lease int64 (mvccpb, kv.proto)
 *   ResponseHeader: 1 cluster_id uint64, 2 member_id uint64, 3 revision int64, 4 raft_term uint64
 *
 * The request (RangeRequest: 1 key, 2 range_end bytes; 3 limit, 4 revision, 10-13 min/max
 * mod/create revision int64; 5 sort_order, 6 sort_target enums; 7 serializable, 8 keys_only,
 * 9 count_only bools) is decoded by hand too (`decodeRangeRequest`).
 */
import type { RangeRequest } from './messages.js';
import { integer64, readWhole, signed64Text, varint64Bytes, varintBytes, type WireReader, WireWriter } from '../wire/protobuf.js';

/** A 64-bit field's value: a safe integer of 0 or more as it is, anything else as its two's complement. */
type Integer = number | bigint;

function integerOf(value: unknown, signed: boolean): Integer | undefined {
  if (typeof value === 'number' && value >= 0 && Number.isSafeInteger(value)) return value;
  return integer64(value, signed);
}

const integerBytes = (value: Integer): number => (typeof value === 'number' ? varintBytes(value) : varint64Bytes(value));

function writeInteger(writer: WireWriter, key: number, value: Integer): void {
  writer.byte(key);
  if (typeof value === 'number') writer.varint(value);
  else writer.varint64(value);
}

const isPresent = (value: unknown): boolean => value !== undefined && value !== null;

/** A message's fields, each undefined when absent; `invalid` when one cannot be encoded here. */
const invalid = Symbol('invalid');

/** The four integers of a ResponseHeader, or of a KeyValue's revisions and lease (absent ones undefined). */
type Integers = (Integer | undefined)[];

function integersOf(object: Record<string, unknown>, names: readonly string[], signed: readonly boolean[]): Integers | typeof invalid {
  const values: Integers = [];
  for (const [position, name] of names.entries()) {
    const value = object[name];
    if (!isPresent(value)) {
      values.push(undefined);
      continue;
    }
    const parsed = integerOf(value, signed[position] as boolean);
    if (parsed === undefined) return invalid;
    values.push(parsed);
  }
  return values;
}

const integersBytes = (values: Integers): number => values.reduce<number>((sum, value) => (value === undefined ? sum : sum + 1 + integerBytes(value)), 0);

const headerNames = ['cluster_id', 'member_id', 'revision', 'raft_term'] as const;
const headerSigned = [false, false, true, false] as const;
const headerKeys = [0x08, 0x10, 0x18, 0x20] as const;
/** The cluster and member ids are the same text in every answer: their parse is kept. */
let lastIds: { clusterId: unknown; memberId: unknown; values: [Integer, Integer] } | undefined;

function headerOf(header: Record<string, unknown>): Integers | typeof invalid {
  const { cluster_id: clusterId, member_id: memberId } = header;
  if (lastIds !== undefined && lastIds.clusterId === clusterId && lastIds.memberId === memberId) {
    const rest = integersOf(header, ['revision', 'raft_term'], [true, false]);
    return rest === invalid ? invalid : [...lastIds.values, ...rest];
  }
  const values = integersOf(header, headerNames, headerSigned);
  if (values !== invalid && values[0] !== undefined && values[1] !== undefined) lastIds = { clusterId, memberId, values: [values[0], values[1]] };
  return values;
}

const keyValueIntegerNames = ['create_revision', 'mod_revision', 'version', 'lease'] as const;
const keyValueSigned = [true, true, true, true] as const;

interface KeyValueFields {
  readonly key: Buffer | undefined;
  readonly value: Buffer | undefined;
  /** create_revision, mod_revision, version, lease. */
  readonly integers: Integers;
  /** The message's bytes (without its own key and length). */
  readonly bytes: number;
}

function bufferOrAbsent(value: unknown): Buffer | undefined | typeof invalid {
  if (!isPresent(value)) return undefined;
  return Buffer.isBuffer(value) ? value : invalid;
}

function keyValueOf(kv: unknown): KeyValueFields | undefined {
  if (typeof kv !== 'object' || kv === null || Array.isArray(kv)) return undefined;
  const object = kv as Record<string, unknown>;
  const key = bufferOrAbsent(object.key);
  const value = bufferOrAbsent(object.value);
  const integers = integersOf(object, keyValueIntegerNames, keyValueSigned);
  if (key === invalid || value === invalid || integers === invalid) return undefined;
  const bytes = (key === undefined ? 0 : 1 + varintBytes(key.length) + key.length) + (value === undefined ? 0 : 1 + varintBytes(value.length) + value.length) + integersBytes(integers);
  return { key, value, integers, bytes };
}

/** A RangeResponse's bytes, as protobufjs encodes them, or undefined when protobufjs must encode it. */
export function encodeRangeResponse(response: unknown): Buffer | undefined {
  if (typeof response !== 'object' || response === null) return undefined;
  const { header, kvs, more, count } = response as Record<string, unknown>;
  let headerIntegers: Integers | undefined;
  if (isPresent(header)) {
    if (typeof header !== 'object' || Array.isArray(header)) return undefined;
    const parsed = headerOf(header as Record<string, unknown>);
    if (parsed === invalid) return undefined;
    headerIntegers = parsed;
  }
  const keyValues: KeyValueFields[] = [];
  if (isPresent(kvs)) {
    if (!Array.isArray(kvs)) return undefined;
    for (const kv of kvs) {
      const fields = keyValueOf(kv);
      if (fields === undefined) return undefined;
      keyValues.push(fields);
    }
  }
  if (isPresent(more) && typeof more !== 'boolean') return undefined;
  let countValue: Integer | undefined;
  if (isPresent(count)) {
    countValue = integerOf(count, true);
    if (countValue === undefined) return undefined;
  }
  const headerBytes = headerIntegers === undefined ? 0 : integersBytes(headerIntegers);
  let total = headerIntegers === undefined ? 0 : 1 + varintBytes(headerBytes) + headerBytes;
  for (const kv of keyValues) total += 1 + varintBytes(kv.bytes) + kv.bytes;
  if (isPresent(more)) total += 2;
  if (countValue !== undefined) total += 1 + integerBytes(countValue);

  const writer = new WireWriter(Buffer.allocUnsafe(total));
  if (headerIntegers !== undefined) {
    writer.byte(0x0a);
    writer.varint(headerBytes);
    headerIntegers.forEach((value, position) => {
      if (value !== undefined) writeInteger(writer, headerKeys[position] as number, value);
    });
  }
  for (const kv of keyValues) {
    writer.byte(0x12);
    writer.varint(kv.bytes);
    if (kv.key !== undefined) {
      writer.byte(0x0a);
      writer.bytes(kv.key);
    }
    const [createRevision, modRevision, version, lease] = kv.integers;
    if (createRevision !== undefined) writeInteger(writer, 0x10, createRevision);
    if (modRevision !== undefined) writeInteger(writer, 0x18, modRevision);
    if (version !== undefined) writeInteger(writer, 0x20, version);
    if (kv.value !== undefined) {
      writer.byte(0x2a);
      writer.bytes(kv.value);
    }
    if (lease !== undefined) writeInteger(writer, 0x30, lease);
  }
  if (isPresent(more)) {
    writer.byte(0x18);
    writer.byte(more === true ? 1 : 0);
  }
  if (countValue !== undefined) writeInteger(writer, 0x20, countValue);
  if (writer.offset !== total) throw new Error(`assertion failed: range response encoded to ${writer.offset} bytes, sized ${total}`);
  return writer.buffer;
}

/** RangeRequest's int64 fields by field number (their keys: field << 3, varint). */
const int64Keys = new Map<number, number>([[0x18, 0], [0x20, 1], [0x50, 2], [0x58, 3], [0x60, 4], [0x68, 5]]);

/**
 * A client's RangeRequest by hand, shaped as protobufjs's `toObject` with `decodeOptions` gives it
 * (what grpc-js hands the handler): protobufjs's decode and `toObject` cost ~1 µs a request. Undefined
 * for anything unusual — an unknown field, a field seen twice, a wrong wire type, bytes that do not
 * decode — which then goes the protobufjs way (its errors and its last-one-wins included). A unit
 * test checks it against protobufjs.
 */
export function decodeRangeRequest(bytes: Buffer): RangeRequest | undefined {
  return readWhole(bytes, decodeRange);
}

function decodeRange(reader: WireReader): RangeRequest | undefined {
  let key: Buffer | undefined;
  let rangeEnd: Buffer | undefined;
  const integers: (number | bigint | undefined)[] = [undefined, undefined, undefined, undefined, undefined, undefined];
  const enums: (number | undefined)[] = [undefined, undefined];
  const flags: (boolean | undefined)[] = [undefined, undefined, undefined];
  while (!reader.done) {
    const tag = reader.key();
    if (tag === 0x0a) {
      if (key !== undefined) return undefined;
      key = reader.bytes();
    } else if (tag === 0x12) {
      if (rangeEnd !== undefined) return undefined;
      rangeEnd = reader.bytes();
    } else if (tag === 0x28 || tag === 0x30) {
      const position = (tag >> 3) - 5;
      if (enums[position] !== undefined) return undefined;
      enums[position] = reader.uint32() | 0; // protobufjs reads an enum as an int32
    } else if (tag === 0x38 || tag === 0x40 || tag === 0x48) {
      const position = (tag >> 3) - 7;
      if (flags[position] !== undefined) return undefined;
      flags[position] = reader.uint32() !== 0; // protobufjs reads a bool as a uint32
    } else {
      const position = int64Keys.get(tag);
      if (position === undefined || integers[position] !== undefined) return undefined;
      integers[position] = reader.varint64();
    }
  }
  const text = (value: number | bigint | undefined): string => (value === undefined ? '0' : signed64Text(value));
  return {
    key: key ?? Buffer.alloc(0),
    range_end: rangeEnd ?? Buffer.alloc(0),
    limit: text(integers[0]),
    revision: text(integers[1]),
    sort_order: enums[0] ?? 0,
    sort_target: enums[1] ?? 0,
    serializable: flags[0] ?? false,
    keys_only: flags[1] ?? false,
    count_only: flags[2] ?? false,
    min_mod_revision: text(integers[2]),
    max_mod_revision: text(integers[3]),
    min_create_revision: text(integers[4]),
    max_create_revision: text(integers[5]),
  };
}
