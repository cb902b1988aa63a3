/**
 * What a linearizable range costs the secure 3-member cluster (`rampart up`'s command line) in the
 * bench's closed-loop range phase, for A/B pairs of builds: after a put phase filling the key space
 * and a short range warm-up, SECONDS of closed-loop single-key ranges (`npm run bench`'s load:
 * BENCH_CONNECTIONS connections spread over the members, BENCH_IN_FLIGHT in flight, 256 B keys, 1 KiB
 * values), then per member, from /proc, CPU per answered range (main thread and the rest), how many
 * client connections it holds, and whether it leads (a follower asks the leader for each ReadIndex).
 *
 *   node dist/bench/range-cost.js [seconds=10] [rate]
 *
 * With a rate, the ranges are sent at that rate (open loop, 64 clients, as the fixed-rate put phase)
 * instead: CPU per range at a fixed rate is steadier across builds than the closed loop's on a
 * shared machine, where how many reads share a ReadIndex round swings with the load.
 *
 * BENCH_NODE_ARGS adds Node flags to the members (e.g. `--cpu-prof --cpu-prof-dir=DIR`),
 * BENCH_RAMPART_ARGS flags to `rampart serve`, BENCH_UP_ARGS flags to `rampart up`.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { loadavg, tmpdir } from 'node:os';
import path from 'node:path';
import { fixedRatePhase, phase, warmupSeconds } from './bench.js';
import { adminTls, kvClients, metric, scrape, startRampartSecure } from './secure-members.js';
import { processTicks } from './proc.js';

const seconds = Number(process.argv[2] ?? 10);
const rate = process.argv[3] === undefined ? undefined : Number(process.argv[3]);
const connections = Number(process.env.BENCH_CONNECTIONS ?? 8);

async function main(): Promise<void> {
  const directory = await mkdtemp(path.join(tmpdir(), 'range-cost-'));
  const rampartArgs = (process.env.BENCH_RAMPART_ARGS ?? '').split(' ').filter(Boolean);
  const upArgs = (process.env.BENCH_UP_ARGS ?? '').split(' ').filter(Boolean);
  const cluster = await startRampartSecure(directory, 3, rampartArgs, upArgs).catch(async (error: unknown) => {
    await rm(directory, { recursive: true, force: true });
    throw error;
  });
  const clients = kvClients(cluster.endpoints, cluster.credentials, connections);
  try {
    const pki = path.join(directory, 'pki');
    const tls = await adminTls(pki);
    const metricsPorts = cluster.endpoints.map((endpoint) => Number(endpoint.split(':')[1]) + 2);
    await phase(clients, 'Put', warmupSeconds); // fills the key space (10,000 keys); warm-up (see bench.ts)
    await phase(clients, 'Range', 5); // warm-up of the read path
    const pids = cluster.members.map((member) => member.pid());
    const load = loadavg();
    const sendFailures = (text: string): number =>
      text.split('\n').filter((line) => line.startsWith('etcd_network_peer_sent_failures_total{')).reduce((sum, line) => sum + Number(line.slice(line.lastIndexOf(' ') + 1)), 0);
    const failuresBefore = (await Promise.all(metricsPorts.map((port) => scrape(port, tls)))).map(sendFailures);
    const before = await Promise.all(pids.map(processTicks));
    const result = rate === undefined ? await phase(clients, 'Range', seconds) : await fixedRatePhase(clients, rate, 64, seconds, 'Range');
    const after = await Promise.all(pids.map(processTicks));
    const metrics = await Promise.all(metricsPorts.map((port) => scrape(port, tls)));
    const perRange = (tick: number): number => (tick * 10_000) / result.requests;
    const summed = after.reduce((sum, sample, index) => sum + sample.total - (before[index]?.total ?? 0), 0);
    console.log(
      `range ${rate === undefined ? 'closed loop' : `at ${rate}/s`} ${seconds} s: ${result.perSecond.toFixed(0)}/s, p50 ${result.p50Ms.toFixed(1)} ms, p99 ${result.p99Ms.toFixed(1)} ms, p99.9 ${result.p999Ms.toFixed(1)} ms, errors ${result.errors}; CPU ${perRange(summed).toFixed(0)} us/range summed over the members; load average ${load.map((value) => value.toFixed(2)).join(' ')}`,
    );
    for (const [index, sample] of after.entries()) {
      const previous = before[index] as { main: number; total: number };
      const role = metric(metrics[index] as string, 'etcd_server_is_leader') === 1 ? 'leader' : 'follower';
      const held = clients.filter((_, client) => client % cluster.endpoints.length === index).length;
      const dropped = sendFailures(metrics[index] as string) - (failuresBefore[index] ?? 0);
      console.log(`  m${index + 1} (${role}, ${held} connections): ${perRange(sample.total - previous.total).toFixed(0)} us/range (main ${perRange(sample.main - previous.main).toFixed(0)}); peer messages dropped ${dropped}`);
    }
  } finally {
    clients.forEach((client) => client.close());
    await cluster.stop();
    await rm(directory, { recursive: true, force: true });
  }
}

await main();
