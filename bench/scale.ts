/**
 * Scale as Kubernetes uses etcd (issue 13), opt-in (BENCH_SCALE=1 or BENCH_PHASES=scale: minutes):
 * Rampart as `rampart up` ships it against etcd with the same certificates, client certificate auth
 * and auth on, BENCH_SCALE_MEMBERS members each (default 1: a 3-member cluster of each at 500,000
 * keys is too heavy for a shared 2-core machine), the same client and load for both:
 *
 * - load BENCH_SCALE_KEYS keys (default 500,000) with 1 KiB values under five `/registry/` prefixes,
 *   as Txns of `putsPerTxn` puts with `loadInFlight` Txns in flight (load time);
 * - resident memory of each member after the load (VmRSS, and the peak VmHWM, of the largest member);
 * - restart of the first member (SIGTERM, start again) until it answers a linearizable Range
 *   (index rebuild), then a count of every key under `/registry/` to check nothing was lost;
 * - a paginated list (`limit` 500, pinned to the first page's revision, as Kubernetes' reflector
 *   lists) of one prefix holding a fifth of the keys (100,000 at the default);
 * - a watch of a prefix while puts arrive at BENCH_SCALE_WATCH_RATE per second (default 1,000) for
 *   BENCH_SCALE_WATCH_SECONDS (default 10): puts acknowledged per second (whether the member keeps
 *   up with the rate), events delivered per second, and the lag from each put's sending to its
 *   event's arrival (the watch path's own delay; the put path's is measured by the put phases).
 */
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { packageDefinition } from '../src/api/proto.js';
import { kvClients, startEtcdSecure, startRampartSecure, unary, type KvClient, type SecureCluster } from './secure-members.js';

const keyCount = Number(process.env.BENCH_SCALE_KEYS ?? 500_000);
const memberCount = Number(process.env.BENCH_SCALE_MEMBERS ?? 1);
const watchRatePerSecond = Number(process.env.BENCH_SCALE_WATCH_RATE ?? 1_000);
const watchSeconds = Number(process.env.BENCH_SCALE_WATCH_SECONDS ?? 10);
const valueBytes = 1024;
const putsPerTxn = 16;
const loadInFlight = 32;
const loadConnections = 8;
const listPageLimit = 500;
const batchAttemptsMax = 3;
const restartServeTimeoutMs = 300_000;
const watchDrainTimeoutMs = 30_000;
const prefixes = ['/registry/pods/', '/registry/configmaps/', '/registry/events/', '/registry/services/specs/', '/registry/deployments/'];
const listedPrefix = prefixes[0] as string;
const watchedPrefix = '/registry/leases/';

interface ScaleResult {
  readonly loadSeconds: number;
  readonly residentMiB: number;
  readonly peakMiB: number;
  readonly restartSeconds: number;
  readonly restartCpuSeconds: number;
  readonly countAfterRestart: number;
  readonly listSeconds: number;
  readonly listed: number;
  readonly listPages: number;
  readonly putsPerSecond: number;
  readonly delivered: number;
  readonly acknowledged: number;
  readonly deliveredPerSecond: number;
  readonly lagP50Ms: number;
  readonly lagP99Ms: number;
  readonly lagMaxMs: number;
}

/** The key after every key that starts with `prefix` (etcd's prefix range end). */
function prefixEnd(prefix: string): Buffer {
  const end = Buffer.from(prefix);
  end[end.length - 1] = (end[end.length - 1] as number) + 1;
  return end;
}

function keyOf(index: number): Buffer {
  const prefix = prefixes[index % prefixes.length] as string;
  return Buffer.from(`${prefix}ns-${String(index % 97).padStart(3, '0')}/object-${String(index).padStart(9, '0')}`);
}

async function load(clients: KvClient[]): Promise<number> {
  const value = Buffer.alloc(valueBytes, 'v');
  const batches = Math.ceil(keyCount / putsPerTxn);
  let next = 0;
  const worker = async (slot: number): Promise<void> => {
    const client = clients[slot % clients.length] as KvClient;
    for (;;) {
      const batch = next++;
      if (batch >= batches) return;
      const success = [];
      for (let index = batch * putsPerTxn; index < Math.min(keyCount, (batch + 1) * putsPerTxn); index++) success.push({ request_put: { key: keyOf(index), value } });
      // Puts are idempotent: a batch that timed out under load is sent again rather than lost.
      for (let attempt = 1; ; attempt++) {
        try {
          await unary(client, 'Txn', { success });
          break;
        } catch (error) {
          if (attempt >= batchAttemptsMax) throw new Error(`load: Txn ${batch} failed ${attempt} times: ${(error as Error).message}`);
        }
      }
    }
  };
  const started = performance.now();
  await Promise.all(Array.from({ length: loadInFlight }, (_, slot) => worker(slot)));
  return (performance.now() - started) / 1000;
}

async function memory(cluster: SecureCluster): Promise<{ residentMiB: number; peakMiB: number }> {
  let residentMiB = 0;
  let peakMiB = 0;
  for (const member of cluster.members) {
    const status = await readFile(`/proc/${member.pid()}/status`, 'utf8');
    const field = (name: string): number => Number(new RegExp(`^${name}:\\s+(\\d+) kB$`, 'm').exec(status)?.[1] ?? Number.NaN) / 1024;
    residentMiB = Math.max(residentMiB, field('VmRSS'));
    peakMiB = Math.max(peakMiB, field('VmHWM'));
  }
  return { residentMiB, peakMiB };
}

/** CPU seconds (user + system, every thread) a process has used so far, from /proc. */
async function cpuSeconds(pid: number): Promise<number> {
  const fields = (await readFile(`/proc/${pid}/stat`, 'utf8')).split(') ')[1]?.split(' ') ?? [];
  // utime and stime, fields 14 and 15 of stat(5), in clock ticks (100 a second on Linux).
  return (Number(fields[11]) + Number(fields[12])) / 100;
}

/**
 * Restart the first member; the time from its start until it answers a linearizable Range, and
 * the CPU the new process used until then (on a shared machine the wall time follows the CPU
 * share a process gets; the CPU used does not).
 */
async function restart(cluster: SecureCluster): Promise<{ seconds: number; cpuSeconds: number; stopSeconds: number }> {
  const member = cluster.members[0];
  if (member === undefined) throw new Error('no member');
  // The old process is stopped first (timed apart: its shutdown is not the index rebuild); the
  // clock runs from the new process's start.
  const stopping = performance.now();
  await member.stop();
  const stopSeconds = (performance.now() - stopping) / 1000;
  const started = performance.now();
  await member.start();
  const deadline = Date.now() + restartServeTimeoutMs;
  for (;;) {
    // A fresh channel per attempt: a channel that saw the port closed backs off for seconds.
    const [client] = kvClients([cluster.endpoints[0] as string], cluster.credentials, 1);
    try {
      await unary(client as KvClient, 'Range', { key: keyOf(0) }, 2_000);
      return { seconds: (performance.now() - started) / 1000, cpuSeconds: await cpuSeconds(member.pid()), stopSeconds };
    } catch (error) {
      if (Date.now() > deadline) throw new Error(`restart: the member did not serve within ${restartServeTimeoutMs} ms: ${(error as Error).message}`);
      await new Promise((resolve) => setTimeout(resolve, 50));
    } finally {
      client?.close();
    }
  }
}

async function count(client: KvClient): Promise<number> {
  const response = await unary(client, 'Range', { key: Buffer.from('/registry/'), range_end: prefixEnd('/registry/'), count_only: true }, 120_000);
  return Number(response.count);
}

/** Page through one prefix, `limit` 500, every page at the first page's revision. */
async function list(client: KvClient): Promise<{ seconds: number; listed: number; pages: number }> {
  const end = prefixEnd(listedPrefix);
  let start = Buffer.from(listedPrefix);
  let revision = '0';
  let listed = 0;
  let pages = 0;
  const started = performance.now();
  for (;;) {
    const response = await unary(client, 'Range', { key: start, range_end: end, limit: listPageLimit, revision }, 60_000);
    const kvs = (response.kvs ?? []) as { key: Buffer }[];
    pages += 1;
    listed += kvs.length;
    if (revision === '0') revision = String((response.header as { revision: string }).revision);
    const last = kvs[kvs.length - 1];
    if (response.more !== true || last === undefined) break;
    start = Buffer.concat([last.key, Buffer.from([0])]);
  }
  return { seconds: (performance.now() - started) / 1000, listed, pages };
}

type WatchStream = grpc.ClientDuplexStream<object, { created?: boolean; events?: { kv?: { value?: Buffer } }[] }>;

/** A watch of one prefix while puts to it arrive at a fixed rate; each value carries its put's index. */
async function watch(cluster: SecureCluster, clients: KvClient[]): Promise<Pick<ScaleResult, 'putsPerSecond' | 'delivered' | 'acknowledged' | 'deliveredPerSecond' | 'lagP50Ms' | 'lagP99Ms' | 'lagMaxMs'>> {
  const loaded = grpc.loadPackageDefinition(packageDefinition) as unknown as { etcdserverpb: { Watch: grpc.ServiceClientConstructor } };
  const watchClient = new loaded.etcdserverpb.Watch(cluster.endpoints[0] as string, cluster.credentials) as unknown as grpc.Client & { Watch(): WatchStream };
  const stream = watchClient.Watch();
  const total = Math.round(watchRatePerSecond * watchSeconds);
  const sentAt = new Float64Array(total);
  const lags: number[] = [];
  let lastArrival = 0;
  let onCreated: () => void = () => undefined;
  const created = new Promise<void>((resolve) => {
    onCreated = resolve;
  });
  stream.on('data', (response) => {
    if (response.created === true) onCreated();
    const now = performance.now();
    for (const event of response.events ?? []) {
      const index = Number(event.kv?.value?.subarray(0, 10).toString());
      if (Number.isInteger(index) && index >= 0 && index < total) lags.push(now - (sentAt[index] as number));
      lastArrival = now;
    }
  });
  stream.on('error', () => undefined);
  try {
    stream.write({ create_request: { key: Buffer.from(watchedPrefix), range_end: prefixEnd(watchedPrefix) } });
    await created;
    let next = 0;
    let acknowledged = 0;
    const started = performance.now();
    const worker = async (slot: number): Promise<void> => {
      const client = clients[slot % clients.length] as KvClient;
      for (;;) {
        const index = next++;
        if (index >= total) return;
        const scheduled = started + (index * 1000) / watchRatePerSecond;
        const wait = scheduled - performance.now();
        if (wait > 0) await new Promise((resolve) => setTimeout(resolve, wait));
        sentAt[index] = performance.now();
        const value = Buffer.alloc(valueBytes, 'w');
        value.write(String(index).padStart(10, '0'));
        try {
          await unary(client, 'Put', { key: Buffer.from(`${watchedPrefix}kube-node-lease/node-${String(index % 1_000).padStart(4, '0')}`), value });
          acknowledged += 1;
        } catch {
          // Counted by the difference between scheduled and acknowledged puts.
        }
      }
    };
    // Enough workers that a put waiting on the server does not hold up the schedule.
    await Promise.all(Array.from({ length: Math.max(64, Math.ceil(watchRatePerSecond / 10)) }, (_, slot) => worker(slot)));
    const putsPerSecond = acknowledged / ((performance.now() - started) / 1000);
    const drainDeadline = Date.now() + watchDrainTimeoutMs;
    while (lags.length < acknowledged && Date.now() < drainDeadline) await new Promise((resolve) => setTimeout(resolve, 20));
    lags.sort((a, b) => a - b);
    const quantile = (q: number): number => lags[Math.min(lags.length - 1, Math.floor(lags.length * q))] ?? Number.NaN;
    return { putsPerSecond, delivered: lags.length, acknowledged, deliveredPerSecond: lags.length / ((lastArrival - started) / 1000), lagP50Ms: quantile(0.5), lagP99Ms: quantile(0.99), lagMaxMs: lags[lags.length - 1] ?? Number.NaN };
  } finally {
    stream.cancel();
    watchClient.close();
  }
}

async function measure(name: string, cluster: SecureCluster, print: (text: string) => void): Promise<ScaleResult> {
  const clients = kvClients(cluster.endpoints, cluster.credentials, loadConnections);
  try {
    const loadSeconds = await load(clients);
    print(`${name}: loaded ${keyCount} keys in ${loadSeconds.toFixed(1)} s (${(keyCount / loadSeconds).toFixed(0)} keys/s)\n`);
    const { residentMiB, peakMiB } = await memory(cluster);
    print(`${name}: member RSS after load ${residentMiB.toFixed(0)} MiB (peak ${peakMiB.toFixed(0)} MiB)\n`);
    const { seconds: restartSeconds, cpuSeconds: restartCpuSeconds, stopSeconds } = await restart(cluster);
    const countAfterRestart = await count(clients[0] as KvClient);
    print(`${name}: stop ${stopSeconds.toFixed(2)} s, then restart until serving ${restartSeconds.toFixed(2)} s (CPU used by then ${restartCpuSeconds.toFixed(2)} s); keys under /registry/ after restart: ${countAfterRestart}\n`);
    const listedResult = await list(clients[0] as KvClient);
    print(`${name}: list ${listedPrefix} (limit ${listPageLimit}) ${listedResult.listed} keys in ${listedResult.pages} pages, ${listedResult.seconds.toFixed(2)} s\n`);
    const watched = await watch(cluster, clients);
    print(`${name}: watch ${watchedPrefix} at ${watchRatePerSecond} puts/s for ${watchSeconds} s: puts acknowledged ${watched.acknowledged} (${watched.putsPerSecond.toFixed(0)}/s), events delivered ${watched.delivered} (${watched.deliveredPerSecond.toFixed(0)}/s), lag p50 ${watched.lagP50Ms.toFixed(1)} ms, p99 ${watched.lagP99Ms.toFixed(1)} ms, max ${watched.lagMaxMs.toFixed(1)} ms\n`);
    return { loadSeconds, residentMiB, peakMiB, restartSeconds, restartCpuSeconds, countAfterRestart, listSeconds: listedResult.seconds, listed: listedResult.listed, listPages: listedResult.pages, ...watched };
  } finally {
    clients.forEach((client) => client.close());
  }
}

export async function scale(print: (text: string) => void): Promise<void> {
  print(`\nscale, ${memberCount} secure member${memberCount === 1 ? '' : 's'} each (Rampart as \`rampart up\` ships it; etcd with the same certificates, client certificate auth, auth on): ${keyCount} keys, ${valueBytes} B values, Txns of ${putsPerTxn} puts, ${loadInFlight} in flight\n`);
  const directory = await mkdtemp(path.join(tmpdir(), 'bench-scale-'));
  const results = new Map<string, ScaleResult>();
  try {
    for (const [name, start] of [['rampart', () => startRampartSecure(directory, memberCount)], ['etcd', () => startEtcdSecure(directory, memberCount)]] as const) {
      let cluster: SecureCluster;
      try {
        cluster = await start();
      } catch (error) {
        print(`${name}: did not start: ${(error as Error).message}\n`);
        continue;
      }
      try {
        const result = await measure(name, cluster, print);
        results.set(name, result);
        const listedExpected = Math.ceil(keyCount / prefixes.length);
        if (result.countAfterRestart !== keyCount || result.listed !== listedExpected || result.delivered !== result.acknowledged) {
          print(`${name}: MISMATCH: ${result.countAfterRestart} of ${keyCount} keys after restart, ${result.listed} of ${listedExpected} listed, ${result.delivered} events for ${result.acknowledged} acknowledged puts\n`);
        }
      } catch (error) {
        // A failure at scale is a finding to report, not a reason to skip the other side.
        print(`${name}: FAILED: ${(error as Error).message}\n`);
      } finally {
        await cluster.stop();
      }
    }
  } finally {
    await rm(directory, { recursive: true, force: true });
  }
  const ours = results.get('rampart');
  const reference = results.get('etcd');
  if (ours === undefined || reference === undefined) return;
  const ratio = (a: number, b: number): string => (a / b).toFixed(2);
  print(`ratio (rampart / etcd), scale: load time ${ratio(ours.loadSeconds, reference.loadSeconds)}; member RSS ${ratio(ours.residentMiB, reference.residentMiB)} (target ≤ 2), peak ${ratio(ours.peakMiB, reference.peakMiB)}; `);
  print(`restart ${ratio(ours.restartSeconds, reference.restartSeconds)} (target ≤ 2), its CPU ${ratio(ours.restartCpuSeconds, reference.restartCpuSeconds)}; list ${ratio(ours.listSeconds, reference.listSeconds)}; `);
  print(`watch delivered rate ${ratio(ours.deliveredPerSecond, reference.deliveredPerSecond)}, lag p50 ${ratio(ours.lagP50Ms, reference.lagP50Ms)}, p99 ${ratio(ours.lagP99Ms, reference.lagP99Ms)}\n`);
}
