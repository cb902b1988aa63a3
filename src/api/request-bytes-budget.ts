/**
 * The bytes of requests a member has received but not yet whole: a gRPC message still arriving, a
 * JSON gateway body still being read or a stream value not yet ended. These are held before
 * anything about the caller is authorized, so without a bound one certificate that is no user
 * could open many connections (or many HTTP/2 streams on one) and leave an almost complete 2 MiB
 * request on each: 200 of them took a member from 100 MiB to 680 MiB, and memory was the limit.
 *
 * Owns: the member-wide bound and each source address's share of it, and following gRPC's length-
 * prefixed framing on a stream to know how much of a message is held. Never: a request's meaning.
 * A request that would pass a bound is refused (`etcdserver: too many requests`; over gRPC the
 * stream is reset, HTTP/2's ENHANCE_YOUR_CALM) and its bytes are released.
 */
import { constants as http2Constants, type IncomingHttpHeaders, type ServerHttp2Stream } from 'node:http2';
import type { Socket } from 'node:net';
import { SourceBudget } from './source-budget.js';

/** Request bytes the member holds unfinished at once, whoever sends them. */
export const requestBytesInFlightMax = 256 * 1024 * 1024;
/** What one source address may hold of it (a quarter, as a user's share of the watch budget). */
export const requestBytesInFlightPerSourceMax = 64 * 1024 * 1024;

/** Request bytes held unfinished, member-wide and per source address. */
export class RequestBytesBudget extends SourceBudget {
  constructor(bytesMax: number = requestBytesInFlightMax, perSourceBytesMax: number = requestBytesInFlightPerSourceMax) {
    super(bytesMax, perSourceBytesMax);
  }

  get heldBytes(): number {
    return this.held;
  }
}

/** gRPC's message prefix: a compressed flag and a 4-byte big-endian length. */
const messagePrefixBytes = 5;

/** Follows gRPC's framing over the chunks of one stream: how many bytes of an unfinished message it holds. */
export class GrpcMessageProgress {
  private readonly prefix = Buffer.alloc(messagePrefixBytes);
  private prefixHeld = 0;
  private bodyLeft = 0;
  /** Bytes of the message not yet whole (its prefix included). */
  held = 0;

  push(chunk: Buffer): void {
    let offset = 0;
    while (offset < chunk.length) {
      if (this.bodyLeft > 0) {
        const taken = Math.min(this.bodyLeft, chunk.length - offset);
        this.bodyLeft -= taken;
        offset += taken;
        this.held += taken;
        if (this.bodyLeft === 0) this.held = 0;
        continue;
      }
      const taken = Math.min(messagePrefixBytes - this.prefixHeld, chunk.length - offset);
      chunk.copy(this.prefix, this.prefixHeld, offset, offset + taken);
      this.prefixHeld += taken;
      offset += taken;
      this.held += taken;
      if (this.prefixHeld === messagePrefixBytes) {
        this.prefixHeld = 0;
        this.bodyLeft = this.prefix.readUInt32BE(1);
        if (this.bodyLeft === 0) this.held = 0;
      }
    }
  }
}

/**
 * Counts one gRPC stream's unfinished message against the budget, alongside grpc-js (which reads
 * the same chunks): a stream that would pass a bound is reset and `onRefused` hears of it.
 */
export function boundGrpcStream(stream: ServerHttp2Stream, headers: IncomingHttpHeaders, budget: RequestBytesBudget, onRefused: (method: string, socket: Socket | undefined) => void): void {
  const socket = stream.session?.socket;
  const source = socket?.remoteAddress ?? '';
  const progress = new GrpcMessageProgress();
  let reserved = 0;
  const settle = (): void => {
    budget.release(source, reserved);
    reserved = 0;
  };
  stream.on('data', (chunk: Buffer) => {
    if (reserved < 0) return;
    progress.push(chunk);
    if (progress.held > reserved) {
      if (!budget.take(source, progress.held - reserved)) {
        settle();
        reserved = -1; // refused: nothing more is counted
        onRefused(String(headers[':path'] ?? ''), socket);
        stream.close(http2Constants.NGHTTP2_ENHANCE_YOUR_CALM);
        return;
      }
    } else {
      budget.release(source, reserved - progress.held);
    }
    reserved = progress.held;
  });
  stream.once('close', () => {
    if (reserved > 0) settle();
  });
}
