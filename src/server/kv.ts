/**
 * The KV operations as etcd defines them, over an MVCC read view or write transaction:
 * range (sort, filters, limit), put, delete, txn compares. Used by the applier for writes and by the
 * member for reads. Validation that needs no state lives in `validate.ts`.
 */
import { RampartError } from '../errors.js';
import type { KeyValue } from '../storage/encoding.js';
import type { RangeOptions, RangeResult } from '../storage/mvcc/store.js';
import type { KeyRange } from '../storage/mvcc/range.js';
import type {
  Compare,
  DeleteRangeResponse,
  KeyValueMessage,
  RangeRequest,
  RangeResponse,
} from '../api/messages.js';
import { compareResult, compareTarget } from '../api/messages.js';

export interface ReadView {
  range(range: KeyRange, options?: RangeOptions): RangeResult;
}

const sortOrder = { none: 0, ascend: 1, descend: 2 } as const;
const sortTarget = { key: 0, version: 1, create: 2, mod: 3, value: 4 } as const;

export function toKeyValueMessage(kv: KeyValue, keysOnly = false): KeyValueMessage {
  return {
    key: kv.key,
    create_revision: kv.createRevision,
    mod_revision: kv.modRevision,
    version: kv.version,
    value: keysOnly ? Buffer.alloc(0) : kv.value,
    lease: int64Out(kv.lease),
  };
}

const minSafeInteger = BigInt(Number.MIN_SAFE_INTEGER);
const maxSafeInteger = BigInt(Number.MAX_SAFE_INTEGER);

export function int64Out(value: bigint): number | string {
  return value >= minSafeInteger && value <= maxSafeInteger ? Number(value) : value.toString();
}

export function parseInt64(value: string | number | undefined): number {
  if (value === undefined || value === '') {
    return 0;
  }
  const parsed = Number(value);
  if (!Number.isSafeInteger(parsed)) {
    throw new RampartError('InvalidArgument', `integer out of range: ${value}`);
  }
  return parsed;
}

export function parseBigInt64(value: string | number | undefined): bigint {
  if (value === undefined || value === '') {
    return 0n;
  }
  return BigInt.asIntN(64, BigInt(value));
}

export function keyRangeOf(request: { key: Buffer; range_end: Buffer }): KeyRange {
  return { key: request.key, rangeEnd: request.range_end };
}

/** etcd's Range: filters and sorting need every key, so they lift the limit and cut afterwards. */
export function executeRange(view: ReadView, request: RangeRequest): Omit<RangeResponse, 'header'> & { revision: number } {
  const limit = parseInt64(request.limit);
  const minMod = parseInt64(request.min_mod_revision);
  const maxMod = parseInt64(request.max_mod_revision);
  const minCreate = parseInt64(request.min_create_revision);
  const maxCreate = parseInt64(request.max_create_revision);
  let order: number = request.sort_order;
  if (request.sort_target !== sortTarget.key && order === sortOrder.none) {
    order = sortOrder.ascend;
  }
  const needsAll = order !== sortOrder.none || minMod !== 0 || maxMod !== 0 || minCreate !== 0 || maxCreate !== 0;
  const fetchLimit = needsAll || limit <= 0 ? 0 : limit + 1;
  const result = view.range(keyRangeOf(request), {
    revision: parseInt64(request.revision),
    limit: fetchLimit,
    countOnly: request.count_only,
  });
  let kvs = result.kvs;
  if (maxMod !== 0) kvs = kvs.filter((kv) => kv.modRevision <= maxMod);
  if (minMod !== 0) kvs = kvs.filter((kv) => kv.modRevision >= minMod);
  if (maxCreate !== 0) kvs = kvs.filter((kv) => kv.createRevision <= maxCreate);
  if (minCreate !== 0) kvs = kvs.filter((kv) => kv.createRevision >= minCreate);
  if (order !== sortOrder.none) {
    const compare = sorter(request.sort_target);
    kvs = [...kvs].sort(order === sortOrder.descend ? (a, b) => compare(b, a) : compare);
  }
  let more = false;
  if (limit > 0 && kvs.length > limit) {
    kvs = kvs.slice(0, limit);
    more = true;
  }
  return {
    kvs: kvs.map((kv) => toKeyValueMessage(kv, request.keys_only)),
    more,
    count: result.count,
    revision: result.revision,
  };
}

function sorter(target: number): (a: KeyValue, b: KeyValue) => number {
  switch (target) {
    case sortTarget.version:
      return (a, b) => a.version - b.version;
    case sortTarget.create:
      return (a, b) => a.createRevision - b.createRevision;
    case sortTarget.mod:
      return (a, b) => a.modRevision - b.modRevision;
    case sortTarget.value:
      return (a, b) => Buffer.compare(a.value, b.value);
    default:
      return (a, b) => Buffer.compare(a.key, b.key);
  }
}

/** A compare holds when every key in its range satisfies it; a missing key compares as zero. */
export function evaluateCompare(view: ReadView, compare: Compare): boolean {
  const { kvs } = view.range({ key: compare.key, rangeEnd: compare.range_end });
  if (kvs.length === 0) {
    if (compare.target === compareTarget.value) {
      return false;
    }
    return compareOne(compare, undefined);
  }
  return kvs.every((kv) => compareOne(compare, kv));
}

function compareOne(compare: Compare, kv: KeyValue | undefined): boolean {
  let ordering: number;
  switch (compare.target) {
    case compareTarget.value: {
      if (kv === undefined) return false;
      ordering = Buffer.compare(kv.value, compare.value ?? Buffer.alloc(0));
      break;
    }
    case compareTarget.version:
      ordering = Math.sign((kv?.version ?? 0) - parseInt64(compare.version));
      break;
    case compareTarget.create:
      ordering = Math.sign((kv?.createRevision ?? 0) - parseInt64(compare.create_revision));
      break;
    case compareTarget.mod:
      ordering = Math.sign((kv?.modRevision ?? 0) - parseInt64(compare.mod_revision));
      break;
    case compareTarget.lease: {
      const lease = kv?.lease ?? 0n;
      const against = parseBigInt64(compare.lease);
      ordering = lease === against ? 0 : lease < against ? -1 : 1;
      break;
    }
    default:
      return false;
  }
  switch (compare.result) {
    case compareResult.equal:
      return ordering === 0;
    case compareResult.notEqual:
      return ordering !== 0;
    case compareResult.greater:
      return ordering > 0;
    case compareResult.less:
      return ordering < 0;
    default:
      return false;
  }
}

export function deleteResponse(deleted: KeyValue[], withPrev: boolean): Omit<DeleteRangeResponse, 'header'> {
  return { deleted: deleted.length, prev_kvs: withPrev ? deleted.map((kv) => toKeyValueMessage(kv)) : [] };
}
