/**
 * The one table from domain errors to gRPC status codes and etcd's exact error strings.
 * Clients (etcdctl, clientv3, the etcd3 npm package) match on these strings; do not reword them.
 */
import { status, type ServiceError, Metadata } from '@grpc/grpc-js';
import { isRampartError, type ErrorCode } from '../errors.js';

export interface GrpcErrorMapping {
  readonly code: status;
  readonly message: string;
}

export const errorTable: Readonly<Record<ErrorCode, GrpcErrorMapping>> = {
  EmptyKey: { code: status.INVALID_ARGUMENT, message: 'etcdserver: key is not provided' },
  KeyNotFound: { code: status.INVALID_ARGUMENT, message: 'etcdserver: key not found' },
  ValueProvided: { code: status.INVALID_ARGUMENT, message: 'etcdserver: value is provided' },
  LeaseProvided: { code: status.INVALID_ARGUMENT, message: 'etcdserver: lease is provided' },
  TooManyOps: { code: status.INVALID_ARGUMENT, message: 'etcdserver: too many operations in txn request' },
  DuplicateKey: { code: status.INVALID_ARGUMENT, message: 'etcdserver: duplicate key given in txn request' },
  RequestTooLarge: { code: status.INVALID_ARGUMENT, message: 'etcdserver: request is too large' },
  InvalidSortOption: { code: status.INVALID_ARGUMENT, message: 'etcdserver: invalid sort option' },
  Compacted: { code: status.OUT_OF_RANGE, message: 'etcdserver: mvcc: required revision has been compacted' },
  FutureRevision: { code: status.OUT_OF_RANGE, message: 'etcdserver: mvcc: required revision is a future revision' },
  NoSpace: { code: status.RESOURCE_EXHAUSTED, message: 'etcdserver: mvcc: database space exceeded' },
  TooManyRequests: { code: status.RESOURCE_EXHAUSTED, message: 'etcdserver: too many requests' },
  LeaseNotFound: { code: status.NOT_FOUND, message: 'etcdserver: requested lease not found' },
  LeaseExists: { code: status.FAILED_PRECONDITION, message: 'etcdserver: lease already exists' },
  LeaseTtlTooLarge: { code: status.OUT_OF_RANGE, message: 'etcdserver: too large lease TTL' },
  TooManyLeases: { code: status.RESOURCE_EXHAUSTED, message: 'rampart: too many leases for this user' },
  NoLeader: { code: status.UNAVAILABLE, message: 'etcdserver: no leader' },
  LeaderChanged: { code: status.UNAVAILABLE, message: 'etcdserver: leader changed' },
  Timeout: { code: status.UNAVAILABLE, message: 'etcdserver: request timed out' },
  Stopped: { code: status.UNAVAILABLE, message: 'etcdserver: server stopped' },
  NotCapable: { code: status.UNAVAILABLE, message: 'etcdserver: not capable' },
  Corrupt: { code: status.DATA_LOSS, message: 'etcdserver: corrupt cluster' },
  MemberNotFound: { code: status.NOT_FOUND, message: 'etcdserver: member not found' },
  MemberExists: { code: status.FAILED_PRECONDITION, message: 'etcdserver: member ID already exist' },
  MemberIdRemoved: { code: status.FAILED_PRECONDITION, message: 'etcdserver: ID removed' },
  MemberBadUrls: { code: status.INVALID_ARGUMENT, message: 'etcdserver: given member URLs are invalid' },
  // More members than a joining member takes in the cluster's answer (clusterMembersMax, src/server/cluster-view.ts).
  TooManyMembers: { code: status.FAILED_PRECONDITION, message: 'rampart: too many members in cluster' },
  PeerUrlExists: { code: status.FAILED_PRECONDITION, message: 'etcdserver: Peer URLs already exists' },
  MemberNotLearner: { code: status.FAILED_PRECONDITION, message: 'etcdserver: can only promote a learner member' },
  LearnerNotReady: { code: status.FAILED_PRECONDITION, message: 'etcdserver: can only promote a learner member which is in sync with leader' },
  NotLeader: { code: status.FAILED_PRECONDITION, message: 'etcdserver: not leader' },
  BadLeaderTransferee: { code: status.FAILED_PRECONDITION, message: 'etcdserver: bad leader transferee' },
  LeaderTransferTimeout: { code: status.UNAVAILABLE, message: 'etcdserver: request timed out, leader transfer took too long' },
  Unhealthy: { code: status.UNAVAILABLE, message: 'etcdserver: unhealthy cluster' },
  InvalidArgument: { code: status.INVALID_ARGUMENT, message: 'etcdserver: invalid argument' },
  Unimplemented: { code: status.UNIMPLEMENTED, message: 'etcdserver: not implemented' },
  RootUserNotExist: { code: status.FAILED_PRECONDITION, message: 'etcdserver: root user does not exist' },
  RootRoleNotExist: { code: status.FAILED_PRECONDITION, message: 'etcdserver: root user does not have root role' },
  UserAlreadyExist: { code: status.FAILED_PRECONDITION, message: 'etcdserver: user name already exists' },
  UserEmpty: { code: status.INVALID_ARGUMENT, message: 'etcdserver: user name is empty' },
  UserNotFound: { code: status.FAILED_PRECONDITION, message: 'etcdserver: user name not found' },
  RoleAlreadyExist: { code: status.FAILED_PRECONDITION, message: 'etcdserver: role name already exists' },
  RoleNotFound: { code: status.FAILED_PRECONDITION, message: 'etcdserver: role name not found' },
  RoleEmpty: { code: status.INVALID_ARGUMENT, message: 'etcdserver: role name is empty' },
  AuthFailed: { code: status.INVALID_ARGUMENT, message: 'etcdserver: authentication failed, invalid user ID or password' },
  PermissionNotGiven: { code: status.INVALID_ARGUMENT, message: 'etcdserver: permission not given' },
  PermissionDenied: { code: status.PERMISSION_DENIED, message: 'etcdserver: permission denied' },
  RoleNotGranted: { code: status.FAILED_PRECONDITION, message: 'etcdserver: role is not granted to the user' },
  PermissionNotGranted: { code: status.FAILED_PRECONDITION, message: 'etcdserver: permission is not granted to the role' },
  AuthNotEnabled: { code: status.FAILED_PRECONDITION, message: 'etcdserver: authentication is not enabled' },
  InvalidAuthToken: { code: status.UNAUTHENTICATED, message: 'etcdserver: invalid auth token' },
  InvalidAuthMgmt: { code: status.INVALID_ARGUMENT, message: 'etcdserver: invalid auth management' },
  AuthOldRevision: { code: status.INVALID_ARGUMENT, message: 'etcdserver: revision of auth store is old' },
  // Rampart's own refusals (etcd accepts these): no empty passwords, and no client-side hashes,
  // which could not be checked with Rampart's KDF.
  // A request whose permission checks would exceed authorizationRangesMax (src/server/authorize.ts).
  // User and role names (src/auth/names.ts; etcd accepts any).
  NameInvalid: { code: status.INVALID_ARGUMENT, message: 'rampart: user and role names are at most 256 bytes and contain no control characters' },
  RequestTooComplex: { code: status.INVALID_ARGUMENT, message: 'rampart: request needs too many permission checks' },
  PasswordEmpty: { code: status.INVALID_ARGUMENT, message: 'rampart: password is empty; give one, or --no-password for a certificate-only user' },
  // etcd's election service returns these as plain errors (gRPC code Unknown).
  ElectionNotLeader: { code: status.UNKNOWN, message: 'election: not leader' },
  ElectionNoLeader: { code: status.UNKNOWN, message: 'election: no leader' },
  PasswordPreHashed: { code: status.INVALID_ARGUMENT, message: 'rampart: pre-hashed passwords are not accepted; send the password over TLS' },
  // A connection's certificate that became unusable after the handshake: every call on it is refused.
  CertificateRevoked: { code: status.UNAUTHENTICATED, message: 'rampart: certificate revoked' },
  CertificateExpired: { code: status.UNAUTHENTICATED, message: 'rampart: certificate expired' },
  AuditUnavailable: { code: status.UNAVAILABLE, message: 'rampart: the audit trail cannot be written; the request may have been applied' },
  // --audit-fail-closed: refused before anything was applied, until a sink takes events again.
  AuditSinksDown: { code: status.UNAVAILABLE, message: 'rampart: no audit sink takes events (--audit-fail-closed); the request was not applied, retry when a sink is back' },
  NotSupportedForLearner: { code: status.UNAVAILABLE, message: 'etcdserver: rpc not supported for learner' },
  // --client-cert-auth=false: a caller without a client certificate must log in with a password.
  TokenRequired: { code: status.UNAUTHENTICATED, message: 'rampart: no client certificate; authenticate with a user name and password first' },
  AuditBacklog: { code: status.RESOURCE_EXHAUSTED, message: 'rampart: audit stream fell too far behind; reconnect and read the trail files for the gap' },
  // The request's log entry committed but could not be decoded when applied (src/server/committed-proposal.ts).
  ProposalUndecodable: { code: status.INTERNAL, message: 'rampart: the request\'s log entry could not be decoded when applied; every member skipped it and it changed nothing' },
};

/** The status of anything thrown inside a handler: its code and the exact text, never a stack trace. */
export function statusOf(error: unknown): GrpcErrorMapping {
  return isRampartError(error) ? errorTable[error.code] : { code: status.INTERNAL, message: 'etcdserver: internal error' };
}

/** `PERMISSION_DENIED` for 7: the name metrics and audit events use. */
export function statusName(code: status): string {
  return status[code] ?? String(code);
}

/** Turns anything thrown inside a handler into a gRPC error a client can act on. */
export function toServiceError(error: unknown): Partial<ServiceError> {
  const { code, message } = statusOf(error);
  return { code, details: message, metadata: new Metadata() };
}
