/**
 * What a put costs one plaintext member (`rampart serve --insecure`, the bench's plaintext 1-member
 * phase: audit on, no TLS, auth or encryption), for A/B pairs of builds: each round starts a member
 * of each build in turn (alternating), warms it up, then runs closed-loop puts (the bench's load:
 * 8 connections, 64 in flight, 256 B keys, 1 KiB values) for SECONDS, and prints puts/s and, from
 * /proc, the member's CPU per put on its main thread and in all its threads, with the load average.
 *
 *   node dist/bench/plain-put-cost.js ROUNDS SECONDS BUILD_ROOT... (a build root holds bin/rampart.js;
 *   `etcd` instead runs etcd as one plaintext member, as the bench's plaintext phase, for the same figures)
 *
 * BENCH_TOGETHER=1 runs the builds' members at the same time instead (one load generator, each build its
 * own 8 connections and 64 puts in flight), so that both see the same machine: on a shared, loaded
 * machine that is the fairer comparison (the load generator's CPU is then their sum, per put).
 *
 * BENCH_RATE=N offers N puts/s to each member (the fixed-rate phase's open loop, 64 workers) instead of the
 * closed loop: CPU per put is then compared at the same rate, not at whatever rate each build reached.
 *
 * BENCH_NODE_ARGS adds Node flags to the members (e.g. `--cpu-prof --cpu-prof-dir=DIR`, or
 * `--perf-basic-prof` with BENCH_PERF_OUTPUT=FILE: `perf record` of the member during the phase);
 * BENCH_PERF_STAT=EVENTS counts perf events (e.g. syscalls:sys_enter_fdatasync) of the member during it.
 */
import { spawn } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { loadavg, tmpdir } from 'node:os';
import path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { fixedRatePhase, phase, warmupSeconds } from './bench.js';
import { environment, freePort, kvClients, waitForPort } from './secure-members.js';
import { processTicks } from './proc.js';

const rounds = Number(process.argv[2] ?? 3);
const seconds = Number(process.argv[3] ?? 10);
const roots = process.argv.slice(4);

interface Started {
  readonly root: string;
  readonly pid: number;
  readonly clients: ReturnType<typeof kvClients>;
  stop(): Promise<void>;
}

async function startMember(root: string): Promise<Started> {
  const dataDir = await mkdtemp(path.join(tmpdir(), 'plain-put-cost-'));
  const client = await freePort();
  const peer = await freePort();
  // ROOT@FLAGS: Node flags for this build's member only (e.g. `dist@--max-semi-space-size=32`).
  const [rootPath = root, ownFlags = ''] = root.split('@');
  const nodeArgs = [...(process.env.BENCH_NODE_ARGS ?? '').split(' '), ...ownFlags.split(',')].filter(Boolean);
  const child = rootPath === 'etcd'
    ? spawn('etcd', ['--name', 'b0', '--data-dir', dataDir, '--listen-client-urls', `http://127.0.0.1:${client}`, '--advertise-client-urls', `http://127.0.0.1:${client}`, '--listen-peer-urls', `http://127.0.0.1:${peer}`, '--initial-advertise-peer-urls', `http://127.0.0.1:${peer}`, '--initial-cluster', `b0=http://127.0.0.1:${peer}`, '--log-level', 'error'], { env: environment(), stdio: 'ignore' })
    : spawn(process.execPath, [...nodeArgs, path.join(rootPath, 'bin/rampart.js'), 'serve', '--insecure', '--name', 'b0', '--data-dir', dataDir, '--listen-client-urls', `http://127.0.0.1:${client}`, '--listen-peer-urls', `http://127.0.0.1:${peer}`, '--initial-cluster', `b0=http://127.0.0.1:${peer}`, '--log-level', 'error'], { env: environment(), stdio: 'ignore' });
  const stop = async (): Promise<void> => {
    child.kill('SIGTERM');
    if (child.exitCode === null && child.signalCode === null) await new Promise((resolve) => child.once('exit', resolve));
    await rm(dataDir, { recursive: true, force: true });
  };
  try {
    await waitForPort(client, child, 20_000);
  } catch (error) {
    await stop();
    throw error;
  }
  const clients = kvClients([`127.0.0.1:${client}`], grpc.credentials.createInsecure(), 8);
  return {
    root,
    pid: child.pid as number,
    clients,
    stop: async () => {
      clients.forEach((one) => one.close());
      await stop();
    },
  };
}

/** Warms up then measures the members given, at the same time (one each round, or all together). */
async function measure(members: readonly Started[]): Promise<string[]> {
  await Promise.all(members.map((member) => phase(member.clients, 'Put', warmupSeconds)));
  const load = loadavg()[0] ?? 0;
  const perfOutput = process.env.BENCH_PERF_OUTPUT;
  const perfStat = process.env.BENCH_PERF_STAT;
  const perfs = members.map((member) => {
    const perfArgs = perfOutput !== undefined
      ? ['record', '-F', '1999', '-g', '-p', String(member.pid), '-o', `${perfOutput}.${member.pid}`, '--', 'sleep', String(seconds)]
      : perfStat !== undefined ? ['stat', '-e', perfStat, '-p', String(member.pid), '--', 'sleep', String(seconds)] : undefined;
    return perfArgs === undefined ? undefined : spawn('perf', perfArgs, { stdio: ['ignore', 'inherit', 'inherit'] });
  });
  const before = await Promise.all(members.map((member) => processTicks(member.pid)));
  const clientBefore = process.cpuUsage();
  const rate = Number(process.env.BENCH_RATE ?? 0);
  const results = await Promise.all(members.map((member) => (rate > 0 ? fixedRatePhase(member.clients, rate, 64, seconds) : phase(member.clients, 'Put', seconds))));
  const after = await Promise.all(members.map((member) => processTicks(member.pid)));
  const generator = process.cpuUsage(clientBefore);
  for (const perf of perfs) if (perf !== undefined && perf.exitCode === null) await new Promise((resolve) => perf.once('exit', resolve));
  const allPuts = results.reduce((sum, result) => sum + result.requests, 0);
  return results.map((result, index) => {
    const perPut = (delta: number): string => ((delta * 10_000) / result.requests).toFixed(0);
    const [earlier, later] = [before[index], after[index]] as [{ main: number; total: number }, { main: number; total: number }];
    return `${result.perSecond.toFixed(0)} puts/s, main ${perPut(later.main - earlier.main)} us/put, all ${perPut(later.total - earlier.total)} us/put, load generator ${((generator.user + generator.system) / allPuts).toFixed(0)} us/put, p50 ${result.p50Ms.toFixed(1)} ms, p99 ${result.p99Ms.toFixed(1)} ms, errors ${result.errors}, load ${load.toFixed(2)}`;
  });
}

const together = process.env.BENCH_TOGETHER === '1';
for (let round = 0; round < rounds; round++) {
  // Alternate which build starts first.
  const ordered = round % 2 === 0 ? roots : [...roots].reverse();
  if (together) {
    const members: Started[] = [];
    try {
      for (const root of ordered) members.push(await startMember(root));
      const lines = await measure(members);
      members.forEach((member, index) => console.log(`round ${round + 1} (together) ${member.root}: ${lines[index]}`));
    } finally {
      await Promise.all(members.map((member) => member.stop()));
    }
    continue;
  }
  for (const root of ordered) {
    const member = await startMember(root);
    try {
      console.log(`round ${round + 1} ${root}: ${(await measure([member]))[0]}`);
    } finally {
      await member.stop();
    }
  }
}
