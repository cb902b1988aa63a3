/**
 * What a put costs one plaintext member (`rampart serve --insecure`, the bench's plaintext 1-member
 * phase: audit on, no TLS, auth or encryption), for A/B pairs of builds: each round starts a member
 * of each build in turn (alternating), warms it up, then runs closed-loop puts (the bench's load:
 * 8 connections, 64 in flight, 256 B keys, 1 KiB values) for SECONDS, and prints puts/s and, from
 * /proc, the member's CPU per put on its main thread and in all its threads, with the load average.
 *
 *   node dist/bench/plain-put-cost.js ROUNDS SECONDS BUILD_ROOT... (a build root holds bin/rampart.js)
 *
 * BENCH_NODE_ARGS adds Node flags to the members (e.g. `--cpu-prof --cpu-prof-dir=DIR`, or
 * `--perf-basic-prof` with BENCH_PERF_OUTPUT=FILE: `perf record` of the member during the phase).
 */
import { spawn } from 'node:child_process';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { loadavg, tmpdir } from 'node:os';
import path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { phase } from './bench.js';
import { environment, freePort, kvClients, waitForPort } from './secure-members.js';

const rounds = Number(process.argv[2] ?? 3);
const seconds = Number(process.argv[3] ?? 10);
const roots = process.argv.slice(4);

/** utime + stime in clock ticks: the main thread's and the whole process's. */
async function ticks(pid: number): Promise<{ main: number; all: number }> {
  const fields = (raw: string): string[] => raw.slice(raw.lastIndexOf(')') + 2).split(' ');
  const main = fields(await readFile(`/proc/${pid}/task/${pid}/stat`, 'utf8'));
  const all = fields(await readFile(`/proc/${pid}/stat`, 'utf8'));
  return { main: Number(main[11]) + Number(main[12]), all: Number(all[11]) + Number(all[12]) };
}

async function measure(root: string): Promise<string> {
  const dataDir = await mkdtemp(path.join(tmpdir(), 'plain-put-cost-'));
  const client = await freePort();
  const peer = await freePort();
  const nodeArgs = (process.env.BENCH_NODE_ARGS ?? '').split(' ').filter(Boolean);
  const child = spawn(process.execPath, [...nodeArgs, path.join(root, 'bin/rampart.js'), 'serve', '--insecure', '--name', 'b0', '--data-dir', dataDir, '--listen-client-urls', `http://127.0.0.1:${client}`, '--listen-peer-urls', `http://127.0.0.1:${peer}`, '--initial-cluster', `b0=http://127.0.0.1:${peer}`, '--log-level', 'error'], { env: environment(), stdio: 'ignore' });
  try {
    await waitForPort(client, child, 20_000);
    const clients = kvClients([`127.0.0.1:${client}`], grpc.credentials.createInsecure(), 8);
    try {
      await phase(clients, 'Put', 3);
      const load = loadavg()[0] ?? 0;
      const perfOutput = process.env.BENCH_PERF_OUTPUT;
      const perf = perfOutput === undefined ? undefined : spawn('perf', ['record', '-F', '1999', '-g', '-p', String(child.pid), '-o', `${perfOutput}.${child.pid}`, '--', 'sleep', String(seconds)], { stdio: 'ignore' });
      const before = await ticks(child.pid as number);
      const clientBefore = process.cpuUsage();
      const result = await phase(clients, 'Put', seconds);
      const after = await ticks(child.pid as number);
      const generator = process.cpuUsage(clientBefore);
      if (perf !== undefined && perf.exitCode === null) await new Promise((resolve) => perf.once('exit', resolve));
      const perPut = (delta: number): string => ((delta * 10_000) / result.requests).toFixed(0);
      return `${result.perSecond.toFixed(0)} puts/s, main ${perPut(after.main - before.main)} us/put, all ${perPut(after.all - before.all)} us/put, load generator ${((generator.user + generator.system) / result.requests).toFixed(0)} us/put, p50 ${result.p50Ms.toFixed(1)} ms, p99 ${result.p99Ms.toFixed(1)} ms, errors ${result.errors}, load ${load.toFixed(2)}`;
    } finally {
      clients.forEach((one) => one.close());
    }
  } finally {
    child.kill('SIGTERM');
    if (child.exitCode === null && child.signalCode === null) await new Promise((resolve) => child.once('exit', resolve));
    await rm(dataDir, { recursive: true, force: true });
  }
}

for (let round = 0; round < rounds; round++) {
  for (const root of roots) console.log(`round ${round + 1} ${root}: ${await measure(root)}`);
}
