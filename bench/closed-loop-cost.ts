/**
 * What a write costs the secure 3-member cluster (`rampart up`'s command line) under `npm run
 * bench`'s closed loop (8 connections spread over the members, 64 puts in flight, 256 B keys, 1 KiB
 * values), for A/B pairs of builds: after a warm-up, SECONDS of puts, then puts/s, p50/p99, CPU per
 * acknowledged write per member and summed (from /proc), and per member its mean `commit` stage
 * (rampart_write_stage_duration_seconds: proposed until applied here), leader or follower.
 *
 *   node dist/bench/closed-loop-cost.js [seconds=10]
 */
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { request } from 'node:https';
import { loadavg, tmpdir } from 'node:os';
import path from 'node:path';
import { kvClients, startRampartSecure, type KvClient } from './secure-members.js';

const seconds = Number(process.argv[2] ?? 10);
const connections = 8;
const inFlight = 64;
const keySpace = 10_000;

async function processTicks(pid: number): Promise<number> {
  const raw = await readFile(`/proc/${pid}/stat`, 'utf8');
  const fields = raw.slice(raw.lastIndexOf(')') + 2).split(' ');
  return Number(fields[11]) + Number(fields[12]);
}

function scrape(port: number, tls: { ca: Buffer; cert: Buffer; key: Buffer }): Promise<string> {
  return new Promise((resolve, reject) => {
    const call = request({ host: '127.0.0.1', port, path: '/metrics', ...tls, servername: 'localhost', checkServerIdentity: () => undefined }, (response) => {
      let body = '';
      response.setEncoding('utf8');
      response.on('data', (chunk: string) => (body += chunk));
      response.on('end', () => resolve(body));
    });
    call.on('error', reject);
    call.end();
  });
}

function metric(text: string, name: string): number {
  const line = text.split('\n').find((candidate) => candidate.startsWith(name));
  return Number(line?.slice(line.lastIndexOf(' ') + 1) ?? Number.NaN);
}

function key(index: number): Buffer {
  const buffer = Buffer.alloc(256, 'k');
  buffer.write(String(index).padStart(8, '0'));
  return buffer;
}

async function closedLoop(clients: KvClient[], durationSeconds: number): Promise<{ puts: number; errors: number; elapsed: number; p50: number; p99: number }> {
  const value = Buffer.alloc(1024, 'v');
  const latencies: number[] = [];
  let errors = 0;
  let sequence = 0;
  const deadline = performance.now() + durationSeconds * 1000;
  const worker = async (slot: number): Promise<void> => {
    const client = clients[slot % clients.length] as KvClient;
    while (performance.now() < deadline) {
      const started = performance.now();
      const ok = await new Promise<boolean>((resolve) => client.Put?.call(client, { key: key(sequence++ % keySpace), value }, {}, (error) => resolve(error === null)));
      if (ok) latencies.push(performance.now() - started);
      else errors += 1;
    }
  };
  const started = performance.now();
  await Promise.all(Array.from({ length: inFlight }, (_, slot) => worker(slot)));
  const elapsed = (performance.now() - started) / 1000;
  latencies.sort((a, b) => a - b);
  return { puts: latencies.length, errors, elapsed, p50: latencies[Math.floor(latencies.length * 0.5)] ?? Number.NaN, p99: latencies[Math.floor(latencies.length * 0.99)] ?? Number.NaN };
}

async function main(): Promise<void> {
  const directory = await mkdtemp(path.join(tmpdir(), 'closed-loop-cost-'));
  const cluster = await startRampartSecure(directory, 3).catch(async (error: unknown) => {
    await rm(directory, { recursive: true, force: true });
    throw error;
  });
  const clients = kvClients(cluster.endpoints, cluster.credentials, connections);
  try {
    const pki = path.join(directory, 'pki');
    const tls = { ca: await readFile(path.join(pki, 'ca.crt')), cert: await readFile(path.join(pki, 'admin.crt')), key: await readFile(path.join(pki, 'admin.key')) };
    const metricsPorts = cluster.endpoints.map((endpoint) => Number(endpoint.split(':')[1]) + 2);
    await closedLoop(clients, 2); // warm-up: connections, JIT, a leader
    const pids = cluster.members.map((member) => member.pid());
    const metricsBefore = await Promise.all(metricsPorts.map((port) => scrape(port, tls)));
    const before = await Promise.all(pids.map(processTicks));
    const load = loadavg()[0] ?? 0;
    const result = await closedLoop(clients, seconds);
    const after = await Promise.all(pids.map(processTicks));
    const metricsAfter = await Promise.all(metricsPorts.map((port) => scrape(port, tls)));
    const perWrite = (ticks: number): number => (ticks * 10_000) / result.puts;
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
      `${(result.puts / result.elapsed).toFixed(0)} puts/s, p50 ${result.p50.toFixed(1)} p99 ${result.p99.toFixed(1)} ms, errors ${result.errors}, CPU ${perWrite(summed).toFixed(0)} us/write summed; ${members.join('; ')}; load ${load.toFixed(1)}-${(loadavg()[0] ?? 0).toFixed(1)}`,
    );
  } finally {
    clients.forEach((client) => client.close());
    await cluster.stop();
    await rm(directory, { recursive: true, force: true });
  }
}

await main();
