/**
 * Domain errors. Every layer below the API throws these; none of them knows about gRPC.
 * `src/api/errors.ts` holds the one table that maps each code to a gRPC status and etcd's exact text.
 */
export const errorCodes = [
  'EmptyKey',
  'KeyNotFound',
  'ValueProvided',
  'LeaseProvided',
  'TooManyOps',
  'RequestTooComplex',
  'NameInvalid',
  'DuplicateKey',
  'RequestTooLarge',
  'InvalidSortOption',
  'Compacted',
  'FutureRevision',
  'NoSpace',
  'TooManyRequests',
  'LeaseNotFound',
  'LeaseExists',
  'LeaseTtlTooLarge',
  'TooManyLeases',
  'NoLeader',
  'LeaderChanged',
  'Timeout',
  'Stopped',
  'NotCapable',
  'Corrupt',
  'MemberNotFound',
  'MemberExists',
  'MemberIdRemoved',
  'MemberBadUrls',
  'TooManyMembers',
  'PeerUrlExists',
  'MemberNotLearner',
  'LearnerNotReady',
  'NotLeader',
  'BadLeaderTransferee',
  'LeaderTransferTimeout',
  'Unhealthy',
  'InvalidArgument',
  'Unimplemented',
  'RootUserNotExist',
  'RootRoleNotExist',
  'UserAlreadyExist',
  'UserEmpty',
  'UserNotFound',
  'RoleAlreadyExist',
  'RoleNotFound',
  'RoleEmpty',
  'AuthFailed',
  'PermissionNotGiven',
  'PermissionDenied',
  'RoleNotGranted',
  'PermissionNotGranted',
  'AuthNotEnabled',
  'InvalidAuthToken',
  'InvalidAuthMgmt',
  'AuthOldRevision',
  'PasswordEmpty',
  'PasswordPreHashed',
  'ElectionNotLeader',
  'ElectionNoLeader',
  'CertificateRevoked',
  'CertificateExpired',
  'AuditBacklog',
  'AuditUnavailable',
  'AuditSinksDown',
  'TokenRequired',
  'NotSupportedForLearner',
  'ProposalUndecodable',
] as const;

export type ErrorCode = (typeof errorCodes)[number];

export class RampartError extends Error {
  readonly code: ErrorCode;
  constructor(code: ErrorCode, detail?: string) {
    super(detail ?? code);
    this.name = 'RampartError';
    this.code = code;
  }
}

export function isRampartError(error: unknown): error is RampartError {
  return error instanceof RampartError;
}

/** A broken invariant: the process must stop rather than serve wrong data. */
export function assert(condition: unknown, message: string | (() => string)): asserts condition {
  if (!condition) {
    throw new Error(`assertion failed: ${typeof message === 'string' ? message : message()}`);
  }
}
