/**
 * The audit checkpoints in the replicated state (see `audit/checkpoint.ts` for what they witness).
 * Owns: which checkpoints are kept and their records. Applied deterministically like every entry:
 * the decision uses only the entry and the state, never a clock.
 *
 * Kept per member and file: `latest` (replaced only by a larger sequence number) and the first
 * checkpoint of each window (never replaced). A checkpoint that would go backwards is ignored, not
 * an error: a member re-proposing after a leader change must not fail.
 */
import { certificateFingerprint, checkpointBucket, decodeCheckpoint, decodeSigner, encodeCheckpoint, encodeSigner, type CheckpointSigner, type TrailCheckpoint } from '../audit/checkpoint.js';
import { RampartError } from '../errors.js';
import type { BatchOperation } from '../storage/mvcc/store.js';
import { prefix } from '../storage/schema.js';

/** Audit files (over all members) with checkpoints; past it new files get none (a member opens one per start). */
export const checkpointFilesMax = 1_000_000;

function keyOf(member: string, file: string, slot: string): Buffer {
  return Buffer.concat([Buffer.of(prefix.auditCheckpoint), Buffer.from(`${member}\0${file}\0${slot}`, 'utf8')]);
}

export class AuditCheckpoints {
  /** Latest sequence number per `member\0file`. */
  private readonly latest = new Map<string, number>();
  /** `member\0file\0window` of every kept window checkpoint. */
  private readonly windows = new Set<string>();

  clear(): void {
    this.latest.clear();
    this.windows.clear();
  }

  /** Rebuilds the index from a stored record (start, snapshot install). */
  load(key: Buffer, value: Buffer): void {
    const [member, file, slot] = key.subarray(1).toString('utf8').split('\0') as [string, string, string];
    if (file === '') return; // a signer record
    if (slot === 'latest') {
      const checkpoint = decodeCheckpoint(value.toString('utf8'));
      if (typeof checkpoint !== 'string') this.latest.set(`${member}\0${file}`, checkpoint.seq);
    } else {
      this.windows.add(`${member}\0${file}\0${slot}`);
    }
  }

  /** The records an applied checkpoint adds (none when it adds nothing new). */
  apply(encoded: string, batch: BatchOperation[]): void {
    const checkpoint = decodeCheckpoint(encoded);
    if (typeof checkpoint === 'string') throw new RampartError('InvalidArgument', `audit checkpoint: ${checkpoint}`);
    const { certificate, ...stored } = checkpoint;
    if (certificate !== undefined) {
      // The member's signing certificate, kept once under its fingerprint (which it must match).
      let fingerprint: string;
      try {
        fingerprint = certificateFingerprint(certificate);
      } catch {
        throw new RampartError('InvalidArgument', 'audit checkpoint: the certificate is not a PEM certificate');
      }
      if (fingerprint !== checkpoint.signer) throw new RampartError('InvalidArgument', 'audit checkpoint: the certificate is not the signer');
      batch.push({ type: 'put', key: keyOf(checkpoint.member, '', `signer-${fingerprint}`), value: Buffer.from(encodeSigner({ member: checkpoint.member, certificate }), 'utf8') });
    }
    const value = Buffer.from(encodeCheckpoint(stored), 'utf8');
    const fileKey = `${checkpoint.member}\0${checkpoint.file}`;
    const previous = this.latest.get(fileKey);
    if (previous === undefined && this.latest.size >= checkpointFilesMax) return;
    if (previous === undefined || checkpoint.seq > previous) {
      this.latest.set(fileKey, checkpoint.seq);
      batch.push({ type: 'put', key: keyOf(checkpoint.member, checkpoint.file, 'latest'), value });
    }
    const window = String(checkpointBucket(checkpoint)).padStart(12, '0');
    const windowKey = `${fileKey}\0${window}`;
    if (!this.windows.has(windowKey)) {
      this.windows.add(windowKey);
      batch.push({ type: 'put', key: keyOf(checkpoint.member, checkpoint.file, window), value });
    }
  }
}

/** Every stored checkpoint and signer from the records of the `w` prefix (prefix.auditCheckpoint). */
export function checkpointsOf(records: Iterable<Buffer>): { checkpoints: TrailCheckpoint[]; signers: CheckpointSigner[] } {
  const checkpoints: TrailCheckpoint[] = [];
  const signers: CheckpointSigner[] = [];
  for (const value of records) {
    const text = value.toString('utf8');
    const checkpoint = decodeCheckpoint(text);
    if (typeof checkpoint !== 'string') {
      checkpoints.push(checkpoint);
      continue;
    }
    const signer = decodeSigner(text);
    if (typeof signer !== 'string') signers.push(signer);
  }
  return { checkpoints, signers };
}
