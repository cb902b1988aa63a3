/**
 * The hand-written codecs under hostile bytes. The peer codec reads what a member holding a valid
 * peer certificate sends; the proposal codecs (put-codec, schema-codec) read Raft log entries, which
 * such a member can write as leader. Every input must either decode to exactly what protobufjs's
 * reflection (the codec members used before, and the reference for the .proto files) decodes it to,
 * or be refused with a clear error (the peer codec: a WireFormatError naming it; the proposal
 * codecs: `undefined`, which leaves the bytes to protobufjs) — never decoded to something else,
 * never half-decoded, never hanging, and never making more objects than a bound.
 *
 * Inputs: seeded random mutations and truncations of valid encodings (fast-check prints the seed of
 * a failure to replay it), and hand-made ones: varints of 11 bytes, keys and lengths of 6 to 9
 * bytes (protobufjs steps over 10 whatever they hold), bools past 32 bits, 64-bit values past 2^53
 * and past 2^64, lengths of 2^31 or past the buffer, nested lengths that lie, wire types 3, 4, 6, 7,
 * field number 0, and millions of tiny items.
 */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import type { InternalRequest } from '../../src/api/messages.js';
import { decodeInternalRequest, encodeInternalRequest } from '../../src/api/proto.js';
import { decodePutProposal } from '../../src/api/put-codec.js';
import { compileCodec, decodeWithPlan } from '../../src/api/schema-codec.js';
import { decodeMessageBatch, encodeMessageBatch, peerBatchItemsMax, type MessageBatchFields, type RaftMessageFields } from '../../src/server/peer-codec.js';
import { WireFormatError, WireReader } from '../../src/wire/protobuf.js';
import { batchMeaning as peerMeaning, internalRequestType, referenceBatchDecode, referenceProposalDecode } from '../helpers/codec-reference.js';
const plan = compileCodec(internalRequestType);

/** A varint's bytes, canonical. */
function varint(value: bigint | number): number[] {
  let rest = BigInt(value);
  const bytes: number[] = [];
  while (rest >= 0x80n) {
    bytes.push(Number(rest & 0x7fn) | 0x80);
    rest >>= 7n;
  }
  bytes.push(Number(rest));
  return bytes;
}

/** `value` as a varint stretched to `length` bytes (non-canonical: continuation bytes of zero). */
function longVarint(value: number, length: number): number[] {
  const bytes = varint(value);
  while (bytes.length < length) {
    bytes[bytes.length - 1] = (bytes[bytes.length - 1] as number) | 0x80;
    bytes.push(0);
  }
  return bytes;
}

const key = (field: number, wireType: number): number[] => varint((field << 3) | wireType);
const text = (value: string): number[] => [...varint(Buffer.byteLength(value)), ...Buffer.from(value)];

type Outcome = { decoded: unknown } | { refused: string };

function referencePeer(bytes: Buffer): Outcome {
  try {
    return { decoded: peerMeaning(referenceBatchDecode(bytes)) };
  } catch (error) {
    return { refused: String(error) };
  }
}

/** The peer codec on `bytes`: refused with its own error, or what protobufjs decodes. Returns which. */
function peerSameOrRefused(bytes: Buffer): 'decoded' | 'refused' {
  let ours: MessageBatchFields;
  try {
    ours = decodeMessageBatch(bytes);
  } catch (error) {
    expect(error).toBeInstanceOf(WireFormatError);
    expect(String(error)).toMatch(/^WireFormatError: peer codec: /);
    return 'refused';
  }
  expect({ decoded: peerMeaning(ours) }).toEqual(referencePeer(bytes));
  return 'decoded';
}

function referenceProposal(bytes: Buffer): Outcome {
  try {
    return { decoded: referenceProposalDecode(bytes) };
  } catch (error) {
    return { refused: String(error) };
  }
}

/**
 * The proposal codecs on `bytes`: each answers undefined (protobufjs decides) or exactly what
 * protobufjs decodes; the whole path (decodeInternalRequest) decodes the same as protobufjs, or
 * throws: where protobufjs throws too, or with ProposalBoundsError where bytes no encoder writes
 * (a bool of 6 to 9 bytes, a known field of another wire type...) could step the bounds walk
 * (checkProposalBounds) elsewhere than protobufjs steps.
 */
function proposalSameOrLeft(bytes: Buffer): void {
  if (plan === undefined) throw new Error('no plan');
  const reference = referenceProposal(bytes);
  const put = decodePutProposal(bytes);
  if (put !== undefined) expect({ decoded: put }).toEqual(reference);
  const schema = decodeWithPlan(plan, bytes);
  if (schema !== undefined) expect({ decoded: schema }).toEqual(reference);
  let whole: Outcome;
  try {
    whole = { decoded: decodeInternalRequest(bytes) };
  } catch (error) {
    whole = { refused: String(error) };
  }
  if ('decoded' in whole) expect(whole).toEqual(reference);
  else if (!('refused' in reference)) expect(whole.refused).toMatch(/^ProposalBoundsError: proposal: /);
}

const uint = fc.oneof(fc.constant(0), fc.integer({ min: 0, max: 300 }), fc.integer({ min: 0, max: Number.MAX_SAFE_INTEGER }));
const shortText = fc.string({ maxLength: 8, unit: 'binary' });
const raftMessage: fc.Arbitrary<RaftMessageFields> = fc.record(
  {
    type: shortText,
    from: shortText,
    to: shortText,
    term: uint,
    last_index: uint,
    transfer: fc.boolean(),
    reject: fc.boolean(),
    index: uint,
    prev_index: uint,
    entries: fc.array(fc.record({ index: uint, term: uint, configuration_change: fc.boolean(), data: fc.uint8Array({ maxLength: 12 }).map((bytes) => Buffer.from(bytes)) }), { maxLength: 3 }),
    commit: uint,
    context: shortText,
    snapshot_voters: fc.array(shortText, { maxLength: 2 }),
  },
  { requiredKeys: ['type', 'from', 'to', 'term'] },
);
const peerBatch = fc.record({ cluster_id: shortText, from: shortText, messages: fc.array(raftMessage, { maxLength: 3 }) });

/** A mutation of an encoding: a byte changed, bytes inserted or removed, a high bit set (varints run on), or the end cut. */
const mutation = fc.oneof(
  fc.record({ kind: fc.constant('change' as const), at: fc.nat(), value: fc.integer({ min: 0, max: 255 }) }),
  fc.record({ kind: fc.constant('insert' as const), at: fc.nat(), bytes: fc.uint8Array({ minLength: 1, maxLength: 6 }) }),
  fc.record({ kind: fc.constant('remove' as const), at: fc.nat(), count: fc.integer({ min: 1, max: 4 }) }),
  fc.record({ kind: fc.constant('continue' as const), at: fc.nat() }),
  fc.record({ kind: fc.constant('cut' as const), at: fc.nat() }),
);
type Mutation = typeof mutation extends fc.Arbitrary<infer T> ? T : never;

function mutate(encoded: Buffer, mutations: Mutation[]): Buffer {
  let bytes = [...encoded];
  for (const change of mutations) {
    const at = bytes.length === 0 ? 0 : change.at % bytes.length;
    switch (change.kind) {
      case 'change':
        if (bytes.length > 0) bytes[at] = change.value;
        break;
      case 'insert':
        bytes.splice(at, 0, ...change.bytes);
        break;
      case 'remove':
        bytes.splice(at, change.count);
        break;
      case 'continue':
        if (bytes.length > 0) bytes[at] = (bytes[at] as number) | 0x80;
        break;
      case 'cut':
        bytes = bytes.slice(0, at);
        break;
    }
  }
  return Buffer.from(bytes);
}

describe('wire reader', () => {
  const reader = (bytes: number[]): WireReader => new WireReader(Buffer.from(bytes), 0, bytes.length);

  it('refuses varints of 11 bytes, or of 10 whose last runs on, and reads 10 as 64 bits', () => {
    expect(() => reader([...Array(10).fill(0xff), 0x01]).varint64()).toThrow(/longer than 10 bytes/);
    expect(() => reader([...Array(10).fill(0x80), 0x00]).varint64()).toThrow(/longer than 10 bytes/);
    expect(reader([...Array(9).fill(0xff), 0x01]).varint64()).toBe(2n ** 64n - 1n);
    // Bits past the 64th are dropped, as protobufjs drops them.
    expect(reader([...Array(9).fill(0xff), 0x7f]).varint64()).toBe(2n ** 64n - 1n);
    expect(() => reader([0x80, 0x80]).varint64()).toThrow(/cut short/);
  });

  it('refuses keys and lengths of 6 bytes or past 32 bits, field number 0, and lengths past the end', () => {
    expect(() => reader(longVarint(10, 6)).key()).toThrow(/past 32 bits/);
    expect(reader(longVarint(10, 5)).key()).toBe(10);
    expect(() => reader([0x80, 0x80, 0x80, 0x80, 0x10]).key()).toThrow(/past 32 bits/);
    expect(() => reader([0x02, 0x00]).key()).toThrow(/field number 0/);
    expect(() => reader([0x80, 0x80, 0x80, 0x80, 0x08]).length()).toThrow(/length of 2147483648 runs past/);
    expect(() => reader([0x05, 1, 2, 3, 4]).length()).toThrow(/length of 5 runs past/);
  });

  it('reads 32-bit values as protobufjs does: the low 32 bits of 5 bytes or 10, never 6 to 9', () => {
    expect(reader([0x80, 0x80, 0x80, 0x80, 0x10]).uint32()).toBe(0);
    expect(reader([0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]).uint32() | 0).toBe(-1);
    for (let length = 6; length <= 9; length++) expect(() => reader(longVarint(1, length)).uint32()).toThrow(/6 to 9 bytes/);
  });

  it('refuses a number past 2^53 - 1 where a codec keeps numbers', () => {
    expect(reader(varint(Number.MAX_SAFE_INTEGER)).varint53()).toBe(Number.MAX_SAFE_INTEGER);
    expect(() => reader(varint(2n ** 53n)).varint53()).toThrow(/past 2\^53 - 1/);
  });

  it('skips the wire types there are and refuses groups and wire types 6 and 7', () => {
    const skipped = reader([0x96, 0x01, 1, 2, 3, 4, 5, 6, 7, 8, 0x02, 9, 9, 1, 2, 3, 4]);
    for (const wireType of [0, 1, 2, 5]) skipped.skip(wireType);
    expect(skipped.done).toBe(true);
    for (const wireType of [3, 4, 6, 7]) expect(() => reader([0x00, 0x00]).skip(wireType)).toThrow(/wire type/);
    expect(() => reader([1, 2, 3]).skip(1)).toThrow(/runs past/);
  });
});

describe('peer codec under hostile bytes', () => {
  const vote = [...key(1, 2), ...text('vote'), ...key(2, 2), ...text('a'), ...key(3, 2), ...text('b'), ...key(4, 0), 0x03];
  const batchOf = (message: number[]): Buffer => Buffer.from([...key(1, 2), ...text('c'), ...key(2, 2), ...varint(message.length), ...message]);

  it('decodes seeded random mutations and truncations of valid batches as protobufjs does, or refuses them', () => {
    let decoded = 0;
    fc.assert(
      fc.property(peerBatch, fc.array(mutation, { minLength: 1, maxLength: 3 }), (batch, mutations) => {
        if (peerSameOrRefused(mutate(encodeMessageBatch(batch), mutations)) === 'decoded') decoded += 1;
      }),
      { numRuns: 3000 },
    );
    // Not everything refused: the comparison ran on the mutations that still decode.
    expect(decoded).toBeGreaterThan(100);
  });

  it('reads a bool past 32 bits as protobufjs does (its low 32 bits)', () => {
    // transfer (7) = 2^32: protobufjs reads false; the codec read true.
    const transfer = batchOf([...vote, ...key(7, 0), 0x80, 0x80, 0x80, 0x80, 0x10]);
    expect(peerSameOrRefused(transfer)).toBe('decoded');
    expect(decodeMessageBatch(transfer).messages[0]?.transfer).toBe(false);
  });

  it('refuses 64-bit values it cannot hold exactly, instead of rounding them', () => {
    for (const value of [2n ** 53n + 1n, 2n ** 64n - 1n]) {
      expect(peerSameOrRefused(batchOf([...vote, ...key(5, 0), ...varint(value)]))).toBe('refused');
    }
    // Past 2^64 (a 10-byte varint with high bits in its last byte): protobufjs drops them, the codec made 2^70.
    expect(peerSameOrRefused(batchOf([...vote, ...key(4, 0), ...Array(9).fill(0xff), 0x7f]))).toBe('refused');
    expect(peerSameOrRefused(batchOf([...vote, ...key(5, 0), ...varint(Number.MAX_SAFE_INTEGER)]))).toBe('decoded');
  });

  it('refuses keys and lengths of 6 to 9 bytes, which protobufjs reads otherwise', () => {
    for (let length = 6; length <= 9; length++) {
      // The message's length stretched: protobufjs steps over 10 bytes, into the message.
      expect(peerSameOrRefused(Buffer.from([...key(1, 2), ...text('c'), ...key(2, 2), ...longVarint(vote.length, length), ...vote]))).toBe('refused');
      // cluster_id's key stretched.
      expect(peerSameOrRefused(Buffer.from([...longVarint(0x0a, length), ...text('c'), ...key(2, 2), ...varint(vote.length), ...vote]))).toBe('refused');
    }
    // 5 bytes, non-canonical but read the same by both.
    expect(peerSameOrRefused(Buffer.from([...key(1, 2), ...text('c'), ...key(2, 2), ...longVarint(vote.length, 5), ...vote]))).toBe('decoded');
  });

  it('refuses varints of 11 bytes, lengths of 2^31 or past the buffer, nested lengths that lie, wire types 3, 4, 6, 7 and field number 0', () => {
    const hostile: number[][] = [
      [...key(9, 0), ...Array(10).fill(0x80), 0x00],
      [...key(2, 2), 0x80, 0x80, 0x80, 0x80, 0x08, ...vote],
      [...key(2, 2), 0xff, 0xff, 0xff, 0xff, 0x0f, ...vote],
      [...key(2, 2), ...varint(vote.length + 1), ...vote],
      // The message says 4 bytes; the entry inside it says 10, which the buffer has but the message does not.
      [...key(2, 2), 0x04, ...key(13, 2), 0x0a, ...key(1, 0), 0x01, ...Array(10).fill(0x08)],
      // An entry's data longer than its entry.
      [...key(2, 2), ...varint(vote.length + 4), ...vote, ...key(13, 2), 0x02, ...key(4, 2), 0x05],
      [...key(9, 3), ...key(9, 4)],
      [...key(9, 4)],
      [...key(9, 6), 0x00],
      [...key(9, 7), 0x00],
      [0x02, 0x00, ...key(2, 2), ...varint(vote.length), ...vote],
      [0x00, 0x00],
    ];
    for (const bytes of hostile) expect(peerSameOrRefused(Buffer.concat([batchOf(vote), Buffer.from(bytes)]))).toBe('refused');
    for (const bytes of hostile) expect(peerSameOrRefused(Buffer.from(bytes))).toBe('refused');
  });

  it('refuses a batch of more snapshot member names than peerBatchItemsMax, before making them all', () => {
    // snapshot_voters (18), empty, 3 bytes each: 2^20 + 1 of them in one message. The codec made an
    // array of them all (counted were messages and entries only).
    const name = [...key(18, 2), 0x00];
    const names = Buffer.alloc(name.length * (peerBatchItemsMax + 1));
    for (let at = 0; at < names.length; at += name.length) names.set(name, at);
    const message = Buffer.concat([Buffer.from(vote), names]);
    const bytes = Buffer.concat([Buffer.from([...key(2, 2), ...varint(message.length)]), message]);
    expect(() => decodeMessageBatch(bytes)).toThrow(/more than 1048576 messages and entries \(snapshot member names included\)/);
    const learners = Buffer.from(names);
    for (let at = 0; at < learners.length; at += name.length) learners.set(key(19, 2), at);
    expect(() => decodeMessageBatch(Buffer.concat([Buffer.from([...key(2, 2), ...varint(learners.length)]), learners]))).toThrow(/more than 1048576/);
    // What a member sends: a snapshot naming 7 voters and 2 learners.
    const snapshot: RaftMessageFields = { type: 'snapshot', from: 'a', to: 'b', term: 3, snapshot_voters: ['1', '2', '3', '4', '5', '6', '7'], snapshot_learners: ['8', '9'] };
    expect(decodeMessageBatch(encodeMessageBatch({ cluster_id: 'c', from: 'a', messages: [snapshot] })).messages[0]?.snapshot_voters).toHaveLength(7);
  });

  it('skips millions of empty unknown fields without making anything of them', () => {
    const unknown = Buffer.alloc(2 * 4_000_000);
    for (let at = 0; at < unknown.length; at += 2) unknown[at] = (9 << 3) | 2;
    expect(decodeMessageBatch(Buffer.concat([unknown, batchOf(vote)])).messages).toHaveLength(1);
    // One of some bytes, inside a message and outside.
    const unknownInside = [...vote, ...key(30, 2), 0x03, 1, 2, 3];
    const withUnknown = Buffer.from([...key(9, 2), 0x03, 1, 2, 3, ...key(2, 2), ...varint(unknownInside.length), ...unknownInside]);
    expect(peerSameOrRefused(withUnknown)).toBe('decoded');
    expect(decodeMessageBatch(withUnknown).messages[0]?.type).toBe('vote');
  });
});

describe('proposal codecs under hostile bytes', () => {
  const samples: InternalRequest[] = [
    { id: '5', request: 'put', put: { key: Buffer.from('key'), value: Buffer.from('value'), lease: '7', prev_kv: true, ignore_value: false, ignore_lease: false }, caller: { user: 'root', revision: '3', token: true } },
    { id: '18446744073709551615', request: 'put', put: { key: Buffer.from('k'), value: Buffer.alloc(0), lease: '-1', prev_kv: false, ignore_value: false, ignore_lease: true } },
    { id: '6', request: 'compaction', compaction: { revision: '9', physical: true } },
    { id: '8', request: 'delete_range', delete_range: { key: Buffer.from('a'), range_end: Buffer.from('z'), prev_kv: true } },
    {
      id: '9',
      request: 'txn',
      txn: {
        compare: [{ result: 1, target: 3, key: Buffer.from('k'), range_end: Buffer.alloc(0), value: Buffer.from('v'), target_union: 'value' }],
        success: [{ request: 'request_put', request_put: { key: Buffer.from('k'), value: Buffer.from('w'), lease: '0', prev_kv: false, ignore_value: false, ignore_lease: false } }],
        failure: [{ request: 'request_range', request_range: { key: Buffer.from('k'), range_end: Buffer.alloc(0), limit: '1', revision: '0', sort_order: 0, sort_target: 0, serializable: false, keys_only: false, count_only: false, min_mod_revision: '0', max_mod_revision: '0', min_create_revision: '0', max_create_revision: '0' } }],
      },
      caller: { user: 'u', revision: '1', token: false },
    } as unknown as InternalRequest,
  ];

  it('decodes seeded random mutations and truncations of valid proposals as protobufjs does, or leaves them to it', () => {
    fc.assert(
      fc.property(fc.constantFrom(...samples), fc.array(mutation, { minLength: 1, maxLength: 3 }), (request, mutations) => {
        proposalSameOrLeft(mutate(encodeInternalRequest(request), mutations));
      }),
      { numRuns: 3000 },
    );
  });

  it('leaves bools and enums of 6 to 9 bytes to protobufjs, which reads them otherwise', () => {
    for (let length = 6; length <= 9; length++) {
      // PutRequest.prev_kv (4) stretched, then ignore_value (5) and key (1).
      const put = [...key(4, 0), ...longVarint(1, length), ...key(5, 0), 0x01, ...key(1, 2), ...text('kk')];
      const putProposal = Buffer.from([...key(1, 0), 0x05, ...key(2, 2), ...varint(put.length), ...put]);
      expect(decodePutProposal(putProposal)).toBeUndefined();
      proposalSameOrLeft(putProposal);
      // CompactionRequest.physical (2) stretched, then revision (1).
      const compaction = [...key(2, 0), ...longVarint(1, length), ...key(1, 0), 0x09, 0x08, 0x01];
      const compactionProposal = Buffer.from([...key(1, 0), 0x06, ...key(5, 2), ...varint(compaction.length), ...compaction]);
      if (plan === undefined) throw new Error('no plan');
      expect(decodeWithPlan(plan, compactionProposal)).toBeUndefined();
      proposalSameOrLeft(compactionProposal);
    }
  });

  it('decodes bools past 32 bits and 64-bit values past 2^64 as protobufjs does', () => {
    const put = [...key(4, 0), 0x80, 0x80, 0x80, 0x80, 0x10, ...key(3, 0), ...Array(9).fill(0xff), 0x7f];
    const putProposal = Buffer.from([...key(1, 0), ...Array(9).fill(0xff), 0x03, ...key(2, 2), ...varint(put.length), ...put]);
    expect(decodePutProposal(putProposal)).toMatchObject({ id: '18446744073709551615', put: { prev_kv: false, lease: '-1' } });
    proposalSameOrLeft(putProposal);
  });

  it('leaves 11-byte varints, lengths of 2^31 or past the end, lying nested lengths, wire types 3, 4, 6, 7 and field number 0 to protobufjs', () => {
    const put = [...key(1, 2), ...text('k')];
    const hostile: number[][] = [
      [...key(1, 0), ...Array(10).fill(0x80), 0x00, ...key(2, 2), ...varint(put.length), ...put],
      [...key(2, 2), 0x80, 0x80, 0x80, 0x80, 0x08, ...put],
      [...key(2, 2), ...varint(put.length + 1), ...put],
      [...key(2, 2), ...varint(put.length), ...key(1, 2), 0x05, 0x6b],
      [...key(2, 2), ...varint(put.length), ...put, ...key(9, 3), ...key(9, 4)],
      [...key(2, 2), ...varint(put.length), ...put, ...key(9, 6), 0x00],
      [...key(2, 2), ...varint(put.length), ...put, ...key(9, 7), 0x00],
      [0x00, 0x00, ...key(2, 2), ...varint(put.length), ...put],
      [0x02, 0x00, ...key(2, 2), ...varint(put.length), ...put],
    ];
    if (plan === undefined) throw new Error('no plan');
    for (const bytes of hostile) {
      const data = Buffer.from(bytes);
      expect(decodePutProposal(data)).toBeUndefined();
      expect(decodeWithPlan(plan, data)).toBeUndefined();
      proposalSameOrLeft(data);
    }
  });
});
