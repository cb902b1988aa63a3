/**
 * Loads Rampart's .proto files once: the package definition for gRPC services, and a protobufjs
 * root for encoding log entry payloads in exactly the shape gRPC hands requests to us.
 */
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import * as protoLoader from '@grpc/proto-loader';
import protobuf from 'protobufjs';
import type { InternalRequest, TxnRequest } from './messages.js';
import { oversizedTxn } from '../server/validate.js';
import { txnWithinLimits } from './txn-scan.js';

export const protoDirectory = fileURLToPath(new URL('./proto', import.meta.url));

export const decodeOptions = {
  keepCase: true,
  longs: String,
  enums: Number,
  defaults: true,
  oneofs: true,
} as const;

export const packageDefinition = protoLoader.loadSync(['rpc.proto', 'v3lock.proto', 'v3election.proto', 'policy.proto', 'audit.proto'], {
  ...decodeOptions,
  includeDirs: [protoDirectory],
});

/**
 * A Txn past the size limits is refused before it is decoded (see txn-scan.ts): the service's
 * deserializer hands over `oversizedTxn`, which validation refuses with etcd's error.
 */
function guardTxnDecoding(): void {
  const service = packageDefinition['etcdserverpb.KV'] as Record<string, protoLoader.MethodDefinition<TxnRequest, object>> | undefined;
  const method = service?.Txn;
  if (method === undefined) throw new Error('rpc.proto: no KV.Txn');
  const decode = method.requestDeserialize;
  method.requestDeserialize = (bytes: Buffer): TxnRequest => (txnWithinLimits(bytes) ? decode(bytes) : oversizedTxn);
}
guardTxnDecoding();

const root = new protobuf.Root();
root.resolvePath = (_origin: string, target: string): string => path.join(protoDirectory, target);
root.loadSync(['internal.proto'], { keepCase: true });
const internalRequestType = root.lookupType('rampart.InternalRequest');

export function encodeInternalRequest(request: InternalRequest): Buffer {
  const message = internalRequestType.fromObject(request as unknown as Record<string, unknown>);
  return Buffer.from(internalRequestType.encode(message).finish());
}

export function decodeInternalRequest(data: Buffer): InternalRequest {
  return internalRequestType.toObject(internalRequestType.decode(data), decodeOptions) as unknown as InternalRequest;
}
