/**
 * Checks that need no state, done before a request is proposed (etcd's v3rpc/key.go checks):
 * a request that fails here never reaches the log.
 */
import { RampartError } from '../errors.js';
import { rangeContains } from '../storage/mvcc/range.js';
import type { DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest } from '../api/messages.js';
import { parseBigInt64 } from './kv.js';

export const txnOpsMax = 128;

export function validateRange(request: RangeRequest): void {
  if (request.key.length === 0) {
    throw new RampartError('EmptyKey');
  }
  if (![0, 1, 2].includes(request.sort_order) || ![0, 1, 2, 3, 4].includes(request.sort_target)) {
    throw new RampartError('InvalidSortOption');
  }
}

export function validatePut(request: PutRequest): void {
  if (request.key.length === 0) {
    throw new RampartError('EmptyKey');
  }
  if (request.ignore_value && request.value.length !== 0) {
    throw new RampartError('ValueProvided');
  }
  if (request.ignore_lease && parseBigInt64(request.lease) !== 0n) {
    throw new RampartError('LeaseProvided');
  }
}

export function validateDeleteRange(request: DeleteRangeRequest): void {
  if (request.key.length === 0) {
    throw new RampartError('EmptyKey');
  }
}

export function validateTxn(request: TxnRequest): void {
  if (request.compare.length > txnOpsMax || request.success.length > txnOpsMax || request.failure.length > txnOpsMax) {
    throw new RampartError('TooManyOps');
  }
  for (const op of [...request.success, ...request.failure]) {
    validateOp(op);
  }
  checkDuplicates(request.success);
  checkDuplicates(request.failure);
}

function validateOp(op: RequestOp): void {
  switch (op.request) {
    case 'request_range':
      return validateRange(op.request_range);
    case 'request_put':
      return validatePut(op.request_put);
    case 'request_delete_range':
      return validateDeleteRange(op.request_delete_range);
    case 'request_txn':
      return validateTxn(op.request_txn);
    default:
      throw new RampartError('InvalidArgument', 'empty request op');
  }
}

interface Writes {
  puts: Buffer[];
  deletes: { key: Buffer; rangeEnd: Buffer }[];
}

/** Within one branch, a key may be written once: no two puts of a key, no put inside a deleted range. */
function checkDuplicates(ops: RequestOp[]): Writes {
  const writes: Writes = { puts: [], deletes: [] };
  const seen = new Set<string>();
  const addPut = (key: Buffer): void => {
    const id = key.toString('latin1');
    if (seen.has(id)) {
      throw new RampartError('DuplicateKey');
    }
    seen.add(id);
    writes.puts.push(key);
  };
  for (const op of ops) {
    if (op.request === 'request_put') {
      addPut(op.request_put.key);
    } else if (op.request === 'request_delete_range') {
      writes.deletes.push({ key: op.request_delete_range.key, rangeEnd: op.request_delete_range.range_end });
    } else if (op.request === 'request_txn') {
      const success = checkDuplicates(op.request_txn.success);
      const failure = checkDuplicates(op.request_txn.failure);
      // Only one nested branch runs, so the two may overlap each other but not the outer writes.
      const nestedPuts = new Set([...success.puts, ...failure.puts].map((key) => key.toString('latin1')));
      for (const id of nestedPuts) {
        addPut(Buffer.from(id, 'latin1'));
      }
      writes.deletes.push(...success.deletes, ...failure.deletes);
    }
  }
  for (const key of writes.puts) {
    if (writes.deletes.some((range) => rangeContains(range, key))) {
      throw new RampartError('DuplicateKey');
    }
  }
  return writes;
}
