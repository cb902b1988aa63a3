/**
 * TypeScript shapes of the etcd messages as @grpc/proto-loader hands them to us and takes them back
 * (keepCase, int64 as decimal strings on the way in, defaults filled, oneofs named).
 * Types only: nothing here touches gRPC.
 */

/** An int64/uint64 as decoded: a decimal string. */
export type Int64In = string;
/** An int64/uint64 to encode: a number when it is a safe integer, else a decimal string. */
export type Int64Out = number | string;

export interface ResponseHeader {
  cluster_id: Int64Out;
  member_id: Int64Out;
  revision: Int64Out;
  raft_term: Int64Out;
}

export interface KeyValueMessage {
  key: Buffer;
  create_revision: Int64Out;
  mod_revision: Int64Out;
  version: Int64Out;
  value: Buffer;
  lease: Int64Out;
}

export interface RangeRequest {
  key: Buffer;
  range_end: Buffer;
  limit: Int64In;
  revision: Int64In;
  sort_order: number;
  sort_target: number;
  serializable: boolean;
  keys_only: boolean;
  count_only: boolean;
  min_mod_revision: Int64In;
  max_mod_revision: Int64In;
  min_create_revision: Int64In;
  max_create_revision: Int64In;
}

export interface RangeResponse {
  header?: ResponseHeader;
  kvs: KeyValueMessage[];
  more: boolean;
  count: Int64Out;
}

export interface PutRequest {
  key: Buffer;
  value: Buffer;
  lease: Int64In;
  prev_kv: boolean;
  ignore_value: boolean;
  ignore_lease: boolean;
}

export interface PutResponse {
  header?: ResponseHeader;
  prev_kv?: KeyValueMessage;
}

export interface DeleteRangeRequest {
  key: Buffer;
  range_end: Buffer;
  prev_kv: boolean;
}

export interface DeleteRangeResponse {
  header?: ResponseHeader;
  deleted: Int64Out;
  prev_kvs: KeyValueMessage[];
}

export type RequestOp =
  | { request: 'request_range'; request_range: RangeRequest }
  | { request: 'request_put'; request_put: PutRequest }
  | { request: 'request_delete_range'; request_delete_range: DeleteRangeRequest }
  | { request: 'request_txn'; request_txn: TxnRequest };

export type ResponseOp =
  | { response_range: RangeResponse }
  | { response_put: PutResponse }
  | { response_delete_range: DeleteRangeResponse }
  | { response_txn: TxnResponse };

export const compareResult = { equal: 0, greater: 1, less: 2, notEqual: 3 } as const;
export const compareTarget = { version: 0, create: 1, mod: 2, value: 3, lease: 4 } as const;

export interface Compare {
  result: number;
  target: number;
  key: Buffer;
  range_end: Buffer;
  target_union?: 'version' | 'create_revision' | 'mod_revision' | 'value' | 'lease';
  version?: Int64In;
  create_revision?: Int64In;
  mod_revision?: Int64In;
  value?: Buffer;
  lease?: Int64In;
}

export interface TxnRequest {
  compare: Compare[];
  success: RequestOp[];
  failure: RequestOp[];
}

export interface TxnResponse {
  header?: ResponseHeader;
  succeeded: boolean;
  responses: ResponseOp[];
}

export interface CompactionRequest {
  revision: Int64In;
  physical: boolean;
}

export interface LeaseGrantRequest {
  TTL: Int64In;
  ID: Int64In;
}

export interface LeaseRevokeRequest {
  ID: Int64In;
}

export interface AlarmRequest {
  action: number;
  memberID: Int64In;
  alarm: number;
}

export interface AlarmMember {
  memberID: Int64Out;
  alarm: number;
}

export interface EventMessage {
  type: number;
  kv: KeyValueMessage;
  prev_kv?: KeyValueMessage;
}

export interface WatchCreateRequest {
  key: Buffer;
  range_end: Buffer;
  start_revision: Int64In;
  progress_notify: boolean;
  filters: number[];
  prev_kv: boolean;
  watch_id: Int64In;
  fragment: boolean;
}

export interface WatchRequest {
  request_union?: 'create_request' | 'cancel_request' | 'progress_request';
  create_request?: WatchCreateRequest;
  cancel_request?: { watch_id: Int64In };
  progress_request?: Record<string, never>;
}

export interface WatchResponse {
  header: ResponseHeader;
  watch_id: Int64Out;
  created?: boolean;
  canceled?: boolean;
  compact_revision?: Int64Out;
  cancel_reason?: string;
  fragment?: boolean;
  events: EventMessage[];
}

/** The payload of one replicated log entry (rampart.InternalRequest). */
export interface InternalRequest {
  id: Int64In | Int64Out;
  request?: 'put' | 'delete_range' | 'txn' | 'compaction' | 'lease_grant' | 'lease_revoke' | 'alarm' | 'member_attributes' | 'member_update' | 'auth_change' | 'audit_checkpoint' | 'encryption_rotate' | 'login_records';
  put?: PutRequest;
  delete_range?: DeleteRangeRequest;
  txn?: TxnRequest;
  compaction?: CompactionRequest;
  lease_grant?: LeaseGrantRequest;
  lease_revoke?: LeaseRevokeRequest;
  alarm?: AlarmRequest;
  member_attributes?: { id: string; name: string; client_urls: string[] };
  member_update?: { ID: Int64In | Int64Out; peerURLs: string[] };
  auth_change?: string | undefined;
  /** A member's audit chain head (src/audit/checkpoint.ts), JSON. */
  audit_checkpoint?: string | undefined;
  encryption_rotate?: { kek: boolean };
  /** Failed-login records (src/server/login-records.ts), JSON. */
  login_records?: string | undefined;
  caller?: Caller | null | undefined;
}

/** Who sent a client request (rampart.Caller); the user is empty when no identity was given. */
export interface Caller {
  user: string;
  revision: number | string;
  token: boolean;
}
