/**
 * The one registry of storage prefixes. Every record in a member's classic-level database starts
 * with exactly one of these bytes; nothing else may write into the database.
 *
 *   'k' + revision(16)          → KeyValue record (put or tombstone), see `encoding.ts`
 *   'm' + name                  → store metadata (consistent index, compaction revisions)
 *   'l' + leaseId(8)            → lease record (granted TTL)
 *   'a' + memberId(8) + type(1) → active alarm
 *   'n' + memberId(hex)         → cluster member record (JSON), see `server/membership.ts`
 *   'u'                         → the auth state (JSON), see `auth/store.ts`
 *   'e' + index(8)              → log entry, see `log.ts`
 *   'h'                         → raft hard state, see `log.ts`
 *   'w' + member(hex) + 0 + file + 0 + slot → a quorum-witnessed audit checkpoint (JSON), slot `latest`
 *                                 or a window number, see `server/audit-checkpoints.ts`; kept under 'c'
 *                                 before (moved when a member loads its state, see `legacyAuditCheckpoint`)
 *   'f' + hash(16)              → a failed-login record (JSON), see `server/login-records.ts`
 *   'x' + name                  → encryption key store (wrapped data keys), see `encryption/keyring.ts`;
 *                                 owned by the sealing layer (`database.ts`), invisible above it
 *
 * Keys hold revisions, indexes, lease and member ids and fixed names, never client bytes: with
 * encryption at rest every value is sealed and nothing a client wrote is left readable.
 */
import { keyStorePrefix } from '../encryption/keyring.js';

export const prefix = {
  keyValue: 0x6b,
  meta: 0x6d,
  lease: 0x6c,
  alarm: 0x61,
  logEntry: 0x65,
  hardState: 0x68,
  member: 0x6e,
  auth: 0x75,
  /**
   * Above 'k': a checkpoint is written every few seconds, and a LevelDB table's key range runs from
   * its smallest key to its largest. Under 'c' (below 'k') every level-0 table then spanned the whole
   * key-value range, so each level-0 compaction rewrote all of level 1 and the next one most of
   * level 2 (write amplification growing with the data); above it a table covers only the newest
   * revisions and the compactions below level 0 are mostly moves.
   */
  auditCheckpoint: 0x77,
  /** Where audit checkpoints were kept before (an older member's data, a snapshot from one): moved to 'w' when the state is loaded. */
  legacyAuditCheckpoint: 0x63,
  loginRecord: 0x66,
  /** A snapshot being received: the leader's records, each under this prefix, until installed. */
  snapshotStaging: 0x73,
  keyStore: keyStorePrefix,
} as const;

export const authStateKey = Buffer.of(prefix.auth);

export const metaKey = {
  consistentIndex: metaName('consistentIndex'),
  scheduledCompactRevision: metaName('scheduledCompactRevision'),
  finishedCompactRevision: metaName('finishedCompactRevision'),
  clusterId: metaName('clusterId'),
  memberId: metaName('memberId'),
  logStart: metaName('logStart'),
  /** (index, term) of the snapshot whose records are all staged and durable. */
  snapshotStaged: metaName('snapshotStaged'),
  /** (index, term) of the staged snapshot being moved into place; a restart finishes the move. */
  snapshotInstalling: metaName('snapshotInstalling'),
  /**
   * Written by `rampart snapshot restore`: the state did not come from this member's log, so once
   * the new cluster's first entries are applied the member compacts its log behind a snapshot, and
   * members added later receive the state instead of replaying a log that lacks it.
   */
  restoredState: metaName('restoredState'),
  /**
   * The token of the key index checkpoint a clean shutdown wrote (`mvcc/index-checkpoint.ts`);
   * present only while the member is stopped, taken out by the next start.
   */
  indexCheckpoint: metaName('indexCheckpoint'),
} as const;

function metaName(name: string): Buffer {
  return Buffer.concat([Buffer.of(prefix.meta), Buffer.from(name, 'utf8')]);
}

/**
 * Records that belong to one member, never to the replicated state: the Raft log and hard state,
 * where the log starts, and the member's own identity. Snapshots never carry them.
 */
export function isMemberLocalKey(key: Buffer): boolean {
  const first = key[0];
  if (first === prefix.logEntry || first === prefix.hardState || first === prefix.keyStore || first === prefix.snapshotStaging) return true;
  return key.equals(metaKey.logStart) || key.equals(metaKey.memberId) || key.equals(metaKey.clusterId) ||
    key.equals(metaKey.snapshotStaged) || key.equals(metaKey.snapshotInstalling) || key.equals(metaKey.restoredState) ||
    key.equals(metaKey.indexCheckpoint);
}

/** The smallest key strictly greater than every key that starts with `start`'s prefix byte. */
export function prefixEnd(prefixByte: number): Buffer {
  return Buffer.of(prefixByte + 1);
}
