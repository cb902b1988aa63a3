/**
 * etcd's JSON encoding of its messages, as its gateway (grpc-gateway with jsonpb, OrigName) speaks
 * it: field names as in the .proto (camelCase names accepted on input), bytes as standard base64,
 * 64-bit integers as strings, enums by name, default values omitted. Requests decode into exactly
 * the shape gRPC hands to the handlers, so both transports reach the same code. Errors read as
 * etcd's (Go's) do, because scripts match on them.
 */
import protobuf from 'protobufjs';
import path from 'node:path';
import { decodeOptions, protoDirectory } from './proto.js';
import { RampartError } from '../errors.js';
import { txnDepthMax } from '../server/validate.js';

const root = new protobuf.Root();
root.resolvePath = (_origin: string, target: string): string => path.join(protoDirectory, target);
root.loadSync(['rpc.proto', 'v3lock.proto', 'v3election.proto'], { keepCase: true });
root.resolveAll();

/** A request body that cannot become the message: the gateway answers 400 with this text. */
export class JsonRequestError extends Error {}

const int64Types = new Set(['int64', 'uint64', 'sint64', 'fixed64', 'sfixed64']);
const numberTypes = new Set(['int32', 'uint32', 'sint32', 'fixed32', 'sfixed32', 'double', 'float']);
const notBase64 = /[^A-Za-z0-9+/]/;
/**
 * Messages nested in one request, at most: the deepest Txn allowed (txnDepthMax levels, each a
 * TxnRequest inside a RequestOp, then an op and its request) fits. Only a Txn nests (RequestOp holds
 * a TxnRequest), so a deeper request is a Txn past txnDepthMax, refused with etcd's error as the
 * gRPC port refuses it from its wire bytes. Before, 40,000 levels in a 1.2 MB body overflowed the
 * stack of the recursive conversion below: `etcdserver: internal error`.
 */
const messageDepthMax = 2 * txnDepthMax + 2;

export function messageType(name: string): protobuf.Type {
  return root.lookupType(name);
}

/** The method's request and response types (`etcdserverpb.KV`, `Range`). */
export function methodTypes(service: string, method: string): { request: protobuf.Type; response: protobuf.Type } {
  const found = root.lookupService(service).methods[method];
  if (found === undefined || found.resolvedRequestType === null || found.resolvedResponseType === null) throw new Error(`unknown method ${service}/${method}`);
  return { request: found.resolvedRequestType, response: found.resolvedResponseType };
}

/** Go's standard base64 (padding required): the error names the first byte it could not use. */
function decodeBase64(text: string): Buffer {
  const padding = text.length % 4 === 0 ? (/={1,2}$/.exec(text)?.[0].length ?? 0) : 0;
  // One native scan: a loop testing each character took ~250 ms for a 3 MB value, on the event loop.
  const illegal = notBase64.exec(padding === 0 ? text : text.slice(0, text.length - padding));
  if (illegal !== null) throw new JsonRequestError(`illegal base64 data at input byte ${illegal.index}`);
  // An incomplete last group: Go reports the byte where that group starts.
  if (text.length % 4 !== 0) throw new JsonRequestError(`illegal base64 data at input byte ${text.length - (text.length % 4)}`);
  return Buffer.from(text, 'base64');
}

function goType(field: protobuf.Field): string {
  if (field.repeated && field.resolvedType === null && field.type === 'bytes') return '[][]uint8';
  if (field.type === 'bytes') return '[]uint8';
  if (field.type === 'bool') return 'bool';
  if (field.type === 'string') return 'string';
  return field.type;
}

function jsonKind(value: unknown): string {
  if (value === null) return 'null';
  if (Array.isArray(value)) return 'array';
  return typeof value === 'object' ? 'object' : typeof value;
}

function scalar(field: protobuf.Field, value: unknown, depth: number): unknown {
  if (field.resolvedType instanceof protobuf.Enum) {
    if (typeof value === 'number') return value;
    if (typeof value === 'string' && field.resolvedType.values[value] !== undefined) return field.resolvedType.values[value];
    throw new JsonRequestError(`unknown value ${JSON.stringify(value)} for enum ${field.resolvedType.fullName.replace(/^\./, '').replace(/\.([A-Za-z]+)$/, '_$1')}`);
  }
  if (field.resolvedType instanceof protobuf.Type) return normalize(field.resolvedType, value, depth + 1);
  const mismatch = (): never => {
    throw new JsonRequestError(`json: cannot unmarshal ${jsonKind(value) === 'number' ? `number${typeof value === 'number' && !Number.isInteger(value) && (int64Types.has(field.type) || numberTypes.has(field.type)) ? ` ${value}` : ''}` : jsonKind(value)} into Go value of type ${goType(field)}`);
  };
  if (field.type === 'bytes') {
    if (typeof value !== 'string') return mismatch();
    return decodeBase64(value);
  }
  if (field.type === 'string') return typeof value === 'string' ? value : mismatch();
  if (field.type === 'bool') return typeof value === 'boolean' ? value : mismatch();
  if (int64Types.has(field.type)) {
    // Out of the type's range, Go refuses the number; protobufjs would wrap it silently (a
    // revision of 2^64-1 read as -1, the current one; 1e300 as garbage).
    const outOfRange = (text: string): never => {
      throw new JsonRequestError(`json: cannot unmarshal number ${text} into Go value of type ${field.type}`);
    };
    const [lowest, highest] = int64Range(field.type);
    if (typeof value === 'number' && Number.isInteger(value)) {
      const number = BigInt(value);
      if (number < lowest || number > highest) return outOfRange(String(value).replace('e+', 'e'));
      return number.toString();
    }
    if (typeof value === 'string' && /^-?\d+$/.test(value)) {
      const number = BigInt(value);
      if (number < lowest || number > highest) return outOfRange(value);
      return value;
    }
    if (typeof value === 'string') throw new JsonRequestError(`invalid character '${value[0] ?? '"'}' looking for beginning of value`);
    return mismatch();
  }
  if (numberTypes.has(field.type)) {
    if (typeof value === 'number') return value;
    if (typeof value === 'string' && value !== '' && Number.isFinite(Number(value))) return Number(value);
    return mismatch();
  }
  return value;
}

/** The values a 64-bit integer type holds. */
function int64Range(type: string): readonly [bigint, bigint] {
  return type === 'uint64' || type === 'fixed64' ? [0n, 2n ** 64n - 1n] : [-(2n ** 63n), 2n ** 63n - 1n];
}

/** JSON as etcd's gateway accepts it → the object protobufjs' fromObject takes (names, bytes checked). */
function normalize(type: protobuf.Type, json: unknown, depth = 1): Record<string, unknown> {
  if (depth > messageDepthMax) throw new RampartError('TooManyOps');
  if (json === null || typeof json !== 'object' || Array.isArray(json)) {
    throw new JsonRequestError(`json: cannot unmarshal ${jsonKind(json)} into Go value of type map[string]json.RawMessage`);
  }
  const input = json as Record<string, unknown>;
  const output: Record<string, unknown> = {};
  for (const field of type.fieldsArray) {
    const value = input[field.name] ?? input[camelCase(field.name)];
    if (value === undefined || value === null) continue;
    if (field.repeated) {
      if (!Array.isArray(value)) throw new JsonRequestError(`json: cannot unmarshal ${jsonKind(value)} into Go value of type []${goType(field)}`);
      output[field.name] = value.map((entry) => scalar(field, entry, depth));
    } else {
      output[field.name] = scalar(field, value, depth);
    }
  }
  return output;
}

function camelCase(name: string): string {
  return name.replace(/_([a-z])/g, (_match, letter: string) => letter.toUpperCase());
}

/** A parsed JSON request → the message in the shape the handlers take (as from gRPC). */
export function decodeRequest(type: protobuf.Type, json: unknown): unknown {
  const normalized = normalize(type, json);
  return type.toObject(type.fromObject(normalized), decodeOptions);
}

/** A handler's response (the shape gRPC encodes) → etcd's JSON for it. */
export function encodeResponse(type: protobuf.Type, message: unknown): Record<string, unknown> {
  const output: Record<string, unknown> = {};
  if (message === null || typeof message !== 'object') return output;
  const input = message as Record<string, unknown>;
  for (const field of type.fieldsArray) {
    const value = input[field.name];
    if (value === undefined || value === null) continue;
    const inOneof = field.partOf !== null;
    if (field.repeated) {
      if (!Array.isArray(value) || value.length === 0) continue;
      output[field.name] = value.map((entry: unknown) => encodeValue(field, entry));
      continue;
    }
    if (!inOneof && !(field.resolvedType instanceof protobuf.Type) && isDefault(value)) continue;
    const encoded = encodeValue(field, value);
    if (!inOneof && field.type === 'bytes' && encoded === '') continue;
    output[field.name] = encoded;
  }
  return output;
}

function isDefault(value: unknown): boolean {
  return value === 0 || value === '0' || value === false || value === '' || value === undefined;
}

function encodeValue(field: protobuf.Field, value: unknown): unknown {
  if (field.resolvedType instanceof protobuf.Type) return encodeResponse(field.resolvedType, value);
  if (field.resolvedType instanceof protobuf.Enum) {
    const number = typeof value === 'number' ? value : Number(value);
    return field.resolvedType.valuesById[number] ?? number;
  }
  if (field.type === 'bytes') {
    if (typeof value === 'string') return Buffer.from(value).toString('base64');
    return value instanceof Uint8Array ? Buffer.from(value.buffer, value.byteOffset, value.byteLength).toString('base64') : '';
  }
  if (int64Types.has(field.type)) return String(value);
  return value;
}

/**
 * Finds the end of the first JSON value in `text` from `start` (after whitespace). Returns the
 * index after it, or -1 when the text ends inside the value (more may be coming on a stream).
 */
export function jsonValueEnd(text: string, start: number): number {
  let index = start;
  while (index < text.length && /\s/.test(text[index] as string)) index += 1;
  if (index >= text.length) return -1;
  const first = text[index];
  if (first !== '{' && first !== '[' && first !== '"') {
    // A bare literal or number: it ends at the next delimiter.
    const match = /^[^\s,\]}{[]+/.exec(text.slice(index));
    const end = index + (match?.[0].length ?? 1);
    return end >= text.length ? -1 : end;
  }
  let depth = 0;
  let inString = false;
  for (; index < text.length; index += 1) {
    const char = text[index];
    if (inString) {
      if (char === '\\') index += 1;
      else if (char === '"') {
        inString = false;
        if (depth === 0) return index + 1;
      }
      continue;
    }
    if (char === '"') inString = true;
    else if (char === '{' || char === '[') depth += 1;
    else if (char === '}' || char === ']') {
      depth -= 1;
      if (depth === 0) return index + 1;
    }
  }
  return -1;
}

/** Parses one JSON value; the error reads as Go's encoding/json would. */
export function parseJson(text: string): unknown {
  try {
    return JSON.parse(text) as unknown;
  } catch (error) {
    const position = /position (\d+)/.exec(error instanceof Error ? error.message : '');
    const at = position?.[1] === undefined ? -1 : Number(position[1]);
    if (at < 0 || at >= text.length) throw new JsonRequestError('unexpected EOF');
    throw new JsonRequestError(`invalid character '${text[at] ?? ''}' looking for beginning of value`);
  }
}
