/**
 * Quorum-witnessed checkpoints of audit trails: a member's chain head (member id, file, sequence,
 * hash, time) proposed through Raft, so that once committed a majority of hosts hold it. A trail
 * cut short, rewritten with a recomputed chain, or missing a file no longer matches what the
 * cluster witnessed (`verify.ts` checks a trail against them).
 *
 * Retention in the replicated state, per member and file: the latest checkpoint (its sequence only
 * grows), and the first checkpoint of every `checkpointBucketMs` window, never replaced. A stored
 * checkpoint is immutable, so rewriting an event before one of them changes a hash the cluster
 * holds; what stays unwitnessed is the tail since the last checkpoint (seconds) — and, for a member
 * whose own process is under an attacker's control, what it wrote since its window's first
 * checkpoint.
 *
 * Encoding: JSON with fields in a fixed order (the same bytes on every member).
 */
import type { TrailCheckpoint } from './verify.js';

export type { TrailCheckpoint };

/** One retained checkpoint per file and window of this length, besides the latest. */
export const checkpointBucketMs = 10 * 60 * 1000;

const memberPattern = /^[0-9a-f]{1,16}$/;
const filePattern = /^audit-[0-9A-Za-z-]{1,64}\.jsonl$/;
const hashPattern = /^[0-9a-f]{64}$/;

export function encodeCheckpoint(checkpoint: TrailCheckpoint): string {
  const { member, file, seq, hash, time } = checkpoint;
  return JSON.stringify({ member, file, seq, hash, time });
}

/** A checkpoint from its encoding, or a reason it is not one (nothing else is ever stored). */
export function decodeCheckpoint(text: string): TrailCheckpoint | string {
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch {
    return 'not JSON';
  }
  const record = (typeof parsed === 'object' && parsed !== null ? parsed : {}) as Record<string, unknown>;
  const { member, file, seq, hash, time } = record;
  if (typeof member !== 'string' || !memberPattern.test(member)) return 'member must be a hex member id';
  if (typeof file !== 'string' || !filePattern.test(file)) return 'file must be an audit file name';
  if (typeof seq !== 'number' || !Number.isSafeInteger(seq) || seq < 0) return 'seq must be a non-negative integer';
  if (typeof hash !== 'string' || !hashPattern.test(hash)) return 'hash must be 64 hex digits';
  if (typeof time !== 'string' || Number.isNaN(Date.parse(time)) || time.length > 40) return 'time must be an ISO 8601 time';
  const checkpoint = { member, file, seq, hash, time };
  return encodeCheckpoint(checkpoint) === text ? checkpoint : 'not in canonical form';
}

/** The window a checkpoint's time falls in (its own claim: the applier has no clock). */
export function checkpointBucket(checkpoint: TrailCheckpoint): number {
  return Math.floor(Date.parse(checkpoint.time) / checkpointBucketMs);
}
