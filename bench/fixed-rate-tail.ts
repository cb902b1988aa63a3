/**
 * Where the fixed-rate phase's slowest 1% comes from: after a warm-up, RATE puts a second for
 * SECONDS over 200 clients on BENCH_CONNECTIONS connections (default 8; as `npm run bench`: 256 B keys, 1 KiB values, latency from each put's
 * scheduled start) to a secure 3-member cluster, each put stamped with its completion time (wall
 * clock, ms) and the member its client talks to. Prints p50/p99 for clients on the leader and on
 * followers, then the slow puts (over the phase's p99) grouped into bursts by completion time
 * (a gap of more than 100 ms ends a burst), with each burst's share of the slow puts, so a
 * periodic stall (a snapshot, a log segment roll, a GC, a sync) shows as a few dense bursts to
 * match against the members' own stamps, while a saturated machine shows as slow puts everywhere.
 *
 *   node dist/bench/fixed-rate-tail.js [rate=1000] [seconds=20]
 *
 * BENCH_TARGET=etcd runs it against etcd on the same certificates instead; BENCH_TAIL_CSV=FILE
 * writes every put (completed ms, latency ms, member) there; BENCH_RAMPART_ARGS, BENCH_UP_ARGS and
 * BENCH_MEMBER_OUTPUT_DIR as in fixed-rate-cost.
 */
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { PerformanceObserver } from 'node:perf_hooks';
import path from 'node:path';
import { fixedRatePhase, quantile, warmupSeconds } from './bench.js';
import { kvClients, metric, scrape, startEtcdSecure, startRampartSecure, type KvClient } from './secure-members.js';

const ratePerSecond = Number(process.argv[2] ?? 1000);
const seconds = Number(process.argv[3] ?? 20);
const fixedClients = 200;
/** Connections the 200 clients share: as `npm run bench` (BENCH_CONNECTIONS, default 8), client `slot` on connection `slot % connections`. */
const connections = Number(process.env.BENCH_CONNECTIONS ?? 8);
const burstGapMs = 100;

interface Stamp {
  readonly completedMs: number;
  readonly latencyMs: number;
  readonly member: number;
}

/** The load generator's own stalls (it shares the cores): its event loop held, its GC pauses. */
function watchGenerator(): { events: { atMs: number; what: string }[]; stop(): void } {
  const events: { atMs: number; what: string }[] = [];
  let last = performance.now();
  const timer = setInterval(() => {
    const now = performance.now();
    if (now - last > 30) events.push({ atMs: Date.now(), what: `loop held ${(now - last - 10).toFixed(0)} ms` });
    last = now;
  }, 10);
  const observer = new PerformanceObserver((list) => {
    for (const entry of list.getEntries()) if (entry.duration >= 10) events.push({ atMs: Date.now(), what: `GC ${(entry as unknown as { detail?: { kind?: number } }).detail?.kind ?? '?'} ${entry.duration.toFixed(0)} ms` });
  });
  observer.observe({ entryTypes: ['gc'] });
  return {
    events,
    stop: () => {
      clearInterval(timer);
      observer.disconnect();
    },
  };
}

/** bench.ts's fixedRatePhase, keeping each put's completion time (wall clock) and member. */
async function stampedPhase(clients: readonly KvClient[], memberCount: number, rate: number, durationSeconds: number): Promise<{ stamps: Stamp[]; errors: number }> {
  const stamps: Stamp[] = [];
  const origin = Date.now() - performance.now();
  const result = await fixedRatePhase(clients, rate, fixedClients, durationSeconds, 'Put', (slot, scheduled, completed, ok) => {
    if (ok) stamps.push({ completedMs: origin + completed, latencyMs: completed - scheduled, member: (slot % clients.length) % memberCount });
  });
  return { stamps, errors: result.errors };
}

function latencySummary(stamps: readonly Stamp[]): string {
  const sorted = stamps.map((stamp) => stamp.latencyMs).sort((a, b) => a - b);
  return `${sorted.length} puts, p50 ${quantile(sorted, 0.5).toFixed(1)} p99 ${quantile(sorted, 0.99).toFixed(1)} p99.9 ${quantile(sorted, 0.999).toFixed(1)} ms`;
}

/** Busy and total clock ticks of the whole machine (/proc/stat), to tell a quiet run from one shared with other load. */
async function machineTicks(): Promise<{ busy: number; total: number }> {
  const fields = ((await readFile('/proc/stat', 'utf8')).split('\n')[0] ?? '').split(/\s+/).slice(1, 9).map(Number);
  const total = fields.reduce((a, b) => a + b, 0);
  return { busy: total - (fields[3] ?? 0) - (fields[4] ?? 0), total };
}

function clock(ms: number): string {
  return new Date(ms).toISOString().slice(11, 23);
}

async function main(): Promise<void> {
  const directory = await mkdtemp(path.join(tmpdir(), 'fixed-rate-tail-'));
  const rampartArgs = (process.env.BENCH_RAMPART_ARGS ?? '').split(' ').filter(Boolean);
  const upArgs = (process.env.BENCH_UP_ARGS ?? '').split(' ').filter(Boolean);
  const etcd = process.env.BENCH_TARGET === 'etcd';
  const started = await startRampartSecure(directory, 3, rampartArgs, upArgs).catch(async (error: unknown) => {
    await rm(directory, { recursive: true, force: true });
    throw error;
  });
  let cluster = started;
  if (etcd) {
    await started.stop();
    cluster = await startEtcdSecure(directory, 3);
  }
  const clients = kvClients(cluster.endpoints, cluster.credentials, connections);
  try {
    await fixedRatePhase(clients, ratePerSecond, fixedClients, warmupSeconds); // warm-up: connections, a leader, V8's JIT
    const busyBefore = await machineTicks();
    const generator = watchGenerator();
    const { stamps, errors } = await stampedPhase(clients, cluster.endpoints.length, ratePerSecond, seconds);
    generator.stop();
    const busyAfter = await machineTicks();
    const busyPercent = (100 * (busyAfter.busy - busyBefore.busy)) / (busyAfter.total - busyBefore.total);
    let leader = -1;
    if (!etcd) {
      const pki = path.join(directory, 'pki');
      const tls = { ca: await readFile(path.join(pki, 'ca.crt')), cert: await readFile(path.join(pki, 'admin.crt')), key: await readFile(path.join(pki, 'admin.key')) };
      const texts = await Promise.all(cluster.endpoints.map((endpoint) => scrape(Number(endpoint.split(':')[1]) + 2, tls)));
      leader = texts.findIndex((text) => metric(text, 'etcd_server_is_leader') === 1);
    }
    const sorted = stamps.map((stamp) => stamp.latencyMs).sort((a, b) => a - b);
    const threshold = quantile(sorted, 0.99);
    console.log(`${etcd ? 'etcd' : 'rampart'} fixed ${ratePerSecond}/s for ${seconds} s: ${latencySummary(stamps)}, errors ${errors}; machine ${busyPercent.toFixed(0)}% busy over the phase (all processes)`);
    for (let member = 0; member < cluster.endpoints.length; member++) {
      const mine = stamps.filter((stamp) => stamp.member === member);
      const slow = mine.filter((stamp) => stamp.latencyMs > threshold).length;
      console.log(`  m${member + 1}${member === leader ? ' (leader)' : ''}: ${latencySummary(mine)}; ${slow} over the phase's p99`);
    }
    const slow = stamps.filter((stamp) => stamp.latencyMs > threshold).sort((a, b) => a.completedMs - b.completedMs);
    const bursts: Stamp[][] = [];
    for (const stamp of slow) {
      const last = bursts[bursts.length - 1];
      const previous = last?.[last.length - 1];
      if (last !== undefined && previous !== undefined && stamp.completedMs - previous.completedMs <= burstGapMs) last.push(stamp);
      else bursts.push([stamp]);
    }
    const first = stamps.reduce((min, stamp) => Math.min(min, stamp.completedMs), Infinity);
    console.log(`  ${slow.length} puts over p99 (${threshold.toFixed(1)} ms) in ${bursts.length} bursts (completions within ${burstGapMs} ms), largest first:`);
    for (const burst of [...bursts].sort((a, b) => b.length - a.length).slice(0, 12)) {
      const head = burst[0] as Stamp;
      const tail = burst[burst.length - 1] as Stamp;
      const worst = Math.max(...burst.map((stamp) => stamp.latencyMs));
      const byMember = Array.from({ length: cluster.endpoints.length }, (_, member) => burst.filter((stamp) => stamp.member === member).length).join('/');
      // The stall began about when the burst's worst put was scheduled.
      const stallFrom = head.completedMs - head.latencyMs;
      console.log(
        `    ${clock(head.completedMs)}-${clock(tail.completedMs)} (+${((head.completedMs - first) / 1000).toFixed(2)} s): ${burst.length} slow, worst ${worst.toFixed(0)} ms, by member ${byMember}; first one scheduled ${clock(stallFrom)}`,
      );
      const during = generator.events.filter((event) => event.atMs >= stallFrom && event.atMs <= tail.completedMs);
      if (during.length > 0) console.log(`      load generator meanwhile: ${during.map((event) => `${clock(event.atMs)} ${event.what}`).join(', ')}`);
    }
    const held = generator.events.filter((event) => event.what.startsWith('loop'));
    console.log(`  load generator over the phase: ${held.length} event-loop holds > 30 ms (longest ${Math.max(0, ...held.map((event) => Number(/held (\d+)/.exec(event.what)?.[1] ?? 0)))} ms), ${generator.events.length - held.length} GC pauses >= 10 ms`);
    const csv = process.env.BENCH_TAIL_CSV;
    if (csv !== undefined) await writeFile(csv, `completed_ms,latency_ms,member\n${stamps.map((stamp) => `${stamp.completedMs.toFixed(1)},${stamp.latencyMs.toFixed(2)},${stamp.member}`).join('\n')}\n`);
  } finally {
    clients.forEach((client) => client.close());
    await cluster.stop();
    await rm(directory, { recursive: true, force: true });
  }
}

await main();
