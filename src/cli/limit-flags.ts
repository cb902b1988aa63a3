/**
 * The per-client limits `rampart serve` takes as flags: only those etcd 3.4 has, with etcd's names
 * and defaults, so an etcd command line keeps its meaning. Every other bound is a named constant
 * (README, "Limits"). A value that cannot work is refused before anything starts, saying why.
 *
 * Owns: the ranges of these flags. Never: applying them (the gRPC server and the member do).
 */
import { requestBytesInFlightPerSourceMax } from '../api/request-bytes-budget.js';

/** etcd's --max-concurrent-streams default (math.MaxUint32): no bound beyond HTTP/2's own. */
export const maxConcurrentStreamsDefault = 4_294_967_295;

export interface LimitFlags {
  readonly maxRequestBytes: number;
  readonly maxConcurrentStreams: number;
}

/** Throws a clear error naming the flag when a value is out of its range. */
export function checkLimitFlags(flags: LimitFlags): void {
  if (!Number.isSafeInteger(flags.maxRequestBytes) || flags.maxRequestBytes < 1 || flags.maxRequestBytes > requestBytesInFlightPerSourceMax) {
    throw new Error(`--max-request-bytes must be between 1 and ${requestBytesInFlightPerSourceMax} (got ${flags.maxRequestBytes}): a larger request could never arrive, one client address may have at most that many request bytes in flight`);
  }
  if (!Number.isSafeInteger(flags.maxConcurrentStreams) || flags.maxConcurrentStreams < 1 || flags.maxConcurrentStreams > maxConcurrentStreamsDefault) {
    throw new Error(`--max-concurrent-streams must be between 1 and ${maxConcurrentStreamsDefault} (got ${flags.maxConcurrentStreams}): the streams one client connection may have open at once`);
  }
}
