/**
 * Options for a real Transport in unit tests: plaintext gRPC on loopback, cluster `c1`, a silent
 * logger, and every callback a test does not give either ignoring its input or rejecting.
 */
import * as grpc from '@grpc/grpc-js';
import pino from 'pino';
import type { TransportOptions } from '../../src/server/transport.js';

export function transportOptions(selfId: string, overrides: Partial<TransportOptions>): TransportOptions {
  const unused = (): Promise<never> => Promise.reject(new Error('not used here'));
  return {
    selfId,
    clusterId: 'c1',
    logger: pino({ level: 'silent' }),
    serverCredentials: grpc.ServerCredentials.createInsecure(),
    clientCredentials: grpc.credentials.createInsecure(),
    onMessage: () => undefined,
    onUnreachable: () => undefined,
    snapshotChunks: async function* () {},
    receiveSnapshot: unused,
    onLeaseRenew: unused,
    onLeaseTimeToLive: unused,
    onCluster: () => ({ clusterId: 'c1', members: [] }),
    onLoginAttempt: unused,
    ...overrides,
  };
}
