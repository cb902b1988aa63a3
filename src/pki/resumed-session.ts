/**
 * A resumed TLS session without a client certificate is not an authorized one.
 *
 * Node (20, OpenSSL 3) reports a TLS 1.3 connection that resumed a session (a ticket from an
 * earlier connection) and carries no client certificate as `authorized: true`: its check treats
 * "no certificate, session reused" as TLS 1.3 PSK authentication (node_crypto's
 * VerifyPeerCertificate). A listener that requests certificates without requiring them in the
 * handshake (the metrics listener: probes carry none; the client port without
 * --client-cert-auth) hands a ticket to a client without a certificate on its first connection, and
 * on its second that client looked authorized. The metrics listener then served /metrics and
 * /health to it without a certificate (with a CRL: "certificate revoked", 403, as the deploy e2e
 * saw when its probe happened to open a new connection and resume).
 *
 * Owns: `authorized` on the server's TLS sockets, put right once the handshake is done: false (with
 * the error a first connection without a certificate gets) when no certificate came. Never: the
 * certificate check itself (OpenSSL's), revocation or what a path answers.
 */
import type { Server as TlsServer, TLSSocket } from 'node:tls';

/** What Node reports for a connection that presented no certificate (VerifyError's default). */
export const noCertificateError = 'UNABLE_TO_GET_ISSUER_CERT';

/** Marks `socket` unauthorized when it is "authorized" without a certificate. */
export function correctAuthorization(socket: TLSSocket): void {
  if (socket.authorized !== true) return;
  if (socket.getPeerCertificate().raw !== undefined) return;
  socket.authorized = false;
  // Node's own value is the error code (a string), despite the typing.
  socket.authorizationError = noCertificateError as unknown as Error;
}

/** Applies correctAuthorization to every connection of `server`, before any other listener sees it. */
export function refuseCertificatelessResumption(server: TlsServer): void {
  server.prependListener('secureConnection', correctAuthorization);
}
