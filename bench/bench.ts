/**
 * `npm run bench`: put and range throughput and latency, Rampart side by side with etcd (when the
 * `etcd` binary is installed), with the same load generator against both, reported as ratios.
 *
 * Load: 256-byte keys, 1 KiB values, BENCH_CONNECTIONS connections, BENCH_IN_FLIGHT requests in
 * flight, BENCH_SECONDS per phase, after BENCH_WARMUP_SECONDS (default 20) of the same puts on every
 * cluster measured, both sides alike (`warmupSeconds`); BENCH_RAMPART_ARGS adds flags to every Rampart member (e.g.
 * `--no-audit` to see what the audit trail costs), BENCH_NODE_ARGS adds Node flags to them (e.g.
 * `--cpu-prof --cpu-prof-dir=/tmp/prof`). Both run plaintext on 127.0.0.1, with 1 and then 3 members.
 *
 * The headline phase is the secure one: a 3-member cluster as `rampart up` ships it (mutual TLS on
 * client and peer ports, auth on, audit on) against 3 etcd members with the same certificates,
 * client and peer certificate auth and auth enabled; closed-loop puts and ranges, a fixed-rate put
 * phase (BENCH_FIXED_RATE puts/s, default 1,000, over BENCH_FIXED_CLIENTS connections, default 200;
 * latency from each request's scheduled start, so a stall counts against every request it delays),
 * and `etcdctl check perf --load m` against both (BENCH_CHECK_PERF=0 skips it: it takes a minute each).
 * An encryption phase runs the secure 3-member cluster with encryption at rest on and off (ratio), an
 * audit phase the same cluster with its default audit trail and with `--no-audit` (ratio).
 * BENCH_PHASES=secure (or encryption, audit, plain, scale, checkperf; comma-separated) runs only
 * those parts; checkperf is `etcdctl check perf --load m` alone against the secure clusters (no other
 * load first); the scale phase (bench/scale.ts: 500,000 keys against etcd, minutes) runs only when
 * asked, or with BENCH_SCALE=1. Secure clusters are started by bench/secure-members.ts. Importing
 * this file runs nothing: `main` runs when it is the program.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import * as grpc from '@grpc/grpc-js';
import { auditCost } from './audit-cost.js';
import { scale } from './scale.js';
import { environment, execute, freePort, kvClients, startEtcdSecure, startRampartSecure, waitForPort, type KvClient } from './secure-members.js';

const seconds = Number(process.env.BENCH_SECONDS ?? 5);
/**
 * Seconds of closed-loop puts every cluster, Rampart's and etcd's alike, gets before anything is
 * measured on it. A new Rampart member runs at about half its speed for its first ~15 s under load
 * while V8 optimizes its hot code (consecutive 5 s phases on one secure cluster: 801, 1,405,
 * 1,713, 1,711, 1,628, 1,961/s; etcd 921, 1,236, 1,387, 1,304, 1,328, 1,304/s): measured after 1 s,
 * as before, the ratios were mostly of JIT warm-up. The first `coldSeconds` are still printed.
 */
export const warmupSeconds = Math.max(1, Number(process.env.BENCH_WARMUP_SECONDS ?? 20));
const coldSeconds = Math.min(5, warmupSeconds);
const connections = Number(process.env.BENCH_CONNECTIONS ?? 8);
const inFlight = Number(process.env.BENCH_IN_FLIGHT ?? 64);
const keyBytes = 256;
const valueBytes = 1024;
const keySpace = 10_000;

export interface PhaseResult {
  readonly requests: number;
  readonly errors: number;
  readonly perSecond: number;
  readonly p50Ms: number;
  readonly p99Ms: number;
  readonly p999Ms: number;
}

function key(index: number): Buffer {
  const buffer = Buffer.alloc(keyBytes, 'k');
  buffer.write(String(index).padStart(8, '0'));
  return buffer;
}

/** Connections spread over the members, as a client with several endpoints would. */
function clients(endpoints: readonly string[], credentials: grpc.ChannelCredentials, count: number = connections): KvClient[] {
  return kvClients(endpoints, credentials, count);
}

/** The `q` quantile of ascending `sorted` (NaN when empty). */
export function quantile(sorted: readonly number[], q: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * q))] ?? Number.NaN;
}

function summarize(latencies: number[], errors: number, elapsedSeconds: number): PhaseResult {
  latencies.sort((a, b) => a - b);
  return { requests: latencies.length, errors, perSecond: latencies.length / elapsedSeconds, p50Ms: quantile(latencies, 0.5), p99Ms: quantile(latencies, 0.99), p999Ms: quantile(latencies, 0.999) };
}

function call(client: KvClient, method: 'Put' | 'Range', request: object): Promise<boolean> {
  return new Promise((resolve) => client[method]?.call(client, request, {}, (error) => resolve(error === null)));
}

/** Closed loop: `inFlight` requests always outstanding. */
export async function phase(kvClients: KvClient[], method: 'Put' | 'Range', durationSeconds: number): Promise<PhaseResult> {
  const value = Buffer.alloc(valueBytes, 'v');
  const latencies: number[] = [];
  let errors = 0;
  let sequence = 0;
  const deadline = performance.now() + durationSeconds * 1000;
  const worker = async (slot: number): Promise<void> => {
    const client = kvClients[slot % kvClients.length];
    if (client === undefined) return;
    while (performance.now() < deadline) {
      const index = sequence++ % keySpace;
      const started = performance.now();
      if (await call(client, method, method === 'Put' ? { key: key(index), value } : { key: key(index) })) latencies.push(performance.now() - started);
      else errors += 1;
    }
  };
  const started = performance.now();
  await Promise.all(Array.from({ length: inFlight }, (_, slot) => worker(slot)));
  return summarize(latencies, errors, (performance.now() - started) / 1000);
}

/**
 * Open loop: puts (or single-key ranges) scheduled at a fixed rate, taken by `workers` clients. A
 * request's latency runs from its scheduled start, so when the server stalls, every request the
 * stall delays counts it (no coordinated omission). Throughput is what completed in the scheduled window.
 * `observe`, when given, sees each request as it completes: the worker's slot (its client is
 * `kvClients[slot % kvClients.length]`), its scheduled start and completion (`performance.now()`).
 */
export async function fixedRatePhase(
  kvClients: readonly KvClient[],
  rate: number,
  workers: number,
  durationSeconds: number,
  method: 'Put' | 'Range' = 'Put',
  observe?: (slot: number, scheduledMs: number, completedMs: number, ok: boolean) => void,
): Promise<PhaseResult> {
  const value = Buffer.alloc(valueBytes, 'v');
  const latencies: number[] = [];
  let errors = 0;
  let next = 0;
  const total = Math.round(rate * durationSeconds);
  const started = performance.now();
  const worker = async (slot: number): Promise<void> => {
    const client = kvClients[slot % kvClients.length];
    if (client === undefined) return;
    for (;;) {
      const index = next++;
      if (index >= total) return;
      const scheduled = started + (index * 1000) / rate;
      const wait = scheduled - performance.now();
      if (wait > 0) await new Promise((resolve) => setTimeout(resolve, wait));
      const keyOf = key(index % keySpace);
      const ok = await call(client, method, method === 'Put' ? { key: keyOf, value } : { key: keyOf });
      const completed = performance.now();
      if (ok) latencies.push(completed - scheduled);
      else errors += 1;
      observe?.(slot, scheduled, completed, ok);
    }
  };
  await Promise.all(Array.from({ length: workers }, (_, slot) => worker(slot)));
  // Held throughput: requests over the time it took to complete all of them (≥ the scheduled window).
  return summarize(latencies, errors, Math.max(durationSeconds, (performance.now() - started) / 1000));
}

export interface Cluster {
  readonly endpoints: string[];
  readonly credentials: grpc.ChannelCredentials;
  /** etcdctl flags that reach this cluster as its administrator. */
  readonly etcdctlFlags: string[];
  stop(): Promise<void>;
}

const projectRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const rampartBin = path.join(projectRoot, 'bin/rampart.js');

async function ports(size: number): Promise<{ client: number; peer: number }[]> {
  const result: { client: number; peer: number }[] = [];
  for (let index = 0; index < size; index++) result.push({ client: await freePort(), peer: await freePort() });
  return result;
}

function stopChildren(children: readonly ChildProcess[], dataDirs: readonly string[]): () => Promise<void> {
  return async () => {
    for (const child of children) child.kill('SIGTERM');
    await Promise.all(children.map((child) => new Promise((resolve) => (child.exitCode !== null ? resolve(undefined) : child.once('exit', resolve)))));
    await Promise.all(dataDirs.map((dataDir) => rm(dataDir, { recursive: true, force: true })));
  };
}

type MemberCommand = (member: string, dataDir: string, client: number, peer: number, initialCluster: string) => { file: string; args: string[] };

async function startPlain(name: string, size: number, command: MemberCommand): Promise<Cluster> {
  const assigned = await ports(size);
  const initialCluster = assigned.map((port, index) => `b${index}=http://127.0.0.1:${port.peer}`).join(',');
  const dataDirs = await Promise.all(assigned.map(() => mkdtemp(path.join(tmpdir(), `bench-${name}-`))));
  const children = assigned.map((port, index) => {
    const { file, args } = command(`b${index}`, dataDirs[index] as string, port.client, port.peer, initialCluster);
    return spawn(file, args, { env: environment(), stdio: 'ignore' });
  });
  await Promise.all(assigned.map((port, index) => waitForPort(port.client, children[index] as ChildProcess, 20_000)));
  const endpoints = assigned.map((port) => `127.0.0.1:${port.client}`);
  return { endpoints, credentials: grpc.credentials.createInsecure(), etcdctlFlags: [`--endpoints=${endpoints.join(',')}`], stop: stopChildren(children, dataDirs) };
}

const rampartPlain: MemberCommand = (member, dataDir, client, peer, initialCluster) => ({
  file: process.execPath,
  args: [...nodeArgs(), rampartBin, 'serve', '--insecure', '--name', member, '--data-dir', dataDir, '--listen-client-urls', `http://127.0.0.1:${client}`, '--listen-peer-urls', `http://127.0.0.1:${peer}`, '--initial-cluster', initialCluster, '--log-level', 'error', ...(process.env.BENCH_RAMPART_ARGS ?? '').split(' ').filter(Boolean)],
});

const etcdPlain: MemberCommand = (member, dataDir, client, peer, initialCluster) => ({
  file: 'etcd',
  args: ['--name', member, '--data-dir', dataDir, '--listen-client-urls', `http://127.0.0.1:${client}`, '--advertise-client-urls', `http://127.0.0.1:${client}`, '--listen-peer-urls', `http://127.0.0.1:${peer}`, '--initial-advertise-peer-urls', `http://127.0.0.1:${peer}`, '--initial-cluster', initialCluster, '--log-level', 'error'],
});

function nodeArgs(): string[] {
  return (process.env.BENCH_NODE_ARGS ?? '').split(' ').filter(Boolean);
}

/**
 * Closed-loop puts, then ranges, on a cluster warmed up first: `warmupSeconds` of the same puts
 * (which also fill the key space the ranges read), the first `coldSeconds` of them kept as `cold`.
 */
export async function closedLoop(cluster: Cluster): Promise<{ cold: PhaseResult; put: PhaseResult; range: PhaseResult }> {
  const kvClients = clients(cluster.endpoints, cluster.credentials);
  try {
    const cold = await phase(kvClients, 'Put', coldSeconds);
    if (warmupSeconds > coldSeconds) await phase(kvClients, 'Put', warmupSeconds - coldSeconds);
    const put = await phase(kvClients, 'Put', seconds);
    const range = await phase(kvClients, 'Range', seconds);
    return { cold, put, range };
  } finally {
    kvClients.forEach((client) => client.close());
  }
}

export async function fixedRate(cluster: Cluster): Promise<PhaseResult> {
  const kvClients = clients(cluster.endpoints, cluster.credentials);
  try {
    return await fixedRatePhase(kvClients, fixedRatePerSecond, fixedRateClients, seconds * 2);
  } finally {
    kvClients.forEach((client) => client.close());
  }
}

/** `etcdctl check perf --load m`: PASS or FAIL, with etcdctl's own summary lines. */
export async function checkPerf(cluster: Cluster): Promise<{ pass: boolean; summary: string }> {
  const result = await execute('etcdctl', [...cluster.etcdctlFlags, 'check', 'perf', '--load', 'm', '--auto-compact', '--auto-defrag'], 180_000);
  const lines = result.output.split('\n').filter((line) => /PASS|FAIL|Slowest|Stddev|Throughput/i.test(line)).map((line) => line.trim());
  return { pass: result.code === 0 && !/FAIL/.test(result.output), summary: lines.join('; ') || result.output.trim().split('\n').slice(-3).join('; ') };
}

function row(name: string, result: PhaseResult): string {
  return `${name.padEnd(22)} ${result.perSecond.toFixed(0).padStart(8)}/s   p50 ${result.p50Ms.toFixed(1).padStart(6)} ms   p99 ${result.p99Ms.toFixed(1).padStart(6)} ms   p99.9 ${result.p999Ms.toFixed(1).padStart(7)} ms   errors ${result.errors}`;
}

function ratio(ours: number, theirs: number): string {
  return (ours / theirs).toFixed(2);
}

const fixedRatePerSecond = Number(process.env.BENCH_FIXED_RATE ?? 1000);
const fixedRateClients = Number(process.env.BENCH_FIXED_CLIENTS ?? 200);
const runCheckPerf = process.env.BENCH_CHECK_PERF !== '0';
const etcdInstalled = existsSync('/usr/bin/etcd') || existsSync('/usr/local/bin/etcd');
const print = (text: string): void => {
  process.stdout.write(text);
};

/** The secure 3-member clusters compared: Rampart's (its certificates in `directory`), then etcd's on them. */
function secureTargets(directory: string, upArgs: readonly string[] = []): [string, () => Promise<Cluster>][] {
  const targets: [string, () => Promise<Cluster>][] = [['rampart', () => startRampartSecure(directory, 3, [], upArgs)]];
  if (etcdInstalled) targets.push(['etcd', () => startEtcdSecure(directory, 3)]);
  return targets;
}

export async function main(): Promise<void> {
  const phases = new Set((process.env.BENCH_PHASES ?? `secure,encryption,audit,plain${process.env.BENCH_SCALE === '1' ? ',scale' : ''}`).split(',').map((name) => name.trim()));
  print(`load: ${keyBytes} B keys, ${valueBytes} B values, ${connections} connections spread over the members, ${inFlight} in flight, ${seconds} s per closed-loop phase\n`);
  print(`every cluster is warmed up with ${warmupSeconds} s of these puts before it is measured; "cold" is the first ${coldSeconds} s of them\n`);

  if (phases.has('checkperf')) {
    const directory = await mkdtemp(path.join(tmpdir(), 'bench-checkperf-'));
    try {
      print(`\netcdctl check perf --load m alone, secure 3 members\n`);
      for (const [name, start] of secureTargets(directory)) {
        const cluster = await start();
        try {
          const perf = await checkPerf(cluster);
          print(`${name} check perf --load m: ${perf.pass ? 'PASS' : 'FAIL'} (${perf.summary})\n`);
        } finally {
          await cluster.stop();
        }
      }
    } finally {
      await rm(directory, { recursive: true, force: true });
    }
  }

  if (phases.has('secure')) {
    const directory = await mkdtemp(path.join(tmpdir(), 'bench-secure-'));
    try {
      print(`\nsecure, 3 members (Rampart as \`rampart up\` ships it; etcd with the same certificates, client+peer certificate auth, auth on)\n`);
      const results: Record<string, { closed: { cold: PhaseResult; put: PhaseResult; range: PhaseResult }; fixed: PhaseResult; perf?: { pass: boolean; summary: string } }> = {};
      for (const [name, start] of secureTargets(directory)) {
        const cluster = await start();
        try {
          const closed = await closedLoop(cluster);
          const fixed = await fixedRate(cluster);
          const perf = runCheckPerf ? await checkPerf(cluster) : undefined;
          results[name] = { closed, fixed, ...(perf === undefined ? {} : { perf }) };
          print(`${row(`${name} put, cold`, closed.cold)}\n${row(`${name} put`, closed.put)}\n${row(`${name} range`, closed.range)}\n${row(`${name} put ${fixedRatePerSecond}/s`, fixed)}\n`);
          if (perf !== undefined) print(`${name} check perf --load m: ${perf.pass ? 'PASS' : 'FAIL'} (${perf.summary})\n`);
        } finally {
          await cluster.stop();
        }
      }
      const ours = results.rampart;
      const reference = results.etcd;
      if (ours !== undefined && reference !== undefined) {
        print(`ratio (rampart / etcd), secure: put throughput ${ratio(ours.closed.put.perSecond, reference.closed.put.perSecond)}, p99 ${ratio(ours.closed.put.p99Ms, reference.closed.put.p99Ms)}; `);
        print(`range throughput ${ratio(ours.closed.range.perSecond, reference.closed.range.perSecond)}, p99 ${ratio(ours.closed.range.p99Ms, reference.closed.range.p99Ms)}; `);
        print(`fixed ${fixedRatePerSecond}/s held ${ratio(ours.fixed.perSecond, reference.fixed.perSecond)}, p99 ${ratio(ours.fixed.p99Ms, reference.fixed.p99Ms)}, p99.9 ${ratio(ours.fixed.p999Ms, reference.fixed.p999Ms)}; `);
        print(`cold put (first ${coldSeconds} s) throughput ${ratio(ours.closed.cold.perSecond, reference.closed.cold.perSecond)}\n`);
      }
    } finally {
      await rm(directory, { recursive: true, force: true });
    }
  }

  if (phases.has('encryption')) {
    // The cost of encryption at rest: the same secure 3-member cluster with and without it.
    print(`\nencryption at rest, secure 3 members: on (the default) vs --no-encryption\n`);
    const measured: Record<string, { put: PhaseResult; range: PhaseResult }> = {};
    for (const [name, upArgs] of [['encryption on', []], ['encryption off', ['--no-encryption']]] as const) {
      const directory = await mkdtemp(path.join(tmpdir(), 'bench-encryption-'));
      try {
        const cluster = await startRampartSecure(directory, 3, [], upArgs);
        try {
          measured[name] = await closedLoop(cluster);
          print(`${row(`rampart ${name} put`, measured[name].put)}\n${row(`rampart ${name} range`, measured[name].range)}\n`);
        } finally {
          await cluster.stop();
        }
      } finally {
        await rm(directory, { recursive: true, force: true });
      }
    }
    const on = measured['encryption on'];
    const off = measured['encryption off'];
    if (on !== undefined && off !== undefined) {
      print(`ratio (on / off): put throughput ${ratio(on.put.perSecond, off.put.perSecond)}, p99 ${ratio(on.put.p99Ms, off.put.p99Ms)}; range throughput ${ratio(on.range.perSecond, off.range.perSecond)}, p99 ${ratio(on.range.p99Ms, off.range.p99Ms)}\n`);
    }
  }

  if (phases.has('audit')) await auditCost(closedLoop, row, print);

  if (phases.has('plain')) {
    for (const size of [1, 3]) {
      print(`\nplaintext, ${size} member${size === 1 ? '' : 's'}\n`);
      const ourCluster = await startPlain('rampart', size, rampartPlain);
      const ours = await closedLoop(ourCluster).finally(() => ourCluster.stop());
      print(`${row('rampart put, cold', ours.cold)}\n${row('rampart put', ours.put)}\n${row('rampart range', ours.range)}\n`);
      if (etcdInstalled) {
        const theirCluster = await startPlain('etcd', size, etcdPlain);
        const reference = await closedLoop(theirCluster).finally(() => theirCluster.stop());
        print(`${row('etcd put, cold', reference.cold)}\n${row('etcd put', reference.put)}\n${row('etcd range', reference.range)}\n`);
        print(`ratio (rampart / etcd): put throughput ${ratio(ours.put.perSecond, reference.put.perSecond)}, p99 ${ratio(ours.put.p99Ms, reference.put.p99Ms)}; `);
        print(`range throughput ${ratio(ours.range.perSecond, reference.range.perSecond)}, p99 ${ratio(ours.range.p99Ms, reference.range.p99Ms)}; cold put throughput ${ratio(ours.cold.perSecond, reference.cold.perSecond)}\n`);
      }
    }
  }
  if (phases.has('scale')) await scale(print);
  if (!etcdInstalled) print('\netcd not installed (Debian package etcd-server): no side-by-side ratio\n');
}

if (process.argv[1] !== undefined && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) await main();
