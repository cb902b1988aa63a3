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
import { integer64, readWhole, signed64Text, varintBytes, WireFormatError, WireReader, WireWriter, wireBytes, wireVarint } from '../wire/protobuf.js';

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

/** Nesting allowed when encoding or decoding (a Txn inside a Txn...); deeper goes to protobufjs. */
const depthMax = 32;

/**
 * Bounds on what a proposal read from the Raft log may hold, checked while it is decoded and, before
 * protobufjs decodes one, by walking its bytes (`checkProposalBounds`), so that a crafted entry (a
 * peer's, or the product of a bug) is refused before its objects are made: past them decoding
 * throws ProposalBoundsError and every member skips the entry (server/committed-proposal.ts).
 * Each is far above what the API lets into a proposal (validate.ts: 1,024 compares and ops over at
 * most 16 nested Txns; 2 messages an op, about 34 levels), and far below what the request size
 * alone allows (1.5 MiB of 2-byte messages: 750,000; nesting as deep as the stack goes).
 */
export const proposalBounds = {
  /** Messages nested in one another, the proposal itself at 0. */
  depthMax: 64,
  /** Messages and repeated values in one proposal, every level counted. */
  itemsMax: 16_384,
} as const;

/** A proposal past `proposalBounds`: refused outright, never left to protobufjs. */
export class ProposalBoundsError extends RangeError {
  override readonly name = 'ProposalBoundsError';
}

/** What a proposal being decoded may still hold. */
interface ItemBudget {
  left: number;
}

function takeItem(budget: ItemBudget): void {
  if (--budget.left < 0) throw new ProposalBoundsError(`proposal: more than ${proposalBounds.itemsMax} messages and repeated values`);
}

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

/** Encoding happens in this buffer (one message at a time: nothing here awaits), then is copied out at its size. */
let scratch: Buffer = Buffer.allocUnsafe(64 * 1024);
/** A scratch buffer grown past this for a large message is not kept. */
const scratchBytesMax = 1024 * 1024;

/** Room kept for a nested message's length, moved down once the length is known. */
const lengthRoomBytes = 5;

function isMessageObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value) && !Buffer.isBuffer(value);
}

/** A key and a varint: 5 bytes at most for a key (field numbers below 2^28), 10 for a 64-bit value. */
const keyAndVarintBytesMax = 15;

/** Writes one value of `field`; false when the value is not one this codec takes. */
function writeValue(writer: WireWriter, field: FieldPlan, value: unknown, depth: number): boolean {
  switch (field.kind) {
    case 'int64':
    case 'uint64': {
      const integer = integer64(value, field.kind === 'int64');
      if (integer === undefined) return false;
      writer.ensure(keyAndVarintBytesMax);
      writer.varint(field.key);
      writer.varint64(integer);
      return true;
    }
    case 'bool':
      if (typeof value !== 'boolean') return false;
      writer.ensure(keyAndVarintBytesMax);
      writer.varint(field.key);
      writer.byte(value ? 1 : 0);
      return true;
    case 'enum':
      if (typeof value !== 'number' || !Number.isInteger(value) || value < -0x80000000 || value > 0x7fffffff) return false;
      writer.ensure(keyAndVarintBytesMax);
      writer.varint(field.key);
      // int32: a negative value is written as its 64-bit two's complement, as protobufjs does.
      writer.varint64(BigInt.asUintN(64, BigInt(value)));
      return true;
    case 'string': {
      if (typeof value !== 'string') return false;
      const length = Buffer.byteLength(value, 'utf8');
      writer.ensure(keyAndVarintBytesMax + length);
      writer.varint(field.key);
      writer.string(value, length);
      return true;
    }
    case 'bytes':
      if (!Buffer.isBuffer(value)) return false;
      writer.ensure(keyAndVarintBytesMax + value.length);
      writer.varint(field.key);
      writer.bytes(value);
      return true;
    case 'message': {
      if (!isMessageObject(value) || field.message === undefined) return false;
      writer.ensure(keyAndVarintBytesMax);
      writer.varint(field.key);
      const lengthAt = writer.offset;
      writer.offset += lengthRoomBytes;
      if (!writeMessage(writer, field.message, value, depth + 1)) return false;
      const length = writer.offset - lengthAt - lengthRoomBytes;
      const lengthBytes = varintBytes(length);
      writer.buffer.copyWithin(lengthAt + lengthBytes, lengthAt + lengthRoomBytes, writer.offset);
      writer.offset = lengthAt;
      writer.varint(length);
      writer.offset += length;
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

function writeMessage(writer: WireWriter, plan: MessagePlan, object: Record<string, unknown>, depth: number): boolean {
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
  const writer = new WireWriter(scratch);
  const written = writeMessage(writer, plan, object as Record<string, unknown>, 0);
  if (writer.buffer.length <= scratchBytesMax) scratch = writer.buffer;
  return written ? Buffer.from(writer.buffer.subarray(0, writer.offset)) : undefined;
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

function readValue(reader: WireReader, field: FieldPlan, depth: number, budget: ItemBudget): unknown {
  switch (field.kind) {
    case 'uint64':
      return String(reader.varint64());
    case 'int64':
      return signed64Text(reader.varint64());
    case 'bool':
      return reader.uint32() !== 0;
    case 'enum':
      return reader.uint32() | 0;
    case 'bytes':
      return reader.bytes();
    case 'string':
      return reader.string();
    case 'message':
      if (field.message === undefined) return notDecoded;
      takeItem(budget);
      return readMessage(reader.nested(), field.message, depth + 1, budget) ?? notDecoded;
  }
}

function readMessage(reader: WireReader, plan: MessagePlan, depth: number, budget: ItemBudget): Record<string, unknown> | undefined {
  if (depth > depthMax) return undefined;
  const object: Record<string, unknown> = {};
  for (const field of plan.repeated) object[field.name] = [];
  for (const field of plan.plain) object[field.name] = defaultOf(field);
  let seen: FieldPlan[] | undefined;
  while (!reader.done) {
    const key = reader.key();
    const field = plan.byId.get(key >>> 3);
    if (field === undefined || field.key !== key) return undefined;
    const value = readValue(reader, field, depth, budget);
    if (value === notDecoded) return undefined;
    if (field.repeated) {
      if (field.kind !== 'message') takeItem(budget);
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

/**
 * `data` decoded as a message of `plan` in `toObject`'s shape, or undefined when protobufjs should
 * decide. Throws ProposalBoundsError past `proposalBounds.itemsMax`.
 */
export function decodeWithPlan(plan: MessagePlan, data: Buffer): Record<string, unknown> | undefined {
  return readWhole(data, (reader) => readMessage(reader, plan, 0, { left: proposalBounds.itemsMax }));
}

/**
 * Walks `data` as a message of `plan` without making anything of it, and throws ProposalBoundsError
 * when it holds more than `proposalBounds` allows, or anything this walk cannot read exactly as
 * protobufjs would (a known field of another wire type: protobufjs reads a message field as one
 * whatever its wire type, so nesting could hide there; a malformed varint or length; a group).
 * Run before protobufjs decodes a proposal, which bounds neither its nesting (recursion: a stack
 * overflow, at a depth that differs between processes) nor its repeated fields.
 */
export function checkProposalBounds(plan: MessagePlan, data: Buffer): void {
  try {
    walkMessage(new WireReader(data, 0, data.length), plan, 0, { left: proposalBounds.itemsMax });
  } catch (error) {
    if (error instanceof WireFormatError) throw new ProposalBoundsError(`proposal: ${error.message}`);
    throw error;
  }
}

function walkMessage(reader: WireReader, plan: MessagePlan, depth: number, budget: ItemBudget): void {
  if (depth > proposalBounds.depthMax) throw new ProposalBoundsError(`proposal: messages nested more than ${proposalBounds.depthMax} deep`);
  while (!reader.done) {
    const key = reader.key();
    const field = plan.byId.get(key >>> 3);
    if (field === undefined) {
      reader.skip(key & 7);
      continue;
    }
    if (field.key !== key) throw new WireFormatError(`field ${field.id} of wire type ${key & 7}`);
    if (field.kind === 'message' && field.message !== undefined) {
      takeItem(budget);
      walkMessage(reader.nested(), field.message, depth + 1, budget);
      continue;
    }
    if (field.repeated) takeItem(budget);
    // Read as protobufjs reads the field's type, so the walk steps where it steps (a bool of 6 to
    // 9 bytes, which protobufjs reads otherwise, is refused by uint32).
    if (field.kind === 'bool' || field.kind === 'enum') reader.uint32();
    else reader.skip(key & 7);
  }
}
