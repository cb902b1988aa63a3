/**
 * What an RPC handler sees, whatever transport carried the call: gRPC over HTTP/2 (grpc-server.ts)
 * or etcd's JSON gateway over HTTP/1.1 (http-gateway.ts). Owns: the call context and the stream
 * shapes. Never: anything of a transport (no gRPC types, no HTTP types).
 */
import type { PeerCertificate } from 'node:tls';
import type { Caller } from './messages.js';

/** One call as every handler sees it. */
export interface CallContext {
  /** The `token` credential (etcd reads the first value when a client repeats it). */
  readonly token: string | undefined;
  /** The verified client certificate of the connection, if any. */
  readonly certificate: PeerCertificate | undefined;
  /** The caller's address, `host:port`. */
  readonly peer: string;
  /** When the client stops waiting (ms since the epoch); Infinity when it did not say. */
  readonly deadlineMs: number;
  /** Aborted when the client goes away before the answer. */
  readonly signal: AbortSignal;
  /** The identity the call was served as, once known: its audit event names it. */
  caller: Caller | undefined;
}

/** Responses of a streaming call. */
export interface ResponseStream<Response> {
  /**
   * False when the transport is congested: wait for `drained()` before writing more. A transport
   * calls `onFlushed` once the response has left it (sent, or dropped with the stream): the watch
   * budget (src/server/watch-budget.ts) counts bytes as queued until then, or until the stream closes.
   */
  write(response: Response, onFlushed?: () => void): boolean;
  /** Resolves once the transport takes writes again, or the stream closed. */
  drained(): Promise<void>;
  /** Ends the stream successfully. */
  end(): void;
  /** Ends the stream with the status of `error` (mapped by errors.ts, never a stack trace). */
  fail(error: unknown): void;
  /** Called once the stream is over, however it ended (client gone, failed, ended). */
  onClose(listener: () => void): void;
}

/** Both directions of a bidirectional call. */
export interface DuplexStream<Request, Response> extends ResponseStream<Response> {
  onRequest(listener: (request: Request) => void): void;
  /** The client will send no more requests. */
  onRequestsEnd(listener: () => void): void;
  /**
   * Stops delivering requests (the transport stops reading them, so the client's flow control
   * holds the rest) until every hold is released by calling what this returns.
   */
  holdRequests(): () => void;
}

export interface UnaryRpc {
  readonly kind: 'unary';
  handle(request: unknown, call: CallContext): Promise<unknown>;
}

export interface ServerStreamRpc {
  readonly kind: 'serverStream';
  handle(request: unknown, call: CallContext, stream: ResponseStream<unknown>): void;
}

export interface DuplexRpc {
  readonly kind: 'duplex';
  handle(call: CallContext, stream: DuplexStream<unknown, unknown>): void;
}

export type Rpc = UnaryRpc | ServerStreamRpc | DuplexRpc;

/** Every RPC by service (`etcdserverpb.KV`) and method (`Range`), as the .proto files name them. */
export type ServiceTable = ReadonlyMap<string, Readonly<Record<string, Rpc>>>;

/**
 * The token a `token` (or `authorization`) value carries: etcd reads the first value when a client
 * repeats it (python-etcd3 sends it twice, and Node joins repeated headers with ", "). Used for
 * grpc-js's calls (grpc-server.ts) and the calls served on their stream (unary-direct.ts) alike.
 */
export function firstTokenValue(value: string): string | undefined {
  return value.split(',')[0]?.trim();
}
