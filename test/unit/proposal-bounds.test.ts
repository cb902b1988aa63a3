/**
 * Proposals read from the Raft log are bounded before their objects are made (schema-codec.ts
 * `proposalBounds`): a crafted entry of hundreds of thousands of tiny messages or repeated values,
 * or nested deeper than protobufjs's recursion can go (a stack overflow: at a depth that differs
 * between processes, so members could disagree), is refused with ProposalBoundsError, and every
 * member skips it (committed-proposal.ts). Everything the API lets through still decodes, by the
 * codec and by protobufjs alike.
 */
import { describe, expect, it } from 'vitest';
import type { InternalRequest, RequestOp, TxnRequest } from '../../src/api/messages.js';
import { decodeInternalRequest, encodeInternalRequest } from '../../src/api/proto.js';
import { ProposalBoundsError, checkProposalBounds, compileCodec, decodeWithPlan, proposalBounds } from '../../src/api/schema-codec.js';
import { decodeCommittedProposal } from '../../src/server/committed-proposal.js';
import { checkTxnSize, txnDepthMax, txnOpsTotalMax } from '../../src/server/validate.js';
import { internalRequestType, referenceProposalDecode } from '../helpers/codec-reference.js';

const plan = compileCodec(internalRequestType);
if (plan === undefined) throw new Error('no plan');

function varint(value: number): Buffer {
  const bytes: number[] = [];
  let rest = value;
  while (rest >= 0x80) {
    bytes.push((rest & 0x7f) | 0x80);
    rest = Math.floor(rest / 0x80);
  }
  bytes.push(rest);
  return Buffer.from(bytes);
}

/** A length-delimited field `field` holding `body`. */
const message = (field: number, body: Buffer): Buffer => Buffer.concat([varint((field << 3) | 2), varint(body.length), body]);
/** InternalRequest { id: 7, txn (4): body }. */
const txnProposal = (txnBody: Buffer): Buffer => Buffer.concat([Buffer.from([0x08, 0x07]), message(4, txnBody)]);

/** Refused the same way by every path: the codec, the walk before protobufjs, and the whole decode. */
function expectRefused(data: Buffer, reason: RegExp): void {
  expect(() => decodeWithPlan(plan as NonNullable<typeof plan>, data)).toThrow(ProposalBoundsError);
  expect(() => checkProposalBounds(plan as NonNullable<typeof plan>, data)).toThrow(reason);
  expect(() => decodeInternalRequest(data)).toThrow(ProposalBoundsError);
  expect(decodeCommittedProposal(data)).toEqual({ ok: false, id: '7', reason: 'ProposalBoundsError' });
}

const put = (key: string): RequestOp => ({ request: 'request_put', request_put: { key: Buffer.from(key), value: Buffer.from('v'), lease: '0', prev_kv: false, ignore_value: false, ignore_lease: false } } as RequestOp);
const range = (key: string): RequestOp => ({ request: 'request_range', request_range: { key: Buffer.from(key), range_end: Buffer.alloc(0), limit: '0', revision: '0', sort_order: 0, sort_target: 0, serializable: false, keys_only: false, count_only: false, min_mod_revision: '0', max_mod_revision: '0', min_create_revision: '0', max_create_revision: '0' } } as RequestOp);
const compare = (key: string): TxnRequest['compare'][number] => ({ result: 0, target: 3, key: Buffer.from(key), range_end: Buffer.alloc(0), value: Buffer.from('v'), target_union: 'value' } as TxnRequest['compare'][number]);

describe('proposal bounds', () => {
  it('refuses more messages than itemsMax: empty compares, empty ops', () => {
    const count = proposalBounds.itemsMax + 1;
    // TxnRequest.compare (1), each an empty Compare: 2 bytes, ~100 bytes of objects decoded.
    expectRefused(txnProposal(Buffer.alloc(2 * count, Buffer.from([0x0a, 0x00]))), /more than 16384 messages and repeated values/);
    // TxnRequest.success (2), each an empty RequestOp: 750,000 of them in a 1.5 MiB entry.
    expectRefused(txnProposal(Buffer.alloc(2 * 750_000, Buffer.from([0x12, 0x00]))), /more than 16384/);
  });

  it('refuses more repeated strings than itemsMax (member attributes\' client URLs)', () => {
    // InternalRequest.member_attributes (9) { client_urls (3): '' x N }.
    const urls = Buffer.alloc(2 * (proposalBounds.itemsMax + 1), Buffer.from([0x1a, 0x00]));
    expectRefused(Buffer.concat([Buffer.from([0x08, 0x07]), message(9, urls)]), /more than 16384/);
    const few = Buffer.concat([Buffer.from([0x08, 0x07]), message(9, Buffer.alloc(2 * 8, Buffer.from([0x1a, 0x00])))]);
    expect(decodeInternalRequest(few).member_attributes?.client_urls).toHaveLength(8);
  });

  it('refuses nesting deeper than depthMax before protobufjs recurses into it (5,000 Txns: a stack overflow, or not, by the process)', () => {
    // TxnRequest { success: RequestOp { request_txn (4): TxnRequest { ... } } }, from the inside out.
    let body: Buffer = Buffer.alloc(0);
    for (let level = 0; level < 5_000; level++) body = message(2, message(4, body));
    expectRefusedDeep(txnProposal(body));
    // Just past depthMax (each Txn level is 2 messages): refused; at it, decoded as protobufjs does.
    let atMax: Buffer = Buffer.alloc(0);
    for (let depth = 2; depth < proposalBounds.depthMax; depth += 2) atMax = message(2, message(4, atMax));
    expect(decodeInternalRequest(txnProposal(atMax))).toEqual(referenceProposalDecode(txnProposal(atMax)));
    expectRefusedDeep(txnProposal(message(2, message(4, message(2, message(4, atMax))))));
  });

  it('refuses a known field of another wire type, where protobufjs would read a message anyway', () => {
    // InternalRequest.txn (4) as a varint (wire type 0): protobufjs reads the varint as a length.
    expect(() => checkProposalBounds(plan, Buffer.from([0x08, 0x07, 0x20, 0x02, 0x12, 0x00]))).toThrow(/proposal: field 4 of wire type 0/);
    expect(() => decodeInternalRequest(Buffer.from([0x08, 0x07, 0x20, 0x02, 0x12, 0x00]))).toThrow(ProposalBoundsError);
  });

  it('decodes every Txn the API lets through, by the codec and by protobufjs (nested past the codec\'s depth)', () => {
    // txnDepthMax levels, each 30 compares, 15 puts and a nested Txn on success, 15 ranges on failure.
    let txn: TxnRequest = { compare: [], success: [], failure: [] };
    for (let level = txnDepthMax; level >= 1; level--) {
      const keys = Array.from({ length: 15 }, (_, position) => `l${level}-${position}`);
      txn = {
        compare: [...keys, ...keys].map(compare),
        success: [...(level === txnDepthMax ? [] : [{ request: 'request_txn', request_txn: txn } as RequestOp]), ...keys.map(put)],
        failure: keys.map(range),
      };
    }
    checkTxnSize(txn);
    let total = 0;
    for (let inner: TxnRequest | undefined = txn; inner !== undefined; inner = inner.success.find((op) => op.request === 'request_txn')?.request_txn) total += inner.compare.length + inner.success.length + inner.failure.length;
    expect(total).toBeGreaterThan(txnOpsTotalMax - 64);
    const request = { id: '9', request: 'txn', txn, caller: { user: 'u', revision: '1', token: false } } as unknown as InternalRequest;
    const data = encodeInternalRequest(request);
    // Deeper than the codec decodes (32): protobufjs decodes it, after the bounds walk.
    expect(decodeWithPlan(plan, data)).toBeUndefined();
    expect(() => checkProposalBounds(plan, data)).not.toThrow();
    expect(decodeInternalRequest(data)).toEqual(referenceProposalDecode(data));
    // A flat Txn at etcd's 128 per list: the codec.
    const flat = encodeInternalRequest({ id: '10', request: 'txn', txn: { compare: Array.from({ length: 128 }, (_, position) => compare(`c${position}`)), success: Array.from({ length: 128 }, (_, position) => put(`p${position}`)), failure: Array.from({ length: 128 }, (_, position) => range(`r${position}`)) } } as unknown as InternalRequest);
    expect(decodeWithPlan(plan, flat)).toEqual(referenceProposalDecode(flat));
  });
});

function expectRefusedDeep(data: Buffer): void {
  expect(() => checkProposalBounds(plan as NonNullable<typeof plan>, data)).toThrow(/proposal: messages nested more than 64 deep/);
  expect(() => decodeInternalRequest(data)).toThrow(ProposalBoundsError);
  expect(decodeCommittedProposal(data)).toEqual({ ok: false, id: '7', reason: 'ProposalBoundsError' });
}
