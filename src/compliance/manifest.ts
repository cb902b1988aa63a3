/**
 * The evidence bundle's manifest and its signature.
 *
 * `manifest.json` lists every other file of the bundle (path, bytes, SHA-256) in a canonical JSON
 * form; `manifest.sig` signs its exact bytes with a key whose certificate the cluster CA issued
 * for signing (kind `audit`, OU=rampart-audit, the same kind members sign audit checkpoints with),
 * and carries that certificate. Verifying needs only the CA certificate: the signer must be issued
 * by it, be an audit certificate, be valid when the manifest says it was made, and its signature
 * must verify; then every file must hash to what the manifest says, and no file may be unlisted.
 */
import { X509Certificate, createHash, createPrivateKey, sign, verify } from 'node:crypto';

export const manifestName = 'manifest.json';
export const signatureName = 'manifest.sig';
export const manifestFormat = 'rampart-evidence/1';
export const signatureAlgorithm = 'ECDSA-SHA256';
/** The manifest and signature are small; anything larger is refused unread. */
export const manifestBytesMax = 1024 * 1024;

export interface ManifestFile {
  readonly path: string;
  readonly bytes: number;
  readonly sha256: string;
}

export interface Manifest {
  readonly format: string;
  readonly created: string;
  readonly window: { readonly from: string; readonly to: string };
  /** SHA-256 fingerprint of the cluster CA the bundle was made for. */
  readonly caFingerprint: string;
  readonly files: readonly ManifestFile[];
}

export interface ManifestSignature {
  readonly algorithm: string;
  readonly certificate: string;
  readonly signature: string;
}

export function encodeManifest(manifest: Manifest): string {
  const { format, created, window, caFingerprint, files } = manifest;
  return `${JSON.stringify({
    format, created, window: { from: window.from, to: window.to }, caFingerprint,
    files: files.map((file) => ({ path: file.path, bytes: file.bytes, sha256: file.sha256 })),
  }, null, 2)}\n`;
}

const isText = (value: unknown): value is string => typeof value === 'string';

/** A manifest from its bytes, or why they are not one (only the canonical form is accepted). */
export function decodeManifest(text: string): Manifest | string {
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch {
    return 'manifest.json is not JSON (altered)';
  }
  const record = (typeof parsed === 'object' && parsed !== null ? parsed : {}) as Record<string, unknown>;
  const window = (typeof record.window === 'object' && record.window !== null ? record.window : {}) as Record<string, unknown>;
  const files = Array.isArray(record.files) ? (record.files as unknown[]) : undefined;
  if (record.format !== manifestFormat) return `manifest.json is not a ${manifestFormat} manifest`;
  if (!isText(record.created) || !isText(window.from) || !isText(window.to) || !isText(record.caFingerprint) || files === undefined) return 'manifest.json lacks a field (altered)';
  const entries: ManifestFile[] = [];
  for (const file of files) {
    const entry = (typeof file === 'object' && file !== null ? file : {}) as Record<string, unknown>;
    if (!isText(entry.path) || !Number.isSafeInteger(entry.bytes) || !isText(entry.sha256) || !/^[0-9a-f]{64}$/.test(entry.sha256)) return 'manifest.json has a malformed file entry (altered)';
    entries.push({ path: entry.path, bytes: entry.bytes as number, sha256: entry.sha256 });
  }
  const manifest: Manifest = { format: record.format, created: record.created, window: { from: window.from, to: window.to }, caFingerprint: record.caFingerprint, files: entries };
  return encodeManifest(manifest) === text ? manifest : 'manifest.json is not in canonical form (altered)';
}

export function encodeSignature(signature: ManifestSignature): string {
  return `${JSON.stringify({ algorithm: signature.algorithm, certificate: signature.certificate, signature: signature.signature }, null, 2)}\n`;
}

export function decodeSignature(text: string): ManifestSignature | string {
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch {
    return 'manifest.sig is not JSON (altered)';
  }
  const record = (typeof parsed === 'object' && parsed !== null ? parsed : {}) as Record<string, unknown>;
  if (record.algorithm !== signatureAlgorithm || !isText(record.certificate) || !isText(record.signature)) return 'manifest.sig lacks a field (altered)';
  const signature: ManifestSignature = { algorithm: record.algorithm, certificate: record.certificate, signature: record.signature };
  if (encodeSignature(signature) !== text) return 'manifest.sig is not in canonical form (altered)';
  // Base64 has bits a decoder ignores (the last character's low bits): only the one spelling of
  // the bytes is accepted, so no changed character goes unnoticed.
  if (Buffer.from(signature.signature, 'base64').toString('base64') !== signature.signature) return 'manifest.sig: the signature is not canonical base64 (altered)';
  if (canonicalPem(signature.certificate) !== signature.certificate) return 'manifest.sig: the certificate is not in canonical PEM form (altered)';
  return signature;
}

/** A certificate's one PEM spelling (64-character lines), or undefined when it is not one certificate. */
function canonicalPem(text: string): string | undefined {
  try {
    return new X509Certificate(text).toString();
  } catch {
    return undefined;
  }
}

const auditUnit = /(^|\n)OU=rampart-audit(\n|$)/;

/** Why `certificatePem` may not sign evidence for the cluster of `caPem`, or undefined. */
export function signerProblem(certificatePem: string, caPem: string, at: number): string | undefined {
  let certificate: X509Certificate;
  let ca: X509Certificate;
  try {
    certificate = new X509Certificate(certificatePem);
    ca = new X509Certificate(caPem);
  } catch {
    return 'the signing certificate is not a certificate';
  }
  if (!certificate.checkIssued(ca) || !certificate.verify(ca.publicKey)) return `the signing certificate (${certificate.subject.replace(/\n/g, ', ')}) was not issued by the CA`;
  if (!auditUnit.test(certificate.subject)) return `the signing certificate is not a signing (audit) certificate: ${certificate.subject.replace(/\n/g, ', ')}`;
  if (at < Date.parse(certificate.validFrom) || at > Date.parse(certificate.validTo)) return `the signing certificate was not valid at ${new Date(at).toISOString()} (valid ${certificate.validFrom} to ${certificate.validTo})`;
  return undefined;
}

export function signManifest(manifestBytes: Buffer, certificatePem: string, keyPem: string, caPem: string, at: number): ManifestSignature {
  const problem = signerProblem(certificatePem, caPem, at);
  if (problem !== undefined) throw new Error(problem);
  const signature = sign('sha256', manifestBytes, createPrivateKey(keyPem));
  if (!verify('sha256', manifestBytes, new X509Certificate(certificatePem).publicKey, signature)) throw new Error('the signing key does not belong to its certificate');
  return { algorithm: signatureAlgorithm, certificate: new X509Certificate(certificatePem).toString(), signature: signature.toString('base64') };
}

/** Why the signature does not vouch for the manifest under this CA, or undefined. */
export function checkManifestSignature(manifestBytes: Buffer, signature: ManifestSignature, caPem: string, created: string): string | undefined {
  const at = Date.parse(created);
  if (Number.isNaN(at)) return 'manifest.json has no valid creation time';
  const problem = signerProblem(signature.certificate, caPem, at);
  if (problem !== undefined) return `manifest.sig: ${problem}`;
  const valid = verify('sha256', manifestBytes, new X509Certificate(signature.certificate).publicKey, Buffer.from(signature.signature, 'base64'));
  return valid ? undefined : 'manifest.sig: the signature does not match manifest.json (the manifest or the signature was altered)';
}

export function sha256Hex(bytes: Buffer | string): string {
  return createHash('sha256').update(bytes).digest('hex');
}
