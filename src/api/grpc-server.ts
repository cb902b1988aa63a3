/**
 * The gRPC adapter: serves the transport-neutral services (services.ts) over grpc-js. Owns: the
 * call context of a gRPC call (token metadata, client certificate, peer, deadline, cancellation)
 * and gRPC stream plumbing. Never: the semantics of any RPC.
 */
import * as grpc from '@grpc/grpc-js';
import type { PeerCertificate } from 'node:tls';
import { toServiceError } from './errors.js';
import { packageDefinition } from './proto.js';
import { firstTokenValue, type CallContext, type DuplexStream, type ResponseStream, type Rpc, type ServiceTable } from './rpc.js';
import { refusalInterceptor, serveUnknownMethods } from './audit-transport.js';
import type { TransportRefusal } from './refusal-audit.js';
import type { DirectMethod, DirectOptions } from './unary-direct.js';

/** The unary calls served on their HTTP/2 stream rather than through grpc-js (unary-direct.ts). */
const directPaths: ReadonlySet<string> = new Set(['/etcdserverpb.KV/Put', '/etcdserverpb.KV/Range', '/etcdserverpb.KV/Txn']);
const directTables = new WeakMap<grpc.Server, DirectOptions & { readonly methods: ReadonlyMap<string, DirectMethod> }>();

/** What a connection injector of `server` may serve directly (unary-direct.ts), if anything. */
export function directMethodsOf(server: grpc.Server): (DirectOptions & { readonly methods: ReadonlyMap<string, DirectMethod> }) | undefined {
  return directTables.get(server);
}

/** gRPC's own framing allowance above the largest request etcd accepts (etcd uses the same). */
const grpcOverheadBytes = 512 * 1024;

export interface GrpcServerOptions {
  readonly services: ServiceTable;
  /** The largest request a client may send (etcd's --max-request-bytes). */
  readonly maxRequestBytes: number;
  /** Streams one client connection may have open at once (etcd's --max-concurrent-streams); default: HTTP/2's (no bound). */
  readonly maxConcurrentStreams?: number;
  /** Hears of each call gRPC refuses itself (malformed, oversized, unknown method), for the audit trail. */
  readonly onRefusal?: (refusal: TransportRefusal) => void;
}

export function createGrpcServer(options: GrpcServerOptions): grpc.Server {
  const server = new grpc.Server({
    'grpc.max_receive_message_length': options.maxRequestBytes + grpcOverheadBytes,
    'grpc.max_send_message_length': -1,
    'grpc.keepalive_permit_without_calls': 1,
    // channelz (grpc-js's introspection service, which Rampart does not serve) would otherwise count
    // and timestamp every call and message.
    'grpc.enable_channelz': 0,
    'grpc.http2.min_ping_interval_without_data_ms': 5000,
    ...(options.maxConcurrentStreams === undefined ? {} : { 'grpc.max_concurrent_streams': options.maxConcurrentStreams }),
    ...(options.onRefusal === undefined ? {} : { interceptors: [refusalInterceptor(options.onRefusal)] }),
  });
  if (options.onRefusal !== undefined && !serveUnknownMethods(server)) {
    throw new Error('this gRPC library offers no hook for unknown methods: calls to them could not be audited');
  }
  const loaded = grpc.loadPackageDefinition(packageDefinition);
  const direct = new Map<string, DirectMethod>();
  for (const [name, rpcs] of options.services) {
    const [pkg, svc] = name.split('.') as [string, string];
    const constructor = (loaded[pkg] as grpc.GrpcObject | undefined)?.[svc] as grpc.ServiceClientConstructor | undefined;
    if (constructor === undefined) throw new Error(`unknown service ${name}`);
    const implementation: grpc.UntypedServiceImplementation = {};
    for (const [method, rpc] of Object.entries(rpcs)) {
      implementation[method] = adapt(rpc);
      const definition = constructor.service[method];
      if (rpc.kind === 'unary' && definition !== undefined && directPaths.has(definition.path) && !definition.requestStream && !definition.responseStream) {
        // The codecs grpc-js would call for this method (proto.ts's hand-written ones included).
        direct.set(definition.path, { rpc, deserialize: definition.requestDeserialize, serialize: definition.responseSerialize as (value: unknown) => Buffer });
      }
    }
    server.addService(constructor.service, implementation);
  }
  directTables.set(server, { methods: direct, maxReceiveMessageBytes: options.maxRequestBytes + grpcOverheadBytes, ...(options.onRefusal === undefined ? {} : { onRefusal: options.onRefusal }) });
  return server;
}

type AnyCall = grpc.ServerUnaryCall<unknown, unknown> | grpc.ServerWritableStream<unknown, unknown> | grpc.ServerDuplexStream<unknown, unknown>;

function adapt(rpc: Rpc): grpc.UntypedHandleCall {
  switch (rpc.kind) {
    case 'unary':
      return ((call: grpc.ServerUnaryCall<unknown, unknown>, callback: grpc.sendUnaryData<unknown>) => {
        const answered = { value: false };
        rpc.handle(call.request, contextOf(call, answered)).then(
          (response) => {
            answered.value = true;
            callback(null, response);
          },
          (error: unknown) => {
            answered.value = true;
            callback(toServiceError(error));
          },
        );
      }) as grpc.handleUnaryCall<unknown, unknown>;
    case 'serverStream':
      return ((call: grpc.ServerWritableStream<unknown, unknown>) => {
        rpc.handle(call.request, contextOf(call), responseStream(call));
      }) as grpc.handleServerStreamingCall<unknown, unknown>;
    case 'duplex':
      return ((call: grpc.ServerDuplexStream<unknown, unknown>) => {
        const hold = requestHolds(call);
        let congestionHeld = false;
        const stream: DuplexStream<unknown, unknown> = {
          ...responseStream(call),
          onRequest: (listener) => call.on('data', (request: unknown) => {
            // A client that sends requests (progress requests, keep-alives) but does not read the
            // answers: its requests are not read until the answers drain (grpc-js reads a message
            // only when asked, so HTTP/2 flow control then holds the client). Before, the answers
            // piled up without bound: 4 million progress requests on one Watch stream, +1.1 GB.
            if (call.writableNeedDrain && !congestionHeld) {
              congestionHeld = true;
              const release = hold();
              const drained = (): void => {
                call.off('drain', drained);
                call.off('close', drained);
                congestionHeld = false;
                release();
              };
              call.on('drain', drained);
              call.on('close', drained);
            }
            listener(request);
          }),
          onRequestsEnd: (listener) => call.on('end', listener),
          holdRequests: hold,
        };
        rpc.handle(contextOf(call), stream);
      }) as grpc.handleBidiStreamingCall<unknown, unknown>;
  }
}

/** Holds on reading a call's requests: it is paused while any is held. */
function requestHolds(call: grpc.ServerDuplexStream<unknown, unknown>): () => () => void {
  let holds = 0;
  return () => {
    holds += 1;
    if (holds === 1) call.pause();
    let released = false;
    return () => {
      if (released) return;
      released = true;
      holds -= 1;
      if (holds === 0) call.resume();
    };
  };
}

/**
 * `answered`: set once a unary call's answer is handed to grpc-js, which then reports every call
 * 'cancelled' as it cleans up (grpc-js 1.14); aborting then would only build an AbortError and run
 * listeners for a call already over (~2% of a member's CPU under puts).
 */
function contextOf(call: AnyCall, answered: { value: boolean } = { value: false }): CallContext {
  // Made on first use: only a few calls (lock, campaign, observe) wait on it (~2% of a member's
  // CPU under puts when made for every call).
  let controller: AbortController | undefined;
  let cancelled = false;
  (call as grpc.ServerUnaryCall<unknown, unknown>).on('cancelled', () => {
    if (answered.value) return;
    cancelled = true;
    controller?.abort();
  });
  const deadline = call.getDeadline();
  const token = call.metadata.get('token')[0] ?? call.metadata.get('authorization')[0];
  const certificate: PeerCertificate | undefined = call.getAuthContext().sslPeerCertificate;
  return {
    token: typeof token === 'string' ? firstTokenValue(token) : undefined,
    certificate,
    peer: call.getPeer(),
    deadlineMs: deadline instanceof Date ? deadline.getTime() : deadline,
    get signal(): AbortSignal {
      if (controller === undefined) {
        controller = new AbortController();
        if (cancelled) controller.abort();
      }
      return controller.signal;
    },
    caller: undefined,
  };
}

function responseStream(call: grpc.ServerWritableStream<unknown, unknown> | grpc.ServerDuplexStream<unknown, unknown>): ResponseStream<unknown> {
  let closed = false;
  const closeListeners = new Set<() => void>();
  const close = (): void => {
    if (closed) return;
    closed = true;
    for (const listener of closeListeners) listener();
    closeListeners.clear();
  };
  call.on('error', close);
  call.on('cancelled', close);
  call.on('close', close);
  return {
    // grpc-js calls back once HTTP/2 has taken the framed message (flow control permitting).
    write: (response, onFlushed) => call.write(response, onFlushed === undefined ? undefined : () => onFlushed()),
    drained: () => new Promise<void>((resolve) => {
      if (closed) return resolve();
      const done = (): void => {
        call.off('drain', done);
        closeListeners.delete(done);
        resolve();
      };
      call.once('drain', done);
      closeListeners.add(done);
    }),
    end: () => call.end(),
    // `destroy(error)` would tear the stream down before grpc-js sends the status, leaving the
    // client waiting: emitting 'error' makes grpc-js end the call with that status.
    fail: (error) => {
      const status = toServiceError(error);
      call.emit('error', Object.assign(new Error(status.details), status));
    },
    onClose: (listener) => {
      if (closed) listener();
      else closeListeners.add(listener);
    },
  };
}
