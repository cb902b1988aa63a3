/** A raw gRPC client over Rampart's own proto definitions, for what etcdctl cannot exercise. */
import * as grpc from '@grpc/grpc-js';
import { packageDefinition } from '../../src/api/proto.js';
import type { Cluster, ClusterMember } from './processes.js';

type Unary = (request: object, callback: (error: grpc.ServiceError | null, response: Record<string, unknown>) => void) => void;

export interface RawClient {
  readonly kv: grpc.Client & Record<string, Unary>;
  readonly watch: grpc.Client & { Watch(): grpc.ClientDuplexStream<object, Record<string, unknown>> };
  readonly lease: grpc.Client & Record<string, Unary> & { LeaseKeepAlive(): grpc.ClientDuplexStream<object, Record<string, unknown>> };
  readonly maintenance: grpc.Client & Record<string, Unary>;
  readonly cluster: grpc.Client & Record<string, Unary>;
  readonly lock: grpc.Client & Record<string, Unary>;
  readonly election: grpc.Client & Record<string, Unary> & { Observe(request: object): grpc.ClientReadableStream<Record<string, unknown>> };
  close(): void;
}

/** Plaintext by default; pass TLS credentials (grpc.credentials.createSsl) for a TLS member. */
export function connect(endpoint: string, options: grpc.ChannelOptions = {}, credentials: grpc.ChannelCredentials = grpc.credentials.createInsecure()): RawClient {
  const loaded = grpc.loadPackageDefinition(packageDefinition) as unknown as Record<string, Record<string, grpc.ServiceClientConstructor>>;
  const make = (name: string, pkg = 'etcdserverpb'): grpc.Client => {
    const constructor = loaded[pkg]?.[name];
    if (constructor === undefined) throw new Error(`no service ${name}`);
    return new constructor(endpoint, credentials, { 'grpc.max_receive_message_length': -1, ...options });
  };
  const clients = { kv: make('KV'), watch: make('Watch'), lease: make('Lease'), maintenance: make('Maintenance'), cluster: make('Cluster'), lock: make('Lock', 'v3lockpb'), election: make('Election', 'v3electionpb') };
  return {
    ...(clients as unknown as Omit<RawClient, 'close'>),
    close: () => Object.values(clients).forEach((client) => client.close()),
  };
}

export function call(client: grpc.Client & Record<string, Unary>, method: string, request: object): Promise<Record<string, unknown>> {
  return new Promise((resolve, reject) => {
    const fn = client[method];
    if (fn === undefined) throw new Error(`no method ${method}`);
    fn.call(client, request, (error, response) => (error === null ? resolve(response) : reject(error)));
  });
}

export async function callError(client: grpc.Client & Record<string, Unary>, method: string, request: object): Promise<{ code: number; details: string }> {
  try {
    await call(client, method, request);
  } catch (error) {
    const serviceError = error as grpc.ServiceError;
    return { code: serviceError.code, details: serviceError.details };
  }
  throw new Error(`${method} succeeded where an error was expected`);
}

/** Collects watch responses from a stream. */
export class WatchRecorder {
  readonly responses: Record<string, unknown>[] = [];
  private waiters: { predicate: () => boolean; resolve: () => void }[] = [];

  constructor(readonly stream: grpc.ClientDuplexStream<object, Record<string, unknown>>) {
    stream.on('data', (response: Record<string, unknown>) => {
      this.responses.push(response);
      this.waiters = this.waiters.filter((waiter) => {
        if (waiter.predicate()) {
          waiter.resolve();
          return false;
        }
        return true;
      });
    });
    stream.on('error', () => undefined);
  }

  events(): Record<string, unknown>[] {
    return this.responses.flatMap((response) => (response.events as Record<string, unknown>[] | undefined) ?? []);
  }

  until(predicate: () => boolean, timeoutMs = 10_000): Promise<void> {
    if (predicate()) return Promise.resolve();
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`watch condition not met; got ${this.responses.length} responses`)), timeoutMs);
      this.waiters.push({ predicate, resolve: () => {
        clearTimeout(timer);
        resolve();
      } });
    });
  }
}

/** The member that reports itself leader (members not running are skipped); waits up to 15 s for one. */
export async function leaderOf(cluster: Cluster): Promise<ClusterMember> {
  const deadline = Date.now() + 15_000;
  for (;;) {
    for (const member of cluster.members) {
      if (member.process === undefined) continue;
      const client = connect(`127.0.0.1:${member.port}`);
      try {
        const response = await call(client.maintenance, 'Status', {});
        const header = response.header as Record<string, string>;
        if (String(response.leader) !== '0' && String(response.leader) === String(header.member_id)) return member;
      } catch {
        // not serving (yet)
      } finally {
        client.close();
      }
    }
    if (Date.now() > deadline) throw new Error('no leader');
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}
