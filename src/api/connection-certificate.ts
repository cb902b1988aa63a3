/**
 * A client connection's certificate, read once per connection instead of once per call.
 *
 * `TLSSocket.getPeerCertificate()` builds a fresh object from the X.509 certificate every time it
 * is asked, and grpc-js asks on every call (`getAuthContext`): 1–2.5% of a member's CPU under puts
 * (README, Benchmarks). The peer certificate of a TLS connection is fixed once its handshake is
 * done; the one way to present another on the same connection is TLS 1.2 renegotiation, which is
 * refused here: the connection ends (Go's TLS server, hence etcd, never renegotiates either). So the
 * socket itself keeps the object it read first and answers with it: the cache lives and dies with
 * the connection and can never answer for another one.
 *
 * Nothing is decided from the cache: whether the certificate may still be used (revoked, expired)
 * is checked against it on every call (services.ts) and by the connection sweep
 * (client-listener.ts), with the revocation list as it is at that moment.
 */
import type { DetailedPeerCertificate, PeerCertificate, TLSSocket } from 'node:tls';

/** Makes `socket` (a client connection whose handshake is done) read its peer certificate once. */
export function rememberPeerCertificate(socket: TLSSocket): void {
  socket.disableRenegotiation();
  // Node only reports a renegotiation attempt (and then lets it finish): the connection ends here.
  socket.on('error', (error: NodeJS.ErrnoException) => {
    if (error.code === 'ERR_TLS_RENEGOTIATION_DISABLED') socket.destroy();
  });
  const read = socket.getPeerCertificate.bind(socket);
  let remembered: PeerCertificate | undefined;
  function getPeerCertificate(detailed: true): DetailedPeerCertificate;
  function getPeerCertificate(detailed?: false): PeerCertificate;
  function getPeerCertificate(detailed?: boolean): PeerCertificate | DetailedPeerCertificate;
  function getPeerCertificate(detailed?: boolean): PeerCertificate | DetailedPeerCertificate {
    if (detailed === true) return read(true); // the issuer chain: rare (diagnostics), not kept
    // Frozen: every call of the connection shares it, so none may change what the next one sees.
    remembered ??= Object.freeze(read(false));
    return remembered;
  }
  socket.getPeerCertificate = getPeerCertificate;
}
