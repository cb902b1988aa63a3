/**
 * A peer stream that is congested when its connection is cut must not leave the sender mute for
 * good. The sender stops writing to a congested stream until it drains; grpc-js never emits
 * 'drain' (nor 'error') on a stream whose connection dropped with writes still buffered, so
 * without care every later message to that peer (heartbeats, appends, read confirmations) is
 * dropped for the life of the process. That is what a peer that was slow or paused and then cut
 * off (a partition, the soak's peer cut after a certificate rotation) would meet.
 */
import { createServer, connect, type Server, type Socket } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import type { Message } from '../../src/raft/types.js';
import { Transport } from '../../src/server/transport.js';
import { freePort } from '../helpers/processes.js';
import { transportOptions } from '../helpers/transport-options.js';

/** A TCP proxy that can stop reading what the sender writes (a peer too slow to read) and cut every connection. */
class StallingProxy {
  private readonly server: Server;
  private readonly sockets = new Set<Socket>();
  private readonly clients = new Set<Socket>();
  private stalled = false;
  port = 0;

  constructor(private readonly targetPort: number) {
    this.server = createServer((client) => {
      const upstream = connect(targetPort, '127.0.0.1');
      for (const socket of [client, upstream]) {
        this.sockets.add(socket);
        socket.on('error', () => undefined);
        socket.on('close', () => this.sockets.delete(socket));
      }
      this.clients.add(client);
      client.on('close', () => {
        this.clients.delete(client);
        upstream.destroy();
      });
      upstream.on('close', () => client.destroy());
      client.pipe(upstream);
      upstream.pipe(client);
      if (this.stalled) client.pause();
    });
  }

  async listen(): Promise<number> {
    await new Promise<void>((resolve) => this.server.listen(0, '127.0.0.1', resolve));
    const address = this.server.address();
    this.port = typeof address === 'object' && address !== null ? address.port : 0;
    return this.port;
  }

  /** Stops (or resumes) reading from the sender: its writes pile up in its own buffers. */
  stall(on: boolean): void {
    this.stalled = on;
    for (const client of this.clients) {
      if (on) {
        client.unpipe();
        client.pause();
      } else {
        client.resume();
      }
    }
  }

  cut(): void {
    for (const socket of this.sockets) socket.destroy();
  }

  async close(): Promise<void> {
    this.cut();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }
}

const until = async (condition: () => boolean, timeoutMs: number, tick: () => void): Promise<boolean> => {
  const deadline = performance.now() + timeoutMs;
  while (!condition()) {
    if (performance.now() > deadline) return false;
    tick();
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  return true;
};

describe('peer transport congestion', () => {
  const transports: Transport[] = [];
  const proxies: StallingProxy[] = [];
  afterEach(async () => {
    await Promise.all(transports.splice(0).map((transport) => transport.close()));
    await Promise.all(proxies.splice(0).map((proxy) => proxy.close()));
  });

  it('sends again once a stream congested when its connection was cut is gone', async () => {
    const received: Message[] = [];
    const receiverPort = await freePort();
    const receiver = new Transport(transportOptions('b2', { onMessage: (message) => received.push(message) }));
    await receiver.listen([`http://127.0.0.1:${receiverPort}`]);
    const proxy = new StallingProxy(receiverPort);
    await proxy.listen();
    let unreachable = 0;
    const sender = new Transport(transportOptions('a1', { onUnreachable: () => (unreachable += 1) }));
    await sender.listen([`http://127.0.0.1:${await freePort()}`]);
    transports.push(receiver, sender);
    proxies.push(proxy);
    sender.setPeers([{ id: 'b2', peerUrls: [`http://127.0.0.1:${proxy.port}`] }]);

    let sequence = 0;
    const heartbeat = (): Message => ({ type: 'heartbeat', from: 'a1', to: 'b2', term: 1, commit: 0, context: `hb-${++sequence}` });
    // The link works.
    expect(await until(() => received.length > 0, 10_000, () => sender.send([heartbeat()]))).toBe(true);

    // The receiver stops reading: large appends fill the connection until the stream refuses more
    // and the sender counts the peer unreachable (it drops what it is given meanwhile).
    proxy.stall(true);
    const entry = { index: 1, term: 1, type: 'normal' as const, data: Buffer.alloc(1024 * 1024) };
    const append = (): Message => ({ type: 'append', from: 'a1', to: 'b2', term: 1, prevIndex: 0, prevTerm: 0, commit: 0, entries: [entry] });
    const before = unreachable;
    expect(await until(() => unreachable > before, 60_000, () => sender.send([append()]))).toBe(true);

    // The connection is cut while congested, then the link works again.
    proxy.cut();
    proxy.stall(false);
    const seenBefore = received.length;
    const delivered = await until(() => received.slice(seenBefore).some((message) => message.type === 'heartbeat'), 15_000, () => sender.send([heartbeat()]));
    expect(delivered, 'a heartbeat reached the peer after the cut').toBe(true);
  }, 120_000);
});
