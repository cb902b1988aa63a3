import { describe, expect, it } from 'vitest';
import type { RequestOp, TxnRequest } from '../../src/api/messages.js';
import { RampartError } from '../../src/errors.js';
import { validateTxn } from '../../src/server/validate.js';

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
