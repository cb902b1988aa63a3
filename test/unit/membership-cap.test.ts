/**
 * A cluster stays within `clusterMembersMax` members (what a joining member reads, cluster-view.ts)
 * however its MemberAdds race. The proposer's own check sees the cluster as it is when the call
 * arrives: two MemberAdds checked at 63 members (on two members, or a forwarded one that reaches
 * the leader after the first was applied) both passed it, and both were applied: 65 members, and
 * no member could join any more. Each configuration change is now checked again as it is applied,
 * from the replicated records, as etcd's applyConfChange does: refused by every member alike,
 * Raft's configuration unchanged, and the proposer told why. An --initial-cluster of more members
 * is refused before anything starts.
 */
import { Writable } from 'node:stream';
import { afterEach, describe, expect, it } from 'vitest';
import { RampartError } from '../../src/errors.js';
import { clusterMembersMax } from '../../src/server/cluster-view.js';
import type { Member } from '../../src/server/member.js';
import { bootstrapEntries, parseInitialCluster } from '../../src/server/membership.js';
import type { ConfigurationChange } from '../../src/raft/types.js';
import { loopOf, openInProcessCluster, putRetrying, until, type InProcessCluster } from '../helpers/in-process-cluster.js';

/** Peer URLs nobody listens on: the learners added here never start. */
const learnerUrls = (index: number): string[] => [`http://127.0.0.9:${20_000 + index}`];

/**
 * A membership call through the current leader, asked again while Raft still applies the previous
 * change (refused as Unhealthy until the leader's Raft knows it applied) or the cluster elects.
 */
async function atLeader<T>(members: readonly Member[], call: (leader: Member) => Promise<T>): Promise<T> {
  for (let attempt = 0; ; attempt++) {
    const leader = members.find((member) => loopOf(member).isLeader);
    try {
      if (leader !== undefined) return await call(leader);
    } catch (error) {
      if (!(error instanceof RampartError && ['Unhealthy', 'NoLeader', 'LeaderChanged'].includes(error.code)) || attempt >= 100) throw error;
    }
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

describe('the member cap at apply', () => {
  let cluster: InProcessCluster | undefined;
  afterEach(async () => {
    await cluster?.close();
    cluster = undefined;
  });

  it('two MemberAdds checked at 63 members: the second is refused as it is applied, on every member alike, and its proposer hears TooManyMembers', async () => {
    const logLines: string[] = [];
    const logStream = new Writable({ write(chunk: Buffer, _encoding, done) { logLines.push(chunk.toString()); done(); } });
    cluster = await openInProcessCluster(3, logStream);
    const members = cluster.members;
    await putRetrying(members[0] as Member, 'ready', 'yes');
    // Learners (they never start, and count toward no quorum) up to one below the cap.
    for (let index = members.length; index < clusterMembersMax - 1; index++) await atLeader(members, (leader) => leader.memberAdd(learnerUrls(index), true));
    await until(() => members.every((member) => member.members().length === clusterMembersMax - 1), 'every member at 63 members');

    // A follower checks its MemberAdd at 63 members; its proposal reaches the leader only after
    // another MemberAdd, checked at 63 too, was applied.
    const proposer = members.find((member) => !loopOf(member).isLeader) as Member;
    const loop = loopOf(proposer);
    const propose = loop.proposeConfigurationChange.bind(loop);
    let release: () => void = () => undefined;
    const released = new Promise<void>((resolve) => (release = resolve));
    loop.proposeConfigurationChange = (change: ConfigurationChange): void => {
      loop.proposeConfigurationChange = propose;
      void released.then(() => propose(change));
    };
    const late = proposer.memberAdd(learnerUrls(1000), true);
    const lateOutcome = late.then(() => 'added', (error: unknown) => error);
    const first = await atLeader(members, (leader) => leader.memberAdd(learnerUrls(1001), true));
    expect(first.peerUrls).toEqual(learnerUrls(1001));
    await until(() => members.every((member) => member.members().length === clusterMembersMax), 'every member at 64 members');
    release();

    expect(await lateOutcome).toMatchObject({ code: 'TooManyMembers' });
    await until(() => logLines.filter((line) => line.includes('refused a committed configuration change')).length === members.length, 'every member to refuse the change');
    for (const member of members) {
      expect(member.members()).toHaveLength(clusterMembersMax);
      expect(member.members().some((record) => record.peerUrls[0] === learnerUrls(1000)[0])).toBe(false);
      const configuration = loopOf(member).node.configuration;
      expect(configuration.voters.length + configuration.learners.length).toBe(clusterMembersMax);
    }
    const refusals = logLines.filter((line) => line.includes('refused a committed configuration change')).map((line) => JSON.parse(line) as { reason: string; change: string });
    expect(refusals.map((line) => [line.reason, line.change])).toEqual(Array.from({ length: members.length }, () => ['TooManyMembers', 'addLearner']));

    // Nothing is wedged: with one member removed, the refused one is added.
    const removed = members[0]?.members().find((record) => record.isLearner);
    await atLeader(members, (leader) => leader.memberRemove((removed?.id ?? 0n).toString(16)));
    const added = await atLeader(members, (leader) => leader.memberAdd(learnerUrls(1000), true));
    expect(added.peerUrls).toEqual(learnerUrls(1000));
    await until(() => members.every((member) => member.members().length === clusterMembersMax), 'every member at 64 members again');
    // And a 65th is refused by the proposer's own check, as before.
    await expect(atLeader(members, (leader) => leader.memberAdd(learnerUrls(1002), true))).rejects.toMatchObject({ code: 'TooManyMembers' });
  }, 120_000);

  it('an --initial-cluster of more than 64 members is refused with a clear error, before any entry is written', () => {
    const urls = (count: number): string => Array.from({ length: count }, (_, index) => `m${index}=https://10.0.${Math.floor(index / 250)}.${index % 250}:2380`).join(',');
    expect(parseInitialCluster(urls(clusterMembersMax))).toHaveLength(clusterMembersMax);
    expect(() => parseInitialCluster(urls(clusterMembersMax + 1))).toThrow(`--initial-cluster names ${clusterMembersMax + 1} members: a cluster has at most ${clusterMembersMax}`);
    // Members passed programmatically are held to it too.
    const founders = Array.from({ length: clusterMembersMax + 1 }, (_, index) => ({ name: `m${index}`, peerUrls: [`https://10.0.1.${index}:2380`] }));
    expect(() => bootstrapEntries(founders, 'token')).toThrow(`at most ${clusterMembersMax}`);
    // A URL listed for two members would be refused as the second is applied: refused here.
    expect(() => parseInitialCluster('a=https://10.0.0.1:2380,b=https://10.0.0.1:2380')).toThrow('"https://10.0.0.1:2380" is listed twice');
    expect(() => parseInitialCluster(`a=${Array.from({ length: 17 }, (_, index) => `https://10.0.0.1:${2380 + index}`).join(',a=')}`)).toThrow('a has more than 16 peer URLs');
  });
});
