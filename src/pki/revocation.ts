/**
 * Certificate revocation: the CA signs an X.509 CRL listing revoked serial numbers; members load
 * it, verify its signature against the CAs they trust, reload it when it changes, and refuse a
 * revoked certificate on every call (client and peer), connections opened before the revocation
 * included. A CRL that does not verify is refused and the previous list stays in force.
 */
import { X509Certificate as NodeX509Certificate } from 'node:crypto';
import { readFile, stat } from 'node:fs/promises';
import path from 'node:path';
import * as x509 from '@peculiar/x509';
import type { Logger } from 'pino';
import { readKeyPair, writeFileAtomic, type KeyPairPem } from './authority.js';
import { splitPemCertificates } from './reloading-provider.js';

type CryptoKey = Parameters<typeof x509.X509CrlGenerator.create>[0]['signingKey'];

export const crlFileName = 'crl.pem';
const revokedListName = 'revoked.json';

interface RevokedEntry {
  readonly serialNumber: string;
  readonly name: string;
  readonly revokedAt: string;
}

/** Normalized serial: upper-case hex without leading zeros (Node and x509 print them differently). */
export function normalizeSerial(serial: string): string {
  return serial.replace(/[^0-9a-f]/gi, '').toUpperCase().replace(/^0+(?=.)/, '');
}

async function signingKey(authority: KeyPairPem): Promise<CryptoKey> {
  const der = Buffer.from(authority.keyPem.replace(/-----[^-]+-----/g, '').replace(/\s+/g, ''), 'base64');
  const { webcrypto } = await import('node:crypto');
  return (await webcrypto.subtle.importKey('pkcs8', der, { name: 'ECDSA', namedCurve: 'P-256' }, false, ['sign'])) as unknown as CryptoKey;
}

/** Revokes the certificate in `certificateFile` and rewrites the CRL in the PKI directory. */
export async function revoke(pkiDirectory: string, certificateFile: string): Promise<{ serialNumber: string; crlFile: string }> {
  const authority = await readKeyPair(path.join(pkiDirectory, 'ca'), 'ca');
  const certificate = new NodeX509Certificate(await readFile(certificateFile));
  const listFile = path.join(pkiDirectory, revokedListName);
  const revoked: RevokedEntry[] = await readFile(listFile, 'utf8').then((text) => JSON.parse(text) as RevokedEntry[], () => []);
  const serialNumber = normalizeSerial(certificate.serialNumber);
  if (!revoked.some((entry) => entry.serialNumber === serialNumber)) {
    revoked.push({ serialNumber, name: certificate.subject.replace(/\n/g, ', '), revokedAt: new Date().toISOString() });
  }
  await writeFileAtomic(listFile, JSON.stringify(revoked, null, 2) + '\n', 0o600);
  const caCertificate = new x509.X509Certificate(authority.certificatePem);
  const crl = await x509.X509CrlGenerator.create({
    issuer: caCertificate.subject,
    thisUpdate: new Date(),
    nextUpdate: new Date(Date.now() + 30 * 86_400_000),
    signingAlgorithm: { name: 'ECDSA', hash: 'SHA-256' },
    signingKey: await signingKey(authority),
    entries: revoked.map((entry) => ({ serialNumber: entry.serialNumber, revocationDate: new Date(entry.revokedAt) })),
  });
  const crlFile = path.join(pkiDirectory, crlFileName);
  await writeFileAtomic(crlFile, crl.toString('pem') + '\n', 0o644);
  return { serialNumber, crlFile };
}

/** The revoked serials a member enforces, reloaded from its CRL file. */
export class RevocationList {
  private revoked = new Set<string>();
  private lastSeen = '';
  private timer: NodeJS.Timeout | undefined;

  private constructor(
    private readonly crlFile: string,
    private readonly caFiles: readonly string[],
    private readonly logger: Logger,
  ) {}

  static async open(crlFile: string, caFiles: readonly string[], logger: Logger, pollMs: number): Promise<RevocationList> {
    const list = new RevocationList(crlFile, caFiles, logger);
    await list.poll(true);
    list.timer = setInterval(() => void list.poll(false), pollMs);
    list.timer.unref();
    return list;
  }

  isRevoked(serialNumber: string): boolean {
    return this.revoked.has(normalizeSerial(serialNumber));
  }

  get size(): number {
    return this.revoked.size;
  }

  private async poll(initial: boolean): Promise<void> {
    const seen = await stat(this.crlFile).then((info) => `${info.mtimeMs}:${info.size}`, () => 'missing');
    if (seen === this.lastSeen) return;
    this.lastSeen = seen;
    if (seen === 'missing') {
      // No CRL yet: nothing is revoked. A CRL that disappears keeps its last list in force.
      return;
    }
    try {
      const crl = new x509.X509Crl(await readFile(this.crlFile, 'utf8'));
      const authorities = (await Promise.all(this.caFiles.map((file) => readFile(file, 'utf8')))).flatMap(splitPemCertificates).map((pem) => new x509.X509Certificate(pem));
      let verified = false;
      for (const authority of authorities) {
        if (crl.issuer === authority.subject && (await crl.verify({ publicKey: authority.publicKey }))) verified = true;
      }
      if (!verified) throw new Error('its signature does not verify against a trusted CA');
      this.revoked = new Set(crl.entries.map((entry) => normalizeSerial(entry.serialNumber)));
      this.logger.info({ crl: this.crlFile, revoked: this.revoked.size }, 'loaded certificate revocation list');
    } catch (error) {
      const message = `refused CRL ${this.crlFile}: ${error instanceof Error ? error.message : String(error)}`;
      if (initial) throw new Error(message);
      this.logger.error(message + '; the previous list stays in force');
    }
  }

  close(): void {
    if (this.timer !== undefined) clearInterval(this.timer);
  }
}
