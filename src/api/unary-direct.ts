/**
 * The client port's hottest unary calls (KV Put, Range and Txn) served straight on their HTTP/2 stream,
 * with grpc-js's wire behaviour for them, instead of through grpc-js's per-call machinery (an
 * intercepting call, a Metadata, a stream decoder, a read queue and a Writable stream object per
 * unary call, and their listeners). Measured on a server answering Put with a constant (plaintext,
 * the bench's load): grpc-js ~80-105 µs of main-thread CPU a call, Node's HTTP/2 alone ~55-60 µs.
 *
 * Same on the wire as grpc-js 1.14 for these methods: response headers, the framed message, the
 * trailers (`grpc-status`, `grpc-message` URI-encoded), a trailers-only answer for an error; a
 * request past the receive limit (RESOURCE_EXHAUSTED, grpc-js's message), no message or a second
 * one (UNIMPLEMENTED), one that does not decode (INTERNAL), `grpc-timeout` (DEADLINE_EXCEEDED);
 * the refusal audit of calls ended before a request reached the handler (audit-transport.ts). A
 * call that is anything else — compressed (`grpc-encoding` other than identity), an unreadable
 * `grpc-timeout`, another content type, another method — goes to grpc-js as before.
 *
 * Owns: the framing of these calls and their call context. Never: what a call means (the same
 * handler, codecs and error mapping as through grpc-js).
 */
import type { Http2Server, Http2Session, IncomingHttpHeaders, OutgoingHttpHeaders, ServerHttp2Stream } from 'node:http2';
import type { PeerCertificate, TLSSocket } from 'node:tls';
import * as grpc from '@grpc/grpc-js';
import { statusName, toServiceError } from './errors.js';
import type { TransportRefusal } from './refusal-audit.js';
import { firstTokenValue, type CallContext, type UnaryRpc } from './rpc.js';

/** A unary method served directly: its handler and the codecs grpc-js would use. */
export interface DirectMethod {
  readonly rpc: UnaryRpc;
  readonly deserialize: (bytes: Buffer) => unknown;
  readonly serialize: (value: unknown) => Buffer;
}

export interface DirectOptions {
  /** grpc-js's `grpc.max_receive_message_length` (-1: none). */
  readonly maxReceiveMessageBytes: number;
  readonly onRefusal?: (refusal: TransportRefusal) => void;
}

/** grpc-js's `grpc-timeout` parse (server-interceptors.ts). */
const timeoutPattern = /(\d{1,8})\s*([HMSmun])/;
const timeoutUnitsMs: Record<string, number> = { H: 3_600_000, M: 60_000, S: 1000, m: 1, u: 0.001, n: 0.000001 };
/** grpc-js drops a metadata value with other characters (Metadata.add). */
const legalValue = /^[ -~]*$/;
const debugErrorDetails = (process.env.GRPC_NODE_DEBUG_SEND_ERROR_DETAILS ?? 'false') === 'true';

/** grpc-js's response headers (its defaultResponseHeaders and defaultCompressionHeaders). */
const responseHeaders: OutgoingHttpHeaders = {
  ':status': 200,
  'content-type': 'application/grpc+proto',
  'grpc-accept-encoding': 'identity,deflate,gzip',
  'grpc-encoding': 'identity',
};
const okTrailers: OutgoingHttpHeaders = { 'grpc-status': grpc.status.OK, 'grpc-message': 'OK' };

interface Status {
  readonly code: number;
  readonly details: string;
  readonly metadata?: grpc.Metadata | null | undefined;
}

interface StreamOpened {
  onStreamOpened?(stream: ServerHttp2Stream): void;
}

/**
 * Puts a dispatcher in front of grpc-js's own 'stream' listener on `http2Server` (the server of a
 * connection injector): calls to `methods` are served here, every other call by grpc-js. Returns
 * false (nothing changed) when the server does not have exactly grpc-js's one listener.
 */
export function serveUnaryDirectly(http2Server: Http2Server, grpcServer: grpc.Server, methods: ReadonlyMap<string, DirectMethod>, options: DirectOptions): boolean {
  const listeners = http2Server.listeners('stream');
  const grpcListener = listeners[0] as ((...args: unknown[]) => void) | undefined;
  if (listeners.length !== 1 || grpcListener === undefined || methods.size === 0) return false;
  http2Server.removeListener('stream', grpcListener);
  const opened = grpcServer as unknown as StreamOpened;
  http2Server.on('stream', (stream: ServerHttp2Stream, headers: IncomingHttpHeaders, ...rest: unknown[]) => {
    const path = headers[':path'];
    const method = path === undefined ? undefined : methods.get(path);
    const deadline = method === undefined ? undefined : directDeadline(headers);
    if (method === undefined || deadline === undefined || path === undefined) {
      grpcListener.call(http2Server, stream, headers, ...rest);
      return;
    }
    stream.once('error', () => undefined); // as grpc-js: every error is followed by 'close'
    opened.onStreamOpened?.(stream); // grpc-js's idle-connection accounting, when enabled
    serveCall(stream, headers, path, deadline, method, options);
  });
  return true;
}

/**
 * The call's deadline (ms since the epoch, Infinity without one) when it may be served here;
 * undefined when grpc-js must serve it (content type, compression, an unreadable timeout).
 */
function directDeadline(headers: IncomingHttpHeaders): number | undefined {
  const contentType = headers['content-type'];
  if (typeof contentType !== 'string' || !contentType.startsWith('application/grpc')) return undefined;
  const encoding = headers['grpc-encoding'];
  if (encoding !== undefined && encoding !== 'identity') return undefined;
  const timeout = headers['grpc-timeout'];
  if (timeout === undefined) return Infinity;
  if (typeof timeout !== 'string') return undefined;
  const match = timeoutPattern.exec(timeout);
  if (match === null) return undefined;
  return Date.now() + ((Number(match[1]) * (timeoutUnitsMs[match[2] as string] as number)) | 0);
}

/** What a call reads of its connection: the same for every call of it. */
interface Connection {
  readonly peer: string;
  readonly certificate: PeerCertificate | undefined;
}

/**
 * Each connection's peer and certificate, read on its first call: `session.socket` is a proxy and
 * each of the half-dozen reads through it cost ~2% of a member's main thread under the bench's
 * ranges. Both are fixed once the connection is up (a TLS session exists only after its handshake;
 * renegotiation ends the connection, connection-certificate.ts), so the cache can never answer for
 * another connection. An unknown peer (a socket already gone) is not kept.
 */
const connections = new WeakMap<Http2Session, Connection>();

export function connectionOf(stream: ServerHttp2Stream): Connection {
  const session = stream.session;
  const known = session === undefined ? undefined : connections.get(session);
  if (known !== undefined) return known;
  const connection: Connection = { peer: peerOf(stream), certificate: certificateOf(stream) };
  if (session !== undefined && connection.peer !== 'unknown') connections.set(session, connection);
  return connection;
}

function peerOf(stream: ServerHttp2Stream): string {
  const socket = stream.session?.socket;
  if (socket?.remoteAddress === undefined) return 'unknown';
  return socket.remotePort ? `${socket.remoteAddress}:${socket.remotePort}` : socket.remoteAddress;
}

/** grpc-js's getAuthContext: the certificate of an authorized TLS connection. */
function certificateOf(stream: ServerHttp2Stream): PeerCertificate | undefined {
  const socket = stream.session?.socket as Partial<TLSSocket> | undefined;
  if (socket === undefined || socket.authorized !== true || typeof socket.getPeerCertificate !== 'function') return undefined;
  const certificate = socket.getPeerCertificate();
  return certificate.raw === undefined ? undefined : certificate;
}

/** The `token` credential as grpc-js's metadata (then grpc-server.ts's contextOf) gives it. */
function tokenOf(headers: IncomingHttpHeaders): string | undefined {
  for (const name of ['token', 'authorization']) {
    const value = headers[name];
    if (typeof value === 'string' && legalValue.test(value)) return firstTokenValue(value);
  }
  return undefined;
}

function serveCall(stream: ServerHttp2Stream, headers: IncomingHttpHeaders, path: string, deadlineMs: number, method: DirectMethod, options: DirectOptions): void {
  /** Set once a status is sent (or the call is cancelled): nothing more is sent. */
  let over = false;
  let answered = false;
  let messageSeen = false;
  let controller: AbortController | undefined;
  let cancelled = false;
  let timer: NodeJS.Timeout | undefined;
  const cancel = (): void => {
    if (cancelled) return;
    cancelled = true;
    over = true;
    if (timer !== undefined) clearTimeout(timer);
    if (!answered) controller?.abort();
  };
  stream.once('close', cancel);

  const refuse = (status: Status): void => {
    if (messageSeen || options.onRefusal === undefined) return;
    const { peer, certificate } = connectionOf(stream);
    options.onRefusal({ method: path, peer, certificate, code: statusName(status.code), details: status.details, unknownMethod: false });
  };
  /** grpc-js's sendStatus before any response headers: a trailers-only answer. */
  const sendStatus = (status: Status): void => {
    if (over || stream.destroyed || stream.closed) return;
    over = true;
    if (timer !== undefined) clearTimeout(timer);
    if (stream.headersSent) {
      // grpc-js's sendStatus after the response headers (a deadline while the answer waits on
      // flow control): the status as trailers once the message is out. A second respond() would
      // throw, uncaught, and end the member.
      stream.once('wantTrailers', () => {
        stream.sendTrailers({ 'grpc-status': status.code, 'grpc-message': encodeURI(status.details), ...status.metadata?.toHttp2Headers() });
        cancel();
      });
      stream.end();
      return;
    }
    refuse(status);
    stream.respond({
      'grpc-status': status.code,
      'grpc-message': encodeURI(status.details),
      ':status': 200,
      'content-type': 'application/grpc+proto',
      ...status.metadata?.toHttp2Headers(),
    }, { endStream: true });
    stream.resume(); // the rest of the request is read and dropped
    cancel();
  };
  const sendResponse = (response: unknown): void => {
    if (over || stream.destroyed || stream.closed) return;
    let framed: Buffer;
    try {
      const message = method.serialize(response);
      framed = Buffer.allocUnsafe(message.byteLength + 5);
      framed[0] = 0;
      framed.writeUInt32BE(message.byteLength, 1);
      message.copy(framed, 5);
    } catch (error) {
      sendStatus({ code: grpc.status.INTERNAL, details: debugErrorDetails ? `Error serializing response: ${(error as Error).message}` : 'Error serializing response' });
      return;
    }
    stream.respond(responseHeaders, { waitForTrailers: true });
    stream.write(framed, (error) => {
      if (over) return;
      over = true;
      if (timer !== undefined) clearTimeout(timer);
      const trailers = error === undefined || error === null ? okTrailers : { 'grpc-status': grpc.status.INTERNAL, 'grpc-message': encodeURI(debugErrorDetails ? `Error writing message: ${error.message}` : 'Internal server error') };
      stream.once('wantTrailers', () => {
        stream.sendTrailers(trailers);
        cancel();
      });
      stream.end();
    });
  };

  if (deadlineMs !== Infinity) {
    timer = setTimeout(() => sendStatus({ code: grpc.status.DEADLINE_EXCEEDED, details: 'Deadline exceeded' }), Math.max(0, deadlineMs - Date.now()));
  }

  // The request: grpc-js's framing (a flag byte, a 4-byte length, the message), one message.
  const prefix = Buffer.alloc(5);
  let prefixHeld = 0;
  let bodyLeft = -1; // -1: reading a prefix
  let parts: Buffer[] = [];
  /** The request, decoded as soon as it is whole (as grpc-js does, before the client half-closes). */
  let request: { readonly decoded: unknown } | undefined;
  const max = options.maxReceiveMessageBytes;
  const completed = (message: Buffer): void => {
    let decoded: unknown;
    try {
      decoded = method.deserialize(message);
    } catch (error) {
      sendStatus({ code: grpc.status.INTERNAL, details: debugErrorDetails ? `Error deserializing request: ${(error as Error).message}` : 'Error deserializing request' });
      return;
    }
    if (request !== undefined) {
      sendStatus({ code: grpc.status.UNIMPLEMENTED, details: `Received a second request message for server streaming method ${path}` });
      return;
    }
    messageSeen = true; // grpc-js's refusal audit counts a call from here on as one that reached its handler
    request = { decoded };
  };
  stream.on('data', (chunk: Buffer) => {
    if (over) return;
    let offset = 0;
    while (offset < chunk.length && !over) {
      if (bodyLeft < 0) {
        const taken = Math.min(5 - prefixHeld, chunk.length - offset);
        chunk.copy(prefix, prefixHeld, offset, offset + taken);
        prefixHeld += taken;
        offset += taken;
        if (prefixHeld < 5) continue;
        prefixHeld = 0;
        const size = prefix.readUInt32BE(1);
        if (max !== -1 && size > max) {
          sendStatus({ code: grpc.status.RESOURCE_EXHAUSTED, details: `Received message larger than max (${size} vs ${max})` });
          return;
        }
        bodyLeft = size;
        parts = [];
        if (size === 0) {
          bodyLeft = -1;
          completed(Buffer.alloc(0));
        }
        continue;
      }
      const taken = Math.min(bodyLeft, chunk.length - offset);
      parts.push(chunk.subarray(offset, offset + taken));
      bodyLeft -= taken;
      offset += taken;
      if (bodyLeft === 0) {
        bodyLeft = -1;
        completed(parts.length === 1 ? (parts[0] as Buffer) : Buffer.concat(parts));
        parts = [];
      }
    }
  });
  stream.once('end', () => {
    if (over) return;
    if (request === undefined) {
      sendStatus({ code: grpc.status.UNIMPLEMENTED, details: `Received no request message for server streaming method ${path}` });
      return;
    }
    const decoded = request.decoded;
    const { peer, certificate } = connectionOf(stream);
    const context: CallContext = {
      token: tokenOf(headers),
      certificate,
      peer,
      deadlineMs,
      get signal(): AbortSignal {
        if (controller === undefined) {
          controller = new AbortController();
          if (cancelled && !answered) controller.abort();
        }
        return controller.signal;
      },
      caller: undefined,
    };
    method.rpc.handle(decoded, context).then(
      (response) => {
        answered = true;
        sendResponse(response);
      },
      (error: unknown) => {
        answered = true;
        const status = toServiceError(error);
        sendStatus({ code: status.code ?? grpc.status.UNKNOWN, details: status.details ?? '', metadata: status.metadata });
      },
    );
  });
}
