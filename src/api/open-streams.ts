/**
 * The gRPC streams (calls) a member has open on its client port: each holds ~11-14 KB of grpc-js
 * and HTTP/2 state however little it sends, and HTTP/2 lets one connection open as many as the
 * server allows (etcd's --max-concurrent-streams default: no bound). Measured before this bound:
 * one certificate that is no user (or a low-privilege user) opened 80,000 idle LeaseKeepAlive
 * streams on a single connection, taking the member from 426 to 1,271 MiB, and the member's own
 * puts timed out while it set them up; with 1,000 connections an address may open, memory was the
 * only limit.
 *
 * Owns: the member-wide bound and each source address's share of it. Never: a call's meaning. A
 * stream past a bound is reset with HTTP/2's ENHANCE_YOUR_CALM (gRPC clients see
 * RESOURCE_EXHAUSTED), as a request past the request-bytes bound is, and audited as a refusal.
 * Counted for every stream, unary calls in flight included, from its headers until it closes.
 */
import { constants as http2Constants, type IncomingHttpHeaders, type ServerHttp2Stream } from 'node:http2';
import type { Socket } from 'node:net';
import { SourceBudget } from './source-budget.js';

/** Streams open at once on a member's client port, whoever opened them (~230 MiB of state at most). */
export const openStreamsMax = 16_384;
/**
 * What one source address may hold of it (a quarter, as its share of the request bytes): far more
 * than a client needs (etcd clients carry every watcher and keep-alive of a context on one stream).
 */
export const openStreamsPerSourceMax = 4_096;

/** Open streams, member-wide and per source address: each stream counts one. */
export class OpenStreamBudget extends SourceBudget {
  constructor(streamsMax: number = openStreamsMax, perSourceStreamsMax: number = openStreamsPerSourceMax) {
    super(streamsMax, perSourceStreamsMax);
  }

  get openStreams(): number {
    return this.held;
  }

  /** Counts one stream of `source`; false (nothing counted) when that would pass a bound. */
  override take(source: string): boolean {
    return super.take(source, 1);
  }

  override release(source: string): void {
    if (this.heldBy(source) <= 0) throw new Error('assertion failed: a stream released that was never counted');
    super.release(source, 1);
  }
}

/** Counts one HTTP/2 stream against the budget until it closes; past a bound it is reset at once and `onRefused` hears of it. */
export function boundOpenStream(stream: ServerHttp2Stream, headers: IncomingHttpHeaders, budget: OpenStreamBudget, onRefused: (method: string, socket: Socket | undefined) => void): void {
  const socket = stream.session?.socket;
  const source = socket?.remoteAddress ?? '';
  if (stream.destroyed) return; // ended already (gRPC refused it): holds nothing
  if (!budget.take(source)) {
    onRefused(String(headers[':path'] ?? ''), socket);
    stream.close(http2Constants.NGHTTP2_ENHANCE_YOUR_CALM);
    return;
  }
  stream.once('close', () => budget.release(source));
}
