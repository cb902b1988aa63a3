/**
 * Apply-lag backpressure, as etcd: a member whose applied index lags its commit index by more than
 * 5,000 entries refuses new proposals at once with `etcdserver: too many requests`
 * (RESOURCE_EXHAUSTED), instead of queueing them behind the backlog until they time out. Three
 * members in this process; the leader's apply is held while a quorum of followers keeps committing.
 */
import { Writable } from 'node:stream';
import { status } from '@grpc/grpc-js';
import { afterEach, describe, expect, it } from 'vitest';
import { toServiceError } from '../../src/api/errors.js';
import type { Entry } from '../../src/raft/types.js';
import { applyGapEntriesMax, type Member } from '../../src/server/member.js';
import { loopOf, openInProcessCluster, putOf, putRetrying, until, type InProcessCluster } from '../helpers/in-process-cluster.js';

describe('apply-lag backpressure', () => {
  let cluster: InProcessCluster | undefined;
  afterEach(async () => {
    await cluster?.close();
    cluster = undefined;
  });

  it('refuses proposals with etcd\'s error while more than 5,000 committed entries wait to be applied, and takes them again once applied', async () => {
    expect(applyGapEntriesMax).toBe(5_000);
    const quiet = new Writable({ write(_chunk, _encoding, done) { done(); } });
    cluster = await openInProcessCluster(3, quiet, { requestTimeoutMs: 120_000 });
    const members = cluster.members;
    await putRetrying(members[0] as Member, 'first', 'v');
    await until(() => members.some((member) => member.isLeader), 'a leader');
    const leader = members.find((member) => member.isLeader) as Member;
    const follower = members.find((member) => member !== leader) as Member;

    // The leader's apply is held (a slow disk or a huge batch, say); the followers persist and
    // acknowledge, so its commit index runs ahead of what it applied.
    let release!: () => void;
    const held = new Promise<void>((resolve) => { release = resolve; });
    const host = leader as unknown as { applyEntries: (entries: readonly Entry[]) => Promise<void> };
    const apply = host.applyEntries.bind(leader);
    host.applyEntries = async (entries) => {
      await held;
      return apply(entries);
    };
    const node = loopOf(leader).node;
    const gap = (): number => node.commitIndex - leader.appliedIndex;
    const pending: Promise<unknown>[] = [];
    while (gap() <= applyGapEntriesMax && pending.length < 3 * applyGapEntriesMax) {
      for (let index = 0; index < 500; index++) pending.push(leader.put(putOf(`backlog/${pending.length}`, 'v')));
      await until(() => node.commitIndex >= node.lastIndex - 200, 'the backlog committed');
    }
    expect(gap()).toBeGreaterThan(applyGapEntriesMax);

    // Refused at once with etcd's code and text; a member that keeps up still takes writes.
    const stillWaiting = new Promise((resolve) => setTimeout(() => resolve('still waiting after 5 s'), 5_000).unref());
    const refused = await Promise.race([leader.put(putOf('refused', 'v')).then(() => 'accepted', (error: unknown) => error), stillWaiting]);
    expect(toServiceError(refused)).toMatchObject({ code: status.RESOURCE_EXHAUSTED, details: 'etcdserver: too many requests' });
    await expect(follower.put(putOf('through-follower', 'v'))).resolves.toMatchObject({ revision: expect.any(Number) as unknown });

    // Once the backlog is applied, the leader takes proposals again; every held one was answered.
    release();
    host.applyEntries = apply;
    await Promise.all(pending);
    await until(() => gap() <= applyGapEntriesMax, 'the leader caught up');
    await expect(leader.put(putOf('accepted', 'v'))).resolves.toMatchObject({ revision: expect.any(Number) as unknown });
  });
});
