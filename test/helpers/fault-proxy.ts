/**
 * A fault-injecting TCP proxy in front of each member's peer port, for partitions between real
 * processes. Members advertise the proxy's address as their peer URL and listen on a private port.
 *
 * Which member a connection comes from: peer traffic here is plaintext gRPC, and the first member id
 * in a connection's byte stream is the sender's (`from` precedes `to` in every Raft message). The
 * proxy buffers until it sees one, then applies the link rules. Connections that never name a member
 * (lease forwarding) follow the rules for an unknown sender. Over TLS the bytes say nothing: there
 * `senderOf` names the sender by the connection's source address (the soak gives each member its
 * own, test/soak/source-address.c).
 */
import { createServer, connect, type Server, type Socket } from 'node:net';

export type LinkRule = (from: string | undefined, to: string) => boolean;

interface Tracked {
  readonly client: Socket;
  upstream: Socket | undefined;
  from: string | undefined;
}

const identifyBytesMax = 64 * 1024;

export class FaultProxy {
  private server: Server | undefined;
  private readonly connections = new Set<Tracked>();
  port = 0;

  constructor(
    /** The member behind this proxy. */
    readonly memberId: string,
    private readonly targetPort: number,
    private readonly memberIds: readonly string[],
    private readonly allowed: LinkRule,
    /** Who a connection comes from, by its source address; when given, the bytes are not read. */
    private readonly senderOf?: (remoteAddress: string | undefined) => string | undefined,
  ) {}

  async listen(port = 0): Promise<number> {
    this.server = createServer((client) => this.accept(client));
    await new Promise<void>((resolve) => this.server?.listen(port, '127.0.0.1', resolve));
    const address = this.server.address();
    this.port = typeof address === 'object' && address !== null ? address.port : 0;
    return this.port;
  }

  private accept(client: Socket): void {
    const tracked: Tracked = { client, upstream: undefined, from: undefined };
    this.connections.add(tracked);
    let buffered = Buffer.alloc(0);
    let decided = false;
    const decide = (): void => {
      decided = true;
      client.removeListener('data', onData);
      if (!this.allowed(tracked.from, this.memberId)) {
        client.destroy();
        return;
      }
      const upstream = connect(this.targetPort, '127.0.0.1');
      tracked.upstream = upstream;
      upstream.on('error', () => client.destroy());
      client.on('error', () => upstream.destroy());
      upstream.on('close', () => client.destroy());
      client.on('close', () => {
        upstream.destroy();
        this.connections.delete(tracked);
      });
      upstream.write(buffered);
      client.pipe(upstream);
      upstream.pipe(client);
    };
    const onData = (chunk: Buffer): void => {
      buffered = Buffer.concat([buffered, chunk]);
      const text = buffered.toString('latin1');
      let first: { id: string; at: number } | undefined;
      for (const id of this.memberIds) {
        if (id === this.memberId) continue;
        const at = text.indexOf(id);
        if (at >= 0 && (first === undefined || at < first.at)) first = { id, at };
      }
      if (first !== undefined) {
        tracked.from = first.id;
        decide();
      } else if (buffered.length > identifyBytesMax) {
        decide();
      }
    };
    if (this.senderOf !== undefined) {
      client.on('error', () => undefined);
      client.on('close', () => this.connections.delete(tracked));
      tracked.from = this.senderOf(client.remoteAddress);
      decide();
      return;
    }
    client.on('data', onData);
    client.on('error', () => undefined);
    client.on('close', () => this.connections.delete(tracked));
    // Unary calls (lease forwarding) carry no member id: decide once the request is in.
    setTimeout(() => {
      if (!decided && !client.destroyed) decide();
    }, 200);
  }

  /** Re-applies the rules to open connections (after they change). */
  enforce(): void {
    for (const tracked of this.connections) {
      if (tracked.upstream !== undefined && !this.allowed(tracked.from, this.memberId)) {
        tracked.client.destroy();
        tracked.upstream.destroy();
        this.connections.delete(tracked);
      }
    }
  }

  /** Cuts every open connection (the members reconnect: after a certificate rotation, with the new certificates). */
  cutAll(): void {
    for (const tracked of this.connections) {
      tracked.client.destroy();
      tracked.upstream?.destroy();
    }
    this.connections.clear();
  }

  async close(): Promise<void> {
    for (const tracked of this.connections) {
      tracked.client.destroy();
      tracked.upstream?.destroy();
    }
    await new Promise<void>((resolve) => (this.server === undefined ? resolve() : this.server.close(() => resolve())));
  }
}

/** Link rules for a set of proxies: partitions and isolation by member id. */
export class PeerNetwork {
  private groups: string[][] | undefined;
  readonly proxies: FaultProxy[] = [];

  readonly rule: LinkRule = (from, to) => {
    if (this.groups === undefined) return true;
    const groupOf = (id: string): number => this.groups?.findIndex((group) => group.includes(id)) ?? -1;
    const target = groupOf(to);
    if (from === undefined) return target === 0 || this.groups.length === 0;
    return groupOf(from) === target;
  };

  /** Splits members into groups that cannot reach each other. */
  partition(groups: string[][]): void {
    this.groups = groups;
    for (const proxy of this.proxies) proxy.enforce();
  }

  isolate(id: string, all: readonly string[]): void {
    this.partition([all.filter((other) => other !== id), [id]]);
  }

  heal(): void {
    this.groups = undefined;
  }

  async close(): Promise<void> {
    await Promise.all(this.proxies.map((proxy) => proxy.close()));
  }
}
