/**
 * The built-in certificate authority: a root CA per cluster (ECDSA P-256, 10 years) issuing
 * server, peer and client certificates with the right key usages, extended key usages and SANs,
 * random serials and short lifetimes (90 days by default).
 *
 * Owns: certificate and key material and its files (keys 0600, directories 0700). Never: loads the
 * CA key into a member — members get only their own certificate and key and the CA certificate.
 */
import { webcrypto, randomBytes, X509Certificate as NodeX509Certificate } from 'node:crypto';
import { chmod, mkdir, readFile, readdir, rename, writeFile } from 'node:fs/promises';
import { isIP } from 'node:net';
import path from 'node:path';
import * as x509 from '@peculiar/x509';

// WebCrypto types as @peculiar/x509 names them (this project compiles without the DOM library).
type Crypto = Parameters<typeof x509.cryptoProvider.set>[0];
type CryptoKeyPair = Parameters<typeof x509.X509CertificateGenerator.createSelfSigned>[0]['keys'];
type CryptoKey = CryptoKeyPair['privateKey'];

x509.cryptoProvider.set(webcrypto as unknown as Crypto);

const keyAlgorithm = { name: 'ECDSA', namedCurve: 'P-256' } as const;
const signingAlgorithm = { name: 'ECDSA', hash: 'SHA-256' } as const;
const dayMs = 24 * 60 * 60 * 1000;

export const caValidityDays = 3650;
export const leafValidityDaysDefault = 90;

/** `audit`: a member's key for signing its audit checkpoints (never for TLS: code-signing usage only). */
export type CertificateKind = 'server' | 'peer' | 'client' | 'audit';

/** The organizational unit marks what a certificate is for; peers check it on each other. */
export const organizationalUnit: Record<CertificateKind, string> = { server: 'rampart-server', peer: 'rampart-peer', client: 'rampart-client', audit: 'rampart-audit' };

export interface KeyPairPem {
  readonly certificatePem: string;
  readonly keyPem: string;
}

export interface IssueOptions {
  readonly kind: CertificateKind;
  readonly commonName: string;
  /** DNS names and IP addresses. */
  readonly subjectAltNames?: readonly string[];
  readonly validityDays?: number;
  /** For tests of expiry handling: when the certificate starts being valid. */
  readonly notBefore?: Date;
}

function pem(label: string, der: ArrayBuffer): string {
  const base64 = Buffer.from(der).toString('base64').replace(/(.{64})/g, '$1\n');
  return `-----BEGIN ${label}-----\n${base64}${base64.endsWith('\n') ? '' : '\n'}-----END ${label}-----\n`;
}

/** Normalized serial: upper-case hex without leading zeros (Node and x509 print them differently); printed so everywhere. */
export function normalizeSerial(serial: string): string {
  return serial.replace(/[^0-9a-f]/gi, '').toUpperCase().replace(/^0+(?=.)/, '');
}

function serialNumber(): string {
  const bytes = randomBytes(16);
  bytes[0] = (bytes[0] ?? 0) & 0x7f; // positive
  return bytes.toString('hex');
}

function escapeName(value: string): string {
  return value.replace(/([,+"\\<>;=])/g, '\\$1');
}

async function generateKeys(): Promise<CryptoKeyPair> {
  return (await webcrypto.subtle.generateKey(keyAlgorithm, true, ['sign', 'verify'])) as unknown as CryptoKeyPair;
}

async function exportPrivateKey(key: CryptoKey): Promise<string> {
  return pem('PRIVATE KEY', (await webcrypto.subtle.exportKey('pkcs8', key as unknown as webcrypto.CryptoKey)) as ArrayBuffer);
}

async function importPrivateKey(keyPem: string): Promise<CryptoKey> {
  const der = Buffer.from(keyPem.replace(/-----[^-]+-----/g, '').replace(/\s+/g, ''), 'base64');
  return (await webcrypto.subtle.importKey('pkcs8', der, keyAlgorithm, false, ['sign'])) as unknown as CryptoKey;
}

export async function createAuthority(commonName: string): Promise<KeyPairPem> {
  const keys = await generateKeys();
  const now = Date.now();
  const certificate = await x509.X509CertificateGenerator.createSelfSigned({
    serialNumber: serialNumber(),
    name: `CN=${escapeName(commonName)}, OU=rampart-ca`,
    notBefore: new Date(now - 60_000),
    notAfter: new Date(now + caValidityDays * dayMs),
    signingAlgorithm,
    keys,
    extensions: [
      new x509.BasicConstraintsExtension(true, 0, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign, true),
      await x509.SubjectKeyIdentifierExtension.create(keys.publicKey),
    ],
  });
  return { certificatePem: certificate.toString('pem') + '\n', keyPem: await exportPrivateKey(keys.privateKey) };
}

export async function issueCertificate(authority: KeyPairPem, options: IssueOptions): Promise<KeyPairPem> {
  const caCertificate = new x509.X509Certificate(authority.certificatePem);
  const caKey = await importPrivateKey(authority.keyPem);
  const keys = await generateKeys();
  const notBefore = options.notBefore ?? new Date(Date.now() - 60_000);
  const validityDays = options.validityDays ?? leafValidityDaysDefault;
  const usagesByKind: Record<CertificateKind, string[]> = {
    server: [x509.ExtendedKeyUsage.serverAuth],
    client: [x509.ExtendedKeyUsage.clientAuth],
    peer: [x509.ExtendedKeyUsage.serverAuth, x509.ExtendedKeyUsage.clientAuth],
    // Signs data, never a TLS handshake: a TLS peer checking usages refuses it.
    audit: [x509.ExtendedKeyUsage.codeSigning],
  };
  const usages = usagesByKind[options.kind];
  const extensions: x509.Extension[] = [
    new x509.BasicConstraintsExtension(false, undefined, true),
    new x509.KeyUsagesExtension(options.kind === 'audit' ? x509.KeyUsageFlags.digitalSignature : x509.KeyUsageFlags.digitalSignature | x509.KeyUsageFlags.keyAgreement, true),
    new x509.ExtendedKeyUsageExtension(usages, false),
    await x509.SubjectKeyIdentifierExtension.create(keys.publicKey),
    await x509.AuthorityKeyIdentifierExtension.create(caCertificate, false),
  ];
  const names = options.subjectAltNames ?? [];
  if (names.length > 0) {
    extensions.push(new x509.SubjectAlternativeNameExtension(names.map((name) => (isIP(name) !== 0 ? { type: 'ip' as const, value: name } : { type: 'dns' as const, value: name }))));
  }
  const certificate = await x509.X509CertificateGenerator.create({
    serialNumber: serialNumber(),
    subject: `CN=${escapeName(options.commonName)}, OU=${organizationalUnit[options.kind]}`,
    issuer: caCertificate.subject,
    notBefore,
    notAfter: new Date(notBefore.getTime() + validityDays * dayMs),
    signingAlgorithm,
    publicKey: keys.publicKey,
    signingKey: caKey,
    extensions,
  });
  return { certificatePem: certificate.toString('pem') + '\n', keyPem: await exportPrivateKey(keys.privateKey) };
}

// ---- files ----

/**
 * Layout under a PKI directory:
 *   ca/ca.crt, ca/ca.key        the authority (keep ca/ offline in production)
 *   <name>.crt, <name>.key      issued certificates
 *   ca.crt                      a copy of the CA certificate for members and clients
 */
/** Replaces a file in one step (write aside, then rename), so a reader never sees half of it. */
export async function writeFileAtomic(file: string, content: string, mode: number): Promise<void> {
  const aside = `${file}.${randomBytes(4).toString('hex')}.tmp`;
  await writeFile(aside, content, { mode });
  await chmod(aside, mode);
  await rename(aside, file);
}

export async function writeKeyPair(directory: string, name: string, pair: KeyPairPem): Promise<{ certificateFile: string; keyFile: string }> {
  await mkdir(directory, { recursive: true, mode: 0o700 });
  await chmod(directory, 0o700);
  const certificateFile = path.join(directory, `${name}.crt`);
  const keyFile = path.join(directory, `${name}.key`);
  await writeFileAtomic(keyFile, pair.keyPem, 0o600);
  await writeFileAtomic(certificateFile, pair.certificatePem, 0o644);
  return { certificateFile, keyFile };
}

/** Issues a fresh certificate with the same purpose, subject and SANs as an existing one. */
export async function renewCertificate(authority: KeyPairPem, directory: string, name: string, validityDays = leafValidityDaysDefault): Promise<KeyPairPem> {
  const current = new NodeX509Certificate(await readFile(path.join(directory, `${name}.crt`)));
  const unit = /OU=([^\n,]+)/.exec(current.subject)?.[1];
  const kind = (Object.keys(organizationalUnit) as CertificateKind[]).find((candidate) => organizationalUnit[candidate] === unit);
  if (kind === undefined) throw new Error(`${name}.crt was not issued by rampart (organizational unit ${unit ?? 'missing'})`);
  const commonName = /CN=([^\n]+)/.exec(current.subject)?.[1] ?? name;
  const subjectAltNames = (current.subjectAltName ?? '').split(',').map((entry) => entry.trim().replace(/^(DNS|IP Address):/, '')).filter((entry) => entry.length > 0);
  const renewed = await issueCertificate(authority, { kind, commonName, subjectAltNames, validityDays });
  await writeKeyPair(directory, name, renewed);
  return renewed;
}

export async function readKeyPair(directory: string, name: string): Promise<KeyPairPem> {
  const [certificatePem, keyPem] = await Promise.all([readFile(path.join(directory, `${name}.crt`), 'utf8'), readFile(path.join(directory, `${name}.key`), 'utf8')]);
  return { certificatePem, keyPem };
}

export async function initAuthority(pkiDirectory: string, clusterName: string): Promise<{ created: boolean; authority: KeyPairPem }> {
  const caDirectory = path.join(pkiDirectory, 'ca');
  try {
    return { created: false, authority: await readKeyPair(caDirectory, 'ca') };
  } catch {
    const authority = await createAuthority(`${clusterName} root CA`);
    await writeKeyPair(caDirectory, 'ca', authority);
    await writeFile(path.join(pkiDirectory, 'ca.crt'), authority.certificatePem, { mode: 0o644 });
    return { created: true, authority };
  }
}

export interface CertificateSummary {
  readonly file: string;
  readonly subject: string;
  readonly subjectAltNames: string;
  readonly notAfter: Date;
  readonly serialNumber: string;
}

export async function listCertificates(pkiDirectory: string): Promise<CertificateSummary[]> {
  const summaries: CertificateSummary[] = [];
  for (const directory of [path.join(pkiDirectory, 'ca'), pkiDirectory]) {
    let names: string[] = [];
    try {
      names = await readdir(directory);
    } catch {
      continue;
    }
    for (const name of names.filter((file) => file.endsWith('.crt')).sort()) {
      const file = path.join(directory, name);
      if (directory === pkiDirectory && name === 'ca.crt') continue;
      const certificate = new NodeX509Certificate(await readFile(file));
      summaries.push({ file, subject: certificate.subject.replace(/\n/g, ', '), subjectAltNames: certificate.subjectAltName ?? '', notAfter: new Date(certificate.validTo), serialNumber: normalizeSerial(certificate.serialNumber) });
    }
  }
  return summaries;
}
