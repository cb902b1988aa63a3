/**
 * The hand-written Put proposal codec and Put response encoder against protobufjs (the generic path every other proposal
 * takes, and the one every earlier version wrote the log with): what one encodes the other decodes
 * to the same object, for random puts and callers; anything unusual is left to protobufjs.
 */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import type { InternalRequest } from '../../src/api/messages.js';
import { decodeInternalRequest, decodeOptions, encodeInternalRequest, packageDefinition } from '../../src/api/proto.js';
import { decodePutProposal, decodePutRequest, encodePutProposal, encodePutResponse } from '../../src/api/put-codec.js';
import { protoRoot, referenceProposalDecode as referenceDecode, referenceProposalEncode as referenceEncode } from '../helpers/codec-reference.js';

const putResponseType = protoRoot.lookupType('etcdserverpb.PutResponse');

const uint64 = fc.oneof(fc.constantFrom('0', '1', '127', '128', '16383', '16384', '268435455', '268435456', '9007199254740993', '18446744073709551615'), fc.bigInt({ min: 0n, max: 2n ** 64n - 1n }).map(String));
const int64 = fc.oneof(fc.constantFrom('0', '-1', '1', '9223372036854775807', '-9223372036854775808'), fc.bigInt({ min: -(2n ** 63n), max: 2n ** 63n - 1n }).map(String));
const bytes = fc.oneof(fc.constant(Buffer.alloc(0)), fc.uint8Array({ maxLength: 300 }).map((array) => Buffer.from(array)));
const caller = fc.oneof(
  fc.constant(undefined),
  fc.constant(null),
  fc.record({ user: fc.string({ unit: 'grapheme', maxLength: 20 }), revision: fc.oneof(uint64, fc.nat()), token: fc.boolean() }),
);
const putRequest = fc.record({
  id: fc.oneof(uint64, fc.nat()),
  key: bytes,
  value: bytes,
  lease: int64,
  prev_kv: fc.boolean(),
  ignore_value: fc.boolean(),
  ignore_lease: fc.boolean(),
  caller,
}).map(({ id, caller: who, ...put }): InternalRequest => ({ id: id as string, request: 'put', put, caller: who }));

describe('put proposal codec', () => {
  it('encodes what protobufjs decodes to the same request, and decodes what protobufjs encodes', () => {
    fc.assert(fc.property(putRequest, (request) => {
      const ours = encodePutProposal(request);
      expect(ours).toBeDefined();
      const theirs = referenceEncode(request);
      const expected = referenceDecode(theirs);
      expect(referenceDecode(ours as Buffer)).toEqual(expected);
      expect(decodePutProposal(theirs)).toEqual(expected);
      expect(decodePutProposal(ours as Buffer)).toEqual(expected);
      expect(decodeInternalRequest(encodeInternalRequest(request))).toEqual(expected);
      // Same field order as protobufjs's toObject (callers may iterate the object).
      expect(Object.keys(decodePutProposal(ours as Buffer) as object)).toEqual(Object.keys(expected as object));
    }), { numRuns: 500 });
  });

  it('decodes fields written at their default value, in any order, as protobufjs does', () => {
    const key = Buffer.from('key');
    // id 5, put { lease 0, prev_kv false, value 'v', key 'key' } written out of order, caller with zeros.
    const put = Buffer.concat([Buffer.of(0x18, 0x00, 0x20, 0x00, 0x12, 0x01, 0x76, 0x0a, 0x03), key]);
    const callerBytes = Buffer.of(0x18, 0x00, 0x10, 0x00, 0x0a, 0x00);
    const data = Buffer.concat([Buffer.of(0xa2, 0x01, callerBytes.length), callerBytes, Buffer.of(0x12, put.length), put, Buffer.of(0x08, 0x05)]);
    expect(decodePutProposal(data)).toEqual(referenceDecode(data));
    // A bool written as a varint past 32 bits: protobufjs reads its low 32 bits (false here).
    const wideBool = Buffer.of(0x08, 0x01, 0x12, 0x08, 0x20, 0x80, 0x80, 0x80, 0x80, 0x10, 0x28, 0x01);
    expect(decodePutProposal(wideBool)).toEqual(referenceDecode(wideBool));
  });

  it('leaves every other request, and anything unusual, to protobufjs', () => {
    const key = Buffer.from('k');
    const others: InternalRequest[] = [
      { id: '1', request: 'delete_range', delete_range: { key, range_end: Buffer.alloc(0), prev_kv: false } },
      { id: '2', request: 'auth_change', auth_change: '{}' },
      { id: '3', request: 'compaction', compaction: { revision: '5', physical: false } },
    ];
    for (const request of others) {
      expect(encodePutProposal(request)).toBeUndefined();
      const data = encodeInternalRequest(request);
      expect(decodePutProposal(data)).toBeUndefined();
      expect(decodeInternalRequest(data)).toEqual(referenceDecode(data));
    }
    const put = { key, value: key, lease: '0', prev_kv: false, ignore_value: false, ignore_lease: false };
    // Types protobufjs converts loosely are not taken by the fast path.
    expect(encodePutProposal({ id: '1', request: 'put', put: { ...put, lease: '1.5' } })).toBeUndefined();
    expect(encodePutProposal({ id: '-1', request: 'put', put })).toBeUndefined();
    expect(encodePutProposal({ id: '1', request: 'put', put: { ...put, key: 'k' as unknown as Buffer } })).toBeUndefined();
    expect(encodePutProposal({ id: '1', request: 'put', put, auth_change: 'x' })).toBeUndefined();
    const data = referenceEncode({ id: '1', put });
    // A field seen twice, an unknown field, a truncated message: protobufjs decides.
    expect(decodePutProposal(Buffer.concat([data, Buffer.of(0x08, 0x02)]))).toBeUndefined();
    expect(decodePutProposal(Buffer.concat([data, Buffer.of(0x60, 0x01)]))).toBeUndefined();
    expect(decodePutProposal(data.subarray(0, data.length - 1))).toBeUndefined();
    expect(() => decodeInternalRequest(data.subarray(0, data.length - 1))).toThrow();
  });
});

describe('put request decoder', () => {
  const putRequestType = protoRoot.lookupType('etcdserverpb.PutRequest');
  const reference = (bytes: Buffer): unknown => putRequestType.toObject(putRequestType.decode(bytes), decodeOptions);
  const encoded = (request: Record<string, unknown>): Buffer => Buffer.from(putRequestType.encode(putRequestType.fromObject(request)).finish());
  // What gRPC hands the Put handler: grpc-js and the direct path both decode with this.
  const deserialize = (packageDefinition['etcdserverpb.KV'] as unknown as Record<string, { requestDeserialize: (bytes: Buffer) => unknown }>).Put?.requestDeserialize as (bytes: Buffer) => unknown;

  const outcome = (decode: () => unknown): unknown => {
    try {
      return { decoded: decode() };
    } catch (error) {
      return { error: String(error) };
    }
  };

  it('decodes what protobufjs encodes to what protobufjs decodes', () => {
    fc.assert(fc.property(fc.record({ key: bytes, value: bytes, lease: int64, prev_kv: fc.boolean(), ignore_value: fc.boolean(), ignore_lease: fc.boolean() }, { requiredKeys: [] }), (request) => {
      const data = encoded(request);
      const decoded = decodePutRequest(data);
      expect(decoded).toBeDefined();
      expect(decoded).toEqual(reference(data));
      expect(Object.keys(decoded ?? {})).toEqual(Object.keys(reference(data) as object));
      expect(deserialize(data)).toEqual(reference(data));
    }), { numRuns: 300 });
  });

  it('decodes fields at their default value and in any order as protobufjs does, and leaves anything unusual to it', () => {
    // lease 0, prev_kv false, value 'v', key 'key', out of order; an empty message.
    const unordered = Buffer.concat([Buffer.of(0x18, 0x00, 0x20, 0x00, 0x12, 0x01, 0x76, 0x0a, 0x03), Buffer.from('key')]);
    for (const data of [unordered, Buffer.alloc(0), Buffer.of(0x30, 0x80, 0x80, 0x80, 0x80, 0x10)]) {
      expect(decodePutRequest(data)).toEqual(reference(data));
      expect(deserialize(data)).toEqual(reference(data));
    }
    const data = encoded({ key: Buffer.from('k'), value: Buffer.from('v'), lease: '7', prev_kv: true });
    // A field seen twice (protobufjs: the last wins), an unknown field, a wrong wire type (protobufjs throws here): protobufjs decides.
    for (const unusual of [Buffer.concat([data, Buffer.of(0x0a, 0x01, 0x6a)]), Buffer.concat([data, Buffer.of(0x38, 0x01)]), Buffer.concat([data, Buffer.of(0x08, 0x01)])]) {
      expect(decodePutRequest(unusual)).toBeUndefined();
      expect(outcome(() => deserialize(unusual))).toEqual(outcome(() => reference(unusual)));
    }
    // Bytes that do not decode: protobufjs's error, as before.
    const cut = data.subarray(0, data.length - 1);
    expect(decodePutRequest(cut)).toBeUndefined();
    expect(outcome(() => deserialize(cut))).toEqual(outcome(() => reference(cut)));
    expect(() => deserialize(cut)).toThrow();
  });
});

describe('put response encoder', () => {
  const header = fc.record({ cluster_id: fc.oneof(uint64, fc.nat()), member_id: fc.oneof(uint64, fc.nat()), revision: fc.oneof(int64, fc.nat()), raft_term: fc.oneof(uint64, fc.nat()) });

  it('encodes a header-only answer as protobufjs does', () => {
    fc.assert(fc.property(header, (responseHeader) => {
      const response = { header: responseHeader };
      const ours = encodePutResponse(response);
      expect(ours).toBeDefined();
      const theirs = Buffer.from(putResponseType.encode(putResponseType.fromObject(response)).finish());
      expect(putResponseType.toObject(putResponseType.decode(ours as Buffer), decodeOptions)).toEqual(putResponseType.toObject(putResponseType.decode(theirs), decodeOptions));
    }), { numRuns: 300 });
  });

  it('leaves an answer with a previous value, or anything unusual, to protobufjs', () => {
    const responseHeader = { cluster_id: '1', member_id: '2', revision: 3, raft_term: 4 };
    const prevKv = { key: Buffer.from('k'), value: Buffer.from('v'), create_revision: 1, mod_revision: 1, version: 1, lease: 0 };
    expect(encodePutResponse({ header: responseHeader, prev_kv: prevKv })).toBeUndefined();
    expect(encodePutResponse({})).toBeUndefined();
    expect(encodePutResponse({ header: { ...responseHeader, revision: 'x' } })).toBeUndefined();
  });
});
