/**
 * A bounded nemesis soak against a real 3-member cluster (`npm run soak -- --minutes N`; skipped
 * unless RAMPART_SOAK_MINUTES is set). Faults, one every few seconds: SIGKILL and restart of a
 * member, SIGSTOP/SIGCONT of the leader or a follower, a partition isolating one member (fault
 * proxies between members), a restart of the whole cluster. Checked:
 * - the KV history is linearizable (which also means no acknowledged write is lost);
 * - leases: no lease whose keep-alive was acknowledged is gone (its key absent, or a keep-alive
 *   answered "not found") before the acknowledged TTL, counted from when that keep-alive was sent;
 * - locks: two holders never overlap while the earlier holder's lease is still covered.
 * Anomalies are printed with history excerpts. Not simulated here: slow or full disks, clock jumps,
 * power loss (fsync lies), membership changes.
 */
import { createWriteStream } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import type * as grpc from '@grpc/grpc-js';
import { memberIdFor } from '../../src/server/membership.js';
import { call, connect, type RawClient } from '../helpers/client.js';
import { FaultProxy, PeerNetwork } from '../helpers/fault-proxy.js';
import { checkHistory, type Operation } from '../helpers/linearizability.js';
import { freePort, removeDirectory, startRampart, temporaryDirectory, type ServerProcess } from '../helpers/processes.js';

const minutes = Number(process.env.RAMPART_SOAK_MINUTES ?? 0);
const keysPerEpoch = 6;
/**
 * Workers move to fresh keys every epoch: a put whose outcome is unknown stays concurrent with
 * everything after it on its key, and the checker's search grows with them; per-epoch keys keep
 * each key's history short however long the soak runs.
 */
const epochMs = 20_000;
const requestDeadlineMs = 3000;
const leaseTtlSeconds = 3;
const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));
const now = (): number => performance.now();

interface SoakMember {
  readonly name: string;
  readonly id: string;
  readonly port: number;
  readonly peerPort: number;
  readonly proxyPort: number;
  readonly dataDir: string;
  process: ServerProcess | undefined;
  paused: boolean;
}

function withDeadline<T>(promise: Promise<T>, ms = requestDeadlineMs): Promise<T> {
  return Promise.race([promise, sleep(ms).then(() => Promise.reject(new Error('client deadline')))]);
}

/** One lease kept alive over a keep-alive stream, reconnecting to another member when one fails. */
class KeptLease {
  /** Until when the acknowledged keep-alives (and the grant) guarantee the lease. */
  coveredUntil = 0;
  gone = false;
  acknowledged = 0;
  private stream: grpc.ClientDuplexStream<object, Record<string, unknown>> | undefined;
  private readonly sent: number[] = [];
  private timer: NodeJS.Timeout | undefined;

  constructor(
    readonly id: string,
    grantedAt: number,
    private readonly clients: () => RawClient,
    private readonly anomaly: (text: string) => void,
  ) {
    this.coveredUntil = grantedAt + leaseTtlSeconds * 1000;
    this.timer = setInterval(() => this.keepAlive(), 700);
  }

  private keepAlive(): void {
    if (this.gone) return;
    if (this.stream === undefined) {
      const stream = this.clients().lease.LeaseKeepAlive();
      this.sent.length = 0;
      stream.on('data', (reply: Record<string, unknown>) => {
        const sentAt = this.sent.shift();
        if (sentAt === undefined) return;
        const ttl = Number(reply.TTL);
        if (ttl > 0) {
          this.acknowledged += 1;
          this.coveredUntil = Math.max(this.coveredUntil, sentAt + ttl * 1000);
        } else if (!this.gone) {
          this.gone = true;
          if (now() < this.coveredUntil) this.anomaly(`lease ${this.id}: keep-alive answered "not found" ${Math.round(this.coveredUntil - now())} ms before its acknowledged TTL ran out`);
        }
      });
      stream.on('error', () => {
        if (this.stream === stream) this.stream = undefined;
      });
      stream.on('end', () => {
        if (this.stream === stream) this.stream = undefined;
      });
      this.stream = stream;
    }
    this.sent.push(now());
    this.stream.write({ ID: this.id });
  }

  stop(): void {
    this.gone = true;
    if (this.timer !== undefined) clearInterval(this.timer);
    this.timer = undefined;
    this.stream?.cancel();
  }
}

describe.skipIf(!(minutes > 0))('soak', () => {
  it(`keeps KV linearizable and leases and locks safe under a nemesis for ${minutes} min`, async () => {
    const network = new PeerNetwork();
    const members: SoakMember[] = [];
    for (let index = 1; index <= 3; index++) {
      const proxyPort = await freePort();
      members.push({
        name: `s${index}`,
        id: memberIdFor([`http://127.0.0.1:${proxyPort}`], 'rampart-cluster'),
        port: await freePort(),
        peerPort: await freePort(),
        proxyPort,
        dataDir: await temporaryDirectory(`soak${index}`),
        process: undefined,
        paused: false,
      });
    }
    const ids = members.map((member) => member.id);
    for (const member of members) {
      const proxy = new FaultProxy(member.id, member.peerPort, ids, network.rule);
      await proxy.listen(member.proxyPort);
      network.proxies.push(proxy);
    }
    const initialCluster = members.map((member) => `${member.name}=http://127.0.0.1:${member.proxyPort}`).join(',');
    const start = async (member: SoakMember): Promise<void> => {
      member.process = await startRampart({
        name: member.name,
        port: member.port,
        peerPort: member.peerPort,
        dataDir: member.dataDir,
        startTimeoutMs: 90_000,
        args: ['--log-level', 'info', '--initial-advertise-peer-urls', `http://127.0.0.1:${member.proxyPort}`, '--initial-cluster', initialCluster, '--snapshot-count', '2000', '--snapshot-catch-up-entries', '500'],
      });
      const log = createWriteStream(path.join(logDir, `${member.name}.log`), { flags: 'a' });
      log.write(`--- ${stamp()} started pid ${member.process.child.pid}\n`);
      member.process.child.stdout?.pipe(log, { end: false });
      member.process.child.stderr?.pipe(log, { end: false });
    };
    const startedAt = now();
    const stamp = (): string => `${((now() - startedAt) / 1000).toFixed(1)}s`;
    const logDir = await temporaryDirectory('soak-logs');
    console.log(`soak member logs: ${logDir}`);
    const phase = (text: string): void => console.log(`soak ${stamp()}: ${text}`);
    /** What each worker is doing right now, to show where a stall is. */
    const inFlight = new Map<string, { what: string; since: number }>();
    const track = async <T>(who: string, what: string, promise: Promise<T>): Promise<T> => {
      inFlight.set(who, { what, since: now() });
      try {
        return await promise;
      } finally {
        inFlight.delete(who);
      }
    };
    const watchdog = setInterval(() => {
      // A fault takes seconds (its own sleeps and restarts); a client call is bounded by its deadline.
      const stuck = [...inFlight.entries()].filter(([who, entry]) => now() - entry.since > (who === 'nemesis' ? 120_000 : 5000));
      if (stuck.length > 0) phase(`in flight > 5 s: ${stuck.map(([who, entry]) => `${who} ${entry.what} ${Math.round((now() - entry.since) / 1000)}s`).join('; ')}`);
    }, 5000);

    const events: string[] = [];
    const anomalies: string[] = [];
    const anomaly = (text: string): void => {
      anomalies.push(`${stamp()} ${text}`);
    };
    const history: Operation[] = [];
    const counts = { kills: 0, pauses: 0, partitions: 0, restartAll: 0, acknowledgedPuts: 0, leases: 0, keepAlives: 0, locks: 0 };
    let running = true;
    const channelOptions = { 'grpc.initial_reconnect_backoff_ms': 100, 'grpc.max_reconnect_backoff_ms': 500 } as object;
    const clients: RawClient[] = members.map((member) => connect(`127.0.0.1:${member.port}`, channelOptions));
    let rotation = 0;
    const anyClient = (): RawClient => clients[rotation++ % clients.length] as RawClient;

    const kvWorker = async (workerIndex: number): Promise<void> => {
      let memberIndex = workerIndex % members.length;
      let sequence = 0;
      while (running) {
        const client = clients[memberIndex] as RawClient;
        const key = `e${Math.floor((now() - startedAt) / epochMs)}/k${Math.floor(Math.random() * keysPerEpoch)}`;
        const isPut = Math.random() < 0.5;
        const value = `w${workerIndex}-${sequence++}`;
        const callMs = now();
        try {
          const response = await track(`kv${workerIndex}`, `${isPut ? 'put' : 'get'} ${key} via s${memberIndex + 1}`, withDeadline(isPut ? call(client.kv, 'Put', { key: Buffer.from(key), value: Buffer.from(value) }) : call(client.kv, 'Range', { key: Buffer.from(key) })));
          const returnMs = now();
          if (isPut) {
            counts.acknowledgedPuts += 1;
            history.push({ key, kind: 'put', value, callMs, returnMs });
          } else {
            const kv = (response.kvs as { value: Buffer }[])[0];
            history.push({ key, kind: 'get', value: kv === undefined ? null : kv.value.toString(), callMs, returnMs });
          }
        } catch {
          history.push({ key, kind: isPut ? 'put' : 'get', value: isPut ? value : null, callMs, returnMs: Infinity });
          memberIndex = (memberIndex + 1) % members.length;
          await sleep(50);
        }
      }
    };

    /** Grants a lease (retrying), attaches `key` to it and keeps it alive. */
    const grantKept = async (key: string): Promise<KeptLease | undefined> => {
      while (running) {
        const client = anyClient();
        try {
          const grantCall = now();
          const granted = await track(key, 'grant', withDeadline(call(client.lease, 'LeaseGrant', { TTL: leaseTtlSeconds })));
          const lease = new KeptLease(String(granted.ID), grantCall, anyClient, anomaly);
          counts.leases += 1;
          try {
            await track(key, 'put with lease', withDeadline(call(client.kv, 'Put', { key: Buffer.from(key), value: Buffer.from(lease.id), lease: lease.id })));
            return lease;
          } catch {
            lease.stop();
          }
        } catch {
          await sleep(200);
        }
      }
      return undefined;
    };

    const leaseWorker = async (workerIndex: number): Promise<void> => {
      const key = `lease/${workerIndex}`;
      while (running) {
        const lease = await grantKept(key);
        if (lease === undefined) return;
        while (running && !lease.gone) {
          await sleep(400);
          try {
            const response = await track(key, 'lease key read', withDeadline(call(anyClient().kv, 'Range', { key: Buffer.from(key) })));
            const returnMs = now();
            const kv = (response.kvs as { value: Buffer }[])[0];
            if (kv === undefined || kv.value.toString() !== lease.id) {
              if (returnMs < lease.coveredUntil) anomaly(`lease ${lease.id}: key ${key} gone at ${Math.round(returnMs - startedAt)} ms though keep-alives cover it until ${Math.round(lease.coveredUntil - startedAt)} ms`);
              lease.stop();
            }
          } catch {
            // unknown: try again
          }
        }
        counts.keepAlives += lease.acknowledged;
        lease.stop();
      }
    };

    const holds: { worker: number; acquired: number; end: number }[] = [];
    const lockWorker = async (workerIndex: number): Promise<void> => {
      while (running) {
        const lease = await grantKept(`lock-owner/${workerIndex}`);
        if (lease === undefined) return;
        try {
          const locked = await track(`lock${workerIndex}`, 'lock', withDeadline(call(anyClient().lock, 'Lock', { name: Buffer.from('soak-lock'), lease: lease.id }), 8000));
          const acquired = now();
          counts.locks += 1;
          await sleep(100 + Math.random() * 300);
          const releaseCall = now();
          // Held until the unlock was asked, or until the lease was no longer guaranteed.
          holds.push({ worker: workerIndex, acquired, end: Math.min(releaseCall, lease.coveredUntil) });
          await track(`lock${workerIndex}`, 'unlock', withDeadline(call(anyClient().lock, 'Unlock', { key: locked.key }))).catch(() => undefined);
        } catch {
          await sleep(100);
        } finally {
          counts.keepAlives += lease.acknowledged;
          lease.stop();
        }
      }
    };

    const leaderOf = async (): Promise<SoakMember | undefined> => {
      for (const member of members) {
        if (member.process === undefined || member.paused) continue;
        try {
          const status = await withDeadline(call((clients[members.indexOf(member)] as RawClient).maintenance, 'Status', {}), 500);
          if (BigInt(status.leader as string).toString(16) === member.id) return member;
        } catch {
          // not answering
        }
      }
      return undefined;
    };
    const pick = <T>(items: readonly T[]): T => items[Math.floor(Math.random() * items.length)] as T;

    const nemesis = async (): Promise<void> => {
      while (running) {
        try {
          await track('nemesis', 'fault', fault());
        } catch (error) {
          // A member that did not come back is a finding too; it is restarted at the next fault.
          anomaly(`nemesis: ${String(error).split('\n')[0]}`);
          for (const member of members) if (member.process === undefined) await start(member).catch(() => undefined);
        }
      }
    };
    const fault = async (): Promise<void> => {
      {
        await sleep(3000 + Math.random() * 4000);
        if (!running) return;
        const action = pick(['kill', 'kill', 'pause-leader', 'pause', 'partition', 'partition', 'restart-all']);
        const leader = await leaderOf();
        const victim = action === 'pause-leader' && leader !== undefined ? leader : pick(members);
        events.push(`${stamp()} ${action} ${victim.name}${leader === victim ? ' (leader)' : ''}`);
        if (action === 'kill') {
          counts.kills += 1;
          await victim.process?.stop('SIGKILL');
          victim.process = undefined;
          await sleep(500 + Math.random() * 2500);
          await start(victim);
        } else if (action === 'pause' || action === 'pause-leader') {
          counts.pauses += 1;
          victim.paused = true;
          victim.process?.child.kill('SIGSTOP');
          await sleep(1000 + Math.random() * 3000);
          victim.process?.child.kill('SIGCONT');
          victim.paused = false;
        } else if (action === 'partition') {
          counts.partitions += 1;
          network.isolate(victim.id, ids);
          await sleep(2000 + Math.random() * 3000);
          network.heal();
        } else {
          counts.restartAll += 1;
          await Promise.all(members.map(async (member) => {
            await member.process?.stop('SIGKILL');
            member.process = undefined;
          }));
          await sleep(500);
          await Promise.all(members.map((member) => start(member)));
        }
        events.push(`${stamp()} healed`);
        // Progress as it goes: a run that stalls shows where.
        console.log(`soak ${stamp()}: ${action} ${victim.name} done; ${JSON.stringify(counts)}`);
      }
    };

    try {
      await Promise.all(members.map((member) => start(member)));
      while ((await leaderOf()) === undefined) await sleep(200);
      const work = [
        ...Array.from({ length: 4 }, (_, index) => kvWorker(index)),
        ...Array.from({ length: 2 }, (_, index) => leaseWorker(index)),
        ...Array.from({ length: 2 }, (_, index) => lockWorker(index)),
      ];
      const chaos = nemesis();
      await sleep(minutes * 60_000);
      running = false;
      phase('stopping');
      await chaos;
      phase('nemesis stopped');
      await Promise.all(work);
      phase('workers stopped');

      // Final linearizable reads through every member, of every key ever written.
      const keys = [...new Set(history.map((operation) => operation.key))];
      for (const [index] of members.entries()) {
        for (const key of keys) {
          for (let attempt = 0; attempt < 50; attempt++) {
            const callMs = now();
            try {
              const response = await track('final', `get ${key} via s${index + 1} attempt ${attempt}`, withDeadline(call((clients[index] as RawClient).kv, 'Range', { key: Buffer.from(key) })));
              const kv = (response.kvs as { value: Buffer }[])[0];
              history.push({ key, kind: 'get', value: kv === undefined ? null : kv.value.toString(), callMs, returnMs: now() });
              break;
            } catch {
              await sleep(200);
            }
          }
        }
      }

      phase(`final reads done (${keys.length} keys)`);
      const result = checkHistory(history);
      phase('history checked');
      if (result.undecidedKey !== undefined) anomaly(`KV history of key ${result.undecidedKey} undecided: the checker ran out of search steps`);
      if (!result.ok && result.failedKey !== undefined) {
        const excerpt = history.filter((operation) => operation.key === result.failedKey).sort((a, b) => a.callMs - b.callMs).slice(-30);
        anomaly(`KV history not linearizable on key ${result.failedKey}; last operations:\n${excerpt.map((operation) => `  ${operation.kind} ${operation.value} [${Math.round(operation.callMs - startedAt)}, ${Number.isFinite(operation.returnMs) ? Math.round(operation.returnMs - startedAt) : '?'}] ms`).join('\n')}`);
      }
      holds.sort((a, b) => a.acquired - b.acquired);
      for (let index = 1; index < holds.length; index++) {
        const previous = holds[index - 1];
        const current = holds[index];
        if (previous !== undefined && current !== undefined && current.worker !== previous.worker && current.acquired < previous.end) {
          anomaly(`lock: worker ${current.worker} acquired at ${Math.round(current.acquired - startedAt)} ms while worker ${previous.worker} held it (acquired ${Math.round(previous.acquired - startedAt)} ms, held until ${Math.round(previous.end - startedAt)} ms)`);
        }
      }
      const completed = history.filter((operation) => Number.isFinite(operation.returnMs)).length;
      const summary = { minutes, operations: history.length, completed, ...counts, linearizable: result.ok, anomalies: anomalies.length };
      console.log(`soak summary: ${JSON.stringify(summary)}`);
      if (anomalies.length > 0) {
        await writeFile(path.join(logDir, 'history.json'), JSON.stringify(history.map((operation) => ({ ...operation, returnMs: Number.isFinite(operation.returnMs) ? operation.returnMs : null }))));
        console.log(`anomalies:\n${anomalies.join('\n')}\nnemesis:\n${events.join('\n')}\nmember logs and history.json kept in ${logDir}`);
      } else {
        await removeDirectory(logDir);
      }
      expect(anomalies).toEqual([]);
      expect(counts.acknowledgedPuts).toBeGreaterThan(minutes * 100);
      expect(counts.locks).toBeGreaterThan(0);
      expect(counts.keepAlives).toBeGreaterThan(0);
    } finally {
      running = false;
      clearInterval(watchdog);
      clients.forEach((client) => client.close());
      for (const member of members) member.process?.child.kill('SIGCONT');
      await Promise.all(members.map((member) => member.process?.stop()));
      await network.close();
      await Promise.all(members.map((member) => removeDirectory(member.dataDir)));
    }
  }, (minutes + 3) * 60_000);
});
