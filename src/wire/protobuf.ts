/**
 * The protobuf wire format's primitives for the hand-written codecs (server/peer-codec.ts: Raft
 * batches on the peer stream; api/put-codec.ts and api/schema-codec.ts: proposals in the Raft log):
 * varints, field keys, length-delimited fields and skipping unknown fields, read and written in place
 * in a Buffer. Below every layer (it imports nothing), so the server and the API use the same one.
 *
 * Owns: bytes to numbers and back, and the bounds of every read. Never: what a field means, nor
 * what a codec does with a refusal (the peer codec refuses the batch, the proposal codecs leave the
 * bytes to protobufjs).
 *
 * Reading is strict where protobufjs (the reference every codec is tested against) is lax, so that
 * whatever is read means what protobufjs reads, or is refused with a WireFormatError:
 * - nothing is read at or past `end`, and a length is checked against what is left before anything
 *   is made of it (a length of 2^31 in a 10-byte message is refused, never allocated);
 * - a varint runs at most 10 bytes, and a key or a length at most 5 (protobufjs reads a 6 to 9
 *   byte one wrongly: it steps over 10 bytes whatever they hold); a key names a field from 1 up;
 * - a 32-bit value (bool, enum) is protobufjs's: the low 32 bits, from at most 5 bytes or exactly 10
 *   (a negative int32 is written as 10), never 6 to 9;
 * - a 64-bit value is exact: as a number below 2^53, as a BigInt beyond, or refused where the
 *   codec keeps numbers (`varint53`); bits past the 64th are dropped, as protobufjs drops them;
 * - groups (wire types 3, 4) and wire types 6 and 7 are refused.
 */

export const wireVarint = 0;
export const wireFixed64 = 1;
export const wireBytes = 2;
export const wireFixed32 = 5;

/** Malformed protobuf: the codec refuses the input it was reading (see each codec for what that means). */
export class WireFormatError extends RangeError {
  override readonly name = 'WireFormatError';
}

/** A field's key as written: its number and wire type in one varint. */
export const fieldKey = (fieldNumber: number, wireType: number): number => (fieldNumber << 3) | wireType;

/** Bytes of `value` (a safe integer, 0 or more) as a varint. */
export function varintBytes(value: number): number {
  if (value >>> 0 === value) {
    let bytes = 1;
    for (let rest = value >>> 7; rest > 0; rest >>>= 7) bytes += 1;
    return bytes;
  }
  let bytes = 1;
  while (value >= 0x80) {
    value = Math.floor(value / 0x80);
    bytes += 1;
  }
  return bytes;
}

/** Bytes of `value` (0 to 2^64 - 1) as a varint. */
export function varint64Bytes(value: bigint): number {
  if (value < 0x80000000n) return varintBytes(Number(value));
  // From the high 32 bits' length: no BigInt made per 7 bits (ids and member ids are ~64-bit).
  if (value >= twoTo64) throw new Error(`assertion failed: a 64-bit varint of ${value}`);
  const high = Number(value >> 32n);
  return Math.ceil((high === 0 ? 32 : 64 - Math.clz32(high)) / 7);
}

const twoTo63 = 2n ** 63n;
const twoTo64 = 2n ** 64n;
const decimalInteger = /^-?\d{1,20}$/;

/**
 * A 64-bit integer field's value as two's complement (0 to 2^64 - 1), from a decimal string or a
 * safe integer (what gRPC decoding hands over); undefined for anything else or out of range.
 */
export function integer64(value: unknown, signed: boolean): bigint | undefined {
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

/** A 64-bit varint's value read as int64, as a decimal string (protobufjs's `longs: String`). */
export function signed64Text(value: number | bigint): string {
  if (typeof value === 'number') return String(value);
  return (value >= twoTo63 ? value - twoTo64 : value).toString();
}

/**
 * Writes in place: callers size the message first and allocate it whole (`Buffer.allocUnsafe`), or
 * call `ensure` before each write (a write past the buffer's end would be lost, so sized codecs
 * check `offset` against their size at the end).
 */
export class WireWriter {
  offset = 0;
  constructor(public buffer: Buffer) {}

  /** Room for `bytes` more, growing the buffer (doubling) when there is not. */
  ensure(bytes: number): void {
    if (this.offset + bytes <= this.buffer.length) return;
    const grown = Buffer.allocUnsafe(Math.max(this.buffer.length * 2, this.offset + bytes));
    this.buffer.copy(grown, 0, 0, this.offset);
    this.buffer = grown;
  }

  byte(value: number): void {
    this.buffer[this.offset++] = value;
  }

  /** A safe integer, 0 or more. */
  varint(value: number): void {
    const buffer = this.buffer;
    if (value >>> 0 === value) {
      while (value > 0x7f) {
        buffer[this.offset++] = (value & 0x7f) | 0x80;
        value >>>= 7;
      }
      buffer[this.offset++] = value;
      return;
    }
    if (!Number.isSafeInteger(value) || value < 0) throw new WireFormatError(`protobuf: ${value} is not an unsigned integer a varint can hold exactly`);
    while (value >= 0x80) {
      buffer[this.offset++] = (value % 0x80) | 0x80;
      value = Math.floor(value / 0x80);
    }
    buffer[this.offset++] = value;
  }

  /** 0 to 2^64 - 1 (a negative int64 as its two's complement: see `integer64`). */
  varint64(value: bigint): void {
    if (value < 0x80000000n) {
      this.varint(Number(value));
      return;
    }
    if (value >= twoTo64) throw new Error(`assertion failed: a 64-bit varint of ${value}`);
    // As two 32-bit halves (protobufjs's LongBits): a BigInt shift and mask per 7 bits cost ~1 us a value.
    const buffer = this.buffer;
    let low = Number(value & 0xffffffffn);
    let high = Number(value >> 32n);
    while (high > 0 || low > 0x7f) {
      buffer[this.offset++] = (low & 0x7f) | 0x80;
      low = ((low >>> 7) | (high << 25)) >>> 0;
      high >>>= 7;
    }
    buffer[this.offset++] = low;
  }

  /** A length-delimited field's length and bytes (its key is the caller's). */
  bytes(value: Buffer): void {
    this.varint(value.length);
    this.offset += value.copy(this.buffer, this.offset);
  }

  /** A string's length and UTF-8 bytes; `byteLength` is `Buffer.byteLength(value)`, known from sizing. */
  string(value: string, byteLength: number): void {
    this.varint(byteLength);
    this.offset += this.buffer.write(value, this.offset, byteLength, 'utf8');
  }
}

/** Reads one message (or a nested one) between `offset` and `end` of `buffer`; every read is bounded by `end`. */
export class WireReader {
  offset: number;
  constructor(
    readonly buffer: Buffer,
    start: number,
    readonly end: number,
  ) {
    this.offset = start;
  }

  get done(): boolean {
    return this.offset >= this.end;
  }

  /** A varint of at most 5 bytes below 2^32: a key or a length. */
  private small(what: string): number {
    const buffer = this.buffer;
    let value = 0;
    for (let shift = 0; shift < 28; shift += 7) {
      if (this.offset >= this.end) throw new WireFormatError(`protobuf: ${what} cut short`);
      const byte = buffer[this.offset++] as number;
      value |= (byte & 0x7f) << shift;
      if (byte < 0x80) return value >>> 0;
    }
    if (this.offset >= this.end) throw new WireFormatError(`protobuf: ${what} cut short`);
    const byte = buffer[this.offset++] as number;
    if (byte > 0x0f) throw new WireFormatError(`protobuf: ${what} past 32 bits`);
    return (value | (byte << 28)) >>> 0;
  }

  /** A field's key (`key >>> 3` its number, `key & 7` its wire type); field number 0 is refused. */
  key(): number {
    const key = this.small('field key');
    if (key < 8) throw new WireFormatError('protobuf: field number 0');
    return key;
  }

  /** A length-delimited field's length, refused when it runs past `end`. */
  length(): number {
    const length = this.small('length');
    if (length > this.end - this.offset) throw new WireFormatError(`protobuf: a length of ${length} runs past its message (${this.end - this.offset} bytes left)`);
    return length;
  }

  /** A varint read as protobufjs reads uint32, int32 (`| 0`), bools (`!== 0`) and enums: its low 32 bits. */
  uint32(): number {
    const start = this.offset;
    const buffer = this.buffer;
    let value = 0;
    for (let shift = 0; shift < 35; shift += 7) {
      if (this.offset >= this.end) throw new WireFormatError('protobuf: varint cut short');
      const byte = buffer[this.offset++] as number;
      value |= (byte & 0x7f) << shift;
      if (byte < 0x80) return value >>> 0;
    }
    // Past 5 bytes protobufjs steps over exactly 5 more: only a 10-byte varint reads the same.
    this.varint64();
    if (this.offset - start !== 10) throw new WireFormatError('protobuf: a 32-bit varint of 6 to 9 bytes');
    return value >>> 0;
  }

  /** A 64-bit varint: a number below 2^49, a BigInt (0 to 2^64 - 1) beyond. */
  varint64(): number | bigint {
    const buffer = this.buffer;
    let value = 0;
    let scale = 1;
    for (let read = 0; read < 7; read++) {
      if (this.offset >= this.end) throw new WireFormatError('protobuf: varint cut short');
      const byte = buffer[this.offset++] as number;
      value += (byte & 0x7f) * scale;
      if (byte < 0x80) return value;
      scale *= 0x80;
    }
    // Bytes 8 to 10 (bits 49 to 69, 2^64 and up dropped as protobufjs does) as a number too, then one BigInt.
    let high = 0;
    scale = 1;
    for (let read = 7; read < 10; read++) {
      if (this.offset >= this.end) throw new WireFormatError('protobuf: varint cut short');
      const byte = buffer[this.offset++] as number;
      high += (byte & 0x7f) * scale;
      if (byte < 0x80) return BigInt.asUintN(64, BigInt(value) | (BigInt(high) << 49n));
      scale *= 0x80;
    }
    throw new WireFormatError('protobuf: varint longer than 10 bytes');
  }

  /** A 64-bit varint as an exact number; a value past 2^53 - 1 is refused (a codec that keeps numbers cannot hold it). */
  varint53(): number {
    const value = this.varint64();
    if (typeof value === 'number') return value;
    if (value > BigInt(Number.MAX_SAFE_INTEGER)) throw new WireFormatError(`protobuf: ${value} is past 2^53 - 1`);
    return Number(value);
  }

  /** A length-delimited field's bytes, as a view of the buffer. */
  bytes(): Buffer {
    const length = this.length();
    const start = this.offset;
    this.offset += length;
    return this.buffer.subarray(start, this.offset);
  }

  string(): string {
    const length = this.length();
    const start = this.offset;
    this.offset += length;
    return this.buffer.toString('utf8', start, this.offset);
  }

  /** A reader of the nested message this length-delimited field holds; this one steps past it. */
  nested(): WireReader {
    const length = this.length();
    const start = this.offset;
    this.offset += length;
    return new WireReader(this.buffer, start, this.offset);
  }

  /** Steps over an unknown field's value. */
  skip(wireType: number): void {
    switch (wireType) {
      case wireVarint:
        this.varint64();
        return;
      case wireFixed64:
        this.advance(8);
        return;
      case wireBytes: {
        // Not `this.offset += this.length()`: that adds to the offset from before the length was read.
        const length = this.length();
        this.offset += length;
        return;
      }
      case wireFixed32:
        this.advance(4);
        return;
      default:
        throw new WireFormatError(`protobuf: wire type ${wireType} unsupported`);
    }
  }

  private advance(bytes: number): void {
    if (bytes > this.end - this.offset) throw new WireFormatError('protobuf: a fixed-width field runs past its message');
    this.offset += bytes;
  }
}

/**
 * All of `bytes` read as one message by `read`; undefined when it is malformed (a WireFormatError)
 * or `read` answers undefined, so that the caller's slower general decoder decides. Any other
 * error is a bug and is thrown.
 */
export function readWhole<T>(bytes: Buffer, read: (reader: WireReader) => T | undefined): T | undefined {
  try {
    return read(new WireReader(bytes, 0, bytes.length));
  } catch (error) {
    if (error instanceof WireFormatError) return undefined;
    throw error;
  }
}
