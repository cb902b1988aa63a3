/**
 * The `request` fields of an audit event whose policy level is `request` (audit/policy.ts): how a
 * request was asked (limit, revision, sort, prev_kv, lease id, compare targets, a Txn's operations
 * …) as `name=value` texts, beside the keys the event's targets already name.
 *
 * Never a value, a password or a token: a value appears only as `hmac-sha256:…` under the cluster's
 * audit HMAC key, and only when the deciding rule says `values: hmac` and the value's key is in the
 * rule's key ranges. Fields at their default (0, false, empty) are left out: the line stays short
 * and an auditor reads only what the caller asked for.
 */
import { auditKey } from '../audit/event.js';
import type { Compare, RequestOp, TxnRequest } from './messages.js';

/** How values are recorded: their HMAC, for keys `inScope`; undefined: values are never recorded. */
export interface ValueRecorder {
  readonly inScope: (key: Buffer) => boolean;
  readonly hmac: (value: Buffer) => string;
}

/** Txn operations described before the rest is left to the event's summary (see event.ts bounds). */
const txnOperationsMax = 256;

const asBuffer = (value: unknown): Buffer => (Buffer.isBuffer(value) ? value : typeof value === 'string' ? Buffer.from(value) : Buffer.alloc(0));

/** An int64 as decimal text, or undefined at its default 0 (or when it is not a number). */
function int64(value: unknown): string | undefined {
  try {
    const number = BigInt(String(value ?? '0') || '0');
    return number === 0n ? undefined : number.toString();
  } catch {
    return '?';
  }
}

/** A lease id as etcdctl prints it (%016x), as the event's targets name leases. */
function leaseId(value: unknown): string | undefined {
  try {
    const id = BigInt.asUintN(64, BigInt(String(value ?? '0') || '0'));
    return id === 0n ? undefined : id.toString(16).padStart(16, '0');
  } catch {
    return '?';
  }
}

function rangeText(key: unknown, rangeEnd: unknown): string {
  const start = asBuffer(key);
  const end = asBuffer(rangeEnd);
  if (end.length === 0) return auditKey(start);
  if (end.length === 1 && end[0] === 0) return `${auditKey(start)}..`;
  return `${auditKey(start)}..${auditKey(end)}`;
}

const sortOrders = ['NONE', 'ASCEND', 'DESCEND'];
const sortTargets = ['KEY', 'VERSION', 'CREATE', 'MOD', 'VALUE'];
const compareTargets = ['VERSION', 'CREATE', 'MOD', 'VALUE', 'LEASE'];
const compareResults = ['=', '>', '<', '!='];

/** Collects `name=value` fields, leaving defaults out. */
class Fields {
  readonly list: string[] = [];

  constructor(private readonly values: ValueRecorder | undefined) {}

  add(name: string, value: string | undefined): void {
    if (value !== undefined) this.list.push(`${name}=${value}`);
  }

  flag(name: string, value: unknown): void {
    if (value === true) this.list.push(name);
  }

  /** A value's HMAC when the rule records values of `key`; nothing otherwise. */
  value(name: string, key: unknown, value: unknown): void {
    if (this.values !== undefined && this.values.inScope(asBuffer(key))) this.list.push(`${name}=${this.values.hmac(asBuffer(value))}`);
  }

  /** `HMAC` of a value when recorded, else the word `value` (that a value was compared, not which). */
  valueOperand(key: unknown, value: unknown): string {
    return this.values !== undefined && this.values.inScope(asBuffer(key)) ? this.values.hmac(asBuffer(value)) : 'value';
  }
}

function rangeFields(fields: Fields, request: Record<string, unknown>, prefix = ''): void {
  fields.add(`${prefix}limit`, int64(request.limit));
  fields.add(`${prefix}revision`, int64(request.revision));
  if (typeof request.sort_order === 'number' && request.sort_order !== 0) fields.add(`${prefix}sort`, `${sortTargets[Number(request.sort_target)] ?? '?'}/${sortOrders[request.sort_order] ?? '?'}`);
  fields.flag(`${prefix}serializable`, request.serializable);
  fields.flag(`${prefix}keys_only`, request.keys_only);
  fields.flag(`${prefix}count_only`, request.count_only);
  fields.add(`${prefix}min_mod_revision`, int64(request.min_mod_revision));
  fields.add(`${prefix}max_mod_revision`, int64(request.max_mod_revision));
  fields.add(`${prefix}min_create_revision`, int64(request.min_create_revision));
  fields.add(`${prefix}max_create_revision`, int64(request.max_create_revision));
}

function putFields(fields: Fields, request: Record<string, unknown>, prefix = ''): void {
  fields.add(`${prefix}lease`, leaseId(request.lease));
  fields.flag(`${prefix}prev_kv`, request.prev_kv);
  fields.flag(`${prefix}ignore_value`, request.ignore_value);
  fields.flag(`${prefix}ignore_lease`, request.ignore_lease);
  if (request.ignore_value !== true) fields.value(`${prefix}value`, request.key, request.value);
}

function compareText(fields: Fields, compare: Compare): string {
  const target = compareTargets[compare.target] ?? '?';
  const operand = (() => {
    switch (compare.target) {
      case 0: return int64(compare.version) ?? '0';
      case 1: return int64(compare.create_revision) ?? '0';
      case 2: return int64(compare.mod_revision) ?? '0';
      case 3: return fields.valueOperand(compare.key, compare.value);
      case 4: return leaseId(compare.lease) ?? '0';
      default: return '?';
    }
  })();
  return `${rangeText(compare.key, compare.range_end)} ${target} ${compareResults[compare.result] ?? '?'} ${operand}`;
}

function txnFields(fields: Fields, txn: TxnRequest, prefix: string, budget: { left: number }): void {
  for (const compare of txn.compare ?? []) {
    if (budget.left-- <= 0) return;
    fields.add(`${prefix}compare`, compareText(fields, compare));
  }
  const branch = (name: string, ops: readonly RequestOp[]): void => {
    for (const op of ops) {
      if (budget.left-- <= 0) return;
      const at = `${prefix}${name}.`;
      switch (op.request) {
        case 'request_range':
          fields.add(`${at}range`, rangeText(op.request_range.key, op.request_range.range_end));
          rangeFields(fields, op.request_range as unknown as Record<string, unknown>, at);
          break;
        case 'request_put':
          fields.add(`${at}put`, rangeText(op.request_put.key, undefined));
          putFields(fields, op.request_put as unknown as Record<string, unknown>, at);
          break;
        case 'request_delete_range':
          fields.add(`${at}delete`, rangeText(op.request_delete_range.key, op.request_delete_range.range_end));
          fields.flag(`${at}prev_kv`, op.request_delete_range.prev_kv);
          break;
        case 'request_txn':
          fields.add(`${at}txn`, `${op.request_txn.compare?.length ?? 0} compares`);
          txnFields(fields, op.request_txn, `${at}txn.`, budget);
          break;
      }
    }
  };
  branch('success', txn.success ?? []);
  branch('failure', txn.failure ?? []);
}

/** The request fields of an event, by RPC name (the same names as the event's action). */
export function requestFieldsOf(rpc: string, request: Record<string, unknown>, values: ValueRecorder | undefined): string[] {
  const fields = new Fields(values);
  switch (rpc) {
    case 'Range':
      rangeFields(fields, request);
      break;
    case 'Put':
      putFields(fields, request);
      break;
    case 'DeleteRange':
      fields.flag('prev_kv', request.prev_kv);
      break;
    case 'Txn':
      txnFields(fields, request as unknown as TxnRequest, '', { left: txnOperationsMax });
      break;
    case 'Compact':
      fields.add('revision', int64(request.revision));
      fields.flag('physical', request.physical);
      break;
    case 'LeaseGrant':
      fields.add('ttl', int64(request.TTL));
      break;
    case 'LeaseTimeToLive':
      fields.flag('keys', request.keys);
      break;
    case 'Watch.create':
      fields.add('start_revision', int64(request.start_revision));
      fields.flag('prev_kv', request.prev_kv);
      fields.flag('progress_notify', request.progress_notify);
      fields.flag('fragment', request.fragment);
      if (Array.isArray(request.filters) && request.filters.length > 0) fields.add('filters', request.filters.map((filter) => (filter === 0 ? 'NOPUT' : filter === 1 ? 'NODELETE' : '?')).join(','));
      fields.add('watch_id', int64(request.watch_id));
      break;
    case 'UserAdd':
      fields.flag('no_password', (request.options as { no_password?: unknown } | undefined)?.no_password);
      break;
    case 'Lock':
      fields.add('lease', leaseId(request.lease));
      break;
    case 'Campaign':
      fields.add('lease', leaseId(request.lease));
      fields.value('value', request.name, request.value);
      break;
    case 'Proclaim':
      fields.value('value', (request.leader as { name?: unknown } | undefined)?.name, request.value);
      break;
    case 'MemberAdd':
      fields.flag('learner', request.isLearner);
      break;
    case 'Alarm':
      fields.add('action', String(request.action ?? 0));
      fields.add('alarm', String(request.alarm ?? 0));
      break;
    case 'HashKV':
      fields.add('revision', int64(request.revision));
      break;
    case 'EncryptionRotate':
      fields.flag('kek', request.kek);
      break;
    default:
      break;
  }
  return fields.list;
}
