/**
 * Loads Rampart's .proto files once: the package definition for gRPC services, and a protobufjs
 * root for encoding log entry payloads in exactly the shape gRPC hands requests to us.
 */
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import * as protoLoader from '@grpc/proto-loader';
import protobuf from 'protobufjs';
import type { EventMessage, InternalRequest, PutRequest, PutResponse, RangeRequest, TxnRequest, WatchResponse } from './messages.js';
import { oversizedTxn } from '../server/validate.js';
import { txnWithinLimits } from './txn-scan.js';
import { decodePutProposal, decodePutRequest, encodePutProposal, encodePutResponse } from './put-codec.js';
import { decodeRangeRequest, encodeRangeResponse } from './range-codec.js';
import { checkProposalBounds, compileCodec, decodeWithPlan, encodeWithPlan } from './schema-codec.js';

export const protoDirectory = fileURLToPath(new URL('./proto', import.meta.url));

export const decodeOptions = {
  keepCase: true,
  longs: String,
  enums: Number,
  defaults: true,
  oneofs: true,
} as const;

export const packageDefinition = protoLoader.loadSync(['rpc.proto', 'v3lock.proto', 'v3election.proto', 'policy.proto', 'audit.proto', 'audit-policy.proto', 'encryption.proto'], {
  ...decodeOptions,
  includeDirs: [protoDirectory],
});

/** KV `name`'s method definition, whose codec the functions below wrap or replace. */
function kvMethod<Request, Response>(name: 'Put' | 'Range' | 'Txn'): protoLoader.MethodDefinition<Request, Response> {
  const service = packageDefinition['etcdserverpb.KV'] as Record<string, protoLoader.MethodDefinition<Request, Response>> | undefined;
  const method = service?.[name];
  if (method === undefined) throw new Error(`rpc.proto: no KV.${name}`);
  return method;
}

/**
 * A Txn past the size limits is refused before it is decoded (see txn-scan.ts): the service's
 * deserializer hands over `oversizedTxn`, which validation refuses with etcd's error.
 */
function guardTxnDecoding(): void {
  const method = kvMethod<TxnRequest, object>('Txn');
  const decode = method.requestDeserialize;
  method.requestDeserialize = (bytes: Buffer): TxnRequest => (txnWithinLimits(bytes) ? decode(bytes) : oversizedTxn);
}
guardTxnDecoding();

/**
 * KV `name`'s answers encoded by `encodeByHand`; protobufjs takes what it returns undefined for.
 * Put's usual answer (a header, no previous value: put-codec.ts) and Range's (range-codec.ts).
 */
function encodeResponsesByHand<Response>(name: 'Put' | 'Range', encodeByHand: (response: Response) => Buffer | undefined): void {
  const method = kvMethod<object, Response>(name);
  const encode = method.responseSerialize;
  method.responseSerialize = (response: Response): Buffer => encodeByHand(response) ?? encode(response);
}
encodeResponsesByHand<PutResponse>('Put', encodePutResponse);

/** KV `name`'s requests decoded by `decodeByHand`; protobufjs takes what it returns undefined for. Put's (put-codec.ts) and Range's (range-codec.ts). */
function decodeRequestsByHand<Request>(name: 'Put' | 'Range', decodeByHand: (bytes: Buffer) => Request | undefined): void {
  const method = kvMethod<Request, object>(name);
  const decode = method.requestDeserialize;
  method.requestDeserialize = (bytes: Buffer): Request => decodeByHand(bytes) ?? decode(bytes);
}
decodeRequestsByHand<PutRequest>('Put', decodePutRequest);
decodeRequestsByHand<RangeRequest>('Range', decodeRangeRequest);
encodeResponsesByHand<object>('Range', encodeRangeResponse);

const root = new protobuf.Root();
root.resolvePath = (_origin: string, target: string): string => path.join(protoDirectory, target);
root.loadSync(['internal.proto'], { keepCase: true });
const internalRequestType = root.lookupType('rampart.InternalRequest');

/** Every other proposal's codec (schema-codec.ts), compiled from internal.proto; it also bounds what protobufjs decodes. */
const internalRequestPlan = ((): NonNullable<ReturnType<typeof compileCodec>> => {
  const plan = compileCodec(internalRequestType);
  if (plan === undefined) throw new Error('internal.proto: the proposal codec does not compile (schema-codec.ts)');
  return plan;
})();

export function encodeInternalRequest(request: InternalRequest): Buffer {
  const fast = encodePutProposal(request) ?? encodeWithPlan(internalRequestPlan, request);
  if (fast !== undefined) return fast;
  const message = internalRequestType.fromObject(request as unknown as Record<string, unknown>);
  return Buffer.from(internalRequestType.encode(message).finish());
}

/**
 * A proposal from the Raft log. Throws on bytes that do not decode, and ProposalBoundsError on a
 * proposal past `proposalBounds` (nesting, messages and repeated values): checked as the codec
 * decodes, and before protobufjs decodes, which bounds neither.
 */
export function decodeInternalRequest(data: Buffer): InternalRequest {
  const fast = decodePutProposal(data) ?? decodeWithPlan(internalRequestPlan, data);
  if (fast !== undefined) return fast as unknown as InternalRequest;
  checkProposalBounds(internalRequestPlan, data);
  return internalRequestType.toObject(internalRequestType.decode(data), decodeOptions) as unknown as InternalRequest;
}

/** WatchResponse.events is field 11, length-delimited: tag byte (11 << 3) | 2. */
const watchEventsTag = 0x5a;
const eventType = root.lookupType('mvccpb.Event');
/** An event message's encoding as a WatchResponse.events field, kept as long as the message is. */
const encodedEvents = new WeakMap<EventMessage, Buffer>();

function encodedEventField(event: EventMessage): Buffer {
  let field = encodedEvents.get(event);
  if (field === undefined) {
    const body = eventType.encode(eventType.fromObject(event as unknown as Record<string, unknown>)).finish();
    const length = protobuf.Writer.create().uint32(body.length).finish();
    field = Buffer.concat([Buffer.of(watchEventsTag), length, body]);
    encodedEvents.set(event, field);
  }
  return field;
}

/**
 * Watch responses carry events shared among watchers (watch-service.ts): each event is encoded
 * once and its bytes appended to every response that carries it (protobuf fields may come in any
 * order and concatenate), instead of encoding a 1 MiB value again for each of 2,000 watchers.
 */
function shareWatchEventEncoding(): void {
  const service = packageDefinition['etcdserverpb.Watch'] as Record<string, protoLoader.MethodDefinition<object, WatchResponse>> | undefined;
  const method = service?.Watch;
  if (method === undefined) throw new Error('rpc.proto: no Watch.Watch');
  const encode = method.responseSerialize;
  method.responseSerialize = (response: WatchResponse): Buffer => {
    if (response.events.length === 0) return encode(response);
    return Buffer.concat([encode({ ...response, events: [] }), ...response.events.map(encodedEventField)]);
  };
}
shareWatchEventEncoding();
