/**
 * Certificates that reload without a restart: a gRPC certificate provider that polls its files and,
 * when they change, validates the new set (key matches certificate, certificate chains to one of
 * the trusted CAs, currently valid) before handing it to gRPC. New connections use the new
 * material; open connections keep theirs, so nothing is dropped. An invalid update is refused with
 * a log line and the previous material stays in use (fail closed, never half-configured). A change
 * is seen within one poll interval (`--certificate-reload-interval-ms`); see file-watch.ts.
 *
 * A CA bundle may hold several CA certificates: during a CA rotation it holds the old and the new.
 */
import { X509Certificate, createPrivateKey, createPublicKey } from 'node:crypto';
import { readFile, stat } from 'node:fs/promises';
import type { experimental } from '@grpc/grpc-js';
import type { Logger } from 'pino';
import { normalizeSerial } from './authority.js';
import { serialized, watchFiles, type FileWatch } from './file-watch.js';

type CertificateProvider = experimental.CertificateProvider;
type CaListener = experimental.CaCertificateUpdateListener;
type IdentityListener = experimental.IdentityCertificateUpdateListener;

export interface CertificateFiles {
  readonly certificateFile: string;
  readonly keyFile: string;
  readonly caFile: string;
}

/** Warn when less than this share of a certificate's lifetime is left. */
export const expiryWarningShare = 0.3;

export function splitPemCertificates(bundle: string): string[] {
  return bundle.match(/-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g) ?? [];
}

export interface LoadedMaterial {
  readonly certificate: Buffer;
  readonly privateKey: Buffer;
  readonly caBundle: Buffer;
  readonly leaf: X509Certificate;
}

/** Reads and checks a certificate set; throws with a clear message when it is not usable. */
export async function loadMaterial(files: CertificateFiles, nowMs = Date.now()): Promise<LoadedMaterial> {
  const [certificate, privateKey, caBundle] = await Promise.all([readFile(files.certificateFile), readFile(files.keyFile), readFile(files.caFile)]);
  let leaf: X509Certificate;
  try {
    leaf = new X509Certificate(certificate);
  } catch {
    throw new Error(`${files.certificateFile}: not a PEM certificate`);
  }
  let key;
  try {
    key = createPrivateKey(privateKey);
  } catch {
    throw new Error(`${files.keyFile}: not a PEM private key`);
  }
  if (!leaf.checkPrivateKey(key)) {
    throw new Error(`${files.keyFile} does not match ${files.certificateFile}`);
  }
  const authorities = splitPemCertificates(caBundle.toString('utf8')).map((pem) => new X509Certificate(pem));
  if (authorities.length === 0) throw new Error(`${files.caFile}: no CA certificate`);
  if (!authorities.some((authority) => leaf.checkIssued(authority) && leaf.verify(createPublicKey(authority.publicKey.export({ type: 'spki', format: 'pem' }))))) {
    throw new Error(`${files.certificateFile} is not signed by a CA in ${files.caFile}`);
  }
  const notBefore = Date.parse(leaf.validFrom);
  const notAfter = Date.parse(leaf.validTo);
  if (nowMs < notBefore) throw new Error(`${files.certificateFile} is not valid before ${leaf.validFrom}`);
  if (nowMs > notAfter) throw new Error(`${files.certificateFile} expired on ${leaf.validTo}`);
  return { certificate, privateKey, caBundle, leaf };
}

/** What is left of a certificate's validity: seconds, and the share of its whole lifetime. */
export function remainingLifetime(leaf: X509Certificate, nowMs = Date.now()): { seconds: number; share: number } {
  const notBefore = Date.parse(leaf.validFrom);
  const notAfter = Date.parse(leaf.validTo);
  return { seconds: Math.round((notAfter - nowMs) / 1000), share: (notAfter - nowMs) / (notAfter - notBefore) };
}

export function expiresSoon(leaf: X509Certificate, nowMs = Date.now()): boolean {
  return remainingLifetime(leaf, nowMs).share < expiryWarningShare;
}

export class ReloadingCertificateProvider implements CertificateProvider {
  private material: LoadedMaterial;
  private readonly caListeners = new Set<CaListener>();
  private readonly identityListeners = new Set<IdentityListener>();
  private watch: FileWatch | undefined;
  private lastSeen = '';
  private readonly check = serialized(() => this.poll());
  reloads = 0;

  private constructor(
    private readonly files: CertificateFiles,
    private readonly logger: Logger,
    private readonly label: string,
    material: LoadedMaterial,
  ) {
    this.material = material;
  }

  static async open(files: CertificateFiles, logger: Logger, label: string, pollMs: number): Promise<ReloadingCertificateProvider> {
    // Watched before they are read, and fingerprinted before they are read: a change while opening
    // is either reported by the watch or differs from the fingerprint at the check below.
    let provider: ReloadingCertificateProvider | undefined;
    const watch = watchFiles([files.certificateFile, files.keyFile, files.caFile], pollMs, () => void provider?.check());
    try {
      const seen = await fingerprintOf(files);
      provider = new ReloadingCertificateProvider(files, logger, label, await loadMaterial(files));
      provider.lastSeen = seen;
    } catch (error) {
      watch.close();
      throw error;
    }
    provider.watch = watch;
    provider.warnIfExpiring();
    // A change the watch reported while opening found no provider yet: compared with the fingerprint once now.
    void provider.check();
    return provider;
  }

  get certificate(): X509Certificate {
    return this.material.leaf;
  }

  /** The current key, certificate and CA bundle, for a TLS server of our own. */
  get secureContextOptions(): { key: Buffer; cert: Buffer; ca: Buffer } {
    return { key: this.material.privateKey, cert: this.material.certificate, ca: this.material.caBundle };
  }

  private warnIfExpiring(): void {
    if (expiresSoon(this.material.leaf)) {
      this.logger.warn({ certificate: this.files.certificateFile, expires: this.material.leaf.validTo, use: this.label }, 'certificate is in the last 30% of its lifetime; renew it');
    }
  }

  /** Runs only when the watch saw a file change (never on a timer of its own). */
  private async poll(): Promise<void> {
    const seen = await fingerprintOf(this.files);
    if (seen === this.lastSeen) return;
    try {
      const material = await loadMaterial(this.files);
      this.lastSeen = seen;
      this.material = material;
      this.reloads += 1;
      this.logger.info({ certificate: this.files.certificateFile, serial: normalizeSerial(material.leaf.serialNumber), expires: material.leaf.validTo, use: this.label }, 'reloaded certificates');
      this.warnIfExpiring();
      for (const listener of this.caListeners) listener({ caCertificate: material.caBundle });
      for (const listener of this.identityListeners) listener({ certificate: material.certificate, privateKey: material.privateKey });
    } catch (error) {
      // A half-written or wrong set: keep what works, and retry on the next change.
      this.lastSeen = seen;
      this.logger.error({ use: this.label, err: error instanceof Error ? error.message : String(error) }, 'refused new certificates; still using the previous ones');
    }
  }

  // grpc-js starts watching for updates only after it adds its listener: the current material must
  // arrive asynchronously, or nobody sees it.
  addCaCertificateListener(listener: CaListener): void {
    this.caListeners.add(listener);
    setImmediate(() => {
      if (this.caListeners.has(listener)) listener({ caCertificate: this.material.caBundle });
    });
  }

  removeCaCertificateListener(listener: CaListener): void {
    this.caListeners.delete(listener);
  }

  addIdentityCertificateListener(listener: IdentityListener): void {
    this.identityListeners.add(listener);
    setImmediate(() => {
      if (this.identityListeners.has(listener)) listener({ certificate: this.material.certificate, privateKey: this.material.privateKey });
    });
  }

  removeIdentityCertificateListener(listener: IdentityListener): void {
    this.identityListeners.delete(listener);
  }

  close(): void {
    this.watch?.close();
  }
}

/** What tells a changed certificate set from the one loaded: each file's inode, size and modification time. */
async function fingerprintOf(files: CertificateFiles): Promise<string> {
  const stats = await Promise.all([files.certificateFile, files.keyFile, files.caFile].map((file) => stat(file).then((info) => `${info.ino}:${info.mtimeMs}:${info.size}`, () => 'missing')));
  return stats.join('|');
}
