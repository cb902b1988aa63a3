/**
 * Faults on real processes while clients write and read: a partition isolating the leader (through
 * fault-injecting proxies between members), SIGSTOP of a follower, SIGKILL and restart of the
 * leader, an isolated follower. Every operation is recorded with its call and return time; the
 * history must be linearizable, which also means no acknowledged write was lost.
 */
import { describe, expect, it } from 'vitest';
import { call, connect, type RawClient } from '../helpers/client.js';
import { checkHistory, type Operation } from '../helpers/linearizability.js';
import { proxiedCluster, type ProxiedMember as FaultMember } from '../helpers/proxied-cluster.js';
import { sleep, waitFor } from '../helpers/retry.js';

const keys = ['k0', 'k1', 'k2', 'k3'];
const workersCount = 5;
const requestDeadlineMs = 3000;
const acknowledgedPutsMin = 100;
const completedMin = 300;

async function leaderOf(members: FaultMember[]): Promise<FaultMember | undefined> {
  for (const member of members) {
    if (member.process === undefined) continue;
    const client = connect(`127.0.0.1:${member.port}`);
    try {
      const status = await Promise.race([call(client.maintenance, 'Status', {}), new Promise<undefined>((resolve) => setTimeout(() => resolve(undefined), 1000))]);
      if (status !== undefined && BigInt(status.leader as string).toString(16) === member.id) return member;
    } catch {
      // not answering: not the leader we can use
    } finally {
      client.close();
    }
  }
  return undefined;
}

async function waitForLeader(members: FaultMember[]): Promise<FaultMember> {
  const deadline = Date.now() + 30_000;
  for (;;) {
    const leader = await leaderOf(members);
    if (leader !== undefined) return leader;
    if (Date.now() > deadline) throw new Error('no leader');
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}


describe('faults under load', () => {
  it('keeps the history linearizable and loses no acknowledged write through partitions, pauses and crashes', async () => {
    const cluster = await proxiedCluster('f', 3, ['--request-timeout-ms', '2500']);
    const { members, ids, network, start } = cluster;

    const history: Operation[] = [];
    let acknowledgedPuts = 0;
    let running = true;
    const clients: RawClient[] = members.map((member) => connect(`127.0.0.1:${member.port}`, { 'grpc.initial_reconnect_backoff_ms': 100, 'grpc.max_reconnect_backoff_ms': 500 } as object));
    const worker = async (workerIndex: number): Promise<void> => {
      let memberIndex = workerIndex % members.length;
      let sequence = 0;
      while (running) {
        const client = clients[memberIndex] as RawClient;
        const key = keys[Math.floor(Math.random() * keys.length)] as string;
        const isPut = Math.random() < 0.5;
        const value = `w${workerIndex}-${sequence++}`;
        const callMs = performance.now();
        try {
          const request = isPut ? call(client.kv, 'Put', { key: Buffer.from(key), value: Buffer.from(value) }) : call(client.kv, 'Range', { key: Buffer.from(key) });
          const response = await Promise.race([request, sleep(requestDeadlineMs).then(() => Promise.reject(new Error('client deadline')))]);
          const returnMs = performance.now();
          if (isPut) {
            acknowledgedPuts += 1;
            history.push({ key, kind: 'put', value, callMs, returnMs });
          } else {
            const kv = (response.kvs as { value: Buffer }[])[0];
            history.push({ key, kind: 'get', value: kv === undefined ? null : kv.value.toString(), callMs, returnMs });
          }
        } catch {
          // Unknown outcome: a put may still take effect later; a failed get says nothing.
          history.push({ key, kind: isPut ? 'put' : 'get', value: isPut ? value : null, callMs, returnMs: Infinity });
          memberIndex = (memberIndex + 1) % members.length;
          await sleep(50);
        }
      }
    };

    try {
      await Promise.all(members.map((member) => start(member)));
      await waitForLeader(members);
      const workers = Array.from({ length: workersCount }, (_, index) => worker(index));

      await sleep(1000);
      const firstLeader = await waitForLeader(members);
      network.isolate(firstLeader.id, ids);
      await sleep(3000);
      network.heal();

      await sleep(1000);
      const follower = members.find((member) => member !== (firstLeader as FaultMember)) as FaultMember;
      follower.process?.child.kill('SIGSTOP');
      await sleep(2000);
      follower.process?.child.kill('SIGCONT');

      await sleep(1000);
      const secondLeader = await waitForLeader(members);
      await secondLeader.process?.stop('SIGKILL');
      await sleep(1500);
      await start(secondLeader);

      await sleep(1000);
      const thirdLeader = await waitForLeader(members);
      const isolatedFollower = members.find((member) => member !== thirdLeader) as FaultMember;
      network.isolate(isolatedFollower.id, ids);
      await sleep(2000);
      network.heal();
      await sleep(1000);

      // Enough operations to judge the history by: counted, not timed (a loaded 2-core machine
      // answers fewer in the schedule above), so the clients go on until they are done, bounded.
      const completedCount = (): number => history.filter((operation) => Number.isFinite(operation.returnMs)).length;
      await waitFor(() => acknowledgedPuts > acknowledgedPutsMin && completedCount() > completedMin, 60_000, 'enough answered operations', 100).catch(() => undefined);
      running = false;
      await Promise.all(workers);

      // Final linearizable reads through every member, after everything else.
      await waitForLeader(members);
      for (const member of members) {
        const client = clients[members.indexOf(member)] as RawClient;
        for (const key of keys) {
          for (let attempt = 0; attempt < 20; attempt++) {
            const callMs = performance.now();
            try {
              const response = await call(client.kv, 'Range', { key: Buffer.from(key) });
              const kv = (response.kvs as { value: Buffer }[])[0];
              history.push({ key, kind: 'get', value: kv === undefined ? null : kv.value.toString(), callMs, returnMs: performance.now() });
              break;
            } catch {
              await sleep(200);
            }
          }
        }
      }

      const result = checkHistory(history);
      const completed = history.filter((operation) => Number.isFinite(operation.returnMs)).length;
      expect(acknowledgedPuts).toBeGreaterThan(acknowledgedPutsMin);
      expect(completed).toBeGreaterThan(completedMin);
      expect(result).toMatchObject({ ok: true });
    } finally {
      running = false;
      clients.forEach((client) => client.close());
      await cluster.remove();
    }
  }, 180_000);
});
