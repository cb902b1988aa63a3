/**
 * `npm run bench`: put and range throughput and latency, Rampart side by side with etcd (when the
 * `etcd` binary is installed), with the same load generator against both, reported as ratios.
 *
 * Load: 256-byte keys, 1 KiB values, BENCH_CONNECTIONS connections, BENCH_IN_FLIGHT requests in
 * flight, BENCH_SECONDS per phase; BENCH_RAMPART_ARGS adds flags to every Rampart member (e.g.
 * `--no-audit` to see what the audit trail costs), BENCH_NODE_ARGS adds Node flags to them (e.g.
 * `--cpu-prof --cpu-prof-dir=/tmp/prof`). Both run plaintext on 127.0.0.1, with 1 and then 3 members.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { connect as netConnect, createServer } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import * as grpc from '@grpc/grpc-js';
import { packageDefinition } from '../src/api/proto.js';

const seconds = Number(process.env.BENCH_SECONDS ?? 5);
const connections = Number(process.env.BENCH_CONNECTIONS ?? 8);
const inFlight = Number(process.env.BENCH_IN_FLIGHT ?? 64);
const keyBytes = 256;
const valueBytes = 1024;
const keySpace = 10_000;

interface PhaseResult {
  readonly requests: number;
  readonly errors: number;
  readonly perSecond: number;
  readonly p50Ms: number;
  readonly p99Ms: number;
}

type KvClient = grpc.Client & Record<string, (request: object, callback: (error: grpc.ServiceError | null) => void) => void>;

function environment(): NodeJS.ProcessEnv {
  return Object.fromEntries(Object.entries(process.env).filter(([name]) => !name.startsWith('ETCD')));
}

async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.listen(0, '127.0.0.1', () => {
      const address = server.address();
      server.close(() => (typeof address === 'object' && address !== null ? resolve(address.port) : reject(new Error('no port'))));
    });
  });
}

async function waitForPort(port: number, child: ChildProcess): Promise<void> {
  const deadline = Date.now() + 20_000;
  while (Date.now() < deadline) {
    if (child.exitCode !== null) throw new Error('server exited during start');
    const open = await new Promise<boolean>((resolve) => {
      const socket = netConnect(port, '127.0.0.1');
      socket.once('connect', () => {
        socket.destroy();
        resolve(true);
      });
      socket.once('error', () => resolve(false));
    });
    if (open) return;
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  throw new Error(`port ${port} did not open`);
}

function key(index: number): Buffer {
  const buffer = Buffer.alloc(keyBytes, 'k');
  buffer.write(String(index).padStart(8, '0'));
  return buffer;
}

/** Connections spread over the members, as a client with several endpoints would. */
function clients(endpoints: readonly string[]): KvClient[] {
  const loaded = grpc.loadPackageDefinition(packageDefinition) as unknown as { etcdserverpb: { KV: grpc.ServiceClientConstructor } };
  // A local subchannel pool per client gives each its own TCP connection.
  return Array.from({ length: connections }, (_, index) => new loaded.etcdserverpb.KV(endpoints[index % endpoints.length] as string, grpc.credentials.createInsecure(), { 'grpc.use_local_subchannel_pool': 1 }) as unknown as KvClient);
}

async function phase(kvClients: KvClient[], method: 'Put' | 'Range', durationSeconds: number): Promise<PhaseResult> {
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
      const request = method === 'Put' ? { key: key(index), value } : { key: key(index) };
      const started = performance.now();
      await new Promise<void>((resolve) =>
        client[method]?.call(client, request, (error) => {
          if (error === null) latencies.push(performance.now() - started);
          else errors += 1;
          resolve();
        }),
      );
    }
  };
  const started = performance.now();
  await Promise.all(Array.from({ length: inFlight }, (_, slot) => worker(slot)));
  const elapsedSeconds = (performance.now() - started) / 1000;
  latencies.sort((a, b) => a - b);
  const quantile = (q: number): number => latencies[Math.min(latencies.length - 1, Math.floor(latencies.length * q))] ?? Number.NaN;
  return { requests: latencies.length, errors, perSecond: latencies.length / elapsedSeconds, p50Ms: quantile(0.5), p99Ms: quantile(0.99) };
}

interface Target {
  readonly name: string;
  /** Starts `size` members; returns their client endpoints and processes. */
  start(size: number): Promise<{ endpoints: string[]; children: ChildProcess[]; dataDirs: string[] }>;
}

const projectRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');

async function ports(size: number): Promise<{ client: number; peer: number }[]> {
  const result: { client: number; peer: number }[] = [];
  for (let index = 0; index < size; index++) result.push({ client: await freePort(), peer: await freePort() });
  return result;
}

function targetFor(name: string, command: (member: string, dataDir: string, client: number, peer: number, initialCluster: string) => { file: string; args: string[] }): Target {
  return {
    name,
    start: async (size) => {
      const assigned = await ports(size);
      const initialCluster = assigned.map((port, index) => `b${index}=http://127.0.0.1:${port.peer}`).join(',');
      const dataDirs = await Promise.all(assigned.map(() => mkdtemp(path.join(tmpdir(), `bench-${name}-`))));
      const children = assigned.map((port, index) => {
        const { file, args } = command(`b${index}`, dataDirs[index] as string, port.client, port.peer, initialCluster);
        return spawn(file, args, { env: environment(), stdio: 'ignore' });
      });
      await Promise.all(assigned.map((port, index) => waitForPort(port.client, children[index] as ChildProcess)));
      return { endpoints: assigned.map((port) => `127.0.0.1:${port.client}`), children, dataDirs };
    },
  };
}

const rampart = targetFor('rampart', (member, dataDir, client, peer, initialCluster) => ({
  file: process.execPath,
  args: [...(process.env.BENCH_NODE_ARGS ?? '').split(' ').filter(Boolean), path.join(projectRoot, 'bin/rampart.js'), 'serve', '--insecure', '--name', member, '--data-dir', dataDir, '--listen-client-urls', `http://127.0.0.1:${client}`, '--listen-peer-urls', `http://127.0.0.1:${peer}`, '--initial-cluster', initialCluster, '--log-level', 'error', ...(process.env.BENCH_RAMPART_ARGS ?? '').split(' ').filter(Boolean)],
}));

const etcd = targetFor('etcd', (member, dataDir, client, peer, initialCluster) => ({
  file: 'etcd',
  args: ['--name', member, '--data-dir', dataDir, '--listen-client-urls', `http://127.0.0.1:${client}`, '--advertise-client-urls', `http://127.0.0.1:${client}`, '--listen-peer-urls', `http://127.0.0.1:${peer}`, '--initial-advertise-peer-urls', `http://127.0.0.1:${peer}`, '--initial-cluster', initialCluster, '--log-level', 'error'],
}));

async function measure(target: Target, size: number): Promise<{ put: PhaseResult; range: PhaseResult }> {
  const { endpoints, children, dataDirs } = await target.start(size);
  try {
    const kvClients = clients(endpoints);
    await phase(kvClients, 'Put', 1); // warm-up; also fills the key space for ranges
    const put = await phase(kvClients, 'Put', seconds);
    const range = await phase(kvClients, 'Range', seconds);
    kvClients.forEach((client) => client.close());
    return { put, range };
  } finally {
    for (const child of children) child.kill('SIGTERM');
    await Promise.all(children.map((child) => new Promise((resolve) => (child.exitCode !== null ? resolve(undefined) : child.once('exit', resolve)))));
    await Promise.all(dataDirs.map((dataDir) => rm(dataDir, { recursive: true, force: true })));
  }
}

function row(name: string, result: PhaseResult): string {
  return `${name.padEnd(18)} ${result.perSecond.toFixed(0).padStart(8)}/s   p50 ${result.p50Ms.toFixed(1).padStart(6)} ms   p99 ${result.p99Ms.toFixed(1).padStart(6)} ms   errors ${result.errors}`;
}

const etcdInstalled = existsSync('/usr/bin/etcd') || existsSync('/usr/local/bin/etcd');
process.stdout.write(`load: ${keyBytes} B keys, ${valueBytes} B values, ${connections} connections spread over the members, ${inFlight} in flight, ${seconds} s per phase, plaintext\n`);
for (const size of [1, 3]) {
  const ours = await measure(rampart, size);
  process.stdout.write(`\n${size} member${size === 1 ? '' : 's'}\n${row('rampart put', ours.put)}\n${row('rampart range', ours.range)}\n`);
  if (etcdInstalled) {
    const reference = await measure(etcd, size);
    process.stdout.write(`${row('etcd put', reference.put)}\n${row('etcd range', reference.range)}\n`);
    process.stdout.write(`ratio (rampart / etcd): put throughput ${(ours.put.perSecond / reference.put.perSecond).toFixed(2)}, p99 ${(ours.put.p99Ms / reference.put.p99Ms).toFixed(2)}; `);
    process.stdout.write(`range throughput ${(ours.range.perSecond / reference.range.perSecond).toFixed(2)}, p99 ${(ours.range.p99Ms / reference.range.p99Ms).toFixed(2)}\n`);
  }
}
if (!etcdInstalled) process.stdout.write('\netcd not installed (Debian package etcd-server): no side-by-side ratio\n');
