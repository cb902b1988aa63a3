/**
 * The JSON/HTTP adapter: etcd's gateway (`POST /v3/kv/range` with JSON, streams as JSON lines,
 * `/version`, `/health`, `/metrics`) over the same transport-neutral services as gRPC, so the same
 * checks (certificate refusal, identity, authorization, audit) apply. Owns: routes, request bodies
 * (bounded), the HTTP status and error body etcd gives for each failure. Never: the semantics of
 * any RPC.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { PeerCertificate, TLSSocket } from 'node:tls';
import type { Logger } from 'pino';
import type protobuf from 'protobufjs';
import { RampartError, isRampartError } from '../errors.js';
import type { Member } from '../server/member.js';
import { healthOf, type ServerMetrics } from '../server/metrics.js';
import { statusName, statusOf } from './errors.js';
import { JsonRequestError, decodeRequest, encodeResponse, jsonValueEnd, methodTypes, parseJson } from './json-codec.js';
import { JsonValueSplitter } from './json-stream.js';
import { RequestBytesBudget } from './request-bytes-budget.js';
import type { TransportRefusal } from './refusal-audit.js';
import type { CallContext, DuplexStream, ResponseStream, Rpc, ServiceTable } from './rpc.js';
import { serverVersion } from './services.js';

/** gRPC's own framing allowance above the largest request (the same limit as the gRPC port). */
const messageOverheadBytes = 512 * 1024;
/** Bytes of one request buffered while waiting for the rest of its JSON value on a stream. */
const pendingJsonBytesFactor = 3;

/** The gateway's paths (after `/v3/` or `/v3beta/`), as etcd's gateway names them. */
const routes: Readonly<Record<string, readonly [service: string, method: string]>> = {
  'kv/range': ['etcdserverpb.KV', 'Range'],
  'kv/put': ['etcdserverpb.KV', 'Put'],
  'kv/deleterange': ['etcdserverpb.KV', 'DeleteRange'],
  'kv/txn': ['etcdserverpb.KV', 'Txn'],
  'kv/compaction': ['etcdserverpb.KV', 'Compact'],
  watch: ['etcdserverpb.Watch', 'Watch'],
  'lease/grant': ['etcdserverpb.Lease', 'LeaseGrant'],
  'lease/revoke': ['etcdserverpb.Lease', 'LeaseRevoke'],
  'lease/keepalive': ['etcdserverpb.Lease', 'LeaseKeepAlive'],
  'lease/timetolive': ['etcdserverpb.Lease', 'LeaseTimeToLive'],
  'lease/leases': ['etcdserverpb.Lease', 'LeaseLeases'],
  'kv/lease/timetolive': ['etcdserverpb.Lease', 'LeaseTimeToLive'],
  'kv/lease/leases': ['etcdserverpb.Lease', 'LeaseLeases'],
  'cluster/member/add': ['etcdserverpb.Cluster', 'MemberAdd'],
  'cluster/member/remove': ['etcdserverpb.Cluster', 'MemberRemove'],
  'cluster/member/update': ['etcdserverpb.Cluster', 'MemberUpdate'],
  'cluster/member/list': ['etcdserverpb.Cluster', 'MemberList'],
  'cluster/member/promote': ['etcdserverpb.Cluster', 'MemberPromote'],
  'maintenance/alarm': ['etcdserverpb.Maintenance', 'Alarm'],
  'maintenance/status': ['etcdserverpb.Maintenance', 'Status'],
  'maintenance/defragment': ['etcdserverpb.Maintenance', 'Defragment'],
  'maintenance/hash': ['etcdserverpb.Maintenance', 'Hash'],
  'maintenance/snapshot': ['etcdserverpb.Maintenance', 'Snapshot'],
  'maintenance/transfer-leadership': ['etcdserverpb.Maintenance', 'MoveLeader'],
  'auth/enable': ['etcdserverpb.Auth', 'AuthEnable'],
  'auth/disable': ['etcdserverpb.Auth', 'AuthDisable'],
  'auth/status': ['etcdserverpb.Auth', 'AuthStatus'],
  'auth/authenticate': ['etcdserverpb.Auth', 'Authenticate'],
  'auth/user/add': ['etcdserverpb.Auth', 'UserAdd'],
  'auth/user/get': ['etcdserverpb.Auth', 'UserGet'],
  'auth/user/list': ['etcdserverpb.Auth', 'UserList'],
  'auth/user/delete': ['etcdserverpb.Auth', 'UserDelete'],
  'auth/user/changepw': ['etcdserverpb.Auth', 'UserChangePassword'],
  'auth/user/grant': ['etcdserverpb.Auth', 'UserGrantRole'],
  'auth/user/revoke': ['etcdserverpb.Auth', 'UserRevokeRole'],
  'auth/role/add': ['etcdserverpb.Auth', 'RoleAdd'],
  'auth/role/get': ['etcdserverpb.Auth', 'RoleGet'],
  'auth/role/list': ['etcdserverpb.Auth', 'RoleList'],
  'auth/role/delete': ['etcdserverpb.Auth', 'RoleDelete'],
  'auth/role/grant': ['etcdserverpb.Auth', 'RoleGrantPermission'],
  'auth/role/revoke': ['etcdserverpb.Auth', 'RoleRevokePermission'],
  'lock/lock': ['v3lockpb.Lock', 'Lock'],
  'lock/unlock': ['v3lockpb.Lock', 'Unlock'],
  'election/campaign': ['v3electionpb.Election', 'Campaign'],
  'election/proclaim': ['v3electionpb.Election', 'Proclaim'],
  'election/leader': ['v3electionpb.Election', 'Leader'],
  'election/observe': ['v3electionpb.Election', 'Observe'],
  'election/resign': ['v3electionpb.Election', 'Resign'],
};

/** grpc-gateway's HTTP status for each gRPC code (etcd 3.4). */
const httpStatusByCode: readonly number[] = [200, 408, 500, 400, 504, 404, 409, 403, 429, 412, 409, 400, 501, 500, 503, 500, 401];

export function httpStatusOf(code: number): number {
  return httpStatusByCode[code] ?? 500;
}

export interface HttpGatewayOptions {
  readonly services: ServiceTable;
  readonly member: Member;
  readonly logger: Logger;
  readonly maxRequestBytes: number;
  readonly metrics?: ServerMetrics;
  /** Bounds the request bytes read and not yet a whole message (shared with gRPC). */
  readonly requestBytes?: RequestBytesBudget;
  /** Hears of each request refused before a handler had its message (unknown path or method, bad JSON, oversized), for the audit trail. */
  readonly onRefusal?: (refusal: TransportRefusal) => void;
}

interface Route {
  /** The gRPC method path, e.g. `/etcdserverpb.KV/Put`: a refusal is audited under the RPC's name, as over gRPC. */
  readonly method: string;
  readonly rpc: Rpc;
  readonly request: protobuf.Type;
  readonly response: protobuf.Type;
}

export type HttpHandler = (request: IncomingMessage, response: ServerResponse) => void;

export function createHttpGateway(options: HttpGatewayOptions): HttpHandler {
  const resolved = new Map<string, Route>();
  for (const [path, [service, method]] of Object.entries(routes)) {
    const rpc = options.services.get(service)?.[method];
    if (rpc === undefined) throw new Error(`no handler for ${service}/${method}`);
    resolved.set(path, { method: `/${service}/${method}`, rpc, ...methodTypes(service, method) });
  }
  const maxMessageBytes = options.maxRequestBytes + messageOverheadBytes;
  // JSON carries bytes as base64 (4/3) and escapes: a body up to twice the message limit may still fit.
  const bodyBytesMax = 2 * maxMessageBytes;
  const requestBytes = options.requestBytes ?? new RequestBytesBudget();

  return (request, response) => {
    const url = (request.url ?? '/').split('?')[0] ?? '/';
    const plain = (status: number, body: string): void => {
      response.writeHead(status, { 'content-type': 'text/plain; charset=utf-8', 'x-content-type-options': 'nosniff' });
      response.end(body);
    };
    const refuse = (method: string, known: boolean, code: number, details: string): void => {
      options.onRefusal?.({ method, peer: peerOf(request), certificate: certificateOf(request), code: statusName(code), details, unknownMethod: !known });
    };
    /** An answer before any handler: the route does not exist, or not for this HTTP method. */
    const refusePlain = (method: string, known: boolean, status: number, body: string): void => {
      refuse(method, known, unimplementedCode, `HTTP ${status} ${body.trim()}: ${request.method ?? ''} ${url}`);
      plain(status, body);
    };
    if (url === '/version' || url === '/health' || url === '/metrics') {
      if (request.method !== 'GET' && request.method !== 'HEAD') return refusePlain(url, true, 405, 'Method Not Allowed\n');
      request.resume();
      if (url === '/version') return json(response, 200, { etcdserver: serverVersion, etcdcluster: `${serverVersion.split('.').slice(0, 2).join('.')}.0` });
      if (url === '/health') {
        const { healthy } = healthOf(options.member);
        response.writeHead(healthy ? 200 : 503, { 'content-type': 'text/plain; charset=utf-8' });
        response.end(JSON.stringify({ health: String(healthy) }));
        return;
      }
      const metrics = options.metrics;
      if (metrics === undefined) return plain(404, '404 page not found\n');
      metrics.registry.metrics().then(
        (text) => {
          response.writeHead(200, { 'content-type': metrics.registry.contentType });
          response.end(text);
        },
        () => plain(500, 'metrics unavailable\n'),
      );
      return;
    }
    const match = /^\/v3(?:beta)?\/(.+)$/.exec(url);
    if (match === null) return refusePlain(url, false, 404, '404 page not found\n');
    const route = resolved.get(match[1] ?? '');
    if (route === undefined) return refusePlain(url, false, 404, 'Not Found\n');
    if (request.method !== 'POST') return refusePlain(route.method, true, 405, 'Method Not Allowed\n');
    /** A request message that never reached the handler: audited as gRPC's own refusals are. */
    const refuseMessage = (error: unknown): void => {
      const { body } = errorBody(error);
      refuse(route.method, true, body.code, body.message);
    };
    const readRequestBody = (): Promise<string> => readBody(request, bodyBytesMax, requestBytes).catch((error: unknown) => {
      if (error instanceof BodyTooLarge || isRampartError(error)) refuseMessage(error);
      throw error;
    });
    const call = contextOf(request);
    response.on('close', () => {
      if (!response.writableFinished) call.abort();
    });
    switch (route.rpc.kind) {
      case 'unary': {
        const rpc = route.rpc;
        readRequestBody().then(
          async (body) => {
            const message = decodeOrRefuse(route.request, body, maxMessageBytes, refuseMessage);
            const answer = await rpc.handle(message, call.context);
            json(response, 200, encodeResponse(route.response, answer));
          },
        ).catch((error: unknown) => failUnary(response, error, options.logger));
        return;
      }
      case 'serverStream': {
        const rpc = route.rpc;
        readRequestBody().then(
          (body) => {
            const message = decodeOrRefuse(route.request, body, maxMessageBytes, refuseMessage);
            rpc.handle(message, call.context, jsonLines(response, route.response, call.onClose));
          },
        ).catch((error: unknown) => failUnary(response, error, options.logger));
        return;
      }
      case 'duplex':
        serveDuplex(route, route.rpc.handle.bind(route.rpc), request, response, call, maxMessageBytes, refuseMessage, requestBytes);
        return;
    }
  };
}

function json(response: ServerResponse, status: number, body: unknown): void {
  response.writeHead(status, { 'content-type': 'application/json' });
  response.end(JSON.stringify(body));
}

/** What etcd answers for a failed call: the HTTP status of its gRPC code and the message twice. */
function errorBody(error: unknown): { status: number; body: { error: string; message: string; code: number } } {
  if (error instanceof JsonRequestError) return { status: 400, body: { error: error.message, message: error.message, code: 3 } };
  // etcd's gateway reports a bad message on a stream as an Unknown error.
  if (error instanceof StreamRequestError) return { status: 500, body: { error: error.message, message: error.message, code: 2 } };
  if (error instanceof BodyTooLarge) return { status: 429, body: { error: error.message, message: error.message, code: 8 } };
  const { code, message } = statusOf(error);
  return { status: httpStatusOf(code), body: { error: message, message, code } };
}

function failUnary(response: ServerResponse, error: unknown, logger: Logger): void {
  if (!(error instanceof JsonRequestError) && !(error instanceof BodyTooLarge) && !(error instanceof RampartError)) {
    logger.debug({ err: error instanceof Error ? error.message : String(error) }, 'gateway request failed');
  }
  if (response.headersSent) {
    response.destroy();
    return;
  }
  const { status, body } = errorBody(error);
  json(response, status, body);
}

class BodyTooLarge extends Error {}
class StreamRequestError extends Error {}

/** No such method: gRPC's code for an unknown method, which a wrong path or HTTP method is here. */
const unimplementedCode = 12;

/** decodeOne, reporting a body that cannot be a request before rethrowing. */
function decodeOrRefuse(type: protobuf.Type, body: string, maxMessageBytes: number, refuse: (error: unknown) => void): unknown {
  try {
    return decodeOne(type, body, maxMessageBytes);
  } catch (error) {
    refuse(error);
    throw error;
  }
}

function peerOf(request: IncomingMessage): string {
  return `${request.socket.remoteAddress ?? ''}:${request.socket.remotePort ?? 0}`;
}

/** The client certificate of the connection, when it presented one our CA signed. */
function certificateOf(request: IncomingMessage): PeerCertificate | undefined {
  const socket = request.socket as Partial<TLSSocket>;
  if (socket.authorized !== true || typeof socket.getPeerCertificate !== 'function') return undefined;
  const peerCertificate = socket.getPeerCertificate();
  return peerCertificate.raw === undefined ? undefined : peerCertificate;
}

/**
 * The whole request body, or BodyTooLarge once it passes `limitBytes`, or TooManyRequests once the
 * member holds too many request bytes (the rest is not read; the bytes held are released).
 */
function readBody(request: IncomingMessage, limitBytes: number, budget: RequestBytesBudget): Promise<string> {
  const source = request.socket.remoteAddress ?? '';
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let total = 0;
    let settled = false;
    const settle = (): void => {
      if (settled) return;
      settled = true;
      budget.release(source, total);
      request.removeAllListeners('data');
    };
    const refuse = (error: Error): void => {
      settle();
      request.pause();
      reject(error);
    };
    request.on('data', (chunk: Buffer) => {
      if (total + chunk.length > limitBytes) return refuse(new BodyTooLarge(`grpc: received message larger than max (${total + chunk.length} vs. ${limitBytes})`));
      if (!budget.take(source, chunk.length)) return refuse(new RampartError('TooManyRequests'));
      total += chunk.length;
      chunks.push(chunk);
    });
    request.on('end', () => {
      settle();
      resolve(Buffer.concat(chunks).toString('utf8'));
    });
    request.on('error', (error) => {
      settle();
      reject(error);
    });
    request.on('close', settle);
  });
}

/** The first JSON value of a body as the request message (an empty body is the empty message). */
function decodeOne(type: protobuf.Type, body: string, maxMessageBytes: number): unknown {
  const end = jsonValueEnd(body, 0);
  const text = body.trim() === '' ? '{}' : end < 0 ? body : body.slice(0, end);
  return checkedSize(type, decodeRequest(type, parseJson(text)), maxMessageBytes);
}

function checkedSize(type: protobuf.Type, message: unknown, maxMessageBytes: number): unknown {
  const size = type.encode(type.fromObject(message as Record<string, unknown>)).finish().length;
  if (size > maxMessageBytes) throw new BodyTooLarge(`grpc: received message larger than max (${size} vs. ${maxMessageBytes})`);
  return message;
}

interface HttpCall {
  readonly context: CallContext;
  abort(): void;
  onClose(listener: () => void): void;
}

function contextOf(request: IncomingMessage): HttpCall {
  const controller = new AbortController();
  const listeners = new Set<() => void>();
  let closed = false;
  const certificate = certificateOf(request);
  // etcd's gateway passes `Authorization` on as the token; grpc-gateway also forwards Grpc-Metadata-*.
  const header = request.headers.authorization ?? request.headers['grpc-metadata-token'];
  const token = Array.isArray(header) ? header[0] : header;
  return {
    context: {
      token,
      certificate,
      peer: peerOf(request),
      deadlineMs: Infinity,
      signal: controller.signal,
      caller: undefined,
    },
    abort: () => {
      if (closed) return;
      closed = true;
      controller.abort();
      for (const listener of listeners) listener();
      listeners.clear();
    },
    onClose: (listener) => {
      if (closed) listener();
      else listeners.add(listener);
    },
  };
}

/** Stream responses as etcd's gateway writes them: one `{"result":…}` line each. */
function jsonLines(response: ServerResponse, type: protobuf.Type, onClose: (listener: () => void) => void): ResponseStream<unknown> {
  let ended = false;
  const start = (): void => {
    if (!response.headersSent) response.writeHead(200, { 'content-type': 'application/json' });
  };
  return {
    // onFlushed once Node has handed the line to the socket: the watch budget counts it until then.
    write: (message, onFlushed) => {
      if (ended) {
        onFlushed?.();
        return true;
      }
      start();
      return response.write(`${JSON.stringify({ result: encodeResponse(type, message) })}\n`, () => onFlushed?.());
    },
    drained: () => new Promise<void>((resolve) => {
      if (ended || response.destroyed) return resolve();
      const done = (): void => {
        response.off('drain', done);
        response.off('close', done);
        resolve();
      };
      response.on('drain', done);
      response.on('close', done);
    }),
    end: () => {
      if (ended) return;
      ended = true;
      start();
      response.end();
    },
    fail: (error) => {
      if (ended) return;
      ended = true;
      const { status, body } = errorBody(error);
      if (!response.headersSent) {
        json(response, status, body);
        return;
      }
      response.end(`${JSON.stringify({ error: { grpc_code: body.code, http_code: status, message: body.message, http_status: status } })}\n`);
    },
    onClose: (listener) => {
      onClose(listener);
      response.on('finish', listener);
    },
  };
}

/**
 * A bidirectional stream over one request: JSON values are read from the body as they arrive,
 * each one request. As in etcd, the end of the body ends a keep-alive stream but not a watch.
 */
function serveDuplex(route: Route, handle: (call: CallContext, stream: DuplexStream<unknown, unknown>) => void, request: IncomingMessage, response: ServerResponse, call: HttpCall, maxMessageBytes: number, refuse: (error: unknown) => void, budget: RequestBytesBudget): void {
  const requestListeners: ((message: unknown) => void)[] = [];
  const endListeners: (() => void)[] = [];
  const lines = jsonLines(response, route.response, call.onClose);
  /** Holds on reading requests (DuplexStream.holdRequests), besides waiting for answers to drain. */
  let holds = 0;
  const stream: DuplexStream<unknown, unknown> = {
    ...lines,
    onRequest: (listener) => requestListeners.push(listener),
    onRequestsEnd: (listener) => endListeners.push(listener),
    holdRequests: () => {
      holds += 1;
      request.pause();
      let released = false;
      return () => {
        if (released) return;
        released = true;
        holds -= 1;
        if (holds === 0 && !response.writableNeedDrain) request.resume();
      };
    },
  };
  handle(call.context, stream);
  const endsWithBody = route.request.name === 'LeaseKeepAliveRequest';
  const splitter = new JsonValueSplitter();
  let failed = false;
  let delivered = false;
  const pendingBytesMax = pendingJsonBytesFactor * maxMessageBytes;
  // The unfinished value's characters, counted against the member's request-bytes budget.
  const source = request.socket.remoteAddress ?? '';
  let reserved = 0;
  const releaseReserved = (): void => {
    budget.release(source, reserved);
    reserved = 0;
  };
  call.onClose(releaseReserved);
  const fail = (error: unknown): void => {
    failed = true;
    releaseReserved();
    // As over gRPC: a stream whose first message never reached its handler was refused by the transport.
    if (!delivered) refuse(error);
    request.removeAllListeners('data');
    request.resume();
    lines.fail(error);
  };
  request.setEncoding('utf8');
  request.on('data', (chunk: string) => {
    if (failed) return;
    // A client that sends requests (progress requests, creates) but does not read the answers: stop
    // reading its requests until the answers drain, as HTTP/2 flow control does for gRPC. Before,
    // answers piled up without bound (a million progress requests: +560 MiB).
    if (response.writableNeedDrain && !request.isPaused()) {
      request.pause();
      const resume = (): void => {
        response.off('drain', resume);
        response.off('close', resume);
        if (holds === 0) request.resume();
      };
      response.on('drain', resume);
      response.on('close', resume);
    }
    try {
      for (const text of splitter.feed(chunk)) {
        const message = checkedSize(route.request, decodeRequest(route.request, parseJson(text)), maxMessageBytes);
        delivered = true;
        for (const listener of requestListeners) listener(message);
      }
      if (splitter.pendingLength > pendingBytesMax) throw new BodyTooLarge(`grpc: received message larger than max (${splitter.pendingLength} vs. ${maxMessageBytes})`);
      if (splitter.pendingLength > reserved) {
        if (!budget.take(source, splitter.pendingLength - reserved)) throw new RampartError('TooManyRequests');
      } else {
        budget.release(source, reserved - splitter.pendingLength);
      }
      reserved = splitter.pendingLength;
    } catch (error) {
      fail(error instanceof JsonRequestError ? new StreamRequestError(error.message) : error);
    }
  });
  request.on('end', () => {
    releaseReserved();
    if (failed) return;
    const pending = splitter.rest();
    if (pending.trim() !== '') {
      try {
        const message = checkedSize(route.request, decodeRequest(route.request, parseJson(pending)), maxMessageBytes);
        delivered = true;
        for (const listener of requestListeners) listener(message);
      } catch (error) {
        fail(error instanceof JsonRequestError ? new StreamRequestError(error.message) : error);
        return;
      }
    }
    if (endsWithBody) for (const listener of endListeners) listener();
  });
}
