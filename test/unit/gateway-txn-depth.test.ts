/**
 * A gateway Txn nested past txnDepthMax is refused with etcd's error, whatever its depth. Before,
 * 40,000 levels (a 1.2 MB body, under the request size limit) overflowed the stack of the JSON
 * conversion and the gateway answered `etcdserver: internal error`.
 */
import { describe, expect, it } from 'vitest';
import { RampartError } from '../../src/errors.js';
import { decodeRequest, messageType } from '../../src/api/json-codec.js';
import { checkTxnSize, txnDepthMax } from '../../src/server/validate.js';
import type { TxnRequest } from '../../src/api/messages.js';

const txnType = messageType('etcdserverpb.TxnRequest');

/** A Txn of `levels` levels, each holding the next in its success branch, a compare and a put at the bottom. */
function nested(levels: number): unknown {
  let txn: unknown = {
    compare: [{ key: Buffer.from('/a').toString('base64'), target: 'VALUE', result: 'EQUAL', value: Buffer.from('x').toString('base64') }],
    success: [{ request_put: { key: Buffer.from('/b').toString('base64'), value: Buffer.from('y').toString('base64') } }],
  };
  for (let level = 1; level < levels; level++) txn = { success: [{ request_txn: txn }] };
  return txn;
}

describe('gateway Txn depth', () => {
  it('decodes a Txn of txnDepthMax levels whole', () => {
    const decoded = decodeRequest(txnType, nested(txnDepthMax)) as TxnRequest;
    expect(() => checkTxnSize(decoded)).not.toThrow();
    let txn = decoded;
    for (let level = 1; level < txnDepthMax; level++) {
      const op = txn.success[0];
      if (op?.request !== 'request_txn') throw new Error(`level ${level} lost its nested Txn`);
      txn = op.request_txn;
    }
    expect(txn.success[0]?.request).toBe('request_put');
    expect(txn.compare).toHaveLength(1);
  });

  it('refuses a deeper one with etcd\'s too-many-operations error, however deep', () => {
    for (const levels of [txnDepthMax + 1, txnDepthMax + 2, 40_000]) {
      let error: unknown;
      try {
        checkTxnSize(decodeRequest(txnType, nested(levels)) as TxnRequest);
      } catch (caught) {
        error = caught;
      }
      expect(error, `${levels} levels`).toBeInstanceOf(RampartError);
      expect((error as RampartError).code).toBe('TooManyOps');
    }
  });
});
