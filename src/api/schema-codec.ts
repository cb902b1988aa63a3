/**
 * Proposals other than a plain Put (put-codec.ts) — a Txn above all, which Kubernetes sends for
 * every write — encoded and decoded by a codec compiled once from the .proto reflection, without
 * protobufjs's `fromObject` and `toObject` (a Txn of one compare and two ops: ~33 µs and ~18 µs
 * there, a Long parsed from or printed to a string for every 64-bit field and a message object
 * built for every level). The wire format is protobuf's; decoding gives `toObject`'s shape under
 * `decodeOptions` (64-bit integers as decimal strings, enums as numbers, every absent field at its
 * default, messages null, the oneof's name beside its member).
 *
 * Only what it can do exactly as protobufjs does: the field types the proposals use (int64, uint64,
 * bool, string, bytes, enums, messages, repeated fields of those), values of the JavaScript types
 * gRPC decoding gives (Buffers, decimal strings or safe integers, booleans, enum numbers). Anything
 * else — an enum by name, a base64 string for bytes, an unknown or duplicated field, two members of
 * one oneof, a malformed varint — answers `undefined`, and the caller takes protobufjs's way.
 */
import protobuf from 'protobufjs';

type Kind = 'int64' | 'uint64' | 'bool' | 'string' | 'bytes' | 'enum' | 'message';

interface FieldPlan {
  readonly name: string;
  readonly id: number;
  readonly kind: Kind;
  readonly repeated: boolean;
  /** The oneof this field belongs to, if any. */
  readonly oneof: string | undefined;
  /** The field's key (tag and wire type), as it is written. */
  readonly key: number;
  message: MessagePlan | undefined;
}

interface MessagePlan {
  /** By field number, ascending (the order protobufjs writes in). */
  readonly fields: FieldPlan[];
  readonly byId: Map<number, FieldPlan>;
  /** Repeated fields first, then the others outside oneofs, each by field number: `toObject`'s key order. */
  readonly repeated: FieldPlan[];
  readonly plain: FieldPlan[];
}

const wireVarint = 0;
const wireBytes = 2;
const decimalInteger = /^-?\d{1,20}$/;
const twoTo63 = 2n ** 63n;
const twoTo64 = 2n ** 64n;
/** Nesting allowed when encoding or decoding (a Txn inside a Txn...); deeper goes to protobufjs. */
const depthMax = 32;

const scalarKinds: Record<string, Kind | undefined> = { int64: 'int64', uint64: 'uint64', bool: 'bool', string: 'string', bytes: 'bytes' };

/** Plans for `type` and every message it holds; undefined when any of them uses what this codec does not do. */
export function compileCodec(type: protobuf.Type): MessagePlan | undefined {
  const plans = new Map<string, MessagePlan>();
  const compile = (message: protobuf.Type): MessagePlan | undefined => {
    const known = plans.get(message.fullName);
    if (known !== undefined) return known;
    const fields: FieldPlan[] = [];
    const plan: MessagePlan = { fields, byId: new Map(), repeated: [], plain: [] };
    plans.set(message.fullName, plan);
    for (const field of [...message.fieldsArray].sort((a, b) => a.id - b.id)) {
      field.resolve();
      if (field.map || field.id > 0x0fffffff) return undefined;
      const resolved = field.resolvedType;
      const kind: Kind | undefined = resolved instanceof protobuf.Enum ? 'enum' : resolved instanceof protobuf.Type ? 'message' : scalarKinds[field.type];
      if (kind === undefined) return undefined;
      // Repeated scalars could come packed; the proposals have repeated strings and messages only.
      if (field.repeated && kind !== 'string' && kind !== 'message') return undefined;
      const wire = kind === 'string' || kind === 'bytes' || kind === 'message' ? wireBytes : wireVarint;
      const fieldPlan: FieldPlan = { name: field.name, id: field.id, kind, repeated: field.repeated, oneof: field.partOf?.name, key: (field.id << 3) | wire, message: undefined };
      if (resolved instanceof protobuf.Type) {
        const inner = compile(resolved);
        if (inner === undefined) return undefined;
        fieldPlan.message = inner;
      }
      fields.push(fieldPlan);
      plan.byId.set(field.id, fieldPlan);
      if (field.repeated) plan.repeated.push(fieldPlan);
      else if (fieldPlan.oneof === undefined) plan.plain.push(fieldPlan);
    }
    return plan;
  };
  return compile(type);
}

/** A 64-bit integer as two's complement, from a decimal string or a safe integer; undefined otherwise. */
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

/** Encoding happens in this buffer (one message at a time: nothing here awaits), then is copied out at its size. */
let scratch: Buffer = Buffer.allocUnsafe(64 * 1024);
/** A scratch buffer grown past this for a large message is not kept. */
const scratchBytesMax = 1024 * 1024;

class Writer {
  buffer: Buffer = scratch;
  offset = 0;

  ensure(bytes: number): void {
    if (this.offset + bytes <= this.buffer.length) return;
    const grown = Buffer.allocUnsafe(Math.max(this.buffer.length * 2, this.offset + bytes));
    this.buffer.copy(grown, 0, 0, this.offset);
    this.buffer = grown;
  }

  varint(value: number): void {
    this.ensure(5);
    while (value > 0x7f) {
      this.buffer[this.offset++] = (value & 0x7f) | 0x80;
      value >>>= 7;
    }
    this.buffer[this.offset++] = value;
  }

  wide(value: bigint): void {
    if (value < 0x80000000n) {
      this.varint(Number(value));
      return;
    }
    this.ensure(10);
    while (value > 0x7fn) {
      this.buffer[this.offset++] = Number(value & 0x7fn) | 0x80;
      value >>= 7n;
    }
    this.buffer[this.offset++] = Number(value);
  }

  bytes(value: Buffer): void {
    this.varint(value.length);
    this.ensure(value.length);
    this.offset += value.copy(this.buffer, this.offset);
  }

  string(value: string): void {
    const length = Buffer.byteLength(value, 'utf8');
    this.varint(length);
    this.ensure(length);
    this.offset += this.buffer.write(value, this.offset, length, 'utf8');
  }
}

/** Room kept for a nested message's length, moved down once the length is known. */
const lengthRoomBytes = 5;

function isMessageObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value) && !Buffer.isBuffer(value);
}

/** Writes one value of `field`; false when the value is not one this codec takes. */
function writeValue(writer: Writer, field: FieldPlan, value: unknown, depth: number): boolean {
  switch (field.kind) {
    case 'int64':
    case 'uint64': {
      const integer = integer64(value, field.kind === 'int64');
      if (integer === undefined) return false;
      writer.varint(field.key);
      writer.wide(integer);
      return true;
    }
    case 'bool':
      if (typeof value !== 'boolean') return false;
      writer.varint(field.key);
      writer.varint(value ? 1 : 0);
      return true;
    case 'enum':
      if (typeof value !== 'number' || !Number.isInteger(value) || value < -0x80000000 || value > 0x7fffffff) return false;
      writer.varint(field.key);
      // int32: a negative value is written as its 64-bit two's complement, as protobufjs does.
      writer.wide(BigInt.asUintN(64, BigInt(value)));
      return true;
    case 'string':
      if (typeof value !== 'string') return false;
      writer.varint(field.key);
      writer.string(value);
      return true;
    case 'bytes':
      if (!Buffer.isBuffer(value)) return false;
      writer.varint(field.key);
      writer.bytes(value);
      return true;
    case 'message': {
      if (!isMessageObject(value) || field.message === undefined) return false;
      writer.varint(field.key);
      writer.ensure(lengthRoomBytes);
      const lengthAt = writer.offset;
      writer.offset += lengthRoomBytes;
      if (!writeMessage(writer, field.message, value, depth + 1)) return false;
      const length = writer.offset - lengthAt - lengthRoomBytes;
      let lengthBytes = 1;
      for (let rest = length >>> 7; rest > 0; rest >>>= 7) lengthBytes += 1;
      const buffer = writer.buffer;
      buffer.copyWithin(lengthAt + lengthBytes, lengthAt + lengthRoomBytes, writer.offset);
      let position = lengthAt;
      let rest = length;
      while (rest > 0x7f) {
        buffer[position++] = (rest & 0x7f) | 0x80;
        rest >>>= 7;
      }
      buffer[position] = rest;
      writer.offset = lengthAt + lengthBytes + length;
      return true;
    }
  }
}

function isDefault(field: FieldPlan, value: unknown): boolean {
  switch (field.kind) {
    case 'int64':
    case 'uint64':
      return value === 0 || value === '0';
    case 'bool':
      return value === false;
    case 'enum':
      return value === 0;
    case 'string':
      return value === '';
    case 'bytes':
      return Buffer.isBuffer(value) && value.length === 0;
    case 'message':
      return false;
  }
}

function writeMessage(writer: Writer, plan: MessagePlan, object: Record<string, unknown>, depth: number): boolean {
  if (depth > depthMax) return false;
  let oneofsSet: string[] | undefined;
  for (const field of plan.fields) {
    const value = object[field.name];
    if (value === undefined || value === null) continue;
    if (field.repeated) {
      if (!Array.isArray(value)) return false;
      for (const element of value as unknown[]) {
        if (!writeValue(writer, field, element, depth)) return false;
      }
      continue;
    }
    if (field.oneof !== undefined) {
      // A oneof member is written even at its default value: being set is what it says.
      oneofsSet ??= [];
      if (oneofsSet.includes(field.oneof)) return false;
      oneofsSet.push(field.oneof);
    } else if (isDefault(field, value)) {
      continue;
    }
    if (!writeValue(writer, field, value, depth)) return false;
  }
  return true;
}

/** `object` encoded as a message of `plan`, or undefined when it holds anything this codec leaves to protobufjs. */
export function encodeWithPlan(plan: MessagePlan, object: object): Buffer | undefined {
  const writer = new Writer();
  const written = writeMessage(writer, plan, object as Record<string, unknown>, 0);
  if (writer.buffer.length <= scratchBytesMax) scratch = writer.buffer;
  return written ? Buffer.from(writer.buffer.subarray(0, writer.offset)) : undefined;
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

  /** A varint as a number below 2^49, or as a BigInt (64 bits) beyond; undefined when malformed. */
  varint(): number | bigint | undefined {
    let value = 0;
    let scale = 1;
    for (let read = 0; read < 7; read++) {
      if (this.offset >= this.end) return undefined;
      const byte = this.buffer[this.offset++] as number;
      value += (byte & 0x7f) * scale;
      if (byte < 0x80) return value;
      scale *= 128;
    }
    let wide = BigInt(value);
    for (let shift = 49n; shift < 70n; shift += 7n) {
      if (this.offset >= this.end) return undefined;
      const byte = this.buffer[this.offset++] as number;
      wide |= BigInt(byte & 0x7f) << shift;
      if (byte < 0x80) return BigInt.asUintN(64, wide);
    }
    return undefined;
  }

  /** A key or a length: a varint below 2^31. */
  small(): number | undefined {
    const value = this.varint();
    return typeof value === 'number' && value <= 0x7fffffff ? value : undefined;
  }
}

/** The low 32 bits of a varint, as protobufjs reads bools and enums. */
function low32(value: number | bigint): number {
  return typeof value === 'number' ? value % 0x100000000 : Number(BigInt.asUintN(32, value));
}

function defaultOf(field: FieldPlan): unknown {
  switch (field.kind) {
    case 'int64':
    case 'uint64':
      return '0';
    case 'bool':
      return false;
    case 'enum':
      return 0;
    case 'string':
      return '';
    case 'bytes':
      return Buffer.alloc(0);
    case 'message':
      return null;
  }
}

const notDecoded = Symbol('not decoded');

function readValue(reader: Reader, field: FieldPlan, depth: number): unknown {
  if ((field.key & 7) === wireVarint) {
    const value = reader.varint();
    if (value === undefined) return notDecoded;
    switch (field.kind) {
      case 'uint64':
        return String(value);
      case 'int64':
        return typeof value === 'number' ? String(value) : (value >= twoTo63 ? value - twoTo64 : value).toString();
      case 'bool':
        return low32(value) !== 0;
      case 'enum':
        return low32(value) | 0;
      default:
        return notDecoded;
    }
  }
  const length = reader.small();
  if (length === undefined || reader.offset + length > reader.end) return notDecoded;
  const start = reader.offset;
  reader.offset += length;
  switch (field.kind) {
    case 'bytes':
      return reader.buffer.subarray(start, start + length);
    case 'string':
      return reader.buffer.toString('utf8', start, start + length);
    case 'message':
      if (field.message === undefined) return notDecoded;
      return readMessage(new Reader(reader.buffer, start, start + length), field.message, depth + 1) ?? notDecoded;
    default:
      return notDecoded;
  }
}

function readMessage(reader: Reader, plan: MessagePlan, depth: number): Record<string, unknown> | undefined {
  if (depth > depthMax) return undefined;
  const object: Record<string, unknown> = {};
  for (const field of plan.repeated) object[field.name] = [];
  for (const field of plan.plain) object[field.name] = defaultOf(field);
  let seen: FieldPlan[] | undefined;
  while (reader.offset < reader.end) {
    const key = reader.small();
    if (key === undefined) return undefined;
    const field = plan.byId.get(key >>> 3);
    if (field === undefined || field.key !== key) return undefined;
    const value = readValue(reader, field, depth);
    if (value === notDecoded) return undefined;
    if (field.repeated) {
      (object[field.name] as unknown[]).push(value);
      continue;
    }
    seen ??= [];
    // A field seen twice, or two members of one oneof: protobufjs's own rules decide those.
    if (seen.some((other) => other === field || (field.oneof !== undefined && other.oneof === field.oneof))) return undefined;
    seen.push(field);
    object[field.name] = value;
    if (field.oneof !== undefined) object[field.oneof] = field.name;
  }
  return object;
}

/** `data` decoded as a message of `plan` in `toObject`'s shape, or undefined when protobufjs should decide. */
export function decodeWithPlan(plan: MessagePlan, data: Buffer): Record<string, unknown> | undefined {
  return readMessage(new Reader(data, 0, data.length), plan, 0);
}
