/**
 * The hand-written RangeResponse encoder against protobufjs (what proto-loader's serializer runs,
 * and what encoded every Range answer before): the same bytes for random answers, zero values,
 * empty bytes and absent fields included; anything of another type is left to protobufjs.
 */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import * as protoLoader from '@grpc/proto-loader';
import { decodeOptions, packageDefinition, protoDirectory } from '../../src/api/proto.js';
import { decodeRangeRequest, encodeRangeResponse } from '../../src/api/range-codec.js';

/** rpc.proto's Range as proto-loader gives it, without the hand-written encoder proto.ts installs. */
const reference = (protoLoader.loadSync(['rpc.proto'], { ...decodeOptions, includeDirs: [protoDirectory] })['etcdserverpb.KV'] as protoLoader.ServiceDefinition).Range as protoLoader.MethodDefinition<object, object>;
const installed = (packageDefinition['etcdserverpb.KV'] as protoLoader.ServiceDefinition).Range as protoLoader.MethodDefinition<object, object>;

const uint64 = fc.oneof(fc.constantFrom('0', '1', '127', '128', '9007199254740993', '18446744073709551615'), fc.bigInt({ min: 0n, max: 2n ** 64n - 1n }).map(String), fc.nat(), fc.constantFrom(0, 127, 128, 2 ** 31, 2 ** 32, Number.MAX_SAFE_INTEGER));
const int64 = fc.oneof(fc.constantFrom('0', '-1', '1', '9223372036854775807', '-9223372036854775808'), fc.bigInt({ min: -(2n ** 63n), max: 2n ** 63n - 1n }).map(String), fc.integer(), fc.constantFrom(0, -1, 2 ** 31, -(2 ** 31), Number.MAX_SAFE_INTEGER, Number.MIN_SAFE_INTEGER));
const bytes = fc.oneof(fc.constant(Buffer.alloc(0)), fc.uint8Array({ maxLength: 300 }).map((array) => Buffer.from(array)), fc.constant(Buffer.alloc(1024, 'v')));
const absentOr = <T>(arbitrary: fc.Arbitrary<T>): fc.Arbitrary<T | undefined | null> => fc.oneof({ weight: 4, arbitrary }, { weight: 1, arbitrary: fc.constantFrom(undefined, null) });

const header = fc.record({ cluster_id: absentOr(uint64), member_id: absentOr(uint64), revision: absentOr(int64), raft_term: absentOr(uint64) });
const keyValue = fc.record({ key: absentOr(bytes), create_revision: absentOr(int64), mod_revision: absentOr(int64), version: absentOr(int64), value: absentOr(bytes), lease: absentOr(int64) });
const response = fc.record({ header: absentOr(header), kvs: absentOr(fc.array(keyValue, { maxLength: 5 })), more: absentOr(fc.boolean()), count: absentOr(int64) });

describe('range response encoder', () => {
  it('encodes every answer to the bytes protobufjs writes', () => {
    fc.assert(fc.property(response, (answer) => {
      const ours = encodeRangeResponse(answer);
      expect(ours).toBeDefined();
      expect((ours as Buffer).toString('hex')).toBe(reference.responseSerialize(answer).toString('hex'));
    }), { numRuns: 1000 });
  });

  it('encodes a member\'s answer (the header it sends, a key-value as kv.ts makes it) as protobufjs does, also the second time', () => {
    const answer = {
      header: { cluster_id: '14841639068965178418', member_id: '10276657743932975437', revision: 12_345, raft_term: 2 },
      kvs: [{ key: Buffer.alloc(256, 'k'), create_revision: 100, mod_revision: 12_000, version: 5, value: Buffer.alloc(1024, 'v'), lease: 0 }],
      more: false,
      count: 1,
    };
    for (let time = 0; time < 2; time++) {
      expect(encodeRangeResponse(answer)?.toString('hex')).toBe(reference.responseSerialize(answer).toString('hex'));
      expect(installed.responseSerialize(answer).toString('hex')).toBe(reference.responseSerialize(answer).toString('hex'));
    }
    const otherMember = { ...answer, header: { ...answer.header, member_id: '1' } };
    expect(encodeRangeResponse(otherMember)?.toString('hex')).toBe(reference.responseSerialize(otherMember).toString('hex'));
    expect(encodeRangeResponse({ header: {}, kvs: [{}], extra: 'ignored' })?.toString('hex')).toBe(reference.responseSerialize({ header: {}, kvs: [{}], extra: 'ignored' }).toString('hex'));
  });

  it('leaves values of other types to protobufjs, which the installed serializer then uses', () => {
    const unusual: object[] = [
      { header: { revision: 1.5 } },
      { header: { cluster_id: -1 } },
      { header: { cluster_id: '0x10' } },
      { kvs: [{ key: 'a string' }] },
      { kvs: [{ value: new Uint8Array([1, 2]) }] },
      { kvs: [{ lease: '99999999999999999999' }] },
      { more: 1 },
      { count: 2 ** 60 },
      { kvs: {} },
      { header: 'text' },
    ];
    for (const answer of unusual) {
      expect(encodeRangeResponse(answer), JSON.stringify(answer)).toBeUndefined();
      let expected: string | undefined;
      try {
        expected = reference.responseSerialize(answer).toString('hex');
      } catch (error) {
        expect(() => installed.responseSerialize(answer)).toThrow((error as Error).message);
        continue;
      }
      expect(installed.responseSerialize(answer).toString('hex')).toBe(expected);
    }
  });
});

describe('range request decoder', () => {
  const outcome = (decode: () => unknown): unknown => {
    try {
      return { decoded: decode() };
    } catch (error) {
      return { error: String(error) };
    }
  };
  const enumValue = fc.oneof(fc.constantFrom(0, 1, 2, 3, 4, 5, -1), fc.integer());
  const request = fc.record({
    key: bytes, range_end: bytes, limit: int64, revision: int64, sort_order: enumValue, sort_target: enumValue,
    serializable: fc.boolean(), keys_only: fc.boolean(), count_only: fc.boolean(),
    min_mod_revision: int64, max_mod_revision: int64, min_create_revision: int64, max_create_revision: int64,
  }, { requiredKeys: [] });

  it('decodes what protobufjs encodes to what protobufjs decodes, key order included', () => {
    fc.assert(fc.property(request, (fields) => {
      const data = reference.requestSerialize(fields);
      const decoded = decodeRangeRequest(data);
      expect(decoded).toBeDefined();
      expect(decoded).toEqual(reference.requestDeserialize(data));
      expect(Object.keys(decoded ?? {})).toEqual(Object.keys(reference.requestDeserialize(data)));
      expect(installed.requestDeserialize(data)).toEqual(reference.requestDeserialize(data));
    }), { numRuns: 300 });
  });

  it('decodes defaults written out, any order and wide varints as protobufjs does, and leaves anything unusual to it', () => {
    const data = reference.requestSerialize({ key: Buffer.from('a'), range_end: Buffer.from('b'), limit: '5', sort_order: 2, serializable: true });
    const readsTheSame: Buffer[] = [
      Buffer.alloc(0),
      // count_only false, revision 0, key 'k', sort_target 1, out of order
      Buffer.of(0x48, 0x00, 0x20, 0x00, 0x0a, 0x01, 0x6b, 0x30, 0x01),
      // sort_order as a 10-byte varint (-1) and keys_only past 32 bits: protobufjs reads their low 32 bits
      Buffer.of(0x28, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01, 0x40, 0x80, 0x80, 0x80, 0x80, 0x10),
    ];
    for (const bytesIn of readsTheSame) {
      expect(decodeRangeRequest(bytesIn)).toBeDefined();
      expect(decodeRangeRequest(bytesIn)).toEqual(reference.requestDeserialize(bytesIn));
    }
    // A field seen twice (protobufjs: the last wins), an unknown field, a wrong wire type, a cut message, a 6-byte varint.
    const unusual = [
      Buffer.concat([data, Buffer.of(0x18, 0x07)]),
      Buffer.concat([data, Buffer.of(0x70, 0x01)]),
      Buffer.concat([data, Buffer.of(0x1a, 0x00)]),
      data.subarray(0, data.length - 1),
      Buffer.of(0x28, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01),
    ];
    for (const bytesIn of unusual) {
      expect(decodeRangeRequest(bytesIn)).toBeUndefined();
      expect(outcome(() => installed.requestDeserialize(bytesIn))).toEqual(outcome(() => reference.requestDeserialize(bytesIn)));
    }
  });
});
