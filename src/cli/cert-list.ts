/**
 * `rampart cert list`: one line per certificate file (file, subject, SANs, expiry, serial, status),
 * then one per revoked serial whose file is gone, or the same as JSON (`--output json`). Problems
 * reading the CA's revocation records go to standard error as warnings.
 */
import type { CertificateInventory } from '../pki/inventory.js';

export type CertificateListFormat = 'table' | 'json';

export const certificateListFormats: readonly CertificateListFormat[] = ['table', 'json'];

export function formatCertificateList(inventory: CertificateInventory, format: CertificateListFormat): string {
  if (format === 'json') {
    return `${JSON.stringify({
      certificates: inventory.certificates.map((entry) => ({ ...entry, notAfter: entry.notAfter.toISOString() })),
      revokedWithoutFile: inventory.revokedWithoutFile,
    }, null, 2)}\n`;
  }
  const lines = inventory.certificates.map((entry) => {
    const status = entry.status === 'revoked' ? `REVOKED ${entry.revokedAt ?? '?'}` : entry.status === 'expired' ? 'EXPIRED' : 'valid';
    return `${entry.file}\t${entry.subject}\t${entry.subjectAltNames || '-'}\texpires ${entry.notAfter.toISOString()}\tserial ${entry.serialNumber}\t${status}`;
  });
  for (const entry of inventory.revokedWithoutFile) {
    lines.push(`(no file)\t${entry.subject ?? '-'}\t-\t-\tserial ${entry.serialNumber}\tREVOKED ${entry.revokedAt}`);
  }
  return lines.length === 0 ? '' : `${lines.join('\n')}\n`;
}
