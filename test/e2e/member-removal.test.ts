/**
 * A removed member stops even when it never applies its own removal: the leader stops replicating
 * to a member as soon as it applies the removal, so a member that was down (or paused, or lost the
 * last append with its connection) never learns from the log. Its peers tell it when it contacts
 * them (as etcd's answer 410 Gone), and it exits as one that applied its removal does.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { etcdctl, freePort, removeDirectory, startCluster, startRampart, temporaryDirectory, type Cluster, type CommandResult, type RampartOptions } from '../helpers/processes.js';
import { etcdctlUntilOk, waitFor } from '../helpers/retry.js';

/** Generous for a loaded 2-core CI: the restarted member needs one election timeout to contact its peers. */
const removedExitTimeoutMs = 60_000;

/** Starts a member expected to stop as removed: it must exit 0 saying so, never serve clients. */
async function expectStopsAsRemoved(options: RampartOptions): Promise<void> {
  const failure = await startRampart({ ...options, startTimeoutMs: removedExitTimeoutMs }).then(
    async (process) => {
      await process.stop('SIGKILL');
      return new Error('the removed member served clients');
    },
    (error: unknown) => (error instanceof Error ? error : new Error(String(error))),
  );
  expect(failure.message).toMatch(/^process exited with 0 before listening/);
  expect(failure.message).toContain('this member has been permanently removed from the cluster');
}

/**
 * `member remove ID`, retried while it fails for another reason than the member being gone (an
 * election on a loaded machine). A retry that finds it gone means an earlier attempt committed
 * though its answer was lost: then the member list must no longer hold it, and the run that
 * succeeded is not there to show, so `undefined` is returned.
 */
async function removeMember(endpoints: string, id: string): Promise<CommandResult | undefined> {
  for (let attempt = 0; ; attempt++) {
    const removed = await etcdctl(endpoints, ['member', 'remove', id]);
    if (removed.code === 0) return removed;
    if (attempt > 0 && removed.stderr.includes('member not found')) {
      expect((await etcdctlUntilOk(endpoints, ['member', 'list'])).stdout).not.toMatch(new RegExp(`^${id},`, 'm'));
      return undefined;
    }
    if (attempt >= 40) return removed;
    await new Promise((resolve) => setTimeout(resolve, 250));
  }
}

describe('a member removed while it was down', () => {
  let cluster: Cluster | undefined;

  afterEach(async () => {
    await cluster?.remove();
    cluster = undefined;
  });

  it('learns it was removed from its peers when it restarts, and exits 0', async () => {
    const started = await startCluster(3);
    cluster = started;
    // A follower: the others keep their leader (and quorum) while it is down. Ids are uint64: read
    // them from the JSON text (JSON.parse would round them). Waited for: a member that has not
    // heard from a leader yet (a loaded machine) reports none.
    const followerNow = async (): Promise<{ member: (typeof started.members)[number]; id: string | undefined; leader: string | undefined } | undefined> => {
      const statuses = await Promise.all(started.members.map(async (member) => {
        const text = (await etcdctl(`127.0.0.1:${member.port}`, ['endpoint', 'status', '-w', 'json'])).stdout;
        return { member, id: /"member_id":(\d+)/.exec(text)?.[1], leader: /"leader":(\d+)/.exec(text)?.[1] };
      }));
      return statuses.find((entry) => entry.id !== undefined && entry.leader !== undefined && entry.leader !== '0' && entry.id !== entry.leader);
    };
    let follower: Awaited<ReturnType<typeof followerNow>>;
    await waitFor(async () => (follower = await followerNow()) !== undefined, 30_000, 'a member that follows a leader', 250);
    if (follower?.id === undefined) throw new Error('no follower');
    const m3 = follower.member;
    const id = BigInt(follower.id).toString(16);
    const [m1, m2] = cluster.members.filter((member) => member !== m3);
    if (m1 === undefined || m2 === undefined) throw new Error('three members expected');
    // Down while its removal commits: it cannot receive the entry, and nobody sends it afterwards.
    await m3.process?.stop('SIGKILL');
    const others = [m1, m2].map((member) => `127.0.0.1:${member.port}`).join(',');
    const removed = await removeMember(others, id);
    if (removed !== undefined) expect(removed.stdout, removed.stderr).toMatch(/^Member +[0-9a-f]+ removed from cluster +[0-9a-f]+\n$/);
    expect((await etcdctlUntilOk(others, ['put', 'after', 'removal'])).stdout).toBe('OK\n');

    // Restarted with its data: it never serves (it has no leader), and stops once a peer answers it.
    await expectStopsAsRemoved({ name: m3.name, port: m3.port, peerPort: m3.peerPort, dataDir: m3.dataDir, args: ['--initial-cluster', cluster.initialCluster] });
    expect((await etcdctlUntilOk(others, ['member', 'list'])).stdout.trim().split('\n')).toHaveLength(2);
  }, 180_000);

  it('a learner (which never campaigns) learns it was removed when it restarts, and exits 0', async () => {
    cluster = await startCluster(3);
    const [port, peerPort] = [await freePort(), await freePort()];
    const peerUrl = `http://127.0.0.1:${peerPort}`;
    const added = await etcdctl(cluster.endpoints, ['member', 'add', 'm4', `--peer-urls=${peerUrl}`, '--learner']);
    const id = /^Member +([0-9a-f]+) added/.exec(added.stdout)?.[1];
    if (id === undefined) throw new Error(`member add: ${added.stdout}${added.stderr}`);
    const dataDir = await temporaryDirectory('m4');
    const options: RampartOptions = { name: 'm4', port, peerPort, dataDir, args: ['--initial-cluster', `${cluster.initialCluster},m4=${peerUrl}`, '--initial-cluster-state', 'existing'] };
    try {
      const learner = await startRampart(options);
      try {
        await waitFor(async () => (await etcdctl(learner.endpoint, ['get', 'x', '--consistency=s'])).code === 0, 30_000, 'the learner to serve');
      } finally {
        await learner.stop('SIGKILL');
      }
      const removed = await removeMember(cluster.endpoints, id);
      if (removed !== undefined) expect(removed.stdout, removed.stderr).toMatch(/^Member +[0-9a-f]+ removed from cluster +[0-9a-f]+\n$/);
      // Nobody sends to a removed learner and it sends nothing of its own: it asks after a silence.
      await expectStopsAsRemoved(options);
    } finally {
      await removeDirectory(dataDir);
    }
  }, 180_000);
});
