/**
 * Certificate revocation: the CA signs an X.509 CRL listing revoked serial numbers; members load
 * it, verify its signature against the CAs they trust, reload it when it changes, and refuse a
 * revoked certificate on every call (client and peer), connections opened before the revocation
 * included. A CRL that does not verify is refused and the previous list stays in force.
 *
 * Rollback: every CRL carries a CRL number (RFC 5280 5.2.3) one above the previous one's. A member
 * remembers the highest number it has accepted (in `<data-dir>/crl-number`, so a restart keeps it)
 * and refuses an older CRL, so an old, validly signed CRL copied over the current one cannot
 * un-revoke anything. The file uses the standard PEM label `X509 CRL` (what OpenSSL reads).
 */
import { X509Certificate as NodeX509Certificate } from 'node:crypto';
import { readFile, stat } from 'node:fs/promises';
import path from 'node:path';
import * as x509 from '@peculiar/x509';
import type { Logger } from 'pino';
import { normalizeSerial, readKeyPair, writeFileAtomic, type KeyPairPem } from './authority.js';
import { serialized, watchFiles, type FileWatch } from './file-watch.js';
import { splitPemCertificates } from './reloading-provider.js';

export { normalizeSerial } from './authority.js';

type CryptoKey = Parameters<typeof x509.X509CrlGenerator.create>[0]['signingKey'];

export const crlFileName = 'crl.pem';
const revokedListName = 'revoked.json';
/** Where a member keeps the highest CRL number it has accepted, in its data directory. */
export const crlNumberFileName = 'crl-number';
const crlNumberOid = '2.5.29.20';
const crlValidityMs = 30 * 86_400_000;

interface RevokedEntry {
  readonly serialNumber: string;
  readonly name: string;
  readonly revokedAt: string;
}

async function signingKey(authority: KeyPairPem): Promise<CryptoKey> {
  const der = Buffer.from(authority.keyPem.replace(/-----[^-]+-----/g, '').replace(/\s+/g, ''), 'base64');
  const { webcrypto } = await import('node:crypto');
  return (await webcrypto.subtle.importKey('pkcs8', der, { name: 'ECDSA', namedCurve: 'P-256' }, false, ['sign'])) as unknown as CryptoKey;
}

/** DER INTEGER of a non-negative number (minimal two's complement, as RFC 5280 wants). */
function derInteger(value: bigint): ArrayBuffer {
  let hex = value.toString(16);
  if (hex.length % 2 === 1) hex = `0${hex}`;
  let bytes = Buffer.from(hex, 'hex');
  if (((bytes[0] ?? 0) & 0x80) !== 0) bytes = Buffer.concat([Buffer.of(0), bytes]);
  const encoded = Buffer.concat([Buffer.of(0x02, bytes.length), bytes]);
  return encoded.buffer.slice(encoded.byteOffset, encoded.byteOffset + encoded.length);
}

/** The CRL number of `crl`, or undefined when it has none (CRLs written before numbers were added). */
export function crlNumberOf(crl: x509.X509Crl): bigint | undefined {
  const extension = crl.extensions.find((candidate) => candidate.type === crlNumberOid);
  if (extension === undefined) return undefined;
  const der = Buffer.from(extension.value);
  const length = der[1] ?? 0;
  if (der[0] !== 0x02 || length === 0 || length > 20 || der.length !== 2 + length || ((der[2] ?? 0) & 0x80) !== 0) throw new Error('malformed CRL number');
  return BigInt(`0x${der.subarray(2).toString('hex')}`);
}

/** `-----BEGIN X509 CRL-----`: the label OpenSSL and every PKI tool read (x509 writes `CRL`). */
function crlPem(crl: x509.X509Crl): string {
  const base64 = Buffer.from(crl.rawData).toString('base64').replace(/(.{64})/g, '$1\n');
  return `-----BEGIN X509 CRL-----\n${base64}${base64.endsWith('\n') ? '' : '\n'}-----END X509 CRL-----\n`;
}

async function previousCrlNumber(crlFile: string): Promise<bigint> {
  try {
    return crlNumberOf(new x509.X509Crl(await readFile(crlFile, 'utf8'))) ?? 0n;
  } catch {
    return 0n;
  }
}

/**
 * Signs the PKI directory's CRL from its list of revoked certificates (revoked.json), numbered one
 * above the CRL it replaces. Returns the CRL file.
 */
export async function writeRevocationList(pkiDirectory: string): Promise<string> {
  const authority = await readKeyPair(path.join(pkiDirectory, 'ca'), 'ca');
  const revoked: RevokedEntry[] = await readFile(path.join(pkiDirectory, revokedListName), 'utf8').then((text) => JSON.parse(text) as RevokedEntry[], () => []);
  const crlFile = path.join(pkiDirectory, crlFileName);
  const caCertificate = new x509.X509Certificate(authority.certificatePem);
  const crl = await x509.X509CrlGenerator.create({
    issuer: caCertificate.subject,
    thisUpdate: new Date(),
    nextUpdate: new Date(Date.now() + crlValidityMs),
    signingAlgorithm: { name: 'ECDSA', hash: 'SHA-256' },
    signingKey: await signingKey(authority),
    extensions: [new x509.Extension(crlNumberOid, false, derInteger((await previousCrlNumber(crlFile)) + 1n))],
    entries: revoked.map((entry) => ({ serialNumber: entry.serialNumber, revocationDate: new Date(entry.revokedAt) })),
  });
  await writeFileAtomic(crlFile, crlPem(crl), 0o644);
  return crlFile;
}

/**
 * The PKI directory's CRL, signed anew (same revoked list, next number) when there is none yet or
 * when less than half of its validity is left: a local cluster's members enforce the CA's CRL
 * from their first start, and a cluster started again weeks later does not serve a stale one.
 * Returns the CRL file and whether it was written.
 */
export async function freshRevocationList(pkiDirectory: string): Promise<{ file: string; written: boolean }> {
  const file = path.join(pkiDirectory, crlFileName);
  const nextUpdateMs = await readFile(file, 'utf8').then((text) => new x509.X509Crl(text).nextUpdate?.getTime() ?? 0, () => 0);
  if (nextUpdateMs - Date.now() > crlValidityMs / 2) return { file, written: false };
  return { file: await writeRevocationList(pkiDirectory), written: true };
}

/** Revokes the certificate in `certificateFile` and rewrites the CRL in the PKI directory. */
export async function revoke(pkiDirectory: string, certificateFile: string): Promise<{ serialNumber: string; crlFile: string }> {
  const certificate = new NodeX509Certificate(await readFile(certificateFile));
  const listFile = path.join(pkiDirectory, revokedListName);
  const revoked: RevokedEntry[] = await readFile(listFile, 'utf8').then((text) => JSON.parse(text) as RevokedEntry[], () => []);
  const serialNumber = normalizeSerial(certificate.serialNumber);
  if (!revoked.some((entry) => entry.serialNumber === serialNumber)) {
    revoked.push({ serialNumber, name: certificate.subject.replace(/\n/g, ', '), revokedAt: new Date().toISOString() });
  }
  await writeFileAtomic(listFile, JSON.stringify(revoked, null, 2) + '\n', 0o600);
  return { serialNumber, crlFile: await writeRevocationList(pkiDirectory) };
}

/** The revoked serials a member enforces, reloaded from its CRL file. */
export class RevocationList {
  private revoked = new Set<string>();
  private lastSeen = '';
  private watch: FileWatch | undefined;
  /** Until open() has loaded the CRL once, a refused or missing one is an error, not a log line. */
  private opened = false;
  private readonly check = serialized(() => this.poll(!this.opened));

  private constructor(
    private readonly crlFile: string,
    private readonly caFiles: readonly string[],
    private readonly logger: Logger,
    /** Where the highest accepted CRL number is kept across restarts. */
    private readonly numberFile: string,
    /** The highest CRL number accepted so far: an older CRL is a rollback and is refused. */
    private highestNumber: bigint,
  ) {}

  static async open(crlFile: string, caFiles: readonly string[], logger: Logger, pollMs: number, numberFile: string): Promise<RevocationList> {
    const stored = await readFile(numberFile, 'utf8').then((text) => text.trim(), () => '0');
    if (!/^[0-9]{1,50}$/.test(stored)) throw new Error(`${numberFile} is malformed; it holds the highest CRL number this member accepted`);
    const list = new RevocationList(crlFile, caFiles, logger, numberFile, BigInt(stored));
    // Watched before the first read, so a CRL written while the member starts is not missed; a
    // change is seen within one poll interval (see file-watch.ts). An initial
    // load that fails is open()'s error (below), so the watch's own call ignores it.
    list.watch = watchFiles([crlFile], pollMs, () => void list.check().catch(() => undefined));
    try {
      await list.check();
    } catch (error) {
      list.close();
      throw error;
    }
    list.opened = true;
    return list;
  }

  isRevoked(serialNumber: string): boolean {
    return this.revoked.has(normalizeSerial(serialNumber));
  }

  get size(): number {
    return this.revoked.size;
  }

  private async poll(initial: boolean): Promise<void> {
    const seen = await stat(this.crlFile).then((info) => `${info.ino}:${info.mtimeMs}:${info.size}`, () => 'missing');
    if (seen === this.lastSeen) return;
    this.lastSeen = seen;
    if (seen === 'missing') {
      // No CRL yet: nothing is revoked. A CRL that disappears keeps its last list in force, and a
      // member that has enforced one does not start without it (that would un-revoke everything).
      if (initial && this.highestNumber > 0n) {
        throw new Error(`CRL ${this.crlFile} is missing, but this member has enforced CRL number ${this.highestNumber}: put the current CRL back (rampart cert revoke writes it)`);
      }
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
      const number = crlNumberOf(crl) ?? 0n;
      if (number < this.highestNumber) throw new Error(`its CRL number ${number} is older than ${this.highestNumber}, already enforced (a replaced or rolled-back CRL)`);
      if (number > this.highestNumber) {
        // Remembered before it takes effect: a crash in between must not let the older one back in.
        await writeFileAtomic(this.numberFile, `${number}\n`, 0o600);
        this.highestNumber = number;
      }
      this.revoked = new Set(crl.entries.map((entry) => normalizeSerial(entry.serialNumber)));
      this.logger.info({ crl: this.crlFile, crlNumber: number.toString(), revoked: this.revoked.size }, 'loaded certificate revocation list');
    } catch (error) {
      const message = `refused CRL ${this.crlFile}: ${error instanceof Error ? error.message : String(error)}`;
      if (initial) throw new Error(message);
      this.logger.error(message + '; the previous list stays in force');
    }
  }

  close(): void {
    this.watch?.close();
  }
}
