/**
 * The client port: one listener for gRPC (HTTP/2) and etcd's JSON gateway (HTTP/1.1), as etcd
 * serves both on one port. With TLS we terminate it ourselves and pick the protocol by ALPN (`h2`
 * goes to grpc-js through its connection injector, anything else to the HTTP server); in plaintext
 * (--insecure) the first bytes tell (the HTTP/2 preface). Owns: accepting, the TLS settings and
 * their reload, and closing every connection on shutdown. Never: a request's semantics.
 */
import * as grpc from '@grpc/grpc-js';
import { createServer as createHttpServer } from 'node:http';
import type { IncomingHttpHeaders, ServerHttp2Session, ServerHttp2Stream } from 'node:http2';
import { createServer as createNetServer, type Server as NetServer, type Socket } from 'node:net';
import { createServer as createTlsServer, type PeerCertificate, type TLSSocket } from 'node:tls';
import type { Logger } from 'pino';
import type { ReloadingCertificateProvider } from '../pki/reloading-provider.js';
import { limitConnections } from '../pki/connection-limit.js';
import { limitHandshakeTime } from '../pki/handshake-deadline.js';
import { OpenConnections } from '../pki/open-connections.js';
import { logRefusedTlsHandshakes, type RefusedHandshake } from '../pki/handshake-log.js';
import { correctAuthorization } from '../pki/resumed-session.js';
import type { HttpHandler } from './http-gateway.js';
import type { TransportRefusal } from './refusal-audit.js';
import { rememberPeerCertificate } from './connection-certificate.js';
import { boundGrpcStream, type RequestBytesBudget } from './request-bytes-budget.js';
import { http2ServersOf, watchStreamResets } from './stream-reset-allowance.js';
import { OpenStreamBudget, boundOpenStream } from './open-streams.js';
import { directMethodsOf } from './grpc-server.js';
import { serveUnaryDirectly } from './unary-direct.js';

/** The HTTP/2 client preface starts with these bytes; HTTP/1.1 never does. */
const http2Preface = Buffer.from('PRI * HTTP/2.0');
/** An HTTP/1.1 connection idle this long between requests is closed. */
const httpKeepAliveTimeoutMs = 30_000;
/** A client must send its request headers within this time. */
const httpHeadersTimeoutMs = 20_000;

export interface ClientTls {
  readonly provider: ReloadingCertificateProvider;
  /** Mutual TLS (the default): a connection without a certificate of our CA is refused. */
  readonly requireClientCertificate: boolean;
  /** Why a client certificate may no longer be used (revoked, expired), or undefined. */
  readonly refuseCertificate: (certificate: PeerCertificate) => string | undefined;
  /** How often open connections are checked against `refuseCertificate`. */
  readonly sweepIntervalMs: number;
}

export interface ClientListenerOptions {
  readonly grpcServer: grpc.Server;
  readonly http: HttpHandler;
  /** Undefined: plaintext (--insecure). */
  readonly tls: ClientTls | undefined;
  readonly logger: Logger;
  /** Hears of each HTTP/1.1 request too malformed to reach the gateway (bad request line, headers too large) and each refused TLS handshake, for the audit trail. */
  readonly onRefusal?: (refusal: TransportRefusal) => void;
  /** Bounds the bytes of gRPC messages received and not yet whole (shared with the gateway). */
  readonly requestBytes?: RequestBytesBudget;
  /** Bounds the gRPC streams open at once, member-wide and per source address (a new one per listener when not given). */
  readonly openStreams?: OpenStreamBudget;
}

export interface ClientListener {
  /** Every connection on the port past its TLS handshake, for ending those of a certificate that is no longer valid. */
  readonly connections: ReadonlySet<Socket>;
  /**
   * Stops accepting and serving: each HTTP/2 connection is told to open no new stream (GOAWAY),
   * idle HTTP/1.1 ones are closed, and a connection whose TLS handshake finishes from now on is
   * closed without being served. Calls in flight get `closeGraceMs` to finish; then every
   * connection still open (a Watch, a LeaseKeepAlive, a handshake in progress) is ended. Resolves
   * once none is left.
   */
  close(): Promise<void>;
}

export async function listenClients(host: string, port: number, options: ClientListenerOptions): Promise<ClientListener> {
  const before = http2ServersOf(options.grpcServer);
  const injector = options.grpcServer.createConnectionInjector(grpc.ServerCredentials.createInsecure());
  // The HTTP/2 server grpc-js just made for the injector: its connections get a reset allowance.
  const injected = [...(http2ServersOf(options.grpcServer) ?? [])].filter((server) => before?.has(server) !== true);
  // KV Put, Range and Txn answered on their stream (unary-direct.ts); before the listeners below, which see every stream.
  const direct = directMethodsOf(options.grpcServer);
  if (direct !== undefined) for (const server of injected) serveUnaryDirectly(server, options.grpcServer, direct.methods, direct);
  for (const server of injected) server.on('session', (session: ServerHttp2Session) => watchStreamResets(session, options.logger));
  const openStreams = options.openStreams ?? new OpenStreamBudget();
  const onTooManyStreams = (method: string, socket: Socket | undefined): void => options.onRefusal?.({
    method, peer: `${socket?.remoteAddress ?? ''}:${socket?.remotePort ?? 0}`, certificate: socket === undefined ? undefined : certificateOf(socket),
    code: 'RESOURCE_EXHAUSTED', details: 'etcdserver: too many requests (open streams)', unknownMethod: false,
  });
  for (const server of injected) server.on('stream', (stream: ServerHttp2Stream, headers: IncomingHttpHeaders) => boundOpenStream(stream, headers, openStreams, onTooManyStreams));
  const requestBytes = options.requestBytes;
  if (requestBytes !== undefined) {
    const onRefused = (method: string, socket: Socket | undefined): void => options.onRefusal?.({
      method, peer: `${socket?.remoteAddress ?? ''}:${socket?.remotePort ?? 0}`, certificate: socket === undefined ? undefined : certificateOf(socket),
      code: 'RESOURCE_EXHAUSTED', details: 'etcdserver: too many requests (request bytes in flight)', unknownMethod: false,
    });
    // Added after grpc-js's own 'stream' listener: it reads the same chunks, and has paused the stream until its handler reads.
    for (const server of injected) server.on('stream', (stream: ServerHttp2Stream, headers: IncomingHttpHeaders) => boundGrpcStream(stream, headers, requestBytes, onRefused));
  }
  if (injected.length === 0) options.logger.warn('this gRPC library hides its HTTP/2 server: grpc-js clients before 1.10.4 will see calls fail under load (RST_STREAM code 2)');
  const http = createHttpServer({ keepAliveTimeout: httpKeepAliveTimeoutMs, headersTimeout: httpHeadersTimeoutMs, requestTimeout: 0 }, options.http);
  http.on('clientError', (error: Error & { code?: string }, socket: Socket) => refuseMalformedHttp(error, socket, options.onRefusal));
  const connections = new Set<Socket>();
  /** Every connection accepted, from the TCP accept (its TLS handshake finished or not), for close(). */
  const accepted = new OpenConnections();
  let closing: Promise<void> | undefined;
  const track = (socket: Socket): void => {
    connections.add(socket);
    socket.once('close', () => connections.delete(socket));
  };
  const dispatch = (socket: Socket, http2: boolean): void => {
    // A connection whose handshake (or first bytes) came after close(): grpc-js and the HTTP server
    // would still serve it (closing them stops nothing handed to them later).
    if (closing !== undefined) {
      socket.destroy();
      return;
    }
    if (http2) {
      // HTTP/2 never half-closes: a peer that ends its side is gone, and a socket left open
      // would stay in CLOSE-WAIT for as long as the process lives.
      socket.once('end', () => socket.destroy());
      injector.injectConnection(socket);
    } else {
      http.emit('connection', socket);
    }
  };

  let server: NetServer;
  let sweeper: NodeJS.Timeout | undefined;
  const tls = options.tls;
  if (tls !== undefined) {
    // A certificate revoked or expired after the handshake: every connection it opened is closed,
    // ending its streams (a Watch or a keep-alive would otherwise go on as long as the connection).
    const certificates = new WeakMap<Socket, PeerCertificate | undefined>();
    sweeper = setInterval(() => {
      for (const socket of connections) {
        const tlsSocket = socket as TLSSocket;
        if (!tlsSocket.authorized) continue;
        if (!certificates.has(socket)) {
          const peer = tlsSocket.getPeerCertificate();
          certificates.set(socket, peer.raw === undefined ? undefined : peer);
        }
        const certificate = certificates.get(socket);
        const problem = certificate === undefined ? undefined : tls.refuseCertificate(certificate);
        if (problem === undefined) continue;
        options.logger.warn({ remote: socket.remoteAddress, subject: certificate?.subject?.CN, reason: problem }, 'closed a client connection: its certificate is no longer valid');
        socket.destroy();
      }
    }, tls.sweepIntervalMs);
    sweeper.unref();
    const tlsServer = createTlsServer({
      ...tls.provider.secureContextOptions,
      requestCert: true,
      rejectUnauthorized: tls.requireClientCertificate,
      ALPNProtocols: ['h2', 'http/1.1'],
      minVersion: 'TLSv1.2',
    });
    const reload = (): void => tlsServer.setSecureContext({ ...tls.provider.secureContextOptions, minVersion: 'TLSv1.2' });
    tls.provider.addIdentityCertificateListener(reload);
    tls.provider.addCaCertificateListener(reload);
    tlsServer.on('secureConnection', (socket: TLSSocket) => {
      socket.on('error', () => undefined); // a reset connection is the client's business
      rememberPeerCertificate(socket);
      // Before anything reads `authorized`: a resumed session without a certificate is not authorized.
      correctAuthorization(socket);
      track(socket);
      dispatch(socket, socket.alpnProtocol === 'h2');
    });
    // A refused handshake is a refused request too: audited, at the transports' shared rate.
    logRefusedTlsHandshakes([tlsServer], options.logger, 'client', options.onRefusal === undefined ? undefined : (refused) => options.onRefusal?.(handshakeRefusal(refused)));
    server = tlsServer;
    limitHandshakeTime(tlsServer, { logger: options.logger, port: 'client' });
    limitConnections(server, { logger: options.logger, port: 'client' });
    accepted.track(server);
  } else {
    server = createNetServer((socket) => {
      socket.on('error', () => undefined);
      track(socket);
      socket.once('readable', () => {
        const head = socket.read(http2Preface.length) as Buffer | null ?? (socket.read() as Buffer | null);
        if (head === null) {
          socket.destroy();
          return;
        }
        socket.unshift(head);
        dispatch(socket, head.subarray(0, 3).equals(http2Preface.subarray(0, 3)));
      });
    });
    limitConnections(server, { logger: options.logger, port: 'client' });
    accepted.track(server);
  }
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => {
      server.off('error', reject);
      resolve();
    });
  });
  return {
    connections,
    close: () => {
      if (closing !== undefined) return closing;
      if (sweeper !== undefined) clearInterval(sweeper);
      server.close();
      injector.destroy(); // each HTTP/2 session closed gracefully: its open streams go on, no new one
      http.close(); // and idle HTTP/1.1 connections closed
      closing = accepted.endAfterGrace(accepted.whenNoneLeft());
      return closing;
    },
  };
}

/** The client certificate a connection presented, when our CA signed it. */
function certificateOf(socket: Socket): PeerCertificate | undefined {
  const tlsSocket = socket as Partial<TLSSocket>;
  const peerCertificate = tlsSocket.authorized === true && typeof tlsSocket.getPeerCertificate === 'function' ? tlsSocket.getPeerCertificate() : undefined;
  return peerCertificate?.raw === undefined ? undefined : peerCertificate;
}

/** The audit refusal of a TLS handshake refused on the client port (no certificate, another CA's, expired, plaintext). */
function handshakeRefusal(refused: RefusedHandshake): TransportRefusal {
  return {
    method: 'TLS',
    peer: refused.remote,
    certificate: undefined, // a refused certificate names no one
    code: 'UNAUTHENTICATED',
    details: `TLS handshake refused: ${refused.reason}`,
    unknownMethod: true,
  };
}

/** Node's answer to a request it cannot parse, and for which the gateway never sees a request. */
function malformedHttpStatus(code: string | undefined): readonly [status: number, text: string] {
  if (code === 'HPE_HEADER_OVERFLOW') return [431, 'Request Header Fields Too Large'];
  if (code === 'ERR_HTTP_REQUEST_TIMEOUT') return [408, 'Request Timeout'];
  return [400, 'Bad Request'];
}

/**
 * What Node does without a 'clientError' listener (answer 400, 408 or 431 and close), plus an audit
 * refusal: a malformed request is a request refused before any handler, like a malformed gRPC call.
 * A connection reset by its client is not a request: it is closed without a word.
 */
function refuseMalformedHttp(error: Error & { code?: string }, socket: Socket, onRefusal: ((refusal: TransportRefusal) => void) | undefined): void {
  if (error.code === 'ECONNRESET' || !socket.writable) {
    socket.destroy();
    return;
  }
  const [status, text] = malformedHttpStatus(error.code);
  const tlsSocket = socket as Partial<TLSSocket>;
  const peerCertificate = tlsSocket.authorized === true && typeof tlsSocket.getPeerCertificate === 'function' ? tlsSocket.getPeerCertificate() : undefined;
  onRefusal?.({
    method: 'HTTP',
    peer: `${socket.remoteAddress ?? ''}:${socket.remotePort ?? 0}`,
    certificate: peerCertificate?.raw === undefined ? undefined : peerCertificate,
    code: status === 408 ? 'DEADLINE_EXCEEDED' : 'INVALID_ARGUMENT',
    details: `HTTP ${status} ${text}: ${error.code ?? 'malformed request'}`,
    unknownMethod: true,
  });
  socket.end(`HTTP/1.1 ${status} ${text}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n`);
}
