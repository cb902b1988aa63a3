/**
 * Audit events for requests that never reach a handler: a message too large, one that is not
 * valid protobuf (or badly compressed), and a call to a method this server does not have. gRPC
 * answers those itself; without this, an attacker probing with them leaves no trace.
 *
 * Two hooks into @grpc/grpc-js (1.14): a server interceptor that sees every status a call ends
 * with and whether a request message reached the handler, and a handler for unknown method paths
 * (gRPC looks handlers up before interceptors run, so without one such calls bypass them) that
 * answers exactly as gRPC would (UNIMPLEMENTED, same message) through the interceptor.
 * `serveUnknownMethods` says when the library no longer offers its hook, so that a library upgrade
 * cannot silently end the recording.
 */
import * as grpc from '@grpc/grpc-js';
import type { PeerCertificate } from 'node:tls';
import { statusName } from './errors.js';
import type { TransportRefusal } from './refusal-audit.js';

const unknownMethodPrefix = 'The server does not implement the method ';

const certificateOf = (call: { getAuthContext(): { sslPeerCertificate?: PeerCertificate } }): PeerCertificate | undefined => call.getAuthContext().sslPeerCertificate;

/** An interceptor that reports each call ended by gRPC itself before a request message reached its handler. */
export function refusalInterceptor(onRefusal: (refusal: TransportRefusal) => void): grpc.ServerInterceptor {
  return (methodDescriptor, call) => {
    let messageSeen = false;
    let reported = false;
    // gRPC ends malformed and oversized calls through the innermost call's own sendStatus, which
    // interceptors do not see: observe it on that object.
    const innermostSendStatus = call.sendStatus.bind(call);
    call.sendStatus = (status) => {
      if (!messageSeen && !reported && status.code !== grpc.status.OK) {
        reported = true;
        const details = status.details ?? '';
        onRefusal({
          method: methodDescriptor.path,
          peer: call.getPeer(),
          certificate: certificateOf(call),
          code: statusName(status.code ?? grpc.status.UNKNOWN),
          details,
          unknownMethod: status.code === grpc.status.UNIMPLEMENTED && details === `${unknownMethodPrefix}${methodDescriptor.path}`,
        });
      }
      innermostSendStatus(status);
    };
    // The call itself, its `start` observed as its `sendStatus` is, rather than a
    // grpc.ServerInterceptingCall around it: that wrapper adds a layer of objects, closures and
    // pending-message bookkeeping to every call for the one fact needed here.
    const innermostStart = call.start.bind(call);
    call.start = (listener) => {
      innermostStart({
        onReceiveMetadata: (metadata) => listener.onReceiveMetadata(metadata),
        onReceiveMessage: (message) => {
          messageSeen = true;
          listener.onReceiveMessage(message);
        },
        onReceiveHalfClose: () => listener.onReceiveHalfClose(),
        onCancel: () => listener.onCancel(),
      });
    };
    // grpc-js types an interceptor's result as its ServerInterceptingCall class but uses only the
    // interface (getServerInterceptingCall's result is a ServerInterceptingCallInterface).
    return call as grpc.ServerInterceptingCall;
  };
}

interface HandlerLookup {
  _retrieveHandler(path: string): unknown;
}

/** The server's handler lookup, when this gRPC version has the one this file was written against. */
function handlerLookupOf(server: grpc.Server): HandlerLookup | undefined {
  const candidate = server as unknown as Partial<HandlerLookup>;
  return typeof candidate._retrieveHandler === 'function' ? (candidate as HandlerLookup) : undefined;
}

/**
 * Serves unknown method paths with a handler that answers UNIMPLEMENTED through the interceptors
 * (so the refusal interceptor records it). Returns false when this gRPC version has no such hook.
 */
export function serveUnknownMethods(server: grpc.Server): boolean {
  const internals = handlerLookupOf(server);
  if (internals === undefined) return false;
  const lookup = internals._retrieveHandler.bind(server);
  internals._retrieveHandler = (path: string): unknown => {
    const found = lookup(path);
    if (found !== null && found !== undefined) return found;
    return {
      type: 'bidi',
      path,
      // Whatever the client sends is never parsed: the call ends at once.
      deserialize: (bytes: Buffer): Buffer => bytes,
      serialize: (value: Buffer): Buffer => value,
      func: (call: grpc.ServerDuplexStream<Buffer, Buffer>) => {
        call.emit('error', { code: grpc.status.UNIMPLEMENTED, details: `${unknownMethodPrefix}${path}` });
      },
    };
  };
  return true;
}
