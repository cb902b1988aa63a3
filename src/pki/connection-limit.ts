/**
 * How many connections a listening port keeps open, in all and from one source address. Each open
 * connection holds a file descriptor and ~75 KB, from before its TLS handshake (which may stall for
 * two minutes) until it closes, and an idle HTTP/2 connection never closes by itself: one
 * certificate that is no user opened 3,000 and kept them (RSS +280 MiB); at the process's open-file
 * limit (often 1,024 or 20,000) the member could no longer open its database or audit files.
 *
 * Owns: accepting or refusing a new connection, before any byte of TLS. Never: what the
 * connection carries. A refused connection is closed at once and logged (rate limited).
 */
import { readFileSync } from 'node:fs';
import type { Server, Socket } from 'node:net';
import type { Logger } from 'pino';
import { rateLimitedWarning } from './handshake-log.js';

/** Connections one port keeps open at once (lowered to half the open-file limit when that is lower). */
export const connectionsPerPortMax = 10_000;
/** Connections one source address may keep open on one port. */
export const connectionsPerSourceMax = 1_000;

/** The process's soft limit on open files (Linux), or undefined where it cannot be read. */
export function openFilesLimit(limitsText?: string): number | undefined {
  let text = limitsText;
  if (text === undefined) {
    try {
      text = readFileSync('/proc/self/limits', 'utf8');
    } catch {
      return undefined;
    }
  }
  const soft = /^Max open files\s+(\d+)/m.exec(text)?.[1];
  return soft === undefined ? undefined : Number(soft);
}

/** The bound for one port: the constant, or half the open files when that is lower (the rest is for data, logs, peers). */
export function connectionsMaxFor(openFiles: number | undefined): number {
  return openFiles === undefined ? connectionsPerPortMax : Math.max(1, Math.min(connectionsPerPortMax, Math.floor(openFiles / 2)));
}

export interface ConnectionLimitOptions {
  readonly logger: Logger;
  /** Names the port in the log (`client`, `peer`, `metrics`). */
  readonly port: string;
  readonly connectionsMax?: number;
  readonly perSourceMax?: number;
}

/** Applies the bounds to `server`; must be called before it accepts its first connection. */
export function limitConnections(server: Server, options: ConnectionLimitOptions): void {
  const perSourceMax = options.perSourceMax ?? connectionsPerSourceMax;
  // Node closes a connection past maxConnections as it accepts it, before any other listener runs.
  server.maxConnections = options.connectionsMax ?? connectionsMaxFor(openFilesLimit());
  const bySource = new Map<string, number>();
  const warn = rateLimitedWarning(options.logger, 'refused a connection: too many from one address');
  // Prepended: runs before the TLS server's own listener starts a handshake on the socket.
  server.prependListener('connection', (socket: Socket) => {
    const source = socket.remoteAddress ?? '';
    const open = bySource.get(source) ?? 0;
    if (open >= perSourceMax) {
      warn({ port: options.port, remote: source, open });
      socket.destroy();
      return;
    }
    bySource.set(source, open + 1);
    socket.once('close', () => {
      const left = (bySource.get(source) ?? 1) - 1;
      if (left > 0) bySource.set(source, left);
      else bySource.delete(source);
    });
  });
}

/** The listening servers grpc-js keeps in a private map (none when a future version moves it). */
export function grpcServersOf(server: object): Server[] {
  const servers = (server as { http2Servers?: unknown }).http2Servers;
  return servers instanceof Map ? [...(servers.keys() as IterableIterator<Server>)] : [];
}
