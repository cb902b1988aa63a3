/**
 * A member whose auth state is behind the cluster's must not refuse what the cluster has granted.
 * Found by the secure soak: a leader cut off while a permission was revoked stepped down, and a put
 * through it right after the grant was acknowledged elsewhere came back "permission denied" (the
 * member checked the write against its own, stale auth state before proposing it). Here: a
 * permission is revoked, one member is cut off from the others, the permission is granted back
 * through the majority, and a put through the cut-off member must not be refused for permission
 * (it cannot be served until the member catches up; etcd checks when it applies the write).
 */
import * as grpc from '@grpc/grpc-js';
import { describe, expect, it } from 'vitest';
import { connect, type RawClient } from '../helpers/client.js';
import { etcdctl } from '../helpers/processes.js';
import { proxiedCluster, type ProxiedMember as Member } from '../helpers/proxied-cluster.js';
import { sleep } from '../helpers/retry.js';
import { packageDefinition } from '../../src/api/proto.js';

/** A put with a token; resolves with the gRPC status code (0 when it succeeded). */
function putWithToken(client: RawClient, token: string, key: string, deadlineMs: number): Promise<number> {
  const metadata = new grpc.Metadata();
  metadata.set('token', token);
  return new Promise((resolve) => {
    const put = client.kv.Put as unknown as (request: object, metadata: grpc.Metadata, options: grpc.CallOptions, callback: (error: grpc.ServiceError | null) => void) => void;
    put.call(client.kv, { key: Buffer.from(key), value: Buffer.from('v') }, metadata, { deadline: Date.now() + deadlineMs }, (error) => resolve(error === null ? 0 : error.code));
  });
}

async function authenticate(port: number, name: string, password: string): Promise<string> {
  const loaded = grpc.loadPackageDefinition(packageDefinition) as unknown as { etcdserverpb: { Auth: grpc.ServiceClientConstructor } };
  const client = new loaded.etcdserverpb.Auth(`127.0.0.1:${port}`, grpc.credentials.createInsecure()) as unknown as grpc.Client & { Authenticate(request: object, options: grpc.CallOptions, callback: (error: grpc.ServiceError | null, response: { token: string }) => void): void };
  try {
    for (let attempt = 0; ; attempt++) {
      const token = await new Promise<string | undefined>((resolve) => client.Authenticate({ name, password }, { deadline: Date.now() + 3000 }, (error, response) => resolve(error === null ? response.token : undefined)));
      if (token !== undefined) return token;
      if (attempt > 20) throw new Error(`cannot authenticate ${name}`);
      await sleep(250);
    }
  } finally {
    client.close();
  }
}

describe('auth on a member that is behind', () => {
  it('does not refuse a write whose permission was granted back while the member was cut off', async () => {
    const cluster = await proxiedCluster('a', 3);
    const { members, ids, network } = cluster;
    const [first, , behind] = members as [Member, Member, Member];
    const clients: RawClient[] = [];
    try {
      await Promise.all(members.map((member) => cluster.start(member)));
      const majority = `127.0.0.1:${first.port}`;
      const admin = async (...args: string[]): Promise<void> => {
        for (let attempt = 0; ; attempt++) {
          const result = await etcdctl(majority, args[0] === 'auth' || attempt === 0 ? args : ['--user', 'root:rootpw', ...args]);
          if (result.code === 0) return;
          if (attempt > 40) throw new Error(`etcdctl ${args.join(' ')}: ${result.stderr}`);
          await sleep(250);
        }
      };
      for (const args of [['user', 'add', 'root:rootpw'], ['user', 'grant-role', 'root', 'root'], ['user', 'add', 'alice:alicepw'], ['role', 'add', 'writer'],
        ['role', 'grant-permission', 'writer', 'readwrite', 'a/', '--prefix=true'], ['user', 'grant-role', 'alice', 'writer']]) await admin(...args);
      expect((await etcdctl(majority, ['auth', 'enable'])).code).toBe(0);
      const asRoot = ['--user', 'root:rootpw'];
      expect((await etcdctl(majority, [...asRoot, 'role', 'revoke-permission', 'writer', 'a/', '--prefix=true'])).code).toBe(0);

      // The member that will fall behind has applied the revoke: it refuses alice now.
      const token = await authenticate(behind.port, 'alice', 'alicepw');
      const client = connect(`127.0.0.1:${behind.port}`);
      clients.push(client);
      for (let attempt = 0; (await putWithToken(client, token, 'a/x', 3000)) !== grpc.status.PERMISSION_DENIED; attempt++) {
        if (attempt > 20) throw new Error('the member never applied the revoke');
        await sleep(250);
      }
      network.isolate(behind.id, ids);
      // The cut-off member may have been the leader: the majority elects another first, and the
      // grant (idempotent) is retried until it is committed.
      for (let attempt = 0; (await etcdctl(majority, [...asRoot, 'role', 'grant-permission', 'writer', 'readwrite', 'a/', '--prefix=true'])).code !== 0; attempt++) {
        if (attempt > 40) throw new Error('the majority never committed the grant');
        await sleep(250);
      }

      // Granted at the time: it may fail (the member cannot be served while cut off), never for permission.
      const whileBehind = await putWithToken(client, token, 'a/x', 3000);
      expect(whileBehind).not.toBe(grpc.status.PERMISSION_DENIED);
      // A key never granted is still refused through the majority.
      const majorityClient = connect(majority);
      clients.push(majorityClient);
      // Asked again while the answer is only a timeout or "no leader" (a loaded majority may elect
      // again): a put that succeeds or is refused is final.
      const aliceAtMajority = await authenticate(first.port, 'alice', 'alicepw');
      let neverGranted = await putWithToken(majorityClient, aliceAtMajority, 'b/x', 5000);
      for (let attempt = 0; attempt < 20 && (neverGranted === grpc.status.DEADLINE_EXCEEDED || neverGranted === grpc.status.UNAVAILABLE); attempt++) {
        await sleep(250);
        neverGranted = await putWithToken(majorityClient, aliceAtMajority, 'b/x', 5000);
      }
      expect(neverGranted).toBe(grpc.status.PERMISSION_DENIED);

      network.heal();
      const fresh = await authenticate(behind.port, 'alice', 'alicepw');
      let afterHeal = -1;
      for (let attempt = 0; attempt < 40 && afterHeal !== 0; attempt++) {
        afterHeal = await putWithToken(client, fresh, 'a/x', 3000);
        if (afterHeal !== 0) await sleep(250);
      }
      expect(afterHeal).toBe(0);
    } finally {
      clients.forEach((client) => client.close());
      await cluster.remove();
    }
  }, 90_000);
});
