/**
 * How long a connection may take to finish its TLS handshake. Node waits 120 s by default: a
 * client that opens TCP and sends nothing (or half a ClientHello) held one of its address's
 * connection slots (connection-limit.ts) for two minutes, so a few hundred such connections a
 * second kept every slot of an address, or of the port, taken. etcd (Go's net/http) gives up after
 * 10 s; so does every TLS listener here (client, peer, metrics).
 *
 * Owns: the deadline, from the TCP accept to the end of the handshake. Never: what the connection
 * carries after it (idle connections are the protocol's business: HTTP/2 pings, HTTP keep-alive).
 * Only public events are used, so it works for TLS servers we do not create (grpc-js's).
 */
import type { Socket } from 'node:net';
import type { Server as TlsServer, TLSSocket } from 'node:tls';
import type { Logger } from 'pino';
import { rateLimitedWarning } from './handshake-log.js';

/** A TLS handshake not finished this long after the TCP accept is dropped (etcd's and Go's default). */
export const tlsHandshakeTimeoutMs = 10_000;

export interface HandshakeDeadlineOptions {
  readonly logger: Logger;
  /** Names the port in the log (`client`, `peer`, `metrics`). */
  readonly port: string;
  /** Tests only: a shorter deadline than tlsHandshakeTimeoutMs. */
  readonly timeoutMs?: number;
  /** Hears of each connection dropped for its deadline (`address:port`). */
  readonly onTimeout?: (remote: string) => void;
}

/** Applies the deadline to `server`; must be called before it accepts its first connection. */
export function limitHandshakeTime(server: TlsServer, options: HandshakeDeadlineOptions): void {
  const timeoutMs = options.timeoutMs ?? tlsHandshakeTimeoutMs;
  const warn = rateLimitedWarning(options.logger, 'dropped a connection: TLS handshake not finished in time');
  /**
   * Pending handshakes by `address:port`: unique among open connections of one listening port, and
   * the same on the raw socket and on the TLS socket made of it (which shares its handle).
   */
  const pending = new Map<string, NodeJS.Timeout>();
  const keyOf = (socket: Socket): string => `${socket.remoteAddress ?? ''}:${socket.remotePort ?? ''}`;
  // Prepended: the raw socket is seen before the TLS server wraps it.
  server.prependListener('connection', (socket: Socket) => {
    if (socket.destroyed) return; // refused by the connection limit
    const key = keyOf(socket);
    const timer = setTimeout(() => {
      pending.delete(key);
      warn({ port: options.port, remote: key, timeoutMs });
      options.onTimeout?.(key);
      socket.destroy();
    }, timeoutMs);
    pending.set(key, timer);
    socket.once('close', () => {
      if (pending.get(key) !== timer) return;
      clearTimeout(timer);
      pending.delete(key);
    });
  });
  server.on('secureConnection', (socket: TLSSocket) => {
    const key = keyOf(socket);
    const timer = pending.get(key);
    if (timer === undefined) return;
    clearTimeout(timer);
    pending.delete(key);
  });
}
