/**
 * What the audit trail's writer costs in-process, for A/B pairs of builds: an AuditLog (sealed
 * under a trail key, as a member encrypting at rest writes it; BENCH_PLAIN=1 for a plaintext one)
 * records RATE events a second (a Put's event, 256 B key) from a 1 ms timer, as a member's apply
 * batches do, for SECONDS after a 1 s warm-up; meanwhile another process writes 8 KiB and
 * fdatasyncs it in a loop on the same disk (a member's Raft log and LevelDB; BENCH_DISK_LOAD=0 to
 * leave it out). Prints each event's latency (recorded until durable: what a write's answer waits
 * for), the main thread's CPU per event from /proc and the event loop's delay (how long the rest
 * of a member would wait behind the trail). BENCH_LOOP_BUSY_MS=N keeps the event loop busy N ms each
 * turn (a timer that spins, as a loaded member's other work) and records each millisecond's events
 * from a setImmediate callback, as the Raft loop applies a batch and answers its writes.
 *
 *   node dist/bench/audit-trail-cost.js ROUNDS SECONDS RATE BUILD_ROOT...
 *
 * Each run is its own process; builds alternate, their order reversed every round.
 */
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { loadavg, tmpdir } from 'node:os';
import path from 'node:path';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { processTicks } from './proc.js';

interface Trail {
  record(fields: { action: string; targets: string[]; outcome: string; user: string }): Promise<void>;
  close(): Promise<void>;
}
interface TrailModule {
  readonly AuditLog: { open(directory: string, member: string, onError: (error: unknown) => void, options: object): Promise<Trail> };
}

/** A member's other synced writes on the same disk, while `seconds` last. */
const diskLoad = `
const fs = require('node:fs');
const [file, seconds] = process.argv.slice(1);
const fd = fs.openSync(file, 'w');
const block = Buffer.alloc(8192, 1);
const end = Date.now() + Number(seconds) * 1000;
for (let position = 0; Date.now() < end; position = position > 64 << 20 ? 0 : position + block.length) {
  fs.writeSync(fd, block, 0, block.length, position);
  fs.fdatasyncSync(fd);
}
fs.closeSync(fd);
fs.unlinkSync(file);
`;

async function child(root: string, seconds: number, rate: number): Promise<void> {
  const { AuditLog } = (await import(pathToFileURL(path.join(root, 'dist/src/audit/log.js')).href)) as TrailModule;
  const directory = await mkdtemp(path.join(tmpdir(), 'audit-trail-cost-'));
  try {
    const options = process.env.BENCH_PLAIN === '1' ? {} : { key: { id: '0011223344556677', key: randomBytes(32) } };
    const trail = await AuditLog.open(directory, 'm1', (error) => console.error('the trail failed:', error), options);
    const key = 'k'.repeat(256);
    const latencies: number[] = [];
    const busyMs = Number(process.env.BENCH_LOOP_BUSY_MS ?? 0);
    const busy = busyMs > 0 ? setInterval(() => {
      for (const until = performance.now() + busyMs; performance.now() < until;);
    }, 0) : undefined;
    const recordFor = async (ms: number): Promise<number> => {
      const pending: Promise<void>[] = [];
      const start = performance.now();
      let sent = 0;
      await new Promise<void>((resolve) => {
        const recordDue = (): void => {
          for (const due = Math.floor(((performance.now() - start) / 1000) * rate); sent < due; sent++) {
            const began = performance.now();
            pending.push(trail.record({ action: 'kv.put', targets: [key], outcome: 'allowed', user: 'root' }).then(() => void latencies.push(performance.now() - began)));
          }
        };
        const timer = setInterval(() => {
          if (busyMs > 0) setImmediate(recordDue);
          else recordDue();
          if (performance.now() - start >= ms) {
            clearInterval(timer);
            resolve();
          }
        }, 1);
      });
      await Promise.all(pending);
      return sent;
    };
    await recordFor(1000);
    latencies.length = 0;
    const delay = monitorEventLoopDelay({ resolution: 1 });
    delay.enable();
    const before = (await processTicks('self')).main;
    const events = await recordFor(seconds * 1000);
    const cpuUs = ((await processTicks('self')).main - before) * 10_000;
    delay.disable();
    if (busy !== undefined) clearInterval(busy);
    await trail.close();
    latencies.sort((a, b) => a - b);
    const at = (quantile: number): string => (latencies[Math.min(latencies.length - 1, Math.floor(latencies.length * quantile))] ?? 0).toFixed(1);
    console.log(`${events} events, latency p50 ${at(0.5)} p99 ${at(0.99)} max ${at(1)} ms, main thread ${(cpuUs / events).toFixed(1)} us/event, event loop delay p99 ${(delay.percentile(99) / 1e6).toFixed(1)} max ${(delay.max / 1e6).toFixed(1)} ms`);
  } finally {
    await rm(directory, { recursive: true, force: true });
  }
}

async function runOne(root: string, seconds: number, rate: number): Promise<string> {
  const noiseFile = path.join(tmpdir(), `audit-trail-cost-disk-${process.pid}`);
  const noise = process.env.BENCH_DISK_LOAD === '0' ? undefined : spawn(process.execPath, ['-e', diskLoad, noiseFile, String(seconds + 3)], { stdio: 'ignore' });
  try {
    const run = spawn(process.execPath, [fileURLToPath(import.meta.url), '--child', root, String(seconds), String(rate)], { stdio: ['ignore', 'pipe', 'inherit'] });
    let output = '';
    run.stdout.on('data', (chunk: Buffer) => (output += chunk.toString('utf8')));
    await new Promise((resolve) => run.once('exit', resolve));
    return output.trim();
  } finally {
    if (noise !== undefined && noise.exitCode === null) {
      noise.kill('SIGTERM');
      await new Promise((resolve) => noise.once('exit', resolve));
    }
    await rm(noiseFile, { force: true });
  }
}

if (process.argv[2] === '--child') {
  await child(process.argv[3] as string, Number(process.argv[4]), Number(process.argv[5]));
} else {
  const rounds = Number(process.argv[2] ?? 3);
  const seconds = Number(process.argv[3] ?? 6);
  const rate = Number(process.argv[4] ?? 2000);
  const roots = process.argv.slice(5);
  for (let round = 0; round < rounds; round++) {
    for (const root of round % 2 === 0 ? roots : [...roots].reverse()) {
      const load = (loadavg()[0] ?? 0).toFixed(1);
      console.log(`round ${round + 1} ${root} (load ${load}): ${await runOne(root, seconds, rate)}`);
    }
  }
}
