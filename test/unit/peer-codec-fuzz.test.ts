/**
 * The hand-written peer codec under random input: random valid batches mean the same to it and to
 * protobufjs (the reference for raft.proto's wire format) in both directions, and bytes a member with
 * a valid peer certificate could send (random, or a valid batch cut short or with bytes changed)
 * either decode or are refused with the codec's own RangeError: never another exception (a crash of
 * the receiver's handler), and nothing is read past the buffer it was given.
 */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { decodeMessageBatch, encodeMessageBatch, peerBatchItemsMax, type MessageBatchFields, type RaftMessageFields } from '../../src/server/peer-codec.js';
import { batchMeaning as meaning, referenceBatchDecode as referenceDecode, referenceBatchEncode as referenceEncode } from '../helpers/codec-reference.js';

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
    commit_only: fc.boolean(),
  },
  { requiredKeys: ['type', 'from', 'to', 'term'] },
);
const batchArbitrary: fc.Arbitrary<MessageBatchFields> = fc.record({ cluster_id: text, from: text, messages: fc.array(message, { maxLength: 5 }) });

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

  it('refuses a batch of more messages and entries than a member sends, before making objects of them all', () => {
    // 2 bytes an empty message (field 2, length 0): 8 MiB made 4 million message objects (283 MB of heap).
    const emptyMessages = Buffer.alloc(8 * 1024 * 1024);
    for (let at = 0; at < emptyMessages.length; at += 2) emptyMessages[at] = 0x12;
    expect(() => decodeMessageBatch(emptyMessages)).toThrow(/more than 1048576 messages and entries/);
    // One message of empty entries (field 13, length 0), past the bound.
    const entries = Buffer.alloc(2 * (peerBatchItemsMax + 1));
    for (let at = 0; at < entries.length; at += 2) entries[at] = 0x6a;
    const header = Buffer.from([0x12, ...varint(entries.length)]);
    expect(() => decodeMessageBatch(Buffer.concat([header, entries]))).toThrow(/more than 1048576 messages and entries/);
    // What a leader may send one follower in one batch: 256 appends in flight of 256 entries each.
    const entry = { index: 1, term: 1, configuration_change: false, data: Buffer.alloc(8) };
    const append: RaftMessageFields = { type: 'append', from: 'a', to: 'b', term: 1, entries: Array.from({ length: 256 }, () => entry) };
    const largest = decodeMessageBatch(encodeMessageBatch({ cluster_id: 'c', from: 'a', messages: Array.from({ length: 256 }, () => append) }));
    expect(largest.messages.reduce((sum, message) => sum + (message.entries?.length ?? 0), 0)).toBe(65_536);
  });
});

function varint(value: number): number[] {
  const bytes: number[] = [];
  while (value >= 0x80) {
    bytes.push((value % 0x80) | 0x80);
    value = Math.floor(value / 0x80);
  }
  bytes.push(value);
  return bytes;
}
