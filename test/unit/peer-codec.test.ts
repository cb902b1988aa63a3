/**
 * The hand-written peer codec against protobufjs (the codec members used before, and the
 * reference for raft.proto's wire format): every Raft message type survives both directions.
 */
import { describe, expect, it } from 'vitest';
import type { Message } from '../../src/raft/types.js';
import { decodeMessageBatch, encodeMessageBatch, type MessageBatchFields } from '../../src/server/peer-codec.js';
import { fromWire, peerMessageBytesMax, toWire } from '../../src/server/transport.js';
import { requestBytesInFlightPerSourceMax } from '../../src/api/request-bytes-budget.js';
import { referenceBatchDecode as referenceDecode, referenceBatchEncode as referenceEncode } from '../helpers/codec-reference.js';

const big = 2 ** 40 + 7;
const entry = (index: number, data: string, type: 'normal' | 'configurationChange' = 'normal') => ({ index, term: 3, type, data: Buffer.from(data) }) as const;
const messages: Message[] = [
  { type: 'preVote', from: 'a1', to: 'b2', term: 4, lastIndex: big, lastTerm: 3, transfer: false },
  { type: 'vote', from: 'a1', to: 'b2', term: 4, lastIndex: 9, lastTerm: 3, transfer: true },
  { type: 'preVoteResponse', from: 'b2', to: 'a1', term: 4, reject: true },
  { type: 'voteResponse', from: 'b2', to: 'a1', term: 4, reject: false },
  { type: 'append', from: 'a1', to: 'b2', term: 3, prevIndex: 0, prevTerm: 0, commit: 0, entries: [] },
  { type: 'append', from: 'a1', to: 'b2', term: 3, prevIndex: 7, prevTerm: 2, commit: big, entries: [entry(8, 'x'.repeat(300)), entry(9, '', 'configurationChange'), entry(big, 'é')] },
  { type: 'append', from: 'a1', to: 'b2', term: 3, prevIndex: 9, prevTerm: 3, commit: 9, entries: [], commitOnly: true },
  { type: 'appendResponse', from: 'b2', to: 'a1', term: 3, reject: true, index: 7, rejectHint: 5 },
  { type: 'heartbeat', from: 'a1', to: 'b2', term: 3, commit: 12, context: 'ctx:1' },
  { type: 'heartbeatResponse', from: 'b2', to: 'a1', term: 3, context: '' },
  { type: 'timeoutNow', from: 'a1', to: 'b2', term: 3 },
  { type: 'propose', from: 'b2', to: 'a1', term: 0, entries: [{ type: 'normal', data: Buffer.from('p') }, { type: 'configurationChange', data: Buffer.alloc(0) }] },
  { type: 'readIndex', from: 'b2', to: 'a1', term: 0, context: 'r:9' },
  { type: 'readIndexResponse', from: 'a1', to: 'b2', term: 3, context: 'r:9', index: 44 },
];
const batch: MessageBatchFields = { cluster_id: 'c0ffee', from: 'b2', messages: messages.map(toWire) };

describe('peer codec', () => {
  it('encodes what protobufjs decodes to the same messages', () => {
    const decoded = referenceDecode(encodeMessageBatch(batch));
    expect(decoded.cluster_id).toBe('c0ffee');
    expect(decoded.from).toBe('b2');
    expect(referenceDecode(encodeMessageBatch({ cluster_id: 'c0ffee', from: 'a1', messages: [] }))).toEqual({ cluster_id: 'c0ffee', from: 'a1', messages: [] });
    expect(decoded.messages.map((wire) => fromWire(wire))).toEqual(messages);
  });

  it('decodes what protobufjs encodes to the same messages', () => {
    const decoded = decodeMessageBatch(referenceEncode(batch));
    expect(decoded.cluster_id).toBe('c0ffee');
    expect(decoded.from).toBe('b2');
    expect(decodeMessageBatch(referenceEncode({ cluster_id: 'c0ffee', from: 'a1', messages: [] }))).toEqual({ cluster_id: 'c0ffee', from: 'a1', messages: [] });
    expect(decoded.messages.map((wire) => fromWire(wire))).toEqual(messages);
  });

  it('skips fields it does not know and refuses truncated input', () => {
    // Field 9 of MessageBatch (unknown), a varint, before the batch proper.
    const unknownField = Buffer.concat([Buffer.from([9 << 3, 0x96, 0x01]), encodeMessageBatch(batch)]);
    expect(decodeMessageBatch(unknownField).messages.map((wire) => fromWire(wire))).toEqual(messages);
    const encoded = encodeMessageBatch(batch);
    expect(() => decodeMessageBatch(encoded.subarray(0, encoded.length - 3))).toThrow(/peer codec/);
    expect(() => decodeMessageBatch(Buffer.from([0x48, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]))).toThrow(/varint/);
  });

  it('fits an append of one entry holding the largest request a client may send within the peer message limit', () => {
    // --max-request-bytes is at most requestBytesInFlightPerSourceMax; its proposal adds the caller
    // and a header (a few hundred bytes; 64 KiB here to spare). A batch over the limit is never sent.
    const data = Buffer.alloc(requestBytesInFlightPerSourceMax + 64 * 1024);
    const largest: Message = { type: 'append', from: 'a1', to: 'b2', term: 3, prevIndex: 7, prevTerm: 2, commit: 7, entries: [{ index: 8, term: 3, type: 'normal', data }] };
    const encoded = encodeMessageBatch({ cluster_id: 'c0ffee', from: 'a1', messages: [toWire(largest)] });
    expect(encoded.length).toBeGreaterThan(requestBytesInFlightPerSourceMax);
    expect(encoded.length).toBeLessThanOrEqual(peerMessageBytesMax);
  });
});
