/**
 * 64-bit varints (src/wire/protobuf.ts), written and sized from two 32-bit halves and read with one
 * BigInt, against the plain BigInt reference (7 bits at a time): the same bytes, size and value at
 * every length boundary and for random 64-bit values, overlong and cut-short input refused as before.
 */
import { randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { varint64Bytes, WireFormatError, WireReader, WireWriter } from '../../src/wire/protobuf.js';

function reference(value: bigint): Buffer {
  const bytes: number[] = [];
  while (value > 0x7fn) {
    bytes.push(Number(value & 0x7fn) | 0x80);
    value >>= 7n;
  }
  bytes.push(Number(value));
  return Buffer.from(bytes);
}

function referenceRead(bytes: Buffer): bigint {
  let value = 0n;
  bytes.forEach((byte, position) => { value |= BigInt(byte & 0x7f) << BigInt(7 * position); });
  return BigInt.asUintN(64, value);
}

const boundaries = [0n, 1n, 0x7fn, 0x80n, 0x3fffn, 0x4000n];
for (let bits = 21n; bits <= 64n; bits += 1n) boundaries.push((1n << bits) - 1n, ...(bits < 64n ? [1n << bits] : []));
const randoms = Array.from({ length: 2_000 }, (_, index) => randomBytes(8).readBigUInt64BE(0) >> BigInt(index % 64));

describe('64-bit varints', () => {
  it('write, size and read as the BigInt reference', () => {
    for (const value of [...boundaries, ...randoms]) {
      const expected = reference(value);
      const writer = new WireWriter(Buffer.alloc(16));
      writer.varint64(value);
      expect(writer.buffer.subarray(0, writer.offset).equals(expected), `${value}`).toBe(true);
      expect(varint64Bytes(value), `${value}`).toBe(expected.length);
      const read = new WireReader(expected, 0, expected.length).varint64();
      expect(BigInt(read), `${value}`).toBe(value);
      expect(typeof read, `${value}`).toBe(value < 2n ** 49n ? 'number' : 'bigint');
    }
  });

  it('reads a 10-byte varint past 64 bits modulo 2^64, and refuses overlong and cut-short ones', () => {
    const past = Buffer.from([0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f]);
    expect(new WireReader(past, 0, past.length).varint64()).toBe(referenceRead(past));
    const high = Buffer.from([0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x81, 0x83, 0x01]);
    expect(new WireReader(high, 0, high.length).varint64()).toBe(referenceRead(high));
    const overlong = Buffer.from([...Array<number>(10).fill(0xff), 0x01]);
    expect(() => new WireReader(overlong, 0, overlong.length).varint64()).toThrow(WireFormatError);
    const cut = Buffer.from([0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]);
    expect(() => new WireReader(cut, 0, cut.length).varint64()).toThrow(WireFormatError);
  });

  it('refuses to write a value past 64 bits', () => {
    expect(() => new WireWriter(Buffer.alloc(16)).varint64(2n ** 64n)).toThrow(/assertion failed/);
    expect(() => varint64Bytes(2n ** 64n)).toThrow(/assertion failed/);
  });
});
