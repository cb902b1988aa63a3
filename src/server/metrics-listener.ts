/**
 * What one scraper, prober or stranger may hold of the metrics listener (`--listen-metrics-urls`).
 * It serves Prometheus and orchestrator probes, a few connections each, yet anyone who can reach it
 * could keep connections open without limit: each a file descriptor and its buffers, from before
 * the TLS handshake. So it has the client port's bounds, smaller: connections per source address
 * and in all (refused as they are accepted), a TLS handshake deadline, and an idle timeout. Over
 * TLS, a connection that resumed a session without a certificate is not taken for an authorized one
 * (resumed-session.ts): the handler's certificate check reads `authorized`.
 *
 * Owns: those bounds on one metrics server, and its connections' `authorized`. Never: what a path answers (metrics.ts).
 */
import type { Server as HttpServer } from 'node:http';
import type { Server as TlsServer } from 'node:tls';
import type { Logger } from 'pino';
import { connectionsMaxFor, limitConnections, openFilesLimit } from '../pki/connection-limit.js';
import { limitHandshakeTime } from '../pki/handshake-deadline.js';
import { refuseCertificatelessResumption } from '../pki/resumed-session.js';

/** Connections one source address may keep open on a metrics listener (a Prometheus keeps one per target; probes open one each). */
export const metricsConnectionsPerSourceMax = 100;
/** Connections a metrics listener keeps open in all (lowered with the open-file limit as the client port's bound is). */
export const metricsConnectionsMax = 1_000;
/** A connection that carries no byte this long is closed (a scrape reconnects at its next interval). */
export const metricsIdleTimeoutMs = 30_000;
/** A request's headers must arrive within this time after its first byte. */
export const metricsHeadersTimeoutMs = 10_000;

export interface MetricsListenerBounds {
  readonly logger: Logger;
  /** Whether the server speaks TLS (then its handshake has a deadline). */
  readonly tls: boolean;
  /** Tests only: smaller bounds. */
  readonly connectionsMax?: number;
  readonly perSourceMax?: number;
  readonly idleTimeoutMs?: number;
}

/** Applies the bounds to `server`; must be called before it listens. */
export function boundMetricsServer(server: HttpServer, bounds: MetricsListenerBounds): void {
  const idleTimeoutMs = bounds.idleTimeoutMs ?? metricsIdleTimeoutMs;
  // An inactive socket (no byte either way) is destroyed: Node's HTTP server has no such bound by default.
  server.timeout = idleTimeoutMs;
  server.keepAliveTimeout = Math.min(server.keepAliveTimeout, idleTimeoutMs);
  server.headersTimeout = Math.min(metricsHeadersTimeoutMs, idleTimeoutMs);
  server.requestTimeout = idleTimeoutMs;
  if (bounds.tls) {
    limitHandshakeTime(server as unknown as TlsServer, { logger: bounds.logger, port: 'metrics' });
    refuseCertificatelessResumption(server as unknown as TlsServer);
  }
  limitConnections(server, {
    logger: bounds.logger,
    port: 'metrics',
    connectionsMax: bounds.connectionsMax ?? Math.min(metricsConnectionsMax, connectionsMaxFor(openFilesLimit())),
    perSourceMax: bounds.perSourceMax ?? metricsConnectionsPerSourceMax,
  });
}
