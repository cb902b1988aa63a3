/**
 * A member's peer stream handler (a real Transport over loopback gRPC) given bytes the peer codec
 * refuses, as a member holding a valid peer certificate could send: the stream is failed with
 * INVALID_ARGUMENT, nothing of it reaches Raft, the refusal is in the audit trail as the peer-refusal
 * audit records the others (once, with the codec's reason), and the member keeps taking batches on
 * the next stream. Before, gRPC failed the call with INTERNAL and nothing recorded who sent what.
 */
import * as grpc from '@grpc/grpc-js';
import { afterEach, describe, expect, it } from 'vitest';
import type { AuditFields } from '../../src/audit/event.js';
import { PeerRefusalAudit, type PeerRefusal } from '../../src/audit/peer-refusals.js';
import type { Message } from '../../src/raft/types.js';
import { encodeMessageBatch } from '../../src/server/peer-codec.js';
import { Transport } from '../../src/server/transport.js';
import { freePort } from '../helpers/processes.js';
import { transportOptions } from '../helpers/transport-options.js';

const identity = (bytes: Buffer): Buffer => bytes;
/** A client of the peer service's Messages stream that sends raw bytes, as a hostile member could. */
const RawPeerClient = grpc.makeGenericClientConstructor(
  { Messages: { path: '/rampart.Peer/Messages', requestStream: true, responseStream: false, requestSerialize: identity, requestDeserialize: identity, responseSerialize: identity, responseDeserialize: identity } },
  'Peer',
);
type RawClient = grpc.Client & { Messages(callback: (error: grpc.ServiceError | null) => void): grpc.ClientWritableStream<Buffer> };

/** Sends `batches` on one stream and ends it; resolves with the call's outcome. */
function stream(client: RawClient, batches: Buffer[]): Promise<grpc.ServiceError | null> {
  return new Promise((resolve) => {
    const call = client.Messages((error) => resolve(error));
    call.on('error', () => undefined);
    for (const batch of batches) call.write(batch);
    call.end();
  });
}

describe('peer stream handler given a malformed batch', () => {
  const transports: Transport[] = [];
  const clients: grpc.Client[] = [];
  afterEach(async () => {
    for (const client of clients.splice(0)) client.close();
    await Promise.all(transports.splice(0).map((transport) => transport.close()));
  });

  it('fails the stream, audits the refusal, delivers nothing of it, and keeps taking batches', async () => {
    const received: Message[] = [];
    const refusals: PeerRefusal[] = [];
    const events: AuditFields[] = [];
    const audit = new PeerRefusalAudit({ record: (fields) => events.push(fields) });
    const port = await freePort();
    const receiver = new Transport(transportOptions('b2', {
      onMessage: (message) => received.push(message),
      onPeerRefused: (refusal) => {
        refusals.push(refusal);
        audit.offer(refusal);
      },
    }));
    await receiver.listen([`http://127.0.0.1:${port}`]);
    transports.push(receiver);
    const client = new RawPeerClient(`127.0.0.1:${port}`, grpc.credentials.createInsecure()) as unknown as RawClient;
    clients.push(client);

    const heartbeat = (commit: number): Buffer => encodeMessageBatch({ cluster_id: 'c1', from: 'a1', messages: [{ type: 'heartbeat', from: 'a1', to: 'b2', term: 3, commit, context: '' }] });
    // A valid batch, then one whose message claims 2^31 bytes, then a valid one the handler must not take.
    const hostile = Buffer.from([0x0a, 0x02, 0x63, 0x31, 0x12, 0x80, 0x80, 0x80, 0x80, 0x08, 0x00]);
    const refused = await stream(client, [heartbeat(1), hostile, heartbeat(2)]);
    expect(refused?.code).toBe(grpc.status.INVALID_ARGUMENT);
    expect(refused?.details).toBe('rampart: malformed raft message batch');
    expect(received.map((message) => message.type === 'heartbeat' && message.commit)).toEqual([1]);
    expect(refusals).toHaveLength(1);
    expect(refusals[0]).toMatchObject({ stage: 'message', remote: expect.stringMatching(/^127\.0\.0\.1:\d+$/) });
    expect(refusals[0]?.reason).toMatch(/^peer codec: protobuf: a length of 2147483648 runs past its message/);
    expect(events).toHaveLength(1);
    expect(events[0]).toMatchObject({ action: 'peer.refused', outcome: 'denied', code: 'INVALID_ARGUMENT', detail: expect.stringMatching(/^peer message batch refused: peer codec: /) });

    // A 6-byte length (protobufjs would read it otherwise) on a stream of its own: refused and counted too.
    const sixByteLength = Buffer.from([0x0a, 0x02, 0x63, 0x31, 0x12, 0x80, 0x80, 0x80, 0x80, 0x80, 0x00]);
    expect((await stream(client, [sixByteLength]))?.code).toBe(grpc.status.INVALID_ARGUMENT);
    expect(refusals).toHaveLength(2);

    // The member keeps serving: the next stream's batches are taken.
    expect(await stream(client, [heartbeat(3), heartbeat(4)])).toBeNull();
    expect(received.map((message) => message.type === 'heartbeat' && message.commit)).toEqual([1, 3, 4]);
    audit.close();
  });
});
