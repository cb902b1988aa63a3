/**
 * A leader whose latest snapshot is one it installed from an earlier leader can send it. Seen in the
 * 30-minute soak (issue 10): a member that had caught up by snapshot later led, held no view of that
 * snapshot, and failed every transfer to a re-added member with `snapshot at N is no longer held`
 * until its own next snapshot (37 s there; never in an idle cluster).
 */
import { afterEach, describe, expect, it } from 'vitest';
import { leaderOf } from '../helpers/client.js';
import { etcdctl, freePort, removeDirectory, startCluster, startRampart, temporaryDirectory, type Cluster, type ClusterMember, type ServerProcess } from '../helpers/processes.js';
import { etcdctlUntilOk } from '../helpers/retry.js';

const endpointOf = (member: ClusterMember): string => `127.0.0.1:${member.port}`;

async function waitFor(check: () => Promise<boolean>, timeoutMs: number, what: () => string): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what()}`);
    await new Promise((resolve) => setTimeout(resolve, 200));
  }
}

describe('snapshot sent by a leader that installed it', () => {
  let cluster: Cluster | undefined;
  let added: ServerProcess | undefined;

  afterEach(async () => {
    await added?.stop();
    if (added !== undefined) await removeDirectory(added.dataDir);
    added = undefined;
    await cluster?.remove();
    cluster = undefined;
  });

  it('a member that caught up by snapshot, then leads, brings a newly added member up to date', async () => {
    cluster = await startCluster(3, ['--snapshot-count', '40', '--snapshot-catch-up-entries', '5', '--log-level', 'info']);
    const leader = await leaderOf(cluster);
    const installer = cluster.members.find((member) => member !== leader) as ClusterMember;
    await installer.process?.stop();
    // Each put retried until it is answered (the same value: idempotent): on a loaded machine the two
    // members left may hold an election meanwhile.
    for (let index = 0; index < 100; index++) expect((await etcdctlUntilOk(endpointOf(leader), ['put', `k${index}`, String(index)])).code).toBe(0);
    const restarted = await cluster.start(installer);
    await waitFor(async () => (await etcdctl(endpointOf(installer), ['get', 'k99', '--print-value-only', '--consistency=s'])).stdout === '99\n', 60_000, () => restarted.output().slice(-2000));
    expect(restarted.output()).toContain('installed snapshot from leader');

    // The installer leads; its latest snapshot is the installed one (too few writes since for its own).
    const list = (await etcdctlUntilOk(endpointOf(leader), ['member', 'list'])).stdout;
    const installerId = list.split('\n').find((line) => line.split(', ')[2] === installer.name)?.split(', ')[0] ?? '';
    expect(installerId).not.toBe('');
    expect((await etcdctl(endpointOf(leader), ['move-leader', installerId])).code).toBe(0);
    await waitFor(async () => (await leaderOf(cluster as Cluster)) === installer, 30_000, () => 'the installer to lead');

    const peerPort = await freePort();
    const add = await etcdctl(endpointOf(installer), ['member', 'add', 'm4', `--peer-urls=http://127.0.0.1:${peerPort}`]);
    expect(add.stdout).toContain('added to cluster');
    const initialCluster = /ETCD_INITIAL_CLUSTER="([^"]+)"/.exec(add.stdout)?.[1] ?? '';
    added = await startRampart({
      name: 'm4',
      peerPort,
      dataDir: await temporaryDirectory('m4'),
      args: ['--initial-cluster', initialCluster, '--initial-cluster-state', 'existing', '--log-level', 'info'],
    });
    const newcomer = added;
    await waitFor(async () => (await etcdctl(newcomer.endpoint, ['get', 'k99', '--print-value-only', '--consistency=s'])).stdout === '99\n', 60_000, () => `the added member to catch up:\n${newcomer.output().slice(-2000)}\nleader:\n${restarted.output().slice(-2000)}`);
    expect(restarted.output()).not.toContain('is no longer held');
  }, 240_000);
});
