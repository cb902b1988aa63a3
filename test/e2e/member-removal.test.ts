/**
 * A removed member stops even when it never applies its own removal: the leader stops replicating
 * to a member as soon as it applies the removal, so a member that was down (or paused, or lost the
 * last append with its connection) never learns from the log. Its peers tell it when it contacts
 * them (as etcd's answer 410 Gone), and it exits as one that applied its removal does.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { etcdctl, startCluster, startRampart, type Cluster } from '../helpers/processes.js';

/** Generous for a loaded 2-core CI: the restarted member needs one election timeout to contact its peers. */
const removedExitTimeoutMs = 30_000;

describe('a member removed while it was down', () => {
  let cluster: Cluster | undefined;

  afterEach(async () => {
    await cluster?.remove();
    cluster = undefined;
  });

  it('learns it was removed from its peers when it restarts, and exits 0', async () => {
    cluster = await startCluster(3);
    // A follower: the others keep their leader (and quorum) while it is down. Ids are uint64: read
    // them from the JSON text (JSON.parse would round them).
    const statuses = await Promise.all(cluster.members.map(async (member) => {
      const text = (await etcdctl(`127.0.0.1:${member.port}`, ['endpoint', 'status', '-w', 'json'])).stdout;
      return { member, id: /"member_id":(\d+)/.exec(text)?.[1], leader: /"leader":(\d+)/.exec(text)?.[1] };
    }));
    const follower = statuses.find((entry) => entry.id !== undefined && entry.leader !== undefined && entry.leader !== '0' && entry.id !== entry.leader);
    if (follower?.id === undefined) throw new Error(`no follower in ${JSON.stringify(statuses.map(({ id, leader }) => ({ id, leader })))}`);
    const m3 = follower.member;
    const id = BigInt(follower.id).toString(16);
    const [m1, m2] = cluster.members.filter((member) => member !== m3);
    if (m1 === undefined || m2 === undefined) throw new Error('three members expected');
    // Down while its removal commits: it cannot receive the entry, and nobody sends it afterwards.
    await m3.process?.stop('SIGKILL');
    const others = [m1, m2].map((member) => `127.0.0.1:${member.port}`).join(',');
    const removed = await etcdctl(others, ['member', 'remove', id]);
    expect(removed.stdout, removed.stderr).toMatch(/^Member +[0-9a-f]+ removed from cluster +[0-9a-f]+\n$/);
    expect((await etcdctl(others, ['put', 'after', 'removal'])).stdout).toBe('OK\n');

    // Restarted with its data: it never serves (it has no leader), and stops once a peer answers it.
    const restarted = startRampart({
      name: m3.name, port: m3.port, peerPort: m3.peerPort, dataDir: m3.dataDir,
      args: ['--initial-cluster', cluster.initialCluster], startTimeoutMs: removedExitTimeoutMs,
    });
    const failure = await restarted.then(
      async (process) => {
        await process.stop('SIGKILL');
        return new Error('the removed member served clients');
      },
      (error: unknown) => (error instanceof Error ? error : new Error(String(error))),
    );
    expect(failure.message).toMatch(/^process exited with 0 before listening/);
    expect(failure.message).toContain('this member has been permanently removed from the cluster');
    expect((await etcdctl(others, ['member', 'list'])).stdout.trim().split('\n')).toHaveLength(2);
  }, 120_000);
});
