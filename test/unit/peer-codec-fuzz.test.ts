/**
 * The hand-written peer codec under random input: random valid batches mean the same to it and to
 * protobufjs (the reference for raft.proto's wire format) in both directions, and bytes a member with
 * a valid peer certificate could send (random, or a valid batch cut short or with bytes changed)
 * either decode or are refused with the codec's own RangeError: never another exception (a crash of
 * the receiver's handler), and nothing is read past the buffer it was given.
 */
import * as protoLoader from '@grpc/proto-loader';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { decodeOptions, protoDirectory } from '../../src/api/proto.js';
import { decodeMessageBatch, encodeMessageBatch, type MessageBatchFields, type RaftMessageFields } from '../../src/server/peer-codec.js';

const reference = protoLoader.loadSync(['raft.proto'], { ...decodeOptions, includeDirs: [protoDirectory] });
const method = (reference['rampart.Peer'] as protoLoader.ServiceDefinition).Messages as protoLoader.MethodDefinition<object, object>;
const referenceEncode = (batch: MessageBatchFields): Buffer => method.requestSerialize(batch);
const referenceDecode = (bytes: Buffer): MessageBatchFields => method.requestDeserialize(bytes) as MessageBatchFields;

const uint = fc.oneof(fc.constant(0), fc.integer({ min: 0, max: 300 }), fc.integer({ min: 0, max: Number.MAX_SAFE_INTEGER }));
const text = fc.string({ maxLength: 12, unit: 'binary' });
const entry = fc.record({ index: uint, term: uint, configuration_change: fc.boolean(), data: fc.uint8Array({ maxLength: 40 }).map((bytes) => Buffer.from(bytes)) });
const message: fc.Arbitrary<RaftMessageFields> = fc.record(
  {
    type: text,
    from: text,
    to: text,
    term: uint,
    last_index: uint,
    last_term: uint,
    transfer: fc.boolean(),
    reject: fc.boolean(),
    index: uint,
    reject_hint: uint,
    prev_index: uint,
    prev_term: uint,
    entries: fc.array(entry, { maxLength: 4 }),
    commit: uint,
    context: text,
    snapshot_index: uint,
    snapshot_term: uint,
    snapshot_voters: fc.array(text, { maxLength: 3 }),
    snapshot_learners: fc.array(text, { maxLength: 3 }),
  },
  { requiredKeys: ['type', 'from', 'to', 'term'] },
);
const batchArbitrary: fc.Arbitrary<MessageBatchFields> = fc.record({ cluster_id: text, from: text, messages: fc.array(message, { maxLength: 5 }) });

/** What a decoded batch means, whichever codec decoded it (proto3 defaults filled in, numbers as numbers). */
function meaning(batch: MessageBatchFields): unknown {
  const n = (value: string | number | undefined): number => Number(value ?? 0);
  return {
    cluster_id: batch.cluster_id,
    from: batch.from ?? '',
    messages: batch.messages.map((m) => ({
      type: m.type,
      from: m.from,
      to: m.to,
      numbers: [m.term, m.last_index, m.last_term, m.index, m.reject_hint, m.prev_index, m.prev_term, m.commit, m.snapshot_index, m.snapshot_term].map(n),
      flags: [m.transfer === true, m.reject === true],
      entries: (m.entries ?? []).map((e) => [n(e.index), n(e.term), e.configuration_change, Buffer.from(e.data).toString('hex')]),
      context: m.context ?? '',
      voters: m.snapshot_voters ?? [],
      learners: m.snapshot_learners ?? [],
    })),
  };
}

/** Decodes `bytes` with the hand-written codec; any exception other than its own refusal fails the test. */
function decodeOrRefuse(bytes: Buffer): MessageBatchFields | 'refused' {
  try {
    return decodeMessageBatch(bytes);
  } catch (error) {
    expect(error).toBeInstanceOf(RangeError);
    expect(String(error)).toMatch(/peer codec/);
    return 'refused';
  }
}

describe('peer codec fuzz', () => {
  it('means the same as protobufjs for random valid batches, both directions', () => {
    fc.assert(
      fc.property(batchArbitrary, (batch) => {
        const expected = meaning(referenceDecode(referenceEncode(batch)));
        expect(meaning(referenceDecode(encodeMessageBatch(batch)))).toEqual(expected);
        expect(meaning(decodeMessageBatch(referenceEncode(batch)))).toEqual(expected);
      }),
      { numRuns: 400 },
    );
  });

  it('decodes or refuses random bytes, truncations and corruptions, reading nothing past its buffer', () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 200 }), (bytes) => {
        decodeOrRefuse(Buffer.from(bytes));
      }),
      { numRuns: 2000 },
    );
    fc.assert(
      fc.property(batchArbitrary, fc.nat(), fc.array(fc.tuple(fc.nat(), fc.integer({ min: 0, max: 255 })), { maxLength: 4 }), (batch, cut, changes) => {
        const encoded = encodeMessageBatch(batch);
        const end = encoded.length === 0 ? 0 : cut % encoded.length;
        // The bytes after `end` are nonzero garbage the decoder must never reach.
        const backing = Buffer.concat([encoded, Buffer.alloc(64, 0x0a)]);
        for (const [at, value] of changes) if (encoded.length > 0) backing[at % encoded.length] = value;
        const view = backing.subarray(0, end);
        const decoded = decodeOrRefuse(view);
        if (decoded !== 'refused') {
          for (const m of decoded.messages) for (const e of m.entries ?? []) expect(e.data.byteOffset + e.data.length).toBeLessThanOrEqual(view.byteOffset + end);
        }
      }),
      { numRuns: 2000 },
    );
  });

  it('refuses a length field larger than the input without allocating for it', () => {
    // Message (field 2) claiming 2^50 bytes; an entry (field 13) claiming 2 GiB inside a 10-byte message.
    const huge = Buffer.from([0x12, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x02]);
    expect(decodeOrRefuse(huge)).toBe('refused');
    const entryTooLong = Buffer.from([0x12, 0x06, 0x6a, 0x80, 0x80, 0x80, 0x80, 0x08]);
    expect(decodeOrRefuse(entryTooLong)).toBe('refused');
  });
});
