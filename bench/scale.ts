/**
 * Scale as Kubernetes uses etcd (issue 13), opt-in (BENCH_SCALE=1 or BENCH_PHASES=scale: minutes):
 * Rampart as `rampart up` ships it against etcd with the same certificates, client certificate auth
 * and auth on, BENCH_SCALE_MEMBERS members each (default 1: a 3-member cluster of each at 500,000
 * keys is too heavy for a shared 2-core machine), the same client and load for both:
 *
 * - load BENCH_SCALE_KEYS keys (default 500,000) with 1 KiB values under five `/registry/` prefixes,
 *   as Txns of `putsPerTxn` puts with `loadInFlight` Txns in flight (load time);
 * - resident memory of each member after the load (VmRSS, and the peak VmHWM, of the largest member);
 * - two restarts of the first member on the same data, each timed from the new process's start until
 *   it answers a linearizable Range, with the CPU (user + system, every thread, from /proc) the new
 *   process used by then, then a count of every key under `/registry/` to check nothing was lost:
 *   first after a clean stop (SIGTERM, as systemd and `rampart down` stop a member; Rampart then
 *   writes its key index checkpoint, within a 4 s budget, and the start loads it), then after a
 *   crash (SIGKILL: Rampart rebuilds its index from the database). Rampart's side runs at its
 *   default log level (info) into a file, and the bench prints what its log says the stop and the
 *   start did with the checkpoint (written, or past its budget; loaded, or why not), so a reader
 *   knows which path a restart figure measured;
 * - a paginated list (`limit` 500, pinned to the first page's revision, as Kubernetes' reflector
 *   lists) of one prefix holding a fifth of the keys (100,000 at the default);
 * - a watch of a prefix while puts arrive at BENCH_SCALE_WATCH_RATE per second (default 1,000) for
 *   BENCH_SCALE_WATCH_SECONDS (default 10): puts acknowledged per second (whether the member keeps
 *   up with the rate), events delivered per second, and the lag from each put's sending to its
 *   event's arrival (the watch path's own delay; the put path's is measured by the put phases).
 */
import { mkdtemp, open, readFile, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { packageDefinition } from '../src/api/proto.js';
import { kvClients, startEtcdSecure, startRampartSecure, unary, type BenchMember, type KvClient, type SecureCluster } from './secure-members.js';
import { loadInFlight, loadKeys, putsPerTxn } from './load-keys.js';
import { loadAverage, memoryMiB, statTicks, ticksPerSecond } from './proc.js';

const keyCount = Number(process.env.BENCH_SCALE_KEYS ?? 500_000);
const memberCount = Number(process.env.BENCH_SCALE_MEMBERS ?? 1);
const watchRatePerSecond = Number(process.env.BENCH_SCALE_WATCH_RATE ?? 1_000);
const watchSeconds = Number(process.env.BENCH_SCALE_WATCH_SECONDS ?? 10);
const valueBytes = 1024;
const loadConnections = 8;
const listPageLimit = 500;
const restartServeTimeoutMs = 300_000;
/** member.ts's indexCheckpointWriteBudgetMs (printed with the stop's outcome). */
const checkpointBudgetMs = 4_000;
const watchDrainTimeoutMs = 30_000;
const prefixes = ['/registry/pods/', '/registry/configmaps/', '/registry/events/', '/registry/services/specs/', '/registry/deployments/'];
const listedPrefix = prefixes[0] as string;
const watchedPrefix = '/registry/leases/';

/** One restart of the first member: after a clean stop (SIGTERM) or a crash (SIGKILL). */
interface Restart {
  /** From the new process's start until it answered a linearizable Range. */
  readonly seconds: number;
  /** CPU (user + system, every thread) the new process used by then. */
  readonly cpuSeconds: number;
  /** From the signal until the old process exited. */
  readonly stopSeconds: number;
  /** Keys under `/registry/` once serving. */
  readonly count: number;
  /** VmRSS once the count is done. */
  readonly residentMiB: number;
  /** Rampart: what its log says the stop and the start did with the key index checkpoint. */
  readonly index?: IndexPath;
  /** The machine's 1-minute load average once serving (the wall time follows the CPU share a process gets). */
  readonly loadAverage: string;
}

interface IndexPath {
  readonly stop: string;
  readonly start: string;
  readonly fromCheckpoint: boolean;
}

interface ScaleResult {
  readonly loadSeconds: number;
  readonly residentMiB: number;
  readonly peakMiB: number;
  readonly clean: Restart;
  readonly crash: Restart;
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

async function memory(cluster: SecureCluster): Promise<{ residentMiB: number; peakMiB: number }> {
  let residentMiB = 0;
  let peakMiB = 0;
  for (const member of cluster.members) {
    const { resident, peak } = await memoryMiB(member.pid());
    residentMiB = Math.max(residentMiB, resident);
    peakMiB = Math.max(peakMiB, peak);
  }
  return { residentMiB, peakMiB };
}

/** The member's log output written since `offset` (its pino JSON lines), or undefined when not kept. */
async function outputSince(member: BenchMember, offset: number): Promise<Record<string, unknown>[] | undefined> {
  if (member.output === undefined) return undefined;
  const handle = await open(member.output, 'r');
  try {
    const size = (await handle.stat()).size;
    const buffer = Buffer.alloc(Math.max(0, size - offset));
    await handle.read(buffer, 0, buffer.length, offset);
    return buffer.toString('utf8').split('\n').flatMap((line) => {
      try {
        const parsed = JSON.parse(line) as unknown;
        return typeof parsed === 'object' && parsed !== null ? [parsed as Record<string, unknown>] : [];
      } catch {
        return [];
      }
    });
  } finally {
    await handle.close();
  }
}

/**
 * What Rampart's log says a stop and the following start did with the key index checkpoint
 * (member.ts's messages; etcd logs none of them). A message missing is reported as missing, not
 * taken for a path.
 */
function indexPath(lines: readonly Record<string, unknown>[], signal: 'SIGTERM' | 'SIGKILL'): IndexPath {
  const find = (prefix: string): Record<string, unknown> | undefined => lines.find((line) => typeof line.msg === 'string' && line.msg.startsWith(prefix));
  let stop: string;
  const written = find('key index checkpoint written');
  const pastBudget = find('key index checkpoint not written: the write ran past its budget');
  const notWritten = find('key index checkpoint not written');
  const exitTimer = find('shutdown took too long');
  if (signal === 'SIGKILL') stop = 'killed: no checkpoint written';
  else if (written !== undefined) stop = `checkpoint written (${String(written.keys)} keys, ${String(written.ms)} ms of its ${checkpointBudgetMs} ms budget)`;
  else if (pastBudget !== undefined) stop = `checkpoint NOT written: its write ran past the ${String(pastBudget.budgetMs)} ms budget (gave up after ${String(pastBudget.ms)} ms)`;
  else if (notWritten !== undefined) stop = `checkpoint NOT written (${String(notWritten.msg)}${notWritten.err === undefined ? '' : `: ${String(notWritten.err)}`})`;
  else stop = 'no checkpoint line in the stop\'s log';
  if (exitTimer !== undefined) stop += '; the stop ran into serve\'s 8 s exit timer';
  const loaded = find('key index loaded from its checkpoint');
  const notUsed = find('key index checkpoint not used');
  const startPath = loaded !== undefined ? `index loaded from the checkpoint (${String(loaded.keys)} keys)` : notUsed !== undefined ? `index rebuilt from the database: checkpoint not used (${String(notUsed.reason)})` : 'index rebuilt from the database (no checkpoint)';
  return { stop, start: startPath, fromCheckpoint: loaded !== undefined };
}

/**
 * Stops the first member with `signal` (SIGTERM: a clean stop, timed apart: the old process's
 * shutdown is not the new one's start; SIGKILL: a crash), starts it again on the same data, and
 * measures the new process from its start until it answers a linearizable Range: the wall time and
 * the CPU it used by then (on a shared machine the wall time follows the CPU share a process gets;
 * the CPU used does not). Then counts the keys and reads its memory; with `logsIndexPath`
 * (Rampart), what its log says the stop and the start did with the key index checkpoint.
 */
async function restart(cluster: SecureCluster, signal: 'SIGTERM' | 'SIGKILL', logsIndexPath: boolean): Promise<Restart> {
  const member = cluster.members[0];
  if (member === undefined) throw new Error('no member');
  const offset = member.output === undefined ? 0 : (await stat(member.output)).size;
  const stopping = performance.now();
  await (signal === 'SIGTERM' ? member.stop() : member.kill());
  const stopSeconds = (performance.now() - stopping) / 1000;
  const started = performance.now();
  await member.start(restartServeTimeoutMs);
  const deadline = started + restartServeTimeoutMs;
  let seconds: number;
  let cpu: number;
  let averageLoad: string;
  for (;;) {
    // A fresh channel per attempt: a channel that saw the port closed backs off for seconds.
    const [client] = kvClients([cluster.endpoints[0] as string], cluster.credentials, 1);
    try {
      await unary(client as KvClient, 'Range', { key: keyOf(0) }, 2_000);
      seconds = (performance.now() - started) / 1000;
      cpu = (await statTicks(`/proc/${member.pid()}/stat`)) / ticksPerSecond;
      averageLoad = await loadAverage();
      break;
    } catch (error) {
      if (performance.now() > deadline) throw new Error(`restart after ${signal}: the member did not serve within ${restartServeTimeoutMs} ms: ${(error as Error).message}`);
      await new Promise((resolve) => setTimeout(resolve, 50));
    } finally {
      client?.close();
    }
  }
  const [client] = kvClients([cluster.endpoints[0] as string], cluster.credentials, 1);
  let counted: number;
  try {
    counted = await count(client as KvClient);
  } finally {
    client?.close();
  }
  const { residentMiB } = await memory({ ...cluster, members: [member] });
  const lines = logsIndexPath ? await outputSince(member, offset) : undefined;
  return { seconds, cpuSeconds: cpu, stopSeconds, count: counted, residentMiB, loadAverage: averageLoad, ...(lines === undefined ? {} : { index: indexPath(lines, signal) }) };
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
    const loadSeconds = await loadKeys(clients, keyCount, keyOf, Buffer.alloc(valueBytes, 'v'));
    print(`${name}: loaded ${keyCount} keys in ${loadSeconds.toFixed(1)} s (${(keyCount / loadSeconds).toFixed(0)} keys/s); load average (1, 5, 15 min) ${(await readFile('/proc/loadavg', 'utf8')).split(' ').slice(0, 3).join(', ')}\n`);
    const { residentMiB, peakMiB } = await memory(cluster);
    print(`${name}: member RSS after load ${residentMiB.toFixed(0)} MiB (peak ${peakMiB.toFixed(0)} MiB)\n`);
    const clean = await restart(cluster, 'SIGTERM', name === 'rampart');
    print(`${name}: restart after a clean stop (SIGTERM): stop ${clean.stopSeconds.toFixed(2)} s${clean.index === undefined ? '' : ` (${clean.index.stop})`}; until serving ${clean.seconds.toFixed(2)} s (stop and start ${(clean.stopSeconds + clean.seconds).toFixed(2)} s), CPU ${clean.cpuSeconds.toFixed(2)} s${clean.index === undefined ? '' : ` (${clean.index.start})`}; keys under /registry/: ${clean.count}; RSS after ${clean.residentMiB.toFixed(0)} MiB; load average ${clean.loadAverage}\n`);
    const crash = await restart(cluster, 'SIGKILL', name === 'rampart');
    print(`${name}: restart after a crash (SIGKILL): until serving ${crash.seconds.toFixed(2)} s, CPU ${crash.cpuSeconds.toFixed(2)} s${crash.index === undefined ? '' : ` (${crash.index.start})`}; keys under /registry/: ${crash.count}; RSS after ${crash.residentMiB.toFixed(0)} MiB; load average ${crash.loadAverage}\n`);
    const listedResult = await list(clients[0] as KvClient);
    print(`${name}: list ${listedPrefix} (limit ${listPageLimit}) ${listedResult.listed} keys in ${listedResult.pages} pages, ${listedResult.seconds.toFixed(2)} s\n`);
    const watched = await watch(cluster, clients);
    print(`${name}: watch ${watchedPrefix} at ${watchRatePerSecond} puts/s for ${watchSeconds} s: puts acknowledged ${watched.acknowledged} (${watched.putsPerSecond.toFixed(0)}/s), events delivered ${watched.delivered} (${watched.deliveredPerSecond.toFixed(0)}/s), lag p50 ${watched.lagP50Ms.toFixed(1)} ms, p99 ${watched.lagP99Ms.toFixed(1)} ms, max ${watched.lagMaxMs.toFixed(1)} ms\n`);
    return { loadSeconds, residentMiB, peakMiB, clean, crash, listSeconds: listedResult.seconds, listed: listedResult.listed, listPages: listedResult.pages, ...watched };
  } finally {
    clients.forEach((client) => client.close());
  }
}

export async function scale(print: (text: string) => void): Promise<void> {
  print(`\nscale, ${memberCount} secure member${memberCount === 1 ? '' : 's'} each (Rampart as \`rampart up\` ships it; etcd with the same certificates, client certificate auth, auth on): ${keyCount} keys, ${valueBytes} B values, Txns of ${putsPerTxn} puts, ${loadInFlight} in flight\n`);
  const directory = await mkdtemp(path.join(tmpdir(), 'bench-scale-'));
  const results = new Map<string, ScaleResult>();
  try {
    // Both at their default log level (info), into files here: Rampart's says what its stop and
    // start did with the key index checkpoint; etcd's are kept for a failure's diagnosis.
    const options = { logLevel: 'info', outputDir: directory };
    for (const [name, start] of [['rampart', () => startRampartSecure(directory, memberCount, [], [], options)], ['etcd', () => startEtcdSecure(directory, memberCount, options)]] as const) {
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
        if (result.clean.count !== keyCount || result.crash.count !== keyCount || result.listed !== listedExpected || result.delivered !== result.acknowledged) {
          print(`${name}: MISMATCH: ${result.clean.count} and ${result.crash.count} of ${keyCount} keys after the restarts, ${result.listed} of ${listedExpected} listed, ${result.delivered} events for ${result.acknowledged} acknowledged puts\n`);
        }
        if (result.crash.index?.fromCheckpoint === true) print(`${name}: UNEXPECTED: the start after SIGKILL loaded a checkpoint\n`);
      } catch (error) {
        // A failure at scale is a finding to report, not a reason to skip the other side.
        print(`${name}: FAILED: ${(error as Error).message}\n`);
        // The member's log goes with the bench directory: its last lines say what it was doing.
        const output = cluster.members[0]?.output;
        const tail = output === undefined ? '' : (await readFile(output, 'utf8').catch(() => '')).trimEnd().split('\n').slice(-10).join('\n');
        if (tail !== '') print(`${name}: the first member's last log lines:\n${tail}\n`);
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
  const cleanPath = ours.clean.index === undefined ? '' : ours.clean.index.fromCheckpoint ? ', Rampart\'s index from its checkpoint' : `, Rampart REBUILT its index: ${ours.clean.index.stop}; ${ours.clean.index.start}`;
  print(`restart after SIGTERM ${ratio(ours.clean.seconds, reference.clean.seconds)} wall (target ≤ 2), CPU ${ratio(ours.clean.cpuSeconds, reference.clean.cpuSeconds)}${cleanPath}; `);
  print(`restart after SIGKILL ${ratio(ours.crash.seconds, reference.crash.seconds)} wall, CPU ${ratio(ours.crash.cpuSeconds, reference.crash.cpuSeconds)} (Rampart's full index rebuild); list ${ratio(ours.listSeconds, reference.listSeconds)}; `);
  print(`watch delivered rate ${ratio(ours.deliveredPerSecond, reference.deliveredPerSecond)}, lag p50 ${ratio(ours.lagP50Ms, reference.lagP50Ms)}, p99 ${ratio(ours.lagP99Ms, reference.lagP99Ms)}\n`);
}
