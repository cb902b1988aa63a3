/**
 * A clear log line for every refused TLS handshake (no certificate, another CA, an expired
 * certificate, plaintext on a TLS port), which grpc-js otherwise drops silently. Each names the
 * peer's address and the reason: a refused client certificate shows up as a reset connection
 * ("socket hang up", the socket already closed), so the certificate's verification error and the
 * address noted when the connection was accepted are reported instead. grpc-js keeps its
 * HTTP/2 servers in a private map; when a future version moves it, this logs once that handshake
 * refusals cannot be reported, and everything else keeps working. Lines are rate limited: a scanner
 * cannot flood the log.
 */
import type { EventEmitter } from 'node:events';
import type { Socket } from 'node:net';
import type { TLSSocket } from 'node:tls';
import type * as grpc from '@grpc/grpc-js';
import type { Logger } from 'pino';

const windowMs = 10_000;
const linesPerWindow = 20;

/**
 * A warning that an outsider can trigger at will (a refused handshake, certificate or peer),
 * rate limited: at most linesPerWindow lines per windowMs, then one line saying how many were not
 * logged. Each refusal site gets its own limiter, so one flood does not hide another kind.
 */
export function rateLimitedWarning(logger: Logger, message: string): (fields: object) => void {
  let windowStart = 0;
  let logged = 0;
  let suppressed = 0;
  return (fields) => {
    const now = Date.now();
    if (now - windowStart > windowMs) {
      if (suppressed > 0) logger.warn({ suppressed }, `${message}: more than logged`);
      windowStart = now;
      logged = 0;
      suppressed = 0;
    }
    if (logged >= linesPerWindow) {
      suppressed += 1;
      return;
    }
    logged += 1;
    logger.warn(fields, message);
  };
}

export function logRefusedHandshakes(server: grpc.Server, logger: Logger, port: 'client' | 'peer', onRefused?: (refusal: RefusedHandshake) => void): void {
  const servers = (server as unknown as { http2Servers?: unknown }).http2Servers;
  if (!(servers instanceof Map)) {
    logger.warn({ port }, 'this gRPC version hides its HTTP/2 servers: refused TLS handshakes will not be logged');
    return;
  }
  logRefusedTlsHandshakes(servers.keys() as IterableIterator<EventEmitter>, logger, port, onRefused);
}

/** A handshake this server refused: who, and why (a certificate's verification error, or the TLS error's code). */
export interface RefusedHandshake {
  /** `address:port`, or `unknown`. */
  readonly remote: string;
  readonly reason: string;
}

/**
 * The same for TLS servers of our own (the client port's, which shares TLS between gRPC and HTTP).
 * `onRefused` hears of each refusal (for the audit trail, which rate-limits on its own), but not of
 * a connection its client closed before completing a handshake (`ECONNRESET`: a TCP health check
 * or a scanner that gave up): nothing was refused.
 */
export function logRefusedTlsHandshakes(servers: Iterable<EventEmitter>, logger: Logger, port: 'client' | 'peer', onRefused?: (refusal: RefusedHandshake) => void): void {
  const warn = rateLimitedWarning(logger, 'refused a TLS connection');
  /** Each accepted TCP connection's peer, noted before TLS could destroy the socket. */
  const peers = new WeakMap<object, string>();
  for (const http2Server of servers) {
    http2Server.on('connection', (raw: Socket) => {
      if (raw.remoteAddress !== undefined) peers.set(raw, `${raw.remoteAddress}:${raw.remotePort ?? ''}`);
    });
    http2Server.on('tlsClientError', (error: Error & { code?: string }, socket: TLSSocket) => {
      const tlsSocket = socket as TLSSocket & { _parent?: object | null };
      const remote = (tlsSocket._parent === undefined || tlsSocket._parent === null ? undefined : peers.get(tlsSocket._parent)) ?? (socket?.remoteAddress === undefined ? 'unknown' : `${socket.remoteAddress}:${socket.remotePort ?? ''}`);
      // A refused certificate: its verification error (CERT_HAS_EXPIRED, UNABLE_TO_VERIFY_LEAF_SIGNATURE, ...) says why.
      const certificateError = typeof socket?.authorizationError === 'string' ? socket.authorizationError : socket?.authorizationError?.message;
      const reason = certificateError ?? error.code ?? 'unknown';
      warn({ port, remote, reason, detail: certificateError === undefined ? error.message : 'client certificate refused' });
      if (onRefused === undefined || (certificateError === undefined && error.code === 'ECONNRESET')) return;
      // (The refused certificate itself is gone with the socket by now: the reason is all there is.)
      onRefused({ remote, reason });
    });
  }
}

