/**
 * Closing a member's peer transport while other members are connected to it, over real TLS on
 * loopback. A failed member (ENOSPC in the soak) spent seconds in Transport.close until the process
 * gave up on it (failedCloseGraceMs): grpc-js's tryShutdown waits for every connection of the peer
 * port to go away, and its forceShutdown ends only the HTTP/2 sessions it tracks for channelz, which
 * the peer server disables, and never a connection still in its TLS handshake. The other members'
 * message streams stay open as long as those members run, so close() waited for them indefinitely.
 */
import net from 'node:net';
import * as grpc from '@grpc/grpc-js';
import { afterEach, describe, expect, it } from 'vitest';
import type { Message } from '../../src/raft/types.js';
import { createAuthority, issueCertificate } from '../../src/pki/authority.js';
import { tlsHandshakeTimeoutMs } from '../../src/pki/handshake-deadline.js';
import { Transport, type TransportOptions } from '../../src/server/transport.js';
import { freePort } from '../helpers/processes.js';
import { sleep, within } from '../helpers/retry.js';
import { transportOptions } from '../helpers/transport-options.js';

type SnapshotMessage = Extract<Message, { type: 'snapshot' }>;

const ids = ['a1', 'b2', 'c3'] as const;

/**
 * Well below the TLS handshake deadline (which would end a stalled connection by itself) and far
 * above close's own grace (500 ms): a close that waits for the other members or for the stalled
 * handshake does not finish within it; one that ends them does, even on a loaded machine.
 */
const closeBoundMs = tlsHandshakeTimeoutMs / 2;

function heartbeat(from: string, to: string): Message {
  return { type: 'heartbeat', from, to, term: 1, commit: 0, context: '' };
}

describe('closing the peer transport', () => {
  const transports: Transport[] = [];
  const sockets: net.Socket[] = [];
  afterEach(async () => {
    for (const socket of sockets.splice(0)) socket.destroy();
    // Anything a failed test left open: closed without waiting for it.
    for (const transport of transports.splice(0)) void transport.close();
  });

  /** Three members over mutual TLS whose message streams to one another are open (each heard from both others). */
  const cluster = async (overrides: Partial<Record<(typeof ids)[number], Partial<TransportOptions>>> = {}): Promise<{ members: Map<string, Transport>; ports: Map<string, number> }> => {
    const authority = await createAuthority('transport close test');
    const ports = new Map<string, number>();
    for (const id of ids) ports.set(id, await freePort());
    const heard = new Map<string, Set<string>>(ids.map((id) => [id, new Set<string>()]));
    const members = new Map<string, Transport>();
    for (const id of ids) {
      const pair = await issueCertificate(authority, { kind: 'peer', commonName: id, subjectAltNames: ['127.0.0.1'] });
      const ca = Buffer.from(authority.certificatePem);
      const key = Buffer.from(pair.keyPem);
      const certificate = Buffer.from(pair.certificatePem);
      const transport = new Transport(transportOptions(id, {
        serverCredentials: grpc.ServerCredentials.createSsl(ca, [{ private_key: key, cert_chain: certificate }], true),
        clientCredentials: grpc.credentials.createSsl(ca, key, certificate),
        onMessage: (message) => heard.get(id)?.add(message.from),
        ...overrides[id],
      }));
      await transport.listen([`https://127.0.0.1:${ports.get(id)}`]);
      transports.push(transport);
      members.set(id, transport);
    }
    for (const id of ids) {
      members.get(id)?.setPeers(ids.filter((other) => other !== id).map((other) => ({ id: other, peerUrls: [`https://127.0.0.1:${ports.get(other)}`] })));
    }
    for (let round = 0; [...heard.values()].some((from) => from.size < ids.length - 1); round++) {
      if (round > 200) throw new Error(`message streams did not open: ${JSON.stringify([...heard].map(([id, from]) => [id, [...from]]))}`);
      for (const id of ids) members.get(id)?.send(ids.filter((other) => other !== id).map((other) => heartbeat(id, other)));
      await sleep(50);
    }
    return { members, ports };
  };

  /** A TCP connection to `port` that never starts its TLS handshake; resolves with it once accepted. */
  const stalledHandshake = async (port: number): Promise<{ closed: Promise<void> }> => {
    const socket = net.connect(port, '127.0.0.1');
    sockets.push(socket);
    socket.on('error', () => undefined);
    const closed = new Promise<void>((resolve) => socket.once('close', () => resolve()));
    await new Promise<void>((resolve) => socket.once('connect', () => resolve()));
    return { closed };
  };

  it('ends the other members\' streams and a connection still in its TLS handshake instead of waiting for them', async () => {
    const { members, ports } = await cluster();
    const stalled = await stalledHandshake(ports.get('b2') as number);
    await sleep(100);
    const closing = (members.get('b2') as Transport).close();
    // Before the fix close() waited while a1 and c3 ran (and the stalled handshake until its deadline).
    expect(await within(closing, closeBoundMs)).toBe(true);
    // The stalled connection was ended by close(), not left to the handshake deadline.
    expect(await within(stalled.closed, 1_000)).toBe(true);
    // The others keep running: close of one member does not wait for them, nor break them.
    const a1 = members.get('a1') as Transport;
    const c3 = members.get('c3') as Transport;
    const closingOthers = Promise.all([a1.close(), c3.close()]);
    expect(await within(closingOthers, closeBoundMs)).toBe(true);
  }, 60_000);

  it('stops a snapshot being received and returns only once its receiver has finished', async () => {
    const log: string[] = [];
    let taken: () => void = () => undefined;
    const receiving = new Promise<void>((resolve) => (taken = resolve));
    const { members } = await cluster({
      a1: {
        // A leader streaming a long snapshot: a chunk every 50 ms, never idle long enough to time out.
        snapshotChunks: async function* () {
          for (let chunk = 0; chunk < 10_000; chunk++) {
            yield Buffer.from(`chunk ${chunk}`);
            await sleep(50);
          }
        },
      },
      b2: {
        receiveSnapshot: async (_message, chunks) => {
          try {
            for await (const chunk of chunks) {
              log.push(`read ${chunk.length}`);
              taken();
            }
            log.push('complete');
          } catch (error) {
            log.push(`failed: ${String(error)}`);
            // Like stageSnapshot finishing its current write into the staging area after a read failed.
            await sleep(300);
            log.push('receiver finished');
            throw error;
          }
        },
      },
    });
    const snapshot: SnapshotMessage = {
      type: 'snapshot',
      from: 'a1',
      to: 'b2',
      term: 3,
      snapshot: { metadata: { index: 40, term: 3, configuration: { voters: [...ids], learners: [] } }, data: Buffer.alloc(0) },
    };
    (members.get('a1') as Transport).send([snapshot]);
    await receiving;
    const closing = (members.get('b2') as Transport).close().then(() => log.push('closed'));
    expect(await within(closing, closeBoundMs)).toBe(true);
    // Stopped, not abandoned: nothing of the transfer runs once close() has returned.
    expect(log.slice(-3, -2)[0]).toMatch(/^failed: .*stopping/);
    expect(log.slice(-2)).toEqual(['receiver finished', 'closed']);
  }, 60_000);
});
