/**
 * The codec compiled from the .proto reflection (schema-codec.ts) against protobufjs, on random
 * proposals of every kind generated from the same reflection (Txns nested in Txns, every oneof
 * member, 64-bit values at their limits, enums past their names): what one encodes the other
 * decodes to the same object, with the same key order; unusual input is left to protobufjs.
 */
import fc from 'fast-check';
import protobuf from 'protobufjs';
import { describe, expect, it } from 'vitest';
import { decodeInternalRequest, encodeInternalRequest } from '../../src/api/proto.js';
import { compileCodec, decodeWithPlan, encodeWithPlan } from '../../src/api/schema-codec.js';
import { internalRequestType, referenceProposalDecode as referenceDecode, referenceProposalEncode as referenceEncode } from '../helpers/codec-reference.js';
const plan = compileCodec(internalRequestType);

const uint64 = fc.oneof(fc.constantFrom('0', '1', '127', '128', '2147483648', '562949953421312', '9007199254740993', '18446744073709551615'), fc.bigInt({ min: 0n, max: 2n ** 64n - 1n }).map(String), fc.nat());
const int64 = fc.oneof(fc.constantFrom('0', '-1', '1', '9223372036854775807', '-9223372036854775808'), fc.bigInt({ min: -(2n ** 63n), max: 2n ** 63n - 1n }).map(String), fc.integer());
const bytes = fc.oneof(fc.constant(Buffer.alloc(0)), fc.uint8Array({ maxLength: 40 }).map((array) => Buffer.from(array)));

/** Random objects of `type` as gRPC decoding would hand them over (fields absent, null or set). */
function arbitraryOf(type: protobuf.Type, depth: number): fc.Arbitrary<Record<string, unknown>> {
  const fields = type.fieldsArray.map((field) => field.resolve());
  const valueOf = (field: protobuf.Field): fc.Arbitrary<unknown> => {
    const resolved = field.resolvedType;
    if (resolved instanceof protobuf.Enum) return fc.oneof(fc.constantFrom(...Object.values(resolved.values)), fc.integer({ min: -3, max: 12 }));
    if (resolved instanceof protobuf.Type) return depth > 2 ? fc.constant(null) : fc.oneof(fc.constant(null), arbitraryOf(resolved, depth + 1));
    switch (field.type) {
      case 'int64': return int64;
      case 'uint64': return uint64;
      case 'bool': return fc.boolean();
      case 'string': return fc.string({ unit: 'grapheme', maxLength: 12 });
      case 'bytes': return bytes;
      default: throw new Error(`no arbitrary for ${field.type}`);
    }
  };
  const plain = fields.filter((field) => field.partOf === null);
  const oneofs = type.oneofsArray;
  const plainRecord = fc.record(Object.fromEntries(plain.map((field) => [field.name, field.repeated ? fc.array(valueOf(field), { maxLength: 3 }).map((list) => list.filter((element) => element !== null)) : valueOf(field)])), { requiredKeys: [] });
  const oneofChoices = oneofs.map((oneof) => fc.oneof(
    fc.constant({}),
    ...oneof.fieldsArray.map((field) => valueOf(field.resolve()).map((value) => ({ [field.name]: value, [oneof.name]: field.name }))),
  ));
  return fc.tuple(plainRecord, ...oneofChoices).map(([base, ...chosen]) => Object.assign({}, base, ...chosen) as Record<string, unknown>);
}

/** Key order of every plain object inside, depth first (Buffers and arrays of scalars as leaves). */
function keyOrder(value: unknown): unknown {
  if (Array.isArray(value)) return value.map(keyOrder);
  if (typeof value !== 'object' || value === null || Buffer.isBuffer(value)) return null;
  return Object.entries(value).map(([key, inner]) => [key, keyOrder(inner)]);
}

describe('schema codec', () => {
  it('compiles for every proposal', () => {
    expect(plan).toBeDefined();
  });

  it('encodes what protobufjs decodes to the same proposal, and decodes what protobufjs encodes', () => {
    if (plan === undefined) throw new Error('no plan');
    fc.assert(fc.property(arbitraryOf(internalRequestType, 0), (request) => {
      const theirs = referenceEncode(request);
      const expected = referenceDecode(theirs);
      const ours = encodeWithPlan(plan, request);
      expect(ours).toBeDefined();
      expect(referenceDecode(ours as Buffer)).toEqual(expected);
      const decoded = decodeWithPlan(plan, theirs);
      expect(decoded).toEqual(expected);
      expect(keyOrder(decoded)).toEqual(keyOrder(expected));
      expect(decodeWithPlan(plan, ours as Buffer)).toEqual(expected);
      expect(decodeInternalRequest(encodeInternalRequest(request as never))).toEqual(expected);
    }), { numRuns: 1500 });
  });

  it('leaves enum names, base64 strings, loose types and two members of one oneof to protobufjs', () => {
    if (plan === undefined) throw new Error('no plan');
    const key = Buffer.from('k');
    const compare = { result: 0, target: 2, key, mod_revision: '5' };
    const txn = (changes: Record<string, unknown>): object => ({ id: '1', txn: { compare: [{ ...compare, ...changes }], success: [], failure: [] } });
    expect(encodeWithPlan(plan, txn({}))).toBeDefined();
    expect(encodeWithPlan(plan, txn({ result: 'EQUAL' }))).toBeUndefined();
    expect(encodeWithPlan(plan, txn({ key: 'aw==' }))).toBeUndefined();
    expect(encodeWithPlan(plan, txn({ mod_revision: 1.5 }))).toBeUndefined();
    expect(encodeWithPlan(plan, txn({ version: '1' }))).toBeUndefined();
    expect(encodeWithPlan(plan, { id: '1', auth_change: '{}', login_records: '[]' })).toBeUndefined();
    // protobufjs takes these as they are (and encodes the enum name): the generic path answers the same.
    expect(decodeInternalRequest(encodeInternalRequest(txn({ result: 'GREATER' }) as never))).toEqual(referenceDecode(referenceEncode(txn({ result: 'GREATER' }))));
  });

  it('leaves unknown, repeated or mistyped fields and malformed bytes to protobufjs', () => {
    if (plan === undefined) throw new Error('no plan');
    const data = referenceEncode({ id: '7', compaction: { revision: '9', physical: true } });
    expect(decodeWithPlan(plan, data)).toEqual(referenceDecode(data));
    expect(decodeWithPlan(plan, Buffer.concat([data, Buffer.of(0x08, 0x02)]))).toBeUndefined(); // id twice
    expect(decodeWithPlan(plan, Buffer.concat([data, Buffer.of(0xf8, 0x07, 0x01)]))).toBeUndefined(); // field 127
    expect(decodeWithPlan(plan, Buffer.concat([data, Buffer.of(0x0a, 0x00)]))).toBeUndefined(); // id as bytes
    expect(decodeWithPlan(plan, data.subarray(0, data.length - 1))).toBeUndefined();
    const twoMembers = Buffer.concat([data, referenceEncode({ lease_revoke: { ID: '3' } })]);
    expect(decodeWithPlan(plan, twoMembers)).toBeUndefined();
    expect(decodeInternalRequest(twoMembers)).toEqual(referenceDecode(twoMembers));
  });
});
