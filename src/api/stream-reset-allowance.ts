/**
 * Serving grpc-js clients older than 1.10.4 (in lockfiles from before 2024-03, the `etcd3` npm
 * client's among them) as etcd does. Such a client ends every finished call with an RST_STREAM.
 * Node's HTTP/2 server (nghttp2 ≥ 1.57, the rapid-reset mitigation of CVE-2023-44487) allows a
 * connection 1,000 received resets, refilled at 33 a second, and then ends it with GOAWAY
 * INTERNAL_ERROR: every call in flight fails with `13 INTERNAL: Received RST_STREAM with code 2`
 * (and the etcd3 client's circuit breaker then rejects thousands more). etcd's Go server has no
 * such limit. Node 20 cannot change it, and raising it would weaken the mitigation for everyone.
 *
 * Instead, a connection from such a client is closed gracefully before its allowance runs out:
 * GOAWAY NO_ERROR, calls in flight finish, later ones are refused and grpc-js retries them
 * transparently on a new connection (whose allowance is whole again). Each of the client's streams
 * counts as a reset to come (it sends one per call). Other clients are left alone, so a connection
 * of etcdctl or a current grpc-js is never cycled; nghttp2 still guards every connection.
 *
 * Owns: recognising such clients and the per-connection allowance. Never: anything about a call.
 */
import type { IncomingHttpHeaders, Http2Server, ServerHttp2Session } from 'node:http2';
import type { Logger } from 'pino';

/** nghttp2's defaults (NGHTTP2_DEFAULT_STREAM_RESET_BURST / _RATE): received resets per connection. */
export const streamResetBurst = 1000;
export const streamResetsPerSecond = 33;
/**
 * What is kept in hand when the connection is closed: nghttp2 refills in whole seconds (up to 33
 * behind this model) and the client's resets of calls still in flight arrive after the decision.
 */
export const streamResetReserve = 200;

/** Whether this user agent is a grpc-js that resets every finished call (before 1.10.4). */
export function resetsEveryCall(userAgent: string | undefined): boolean {
  const match = /\bgrpc-node-js\/(\d+)\.(\d+)\.(\d+)/.exec(userAgent ?? '');
  if (match === null) return false;
  const [major, minor, patch] = [Number(match[1]), Number(match[2]), Number(match[3])];
  return major < 1 || (major === 1 && (minor < 10 || (minor === 10 && patch < 4)));
}

/** A connection's remaining reset allowance, as nghttp2 keeps it (a token bucket). */
export class ResetAllowance {
  private left = streamResetBurst;
  private updatedMs: number;

  constructor(private readonly nowMs: () => number) {
    this.updatedMs = nowMs();
  }

  /** Counts one reset to come; returns whether the connection should now be closed gracefully. */
  spend(): boolean {
    const now = this.nowMs();
    this.left = Math.min(streamResetBurst, this.left + ((now - this.updatedMs) / 1000) * streamResetsPerSecond);
    this.updatedMs = now;
    this.left -= 1;
    return this.left <= streamResetReserve;
  }
}

/** Watches one HTTP/2 connection: once its client shows it resets every call, spends its allowance per stream. */
export function watchStreamResets(session: ServerHttp2Session, logger: Logger, nowMs: () => number = Date.now): void {
  let allowance: ResetAllowance | undefined;
  let closing = false;
  session.on('stream', (_stream: unknown, headers: IncomingHttpHeaders) => {
    if (closing) return;
    if (allowance === undefined) {
      if (!resetsEveryCall(headers['user-agent'])) return;
      allowance = new ResetAllowance(nowMs);
    }
    if (!allowance.spend()) return;
    closing = true;
    logger.debug({ remote: session.socket?.remoteAddress, userAgent: headers['user-agent'] }, 'closing a connection gracefully before its client (grpc-js < 1.10.4, one RST_STREAM per call) exhausts its reset allowance');
    session.close();
  });
}

interface Http2ServersOf {
  readonly http2Servers: Map<Http2Server, unknown>;
}

/**
 * The HTTP/2 servers grpc-js created for `grpcServer` so far (a private field of @grpc/grpc-js
 * 1.14), or undefined when this version has no such field.
 */
export function http2ServersOf(grpcServer: object): Set<Http2Server> | undefined {
  const servers = (grpcServer as Partial<Http2ServersOf>).http2Servers;
  return servers instanceof Map ? new Set(servers.keys()) : undefined;
}
