/**
 * Certificates as evidence: who they name, who issued them, when they expire, their fingerprint.
 * The same description serves the checks (expiry, issuer, self-signed) and the bundle's inventory.
 */
import { createHash, type X509Certificate } from 'node:crypto';

const dayMs = 86_400_000;

export interface CertificateDescription {
  readonly subject: string;
  readonly issuer: string;
  /** Upper-case hex, no leading zeros (as `rampart cert list` prints it). */
  readonly serialNumber: string;
  /** SHA-256 of the DER, colon-separated upper-case hex (as `openssl x509 -fingerprint -sha256` prints it). */
  readonly fingerprint: string;
  readonly notBefore: string;
  readonly notAfter: string;
  readonly subjectAltNames: string;
  readonly selfSigned: boolean;
  /** Issued (and signed) by the cluster CA the check was given. */
  readonly issuedByCa: boolean;
  /** The OU Rampart marks a certificate's kind with (rampart-server, rampart-peer, rampart-ca, …). */
  readonly organizationalUnit: string | undefined;
}

/** `AB:CD:…`: the SHA-256 fingerprint of a certificate's DER. */
export function fingerprintOf(der: Buffer): string {
  return createHash('sha256').update(der).digest('hex').toUpperCase().replace(/(..)(?!$)/g, '$1:');
}

export function describeCertificate(certificate: X509Certificate, ca: X509Certificate | undefined): CertificateDescription {
  const issuedByCa = ca !== undefined && certificate.checkIssued(ca) && certificate.verify(ca.publicKey);
  const selfSigned = certificate.checkIssued(certificate) && (() => {
    try {
      return certificate.verify(certificate.publicKey);
    } catch {
      return false;
    }
  })();
  return {
    subject: certificate.subject.replace(/\n/g, ', '),
    issuer: certificate.issuer.replace(/\n/g, ', '),
    serialNumber: certificate.serialNumber.toUpperCase().replace(/^0+(?=.)/, ''),
    fingerprint: fingerprintOf(certificate.raw),
    notBefore: new Date(certificate.validFrom).toISOString(),
    notAfter: new Date(certificate.validTo).toISOString(),
    subjectAltNames: certificate.subjectAltName ?? '',
    selfSigned,
    issuedByCa,
    organizationalUnit: /(?:^|\n)OU=([^\n]*)/.exec(certificate.subject)?.[1],
  };
}

/** Whole days from `now` until the certificate expires (negative once expired). */
export function daysLeft(description: CertificateDescription, now: number): number {
  return Math.floor((Date.parse(description.notAfter) - now) / dayMs);
}
