/**
 * protobufjs's reflection over Rampart's .proto files, the reference the hand-written codecs are
 * tested against (the codec members used before them): raft.proto's MessageBatch as gRPC
 * (de)serializes it, and internal.proto's InternalRequest as the Raft log held it.
 */
import path from 'node:path';
import * as protoLoader from '@grpc/proto-loader';
import protobuf from 'protobufjs';
import { decodeOptions, protoDirectory } from '../../src/api/proto.js';
import type { MessageBatchFields } from '../../src/server/peer-codec.js';

const raft = protoLoader.loadSync(['raft.proto'], { ...decodeOptions, includeDirs: [protoDirectory] });
const messagesMethod = (raft['rampart.Peer'] as protoLoader.ServiceDefinition).Messages as protoLoader.MethodDefinition<object, object>;

export const referenceBatchEncode = (batch: MessageBatchFields): Buffer => messagesMethod.requestSerialize(batch);
export const referenceBatchDecode = (bytes: Buffer): MessageBatchFields => messagesMethod.requestDeserialize(bytes) as MessageBatchFields;

/** What a decoded batch means, whichever codec decoded it: defaults filled in, 64-bit values exact (decimal strings). */
export function batchMeaning(batch: MessageBatchFields): unknown {
  const exact = (value: string | number | undefined): string => BigInt(value ?? 0).toString();
  return {
    cluster_id: batch.cluster_id,
    from: batch.from ?? '',
    messages: batch.messages.map((m) => ({
      type: m.type,
      from: m.from,
      to: m.to,
      numbers: [m.term, m.last_index, m.last_term, m.index, m.reject_hint, m.prev_index, m.prev_term, m.commit, m.snapshot_index, m.snapshot_term].map(exact),
      flags: [m.transfer === true, m.reject === true, m.commit_only === true],
      entries: (m.entries ?? []).map((e) => [exact(e.index), exact(e.term), e.configuration_change, Buffer.from(e.data).toString('hex')]),
      context: m.context ?? '',
      voters: m.snapshot_voters ?? [],
      learners: m.snapshot_learners ?? [],
    })),
  };
}

/** internal.proto (and rpc.proto, which it imports) loaded with field names as written. */
export const protoRoot = new protobuf.Root();
protoRoot.resolvePath = (_origin: string, target: string): string => path.join(protoDirectory, target);
protoRoot.loadSync(['internal.proto', 'rpc.proto'], { keepCase: true });
protoRoot.resolveAll();
export const internalRequestType = protoRoot.lookupType('rampart.InternalRequest');

export function referenceProposalEncode(request: object): Buffer {
  return Buffer.from(internalRequestType.encode(internalRequestType.fromObject(request as Record<string, unknown>)).finish());
}

export function referenceProposalDecode(data: Buffer): unknown {
  return internalRequestType.toObject(internalRequestType.decode(data), decodeOptions);
}
