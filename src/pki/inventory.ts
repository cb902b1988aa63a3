/**
 * What `rampart cert list` shows: every certificate file of a PKI directory with its status
 * (valid, expired, or revoked and when), and every revoked serial the CA lists whose file is gone
 * (renewed or deleted since): a revoked certificate still out there must not vanish from the list.
 *
 * Revocation comes from the CA's own records: its signed CRL (`crl.pem`, what members enforce) —
 * read only when its signature verifies against the CA — and its list of revoked certificates
 * (`revoked.json`, which names them). A serial in either is revoked; a CRL that does not verify is
 * reported, not trusted.
 */
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import * as x509 from '@peculiar/x509';
import { listCertificates, normalizeSerial, type CertificateSummary } from './authority.js';
import { crlFileName } from './revocation.js';

export type CertificateStatus = 'valid' | 'expired' | 'revoked';

export interface ListedCertificate extends CertificateSummary {
  readonly status: CertificateStatus;
  /** When the CA revoked it (ISO 8601), for a revoked certificate. */
  readonly revokedAt?: string;
}

export interface RevokedSerial {
  readonly serialNumber: string;
  /** The subject recorded when it was revoked, when the CA's list has it. */
  readonly subject?: string;
  readonly revokedAt: string;
}

export interface CertificateInventory {
  readonly certificates: readonly ListedCertificate[];
  /** Revoked serials with no certificate file in the directory. */
  readonly revokedWithoutFile: readonly RevokedSerial[];
  /** What could not be read of the revocation records (a CRL that does not verify, an unreadable list). */
  readonly problems: readonly string[];
}

interface RevokedEntry {
  readonly serialNumber: string;
  readonly name?: string;
  readonly revokedAt: string;
}

async function revokedSerials(pkiDirectory: string): Promise<{ revoked: Map<string, RevokedSerial>; problems: string[] }> {
  const revoked = new Map<string, RevokedSerial>();
  const problems: string[] = [];
  const listFile = path.join(pkiDirectory, 'revoked.json');
  const list = await readFile(listFile, 'utf8').then((text) => JSON.parse(text) as unknown, (error: NodeJS.ErrnoException) => (error.code === 'ENOENT' ? [] : error));
  if (list instanceof Error) problems.push(`cannot read ${listFile}: ${(list as NodeJS.ErrnoException).code ?? list.message}`);
  else if (!Array.isArray(list)) problems.push(`${listFile} is not a list of revoked certificates`);
  else {
    for (const entry of list as RevokedEntry[]) {
      if (typeof entry?.serialNumber !== 'string' || typeof entry.revokedAt !== 'string') continue;
      revoked.set(normalizeSerial(entry.serialNumber), { serialNumber: normalizeSerial(entry.serialNumber), ...(typeof entry.name === 'string' ? { subject: entry.name } : {}), revokedAt: entry.revokedAt });
    }
  }
  const crlFile = path.join(pkiDirectory, crlFileName);
  const crlText = await readFile(crlFile, 'utf8').catch((error: NodeJS.ErrnoException) => (error.code === 'ENOENT' ? undefined : error));
  if (crlText instanceof Error) {
    problems.push(`cannot read ${crlFile}: ${(crlText as NodeJS.ErrnoException).code ?? crlText.message}`);
  } else if (crlText !== undefined) {
    try {
      const crl = new x509.X509Crl(crlText);
      const ca = new x509.X509Certificate(await readFile(path.join(pkiDirectory, 'ca', 'ca.crt'), 'utf8').catch(() => readFile(path.join(pkiDirectory, 'ca.crt'), 'utf8')));
      const verified = crl.issuer === ca.subject && (await crl.verify({ publicKey: ca.publicKey }).catch(() => false));
      if (!verified) {
        problems.push(`${crlFile}: its signature does not verify against the CA: its entries are not shown`);
      } else {
        for (const entry of crl.entries) {
          const serialNumber = normalizeSerial(entry.serialNumber);
          const known = revoked.get(serialNumber);
          revoked.set(serialNumber, { serialNumber, ...(known?.subject === undefined ? {} : { subject: known.subject }), revokedAt: known?.revokedAt ?? entry.revocationDate.toISOString() });
        }
      }
    } catch (error) {
      problems.push(`${crlFile}: not a CRL the CA signed (${error instanceof Error ? error.message : String(error)})`);
    }
  }
  return { revoked, problems };
}

export async function certificateInventory(pkiDirectory: string, now = new Date()): Promise<CertificateInventory> {
  const summaries = await listCertificates(pkiDirectory);
  const { revoked, problems } = await revokedSerials(pkiDirectory);
  const certificates = summaries.map((summary): ListedCertificate => {
    const revocation = revoked.get(summary.serialNumber);
    if (revocation !== undefined) return { ...summary, status: 'revoked', revokedAt: revocation.revokedAt };
    return { ...summary, status: summary.notAfter.getTime() < now.getTime() ? 'expired' : 'valid' };
  });
  const present = new Set(summaries.map((summary) => summary.serialNumber));
  const revokedWithoutFile = [...revoked.values()].filter((entry) => !present.has(entry.serialNumber)).sort((a, b) => a.revokedAt.localeCompare(b.revokedAt));
  return { certificates, revokedWithoutFile, problems };
}
