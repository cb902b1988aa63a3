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
 * Signatures: a member with an audit signing key (a certificate of kind `audit` from the cluster
 * CA, CN = the member's name) signs each checkpoint (ECDSA over its encoding without the signature
 * fields) and names the certificate by its SHA-256 fingerprint; the certificate itself is proposed
 * with the first checkpoint of each process and kept as a signer record. Whoever holds the CA
 * certificate can then check an exported set of checkpoints offline, and a checkpoint forged in an
 * export (or by a member for another member) does not verify.
 *
 * Encoding: JSON with fields in a fixed order (the same bytes on every member).
 */
import { X509Certificate, createHash, createPrivateKey, sign, verify, type KeyObject } from 'node:crypto';
import type { TrailCheckpoint } from './verify.js';

export type { TrailCheckpoint };

/** A member's audit signing certificate, as the cluster holds it. */
export interface CheckpointSigner {
  readonly member: string;
  readonly certificate: string;
}

/** What a member proposes: a checkpoint, and with the first of a process its signing certificate. */
export interface ProposedCheckpoint extends TrailCheckpoint {
  readonly certificate?: string;
}

/** One retained checkpoint per file and window of this length, besides the latest. */
export const checkpointBucketMs = 10 * 60 * 1000;

const memberPattern = /^[0-9a-f]{1,16}$/;
const filePattern = /^audit-[0-9A-Za-z-]{1,64}\.jsonl$/;
const hashPattern = /^[0-9a-f]{64}$/;
const signaturePattern = /^[A-Za-z0-9+/]{1,512}={0,2}$/;

export function encodeCheckpoint(checkpoint: ProposedCheckpoint): string {
  const { member, file, seq, hash, time, signer, signature, certificate } = checkpoint;
  return JSON.stringify({ member, file, seq, hash, time, signer, signature, certificate });
}

/** The bytes a signature covers: the checkpoint without its signature fields. */
function signedBytes(checkpoint: TrailCheckpoint): Buffer {
  const { member, file, seq, hash, time } = checkpoint;
  return Buffer.from(JSON.stringify({ member, file, seq, hash, time }), 'utf8');
}

/** SHA-256 of a certificate's DER, lower-case hex. */
export function certificateFingerprint(certificatePem: string): string {
  return createHash('sha256').update(new X509Certificate(certificatePem).raw).digest('hex');
}

/** Signs checkpoints with a member's audit key. */
export class CheckpointSigningKey {
  readonly fingerprint: string;
  private readonly key: KeyObject;

  constructor(readonly certificate: string, keyPem: string) {
    this.fingerprint = certificateFingerprint(certificate);
    this.key = createPrivateKey(keyPem);
    const probe = Buffer.from('rampart audit key check');
    if (!verify('sha256', probe, new X509Certificate(certificate).publicKey, sign('sha256', probe, this.key))) {
      throw new Error('the audit signing key does not belong to its certificate');
    }
  }

  sign(checkpoint: TrailCheckpoint): TrailCheckpoint {
    return { ...checkpoint, signer: this.fingerprint, signature: sign('sha256', signedBytes(checkpoint), this.key).toString('base64') };
  }
}

export function encodeSigner(signer: CheckpointSigner): string {
  return JSON.stringify({ member: signer.member, certificate: signer.certificate });
}

export function decodeSigner(text: string): CheckpointSigner | string {
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch {
    return 'not JSON';
  }
  const { member, certificate } = (typeof parsed === 'object' && parsed !== null ? parsed : {}) as Record<string, unknown>;
  if (typeof member !== 'string' || !memberPattern.test(member)) return 'member must be a hex member id';
  if (typeof certificate !== 'string' || certificate.length > 16 * 1024) return 'certificate must be a PEM certificate';
  return encodeSigner({ member, certificate }) === text ? { member, certificate } : 'not in canonical form';
}

/**
 * Checks the signatures of a member's checkpoints against its signers' certificates and the CA:
 * each checkpoint signed by a certificate the CA issued for audit signing, valid at the
 * checkpoint's time, with a valid signature. The first problem, or undefined.
 */
export function checkSignatures(checkpoints: readonly TrailCheckpoint[], signers: readonly CheckpointSigner[], caPem: string, member: string): string | undefined {
  const ca = new X509Certificate(caPem);
  const known = new Map<string, X509Certificate>();
  for (const signer of signers) {
    if (signer.member !== member) continue;
    let certificate: X509Certificate;
    try {
      certificate = new X509Certificate(signer.certificate);
    } catch {
      return `member ${member}'s audit signing certificate is not a certificate`;
    }
    if (!certificate.checkIssued(ca) || !certificate.verify(ca.publicKey)) return `member ${member}'s audit signing certificate was not issued by this CA`;
    if (!/(^|\n)OU=rampart-audit(\n|$)/.test(certificate.subject)) return `member ${member}'s signing certificate is not an audit certificate (${certificate.subject.replace(/\n/g, ', ')})`;
    known.set(createHash('sha256').update(certificate.raw).digest('hex'), certificate);
  }
  for (const checkpoint of checkpoints) {
    if (checkpoint.member !== member) continue;
    const where = `the checkpoint of ${checkpoint.time} (${checkpoint.file} event ${checkpoint.seq})`;
    if (checkpoint.signer === undefined || checkpoint.signature === undefined) return `${where} is not signed`;
    const certificate = known.get(checkpoint.signer);
    if (certificate === undefined) return `${where} names a signing certificate the cluster does not hold`;
    const at = Date.parse(checkpoint.time);
    if (at < Date.parse(certificate.validFrom) || at > Date.parse(certificate.validTo)) return `${where} was signed outside its certificate's validity`;
    if (!verify('sha256', signedBytes(checkpoint), certificate.publicKey, Buffer.from(checkpoint.signature, 'base64'))) {
      return `${where} has a signature that does not verify (forged or altered)`;
    }
  }
  return undefined;
}

/** A checkpoint from its encoding, or a reason it is not one (nothing else is ever stored). */
export function decodeCheckpoint(text: string): ProposedCheckpoint | string {
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch {
    return 'not JSON';
  }
  const record = (typeof parsed === 'object' && parsed !== null ? parsed : {}) as Record<string, unknown>;
  const { member, file, seq, hash, time, signer, signature, certificate } = record;
  if (typeof member !== 'string' || !memberPattern.test(member)) return 'member must be a hex member id';
  if (typeof file !== 'string' || !filePattern.test(file)) return 'file must be an audit file name';
  if (typeof seq !== 'number' || !Number.isSafeInteger(seq) || seq < 0) return 'seq must be a non-negative integer';
  if (typeof hash !== 'string' || !hashPattern.test(hash)) return 'hash must be 64 hex digits';
  if (typeof time !== 'string' || Number.isNaN(Date.parse(time)) || time.length > 40) return 'time must be an ISO 8601 time';
  if (signer !== undefined && (typeof signer !== 'string' || !hashPattern.test(signer))) return 'signer must be a certificate fingerprint';
  if (signature !== undefined && (typeof signature !== 'string' || !signaturePattern.test(signature))) return 'signature must be base64';
  if ((signer === undefined) !== (signature === undefined)) return 'signer and signature go together';
  if (certificate !== undefined && (typeof certificate !== 'string' || certificate.length > 16 * 1024 || signer === undefined)) return 'certificate must be a PEM certificate with a signer';
  const checkpoint: ProposedCheckpoint = {
    member, file, seq, hash, time,
    ...(typeof signer === 'string' ? { signer } : {}),
    ...(typeof signature === 'string' ? { signature } : {}),
    ...(typeof certificate === 'string' ? { certificate } : {}),
  };
  return encodeCheckpoint(checkpoint) === text ? checkpoint : 'not in canonical form';
}

/** The window a checkpoint's time falls in (its own claim: the applier has no clock). */
export function checkpointBucket(checkpoint: TrailCheckpoint): number {
  return Math.floor(Date.parse(checkpoint.time) / checkpointBucketMs);
}
