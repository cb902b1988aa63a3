/**
 * A clear log line for every refused TLS handshake (no certificate, another CA, an expired
 * certificate, plaintext on a TLS port), which grpc-js otherwise drops silently. grpc-js keeps its
 * HTTP/2 servers in a private map; when a future version moves it, this logs once that handshake
 * refusals cannot be reported, and everything else keeps working. Lines are rate limited: a scanner
 * cannot flood the log.
 */
import type { EventEmitter } from 'node:events';
import type { TLSSocket } from 'node:tls';
import type * as grpc from '@grpc/grpc-js';
import type { Logger } from 'pino';

const windowMs = 10_000;
const linesPerWindow = 20;

export function logRefusedHandshakes(server: grpc.Server, logger: Logger, port: 'client' | 'peer'): void {
  const servers = (server as unknown as { http2Servers?: unknown }).http2Servers;
  if (!(servers instanceof Map)) {
    logger.warn({ port }, 'this gRPC version hides its HTTP/2 servers: refused TLS handshakes will not be logged');
    return;
  }
  logRefusedTlsHandshakes(servers.keys() as IterableIterator<EventEmitter>, logger, port);
}

/** The same for TLS servers of our own (the client port's, which shares TLS between gRPC and HTTP). */
export function logRefusedTlsHandshakes(servers: Iterable<EventEmitter>, logger: Logger, port: 'client' | 'peer'): void {
  let windowStart = 0;
  let logged = 0;
  let suppressed = 0;
  for (const http2Server of servers) {
    http2Server.on('tlsClientError', (error: Error & { code?: string }, socket: TLSSocket) => {
      const now = Date.now();
      if (now - windowStart > windowMs) {
        if (suppressed > 0) logger.warn({ port, suppressed }, 'more TLS handshakes were refused than logged');
        windowStart = now;
        logged = 0;
        suppressed = 0;
      }
      if (logged >= linesPerWindow) {
        suppressed += 1;
        return;
      }
      logged += 1;
      logger.warn({ port, remote: socket?.remoteAddress, reason: error.code ?? 'unknown', detail: error.message }, 'refused a TLS connection');
    });
  }
}
