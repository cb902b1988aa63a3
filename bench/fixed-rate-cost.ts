/**
 * What a write costs the secure 3-member cluster (`rampart up`'s command line) at a fixed put rate,
 * for A/B pairs of builds or of member Node flags: after a warm-up, RATE puts a second for SECONDS
 * (200 clients, 256 B keys, 1 KiB values, latency from each put's scheduled start as in `npm run
 * bench`), then per member, from /proc, CPU per acknowledged write split by thread (main thread, V8's
 * workers: GC helpers and compiler, other threads), and from its metrics the garbage collections
 * (count and time by kind) and the event loop's delay over the phase.
 *
 *   node dist/bench/fixed-rate-cost.js [rate=1000] [seconds=20]
 *
 * BENCH_NODE_ARGS adds Node flags to the members (e.g. `--max-semi-space-size=32`), BENCH_RAMPART_ARGS
 * flags to `rampart serve` (e.g. `--snapshot-count 100000`), BENCH_UP_ARGS flags to `rampart up` (e.g.
 * `--no-encryption`, to compare with encryption at rest off); with
 * BENCH_MEMBER_OUTPUT_DIR=DIR and BENCH_NODE_ARGS=--trace-gc this also prints the phase's scavenges
 * and mark-compacts from the members' output (count, total, p99 and longest pause).
 */
import { mkdtemp, readFile, readdir, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fixedRatePhase, warmupSeconds } from './bench.js';
import { kvClients, metric, scrape, startRampartSecure } from './secure-members.js';

const ratePerSecond = Number(process.argv[2] ?? 1000);
const seconds = Number(process.argv[3] ?? 20);
const fixedClients = 200;
const v8PoolSize = Number(/--v8-pool-size=(\d+)/.exec(process.env.BENCH_NODE_ARGS ?? '')?.[1] ?? 4);

interface Threads {
  readonly byName: Map<string, number>;
  readonly total: number;
}

/**
 * utime + stime in clock ticks of each thread of a process, summed by kind. Node names all its
 * threads "node"; they are told apart by creation order: the main thread, one idle helper, then V8's
 * platform workers (4 by default: GC helpers, concurrent marking, the optimizing compiler), then
 * the rest (libuv pool, LevelDB's background thread, worker threads).
 */
async function threadTicks(pid: number): Promise<Threads> {
  const byName = new Map<string, number>();
  let total = 0;
  const tasks = (await readdir(`/proc/${pid}/task`).catch(() => [])).map(Number).sort((a, b) => a - b);
  for (const [position, task] of tasks.entries()) {
    const raw = await readFile(`/proc/${pid}/task/${task}/stat`, 'utf8').catch(() => '');
    const close = raw.lastIndexOf(')');
    if (close < 0) continue;
    const name = task === pid ? 'main' : position >= 2 && position < 2 + v8PoolSize ? 'V8 workers' : 'other';
    const fields = raw.slice(close + 2).split(' ');
    const ticks = Number(fields[11]) + Number(fields[12]);
    byName.set(name, (byName.get(name) ?? 0) + ticks);
    total += ticks;
  }
  // Threads that ended during the phase are in the process's own counters (which include its live threads).
  const processRaw = await readFile(`/proc/${pid}/stat`, 'utf8');
  const processFields = processRaw.slice(processRaw.lastIndexOf(')') + 2).split(' ');
  const processTotal = Number(processFields[11]) + Number(processFields[12]);
  byName.set('ended threads', processTotal - total);
  return { byName, total: processTotal };
}

interface GcPause {
  readonly kind: string;
  readonly ms: number;
}

/** The pauses --trace-gc printed after `from` bytes of a member's output. */
async function tracedPauses(file: string, from: number): Promise<GcPause[]> {
  const text = (await readFile(file)).subarray(from).toString('utf8');
  const pauses: GcPause[] = [];
  for (const match of text.matchAll(/ms: (Scavenge|Mark-Compact|Mark-sweep|Minor Mark-Compact)[^,]*, ([0-9.]+) \/ ([0-9.]+) ms/g)) pauses.push({ kind: match[1] as string, ms: Number(match[2]) });
  return pauses;
}

function pauseSummary(pauses: readonly GcPause[]): string {
  const kinds = [...new Set(pauses.map((pause) => pause.kind))];
  return kinds
    .map((kind) => {
      const ms = pauses.filter((pause) => pause.kind === kind).map((pause) => pause.ms).sort((a, b) => a - b);
      const sum = ms.reduce((a, b) => a + b, 0);
      return `${kind} ${ms.length}x, ${sum.toFixed(0)} ms, p99 ${(ms[Math.floor(ms.length * 0.99)] ?? 0).toFixed(1)}, max ${(ms[ms.length - 1] ?? 0).toFixed(1)} ms`;
    })
    .join('; ');
}

const stages = ['commit', 'persist', 'apply', 'answer', 'audit'];

/**
 * Per write stage (rampart_write_stage_duration_seconds{stage}) over the phase: mean, the upper
 * bound of the bucket holding the 99th percentile (buckets double from 0.1 ms) and how many times
 * it was observed (`persist` once per Ready with entries: writes / that = entries per Ready).
 */
function stageSummary(later: string, earlier: string): string {
  const delta = (name: string): number => {
    const value = metric(later, name) - metric(earlier, name);
    return Number.isNaN(value) ? 0 : value;
  };
  const bounds = (text: string, stage: string): [number, number][] =>
    [...text.matchAll(new RegExp(`^rampart_write_stage_duration_seconds_bucket\\{le="([^"]+)",stage="${stage}"\\} (\\S+)$`, 'gm'))].map((match) => [Number(match[1] === '+Inf' ? Infinity : match[1]), Number(match[2])]);
  return stages
    .map((stage) => {
      const count = delta(`rampart_write_stage_duration_seconds_count{stage="${stage}"}`);
      if (count === 0) return undefined;
      const mean = (delta(`rampart_write_stage_duration_seconds_sum{stage="${stage}"}`) * 1000) / count;
      const before = new Map(bounds(earlier, stage));
      const p99 = bounds(later, stage).find(([le, cumulative]) => cumulative - (before.get(le) ?? 0) >= count * 0.99)?.[0] ?? Infinity;
      return `${stage} ${mean.toFixed(1)} ms (p99 <= ${(p99 * 1000).toFixed(1)}, ${count} times)`;
    })
    .filter((text) => text !== undefined)
    .join(', ');
}

async function main(): Promise<void> {
  const directory = await mkdtemp(path.join(tmpdir(), 'fixed-rate-cost-'));
  const outputDir = process.env.BENCH_MEMBER_OUTPUT_DIR;
  const rampartArgs = (process.env.BENCH_RAMPART_ARGS ?? '').split(' ').filter(Boolean);
  const upArgs = (process.env.BENCH_UP_ARGS ?? '').split(' ').filter(Boolean);
  const cluster = await startRampartSecure(directory, 3, rampartArgs, upArgs).catch(async (error: unknown) => {
    await rm(directory, { recursive: true, force: true });
    throw error;
  });
  const clients = kvClients(cluster.endpoints, cluster.credentials, fixedClients);
  try {
    const pki = path.join(directory, 'pki');
    const tls = { ca: await readFile(path.join(pki, 'ca.crt')), cert: await readFile(path.join(pki, 'admin.crt')), key: await readFile(path.join(pki, 'admin.key')) };
    const metricsPorts = cluster.endpoints.map((endpoint) => Number(endpoint.split(':')[1]) + 2);
    await fixedRatePhase(clients, ratePerSecond, fixedClients, warmupSeconds); // warm-up: connections, a leader, and V8's JIT (see bench.ts)
    const pids = cluster.members.map((member) => member.pid());
    const logs = outputDir === undefined ? [] : cluster.endpoints.map((endpoint) => path.join(outputDir, `${endpoint.split(':')[1]}.log`));
    const logOffsets = await Promise.all(logs.map(async (file) => (await stat(file)).size));
    const metricsBefore = await Promise.all(metricsPorts.map((port) => scrape(port, tls)));
    const before = await Promise.all(pids.map(threadTicks));
    const result = await fixedRatePhase(clients, ratePerSecond, fixedClients, seconds);
    const after = await Promise.all(pids.map(threadTicks));
    const metricsAfter = await Promise.all(metricsPorts.map((port) => scrape(port, tls)));
    const acknowledged = result.requests;
    const perWrite = (ticks: number): number => (ticks * 10_000) / acknowledged;
    const summed = after.reduce((sum, threads, index) => sum + threads.total - (before[index]?.total ?? 0), 0);
    console.log(
      `fixed ${ratePerSecond}/s for ${seconds} s: ${result.perSecond.toFixed(0)}/s held, p50 ${result.p50Ms.toFixed(1)} ms, p99 ${result.p99Ms.toFixed(1)} ms, p99.9 ${result.p999Ms.toFixed(1)} ms, errors ${result.errors}; CPU ${perWrite(summed).toFixed(0)} us/write summed over the members`,
    );
    for (const [index, threads] of after.entries()) {
      const previous = before[index] as Threads;
      const names = [...threads.byName.entries()].map(([name, ticks]) => [name, ticks - (previous.byName.get(name) ?? 0)] as const).filter(([, ticks]) => ticks > 0).sort((a, b) => b[1] - a[1]);
      const later = metricsAfter[index] as string;
      const earlier = metricsBefore[index] as string;
      const gc = ['minor', 'major', 'incremental']
        .map((kind) => {
          const count = metric(later, `nodejs_gc_duration_seconds_count{kind="${kind}"}`) - metric(earlier, `nodejs_gc_duration_seconds_count{kind="${kind}"}`);
          const sum = metric(later, `nodejs_gc_duration_seconds_sum{kind="${kind}"}`) - metric(earlier, `nodejs_gc_duration_seconds_sum{kind="${kind}"}`);
          return `${kind} ${Number.isNaN(count) ? 0 : count}x ${Number.isNaN(sum) ? 0 : (sum * 1000).toFixed(0)} ms`;
        })
        .join(', ');
      const leader = metric(later, 'etcd_server_is_leader') === 1 ? 'leader' : 'follower';
      console.log(
        `  m${index + 1} (${leader}): ${perWrite(threads.total - previous.total).toFixed(0)} us/write (${names.map(([name, ticks]) => `${name} ${perWrite(ticks).toFixed(0)}`).join(', ')}); GC ${gc}; event loop delay p50 ${(metric(later, 'nodejs_eventloop_lag_p50_seconds') * 1000).toFixed(1)} p99 ${(metric(later, 'nodejs_eventloop_lag_p99_seconds') * 1000).toFixed(1)} max ${(metric(later, 'nodejs_eventloop_lag_max_seconds') * 1000).toFixed(1)} ms; heap used ${(metric(later, 'nodejs_heap_size_used_bytes') / 1048576).toFixed(0)} MiB; RSS ${(metric(later, 'process_resident_memory_bytes') / 1048576).toFixed(0)} MiB`,
      );
      const databaseWrites = metric(later, 'etcd_disk_backend_commit_duration_seconds_count') - metric(earlier, 'etcd_disk_backend_commit_duration_seconds_count');
      console.log(`    stages: ${stageSummary(later, earlier)}; applied batches written to the database ${databaseWrites} times`);
      const log = logs[index];
      if (log !== undefined) console.log(`    --trace-gc: ${pauseSummary(await tracedPauses(log, logOffsets[index] ?? 0)) || 'no pauses traced'}`);
    }
  } finally {
    clients.forEach((client) => client.close());
    await cluster.stop();
    await rm(directory, { recursive: true, force: true });
  }
}

await main();
