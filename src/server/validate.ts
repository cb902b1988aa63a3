/**
 * Checks that need no state, done before a request is proposed (etcd's v3rpc/key.go checks):
 * a request that fails here never reaches the log.
 *
 * Every check here is O(n log n) or better in the size of the request, and a Txn's size is bounded
 * first (ops per list as etcd, plus a total over every nesting level and a nesting depth, which
 * etcd does not bound): one request can only cost a member a bounded amount of work.
 */
import { RampartError } from '../errors.js';
import type { DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest } from '../api/messages.js';
import { parseBigInt64 } from './kv.js';

/** etcd's limit on compares, success ops and failure ops of one Txn level. */
export const txnOpsMax = 128;
/** Compares and ops of a Txn counted over every nesting level (Rampart's bound; a flat Txn has at most 3 × 128). */
export const txnOpsTotalMax = 1024;
/** Txns nested inside one another, the outermost counting as 1 (Rampart's bound). */
export const txnDepthMax = 16;

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

/**
 * What the API's decoder hands over in place of a Txn whose wire bytes it found past
 * txnOpsTotalMax or txnDepthMax (decoding hundreds of thousands of ops would itself hold the event
 * loop for a second): it fails checkTxnSize with etcd's error, as the decoded Txn would.
 */
export const oversizedTxn: TxnRequest = Object.freeze({ compare: [], success: [], failure: [] });

/**
 * Bounds a Txn's size before anything else looks at it: linear, iterative (no recursion on
 * client-controlled depth), and stops at the first limit passed.
 */
export function checkTxnSize(request: TxnRequest): void {
  if (request === oversizedTxn) {
    throw new RampartError('TooManyOps');
  }
  let total = 0;
  const pending: { txn: TxnRequest; depth: number }[] = [{ txn: request, depth: 1 }];
  for (let next = pending.pop(); next !== undefined; next = pending.pop()) {
    const { txn, depth } = next;
    if (depth > txnDepthMax) {
      throw new RampartError('TooManyOps');
    }
    if (txn.compare.length > txnOpsMax || txn.success.length > txnOpsMax || txn.failure.length > txnOpsMax) {
      throw new RampartError('TooManyOps');
    }
    total += txn.compare.length + txn.success.length + txn.failure.length;
    if (total > txnOpsTotalMax) {
      throw new RampartError('TooManyOps');
    }
    for (const op of txn.success) if (op.request === 'request_txn') pending.push({ txn: op.request_txn, depth: depth + 1 });
    for (const op of txn.failure) if (op.request === 'request_txn') pending.push({ txn: op.request_txn, depth: depth + 1 });
  }
}

/** The linear checks of a Txn: its size, then each op's own checks. */
export function validateTxnShape(request: TxnRequest): void {
  checkTxnSize(request);
  validateOps(request);
}

/** The duplicate-key check (O(n log n)): the member runs it after authorization. */
export function checkTxnDuplicates(request: TxnRequest): void {
  checkDuplicates(request.success);
  checkDuplicates(request.failure);
}

export function validateTxn(request: TxnRequest): void {
  validateTxnShape(request);
  checkTxnDuplicates(request);
}

function validateOps(request: TxnRequest): void {
  for (const op of [...request.success, ...request.failure]) {
    switch (op.request) {
      case 'request_range':
        validateRange(op.request_range);
        break;
      case 'request_put':
        validatePut(op.request_put);
        break;
      case 'request_delete_range':
        validateDeleteRange(op.request_delete_range);
        break;
      case 'request_txn':
        validateOps(op.request_txn);
        break;
      default:
        throw new RampartError('InvalidArgument', 'empty request op');
    }
  }
}

interface Writes {
  /** Keys put, as latin1 strings (one char per byte). */
  puts: Set<string>;
  deletes: { key: Buffer; rangeEnd: Buffer }[];
}

/**
 * Within one branch, a key may be written once: no two puts of a key, no put inside a deleted range
 * (nested branches included; the two branches of one nested Txn may overlap, only one runs).
 * Puts are a set and deletes a sorted merged interval set: O(n log n) per level, and the depth is
 * bounded by checkTxnSize.
 */
function checkDuplicates(ops: RequestOp[]): Writes {
  const writes: Writes = { puts: new Set(), deletes: [] };
  const addPut = (id: string): void => {
    if (writes.puts.has(id)) {
      throw new RampartError('DuplicateKey');
    }
    writes.puts.add(id);
  };
  for (const op of ops) {
    if (op.request === 'request_put') {
      addPut(op.request_put.key.toString('latin1'));
    } else if (op.request === 'request_delete_range') {
      writes.deletes.push({ key: op.request_delete_range.key, rangeEnd: op.request_delete_range.range_end });
    } else if (op.request === 'request_txn') {
      const success = checkDuplicates(op.request_txn.success);
      const failure = checkDuplicates(op.request_txn.failure);
      for (const id of new Set([...success.puts, ...failure.puts])) {
        addPut(id);
      }
      writes.deletes.push(...success.deletes, ...failure.deletes);
    }
  }
  if (writes.deletes.length > 0 && writes.puts.size > 0) {
    const deleted = mergeRanges(writes.deletes);
    for (const id of writes.puts) {
      if (insideAny(deleted, id)) {
        throw new RampartError('DuplicateKey');
      }
    }
  }
  return writes;
}

/** [start, end) over latin1 strings (string order is byte order); end null is unbounded. */
interface Span {
  start: string;
  end: string | null;
}

/** Sorted, merged, non-overlapping spans of the ranges (etcd's range_end conventions). */
function mergeRanges(ranges: readonly { key: Buffer; rangeEnd: Buffer }[]): Span[] {
  const spans: Span[] = [];
  for (const { key, rangeEnd } of ranges) {
    const start = key.toString('latin1');
    const end = rangeEnd.length === 0 ? `${start}\u0000` : rangeEnd.length === 1 && rangeEnd[0] === 0 ? null : rangeEnd.toString('latin1');
    if (end === null || start < end) spans.push({ start, end });
  }
  spans.sort((a, b) => (a.start < b.start ? -1 : a.start > b.start ? 1 : 0));
  const merged: Span[] = [];
  for (const span of spans) {
    const last = merged[merged.length - 1];
    if (last !== undefined && (last.end === null || span.start <= last.end)) {
      if (last.end !== null && (span.end === null || span.end > last.end)) last.end = span.end;
    } else {
      merged.push({ ...span });
    }
  }
  return merged;
}

/** Whether `key` lies in one of the merged spans: the last span starting at or before it. */
function insideAny(spans: readonly Span[], key: string): boolean {
  let low = 0;
  let high = spans.length - 1;
  let found: Span | undefined;
  while (low <= high) {
    const middle = (low + high) >> 1;
    const span = spans[middle] as Span;
    if (span.start <= key) {
      found = span;
      low = middle + 1;
    } else {
      high = middle - 1;
    }
  }
  return found !== undefined && (found.end === null || key < found.end);
}
