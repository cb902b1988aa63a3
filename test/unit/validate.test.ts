import { describe, expect, it } from 'vitest';
import type { RequestOp, TxnRequest } from '../../src/api/messages.js';
import { RampartError } from '../../src/errors.js';
import { checkTxnDuplicates, oversizedTxn, txnDepthMax, txnOpsTotalMax, validateTxn } from '../../src/server/validate.js';
import { packageDefinition } from '../../src/api/proto.js';
import { txnWithinLimits } from '../../src/api/txn-scan.js';

const put = (key: string): RequestOp => ({ request: 'request_put', request_put: { key: Buffer.from(key), value: Buffer.from('v'), lease: '0', prev_kv: false, ignore_value: false, ignore_lease: false } });
const del = (key: string, end = ''): RequestOp => ({ request: 'request_delete_range', request_delete_range: { key: Buffer.from(key), range_end: Buffer.from(end), prev_kv: false } });
const txn = (success: RequestOp[], failure: RequestOp[] = []): TxnRequest => ({ compare: [], success, failure });
const nested = (success: RequestOp[], failure: RequestOp[] = []): RequestOp => ({ request: 'request_txn', request_txn: txn(success, failure) });

describe('txn validation', () => {
  it('allows distinct keys and the same key in different branches', () => {
    expect(() => validateTxn(txn([put('a'), put('b')], [put('a')]))).not.toThrow();
    expect(() => validateTxn(txn([nested([put('a')], [put('a')])]))).not.toThrow();
  });

  it('refuses a key written twice in one branch, also through nesting and delete ranges', () => {
    const duplicate = new RampartError('DuplicateKey');
    expect(() => validateTxn(txn([put('a'), put('a')]))).toThrow(duplicate);
    expect(() => validateTxn(txn([put('a'), nested([put('a')])]))).toThrow(duplicate);
    expect(() => validateTxn(txn([put('b'), del('a', 'c')]))).toThrow(duplicate);
    expect(() => validateTxn(txn([put('x'), del('a', 'c')]))).not.toThrow();
  });

  it('limits ops per branch to 128', () => {
    const ops = Array.from({ length: 128 }, (_, index) => put(`k${index}`));
    expect(() => validateTxn(txn(ops))).not.toThrow();
    expect(() => validateTxn(txn([...ops, put('one-more')]))).toThrow(new RampartError('TooManyOps'));
  });
});

describe('txn work bounds (issue 8, item 1)', () => {
  const branchOf = (count: number, make: (index: number) => RequestOp): RequestOp[] => Array.from({ length: count }, (_, index) => make(index));
  /** The attack: many nested Txns of puts and deletes, every put and delete distinct. */
  const attack = (levels: number, perLevel: number): TxnRequest =>
    txn(branchOf(levels, (level) => nested(branchOf(perLevel, (index) => (index % 2 === 0 ? put(`${level}/p${index}`) : del(`${level}/d${index}`, `${level}/d${index}z`))))));

  it('refuses a Txn past the total ops or the depth bound, quickly', () => {
    const reported = attack(128, 128);
    const started = performance.now();
    expect(() => validateTxn(reported)).toThrow(new RampartError('TooManyOps'));
    expect(performance.now() - started).toBeLessThan(1_000);
    expect(() => validateTxn(attack(7, 128))).not.toThrow();
    expect(() => validateTxn(txn([...attack(7, 128).success, nested(branchOf(128, (index) => put(`x${index}`)))]))).toThrow(new RampartError('TooManyOps'));
    // A flat Txn at etcd's limits passes: 128 compares, 128 success and 128 failure ops.
    const compare = { key: Buffer.from('c'), range_end: Buffer.alloc(0), result: 0, target: 0, version: '0' } as unknown as TxnRequest['compare'][number];
    const flat: TxnRequest = { compare: Array.from({ length: 128 }, () => compare), success: branchOf(128, (index) => put(`s${index}`)), failure: branchOf(128, (index) => put(`f${index}`)) };
    expect(() => validateTxn(flat)).not.toThrow();
    let deep = txn([put('leaf')]);
    for (let level = 1; level < txnDepthMax; level++) deep = txn([nested(deep.success)]);
    expect(() => validateTxn(deep)).not.toThrow();
    expect(() => validateTxn(txn([nested(deep.success)]))).toThrow(new RampartError('TooManyOps'));
    expect(() => validateTxn(oversizedTxn)).toThrow(new RampartError('TooManyOps'));
  });

  it('checks duplicate keys in O(n log n): 64k nested ops in well under a second (quadratic took minutes)', () => {
    const large = attack(512, 128);
    const started = performance.now();
    expect(() => checkTxnDuplicates(large)).not.toThrow();
    expect(performance.now() - started).toBeLessThan(10_000); // quadratic: minutes
    expect(() => checkTxnDuplicates(txn([...large.success, put('300/d1')]))).toThrow(new RampartError('DuplicateKey'));
    expect(() => checkTxnDuplicates(txn([...large.success, put('300/d1z')]))).not.toThrow();
  });

  it('keeps etcd range conventions in the duplicate check', () => {
    const duplicate = new RampartError('DuplicateKey');
    expect(() => validateTxn(txn([put('zzz'), del('m', '\0')]))).toThrow(duplicate);
    expect(() => validateTxn(txn([put('a'), del('m', '\0')]))).not.toThrow();
    expect(() => validateTxn(txn([put('c'), del('a', 'c')]))).not.toThrow();
    expect(() => validateTxn(txn([put('b'), del('a', 'b'), del('b', 'c')]))).toThrow(duplicate);
    expect(() => validateTxn(txn([put('b'), del('c', 'a')]))).not.toThrow();
    expect(() => validateTxn(txn([nested([put('k')]), nested([], [del('k')])]))).toThrow(duplicate);
  });
});

describe('txn wire scan', () => {
  const method = (packageDefinition['etcdserverpb.KV'] as Record<string, { requestSerialize(value: object): Buffer; requestDeserialize(bytes: Buffer): TxnRequest }>).Txn;
  const wire = (request: object): Buffer => method?.requestSerialize(request) ?? Buffer.alloc(0);

  it('refuses an oversized Txn before decoding it and decodes the others as before', () => {
    const ops = (count: number, prefix: string): object[] => Array.from({ length: count }, (_, index) => ({ request_put: { key: Buffer.from(`${prefix}${index}`) } }));
    const huge = wire({ success: Array.from({ length: 1500 }, (_, index) => ({ request_txn: { success: ops(128, `${index}/`) } })) });
    expect(huge.length).toBeGreaterThan(1_000_000);
    expect(txnWithinLimits(huge)).toBe(false);
    const started = performance.now();
    expect(method?.requestDeserialize(huge)).toBe(oversizedTxn);
    expect(performance.now() - started).toBeLessThan(1_000); // decoding it: seconds
    const fine = wire({ compare: [{ key: Buffer.from('c') }], success: [{ request_txn: { success: ops(100, 'a') } }], failure: ops(5, 'b') });
    expect(txnWithinLimits(fine)).toBe(true);
    expect(method?.requestDeserialize(fine).success[0]).toMatchObject({ request: 'request_txn' });
    let deep: object = { success: ops(1, 'leaf') };
    for (let level = 1; level < txnDepthMax; level++) deep = { success: [{ request_txn: deep }] };
    expect(txnWithinLimits(wire(deep))).toBe(true);
    expect(txnWithinLimits(wire({ success: [{ request_txn: deep }] }))).toBe(false);
    expect(txnWithinLimits(wire({ compare: Array.from({ length: txnOpsTotalMax + 1 }, () => ({ key: Buffer.from('c') })) }))).toBe(false);
    // Malformed bytes are left to the decoder's own error.
    expect(txnWithinLimits(Buffer.from([0x12, 0xff, 0x01]))).toBe(true);
  });
});
