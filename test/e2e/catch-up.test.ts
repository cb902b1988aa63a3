/**
 * Catching up after a long absence, on real processes: a follower paused (SIGSTOP) under load with
 * a small snapshot interval and catch-up tail resumes, applies the flood of entries it missed in
 * batches far longer than the tail, and keeps serving (it used to die on an assertion, issue 10).
 */
import { status as grpcStatus } from '@grpc/grpc-js';
import { afterEach, describe, expect, it } from 'vitest';
import { call, connect, type RawClient } from '../helpers/client.js';
import { etcdctl, startCluster, type Cluster, type ClusterMember } from '../helpers/processes.js';
import { retrying } from '../helpers/retry.js';

const endpointOf = (member: ClusterMember): string => `127.0.0.1:${member.port}`;

async function memberStatus(member: ClusterMember): Promise<{ leader: string; memberId: string } | undefined> {
  const client = connect(endpointOf(member));
  try {
    const response = await Promise.race([call(client.maintenance, 'Status', {}), new Promise<undefined>((resolve) => setTimeout(() => resolve(undefined), 500))]);
    if (response === undefined) return undefined;
    const header = response.header as Record<string, string>;
    return { leader: String(response.leader), memberId: String(header.member_id) };
  } catch {
    return undefined;
  } finally {
    client.close();
  }
}

async function findLeader(cluster: Cluster): Promise<ClusterMember> {
  const deadline = Date.now() + 15_000;
  for (;;) {
    for (const member of cluster.members) {
      const state = await memberStatus(member);
      if (state !== undefined && state.leader !== '0' && state.leader === state.memberId) return member;
    }
    if (Date.now() > deadline) throw new Error('no leader');
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

async function waitFor(predicate: () => Promise<boolean>, timeoutMs: number, what: string): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await predicate())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

/** Puts `count` keys `prefix<i>` through the given clients, retrying when briefly unavailable (as any etcd client does). */
async function putMany(clients: readonly RawClient[], prefix: string, count: number, value: (index: number) => Buffer, concurrency = 32): Promise<void> {
  let next = 0;
  await Promise.all(
    Array.from({ length: concurrency }, async (_, slot) => {
      const client = clients[slot % clients.length] as RawClient;
      while (next < count) {
        const index = next++;
        for (let attempt = 0; ; attempt++) {
          try {
            await call(client.kv, 'Put', { key: Buffer.from(`${prefix}${index}`), value: value(index) });
            break;
          } catch (error) {
            // 40 x 250 ms: an election on a loaded machine has taken several seconds (10 x 100 ms did not cover one).
            if ((error as { code?: number }).code !== grpcStatus.UNAVAILABLE || attempt >= 40) throw error;
            await new Promise((resolve) => setTimeout(resolve, 250));
          }
        }
      }
    }),
  );
}

describe('catch-up', () => {
  let cluster: Cluster | undefined;

  afterEach(async () => {
    for (const member of cluster?.members ?? []) member.process?.child.kill('SIGCONT');
    await cluster?.remove();
    cluster = undefined;
  });

  it('a follower paused under load resumes and applies batches longer than --snapshot-catch-up-entries without crashing', async () => {
    cluster = await startCluster(3, ['--snapshot-count', '100', '--snapshot-catch-up-entries', '20']);
    const leader = await findLeader(cluster);
    const paused = cluster.members.find((member) => member !== leader) as ClusterMember;
    const pausedProcess = paused.process;
    if (pausedProcess === undefined) throw new Error('no process');
    const writers = [connect(endpointOf(leader))];
    try {
      await putMany(writers, 'warm/', 200, (index) => Buffer.from(String(index)));
      pausedProcess.child.kill('SIGSTOP');
      const writes = 3000;
      await putMany(writers, 'paused/', writes, (index) => Buffer.from(String(index)));
      pausedProcess.child.kill('SIGCONT');
      await waitFor(
        async () => (await etcdctl(endpointOf(paused), ['get', `paused/${writes - 1}`, '--print-value-only', '--consistency=s'])).stdout === `${writes - 1}\n`,
        60_000,
        'the resumed follower to catch up',
      );
      // Still alive and serving after catching up: a put through it lands everywhere.
      expect(pausedProcess.child.exitCode).toBeNull();
      expect(pausedProcess.output()).not.toContain('assertion failed');
      const through = connect(endpointOf(paused));
      try {
        await retrying(() => call(through.kv, 'Put', { key: Buffer.from('after'), value: Buffer.from('resume') }), 'a put through the resumed follower');
      } finally {
        through.close();
      }
      const count = await etcdctl(endpointOf(paused), ['get', 'paused/', '--prefix', '--keys-only', '--limit', '1', '-w', 'json', '--consistency=s']);
      expect((JSON.parse(count.stdout) as { count: number }).count).toBe(writes);
    } finally {
      writers.forEach((client) => client.close());
    }
  }, 180_000);
});
