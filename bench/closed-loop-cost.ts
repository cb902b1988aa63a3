/**
 * What a write costs the secure 3-member cluster (`rampart up`'s command line) under `npm run
 * bench`'s closed loop (8 connections spread over the members, 64 puts in flight, 256 B keys, 1 KiB
 * values), for A/B pairs of builds: after a warm-up, SECONDS of puts, then puts/s, p50/p99, CPU per
 * acknowledged write per member and summed (from /proc), and per member its mean `commit` stage
 * (rampart_write_stage_duration_seconds: proposed until applied here), leader or follower.
 *
 *   node dist/bench/closed-loop-cost.js [seconds=10]
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { loadavg, tmpdir } from 'node:os';
import path from 'node:path';
import { phase, warmupSeconds } from './bench.js';
import { adminTls, kvClients, metric, scrape, startRampartSecure } from './secure-members.js';
import { statTicks } from './proc.js';

const seconds = Number(process.argv[2] ?? 10);
const connections = 8;

async function main(): Promise<void> {
  const directory = await mkdtemp(path.join(tmpdir(), 'closed-loop-cost-'));
  const cluster = await startRampartSecure(directory, 3).catch(async (error: unknown) => {
    await rm(directory, { recursive: true, force: true });
    throw error;
  });
  const clients = kvClients(cluster.endpoints, cluster.credentials, connections);
  try {
    const pki = path.join(directory, 'pki');
    const tls = await adminTls(pki);
    const metricsPorts = cluster.endpoints.map((endpoint) => Number(endpoint.split(':')[1]) + 2);
    await phase(clients, 'Put', warmupSeconds); // warm-up: connections, a leader, and V8's JIT (see bench.ts)
    const pids = cluster.members.map((member) => member.pid());
    const metricsBefore = await Promise.all(metricsPorts.map((port) => scrape(port, tls)));
    const before = await Promise.all(pids.map((pid) => statTicks(`/proc/${pid}/stat`)));
    const load = loadavg()[0] ?? 0;
    const result = await phase(clients, 'Put', seconds);
    const after = await Promise.all(pids.map((pid) => statTicks(`/proc/${pid}/stat`)));
    const metricsAfter = await Promise.all(metricsPorts.map((port) => scrape(port, tls)));
    const perWrite = (ticks: number): number => (ticks * 10_000) / result.requests;
    const summed = after.reduce((sum, ticks, index) => sum + ticks - (before[index] ?? 0), 0);
    const members = after.map((ticks, index) => {
      const later = metricsAfter[index] as string;
      const earlier = metricsBefore[index] as string;
      const stage = (name: string, part: 'sum' | 'count'): number =>
        metric(later, `rampart_write_stage_duration_seconds_${part}{stage="${name}"}`) - metric(earlier, `rampart_write_stage_duration_seconds_${part}{stage="${name}"}`);
      const commitMs = (stage('commit', 'sum') / stage('commit', 'count')) * 1000;
      const role = metric(later, 'etcd_server_is_leader') === 1 ? 'L' : 'F';
      return `${role} ${perWrite(ticks - (before[index] ?? 0)).toFixed(0)} us, commit ${commitMs.toFixed(1)} ms`;
    });
    console.log(
      `${result.perSecond.toFixed(0)} puts/s, p50 ${result.p50Ms.toFixed(1)} p99 ${result.p99Ms.toFixed(1)} ms, errors ${result.errors}, CPU ${perWrite(summed).toFixed(0)} us/write summed; ${members.join('; ')}; load ${load.toFixed(1)}-${(loadavg()[0] ?? 0).toFixed(1)}`,
    );
  } finally {
    clients.forEach((client) => client.close());
    await cluster.stop();
    await rm(directory, { recursive: true, force: true });
  }
}

await main();
