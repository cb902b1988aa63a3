/**
 * What a big index costs one secure member (`rampart up`'s command line, one member): loads KEYS
 * keys (1 KiB values, Txns of 16 puts), then a fixed load of single puts overwriting loaded keys
 * (RATE a second for SECONDS), then a restart until it answers a linearizable Range. Prints the
 * member's CPU per acknowledged write (main thread and other threads, from /proc), VmRSS after
 * the load and after the restart, the restart's time and CPU. For A/B runs of index changes.
 *
 *   node dist/bench/member-index-cost.js [keys=200000] [rate=500] [seconds=20]
 *
 * With NODE_OPTIONS="--cpu-prof --cpu-prof-dir=DIR" the member writes CPU profiles; this prints the
 * share of samples in "(garbage collector)" of each profile found in DIR.
 */
import { mkdtemp, readFile, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { kvClients, startRampartSecure, unary, type KvClient } from './secure-members.js';
import { loadKeys } from './load-keys.js';
import { memoryMiB, processTicks, ticksPerSecond } from './proc.js';

const keyCount = Number(process.argv[2] ?? 200_000);
const ratePerSecond = Number(process.argv[3] ?? 500);
const seconds = Number(process.argv[4] ?? 20);
const writeClients = 50;
const value = Buffer.alloc(1024, 'v');

function keyOf(index: number): Buffer {
  return Buffer.from(`/registry/pods/ns-${String(index % 97).padStart(3, '0')}/object-${String(index).padStart(9, '0')}`);
}

/** Single puts at a fixed rate over the loaded keys; returns the acknowledged count. */
async function writes(clients: KvClient[]): Promise<number> {
  const total = ratePerSecond * seconds;
  let next = 0;
  let acknowledged = 0;
  const started = performance.now();
  const worker = async (slot: number): Promise<void> => {
    const client = clients[slot % clients.length] as KvClient;
    for (;;) {
      const index = next++;
      if (index >= total) return;
      const wait = started + (index * 1000) / ratePerSecond - performance.now();
      if (wait > 0) await new Promise((resolve) => setTimeout(resolve, wait));
      await unary(client, 'Put', { key: keyOf((index * 7919) % keyCount), value }, 120_000).then(
        () => (acknowledged += 1),
        () => undefined,
      );
    }
  };
  await Promise.all(Array.from({ length: writeClients }, (_, slot) => worker(slot)));
  return acknowledged;
}

async function garbageCollectorShares(directory: string): Promise<string> {
  const shares: string[] = [];
  for (const file of (await readdir(directory)).filter((name) => name.endsWith('.cpuprofile'))) {
    const profile = JSON.parse(await readFile(path.join(directory, file), 'utf8')) as { nodes: { id: number; callFrame: { functionName: string } }[]; samples: number[] };
    const gcNodes = new Set(profile.nodes.filter((node) => node.callFrame.functionName === '(garbage collector)').map((node) => node.id));
    const idle = new Set(profile.nodes.filter((node) => node.callFrame.functionName === '(idle)').map((node) => node.id));
    const busy = profile.samples.filter((id) => !idle.has(id)).length;
    const gc = profile.samples.filter((id) => gcNodes.has(id)).length;
    shares.push(`${file}: GC ${((100 * gc) / Math.max(1, busy)).toFixed(1)}% of ${busy} busy samples`);
  }
  return shares.join('\n');
}

async function main(): Promise<void> {
  const directory = await mkdtemp(path.join(tmpdir(), 'member-index-'));
  const cluster = await startRampartSecure(directory, 1);
  const member = cluster.members[0];
  if (member === undefined) throw new Error('no member');
  const clients = kvClients(cluster.endpoints, cluster.credentials, 8);
  try {
    const loadStart = performance.now();
    await loadKeys(clients, keyCount, keyOf, value, 120_000);
    console.log(`load ${keyCount} keys: ${((performance.now() - loadStart) / 1000).toFixed(1)} s; VmRSS ${(await memoryMiB(member.pid())).resident.toFixed(0)} MiB`);
    const before = await processTicks(member.pid());
    const writeStart = performance.now();
    const acknowledged = await writes(clients);
    const writeSeconds = (performance.now() - writeStart) / 1000;
    const after = await processTicks(member.pid());
    const perWrite = (ticks: number): string => ((ticks * 10_000) / acknowledged).toFixed(0);
    console.log(
      `writes: ${acknowledged} acknowledged in ${writeSeconds.toFixed(1)} s (${(acknowledged / writeSeconds).toFixed(0)}/s); CPU ${perWrite(after.total - before.total)} us/write (main thread ${perWrite(after.main - before.main)}, other threads ${perWrite(after.total - before.total - (after.main - before.main))})`,
    );
    await member.stop();
    const restartStart = performance.now();
    await member.start();
    for (;;) {
      const [client] = kvClients([cluster.endpoints[0] as string], cluster.credentials, 1);
      try {
        await unary(client as KvClient, 'Range', { key: keyOf(0) }, 2_000);
        break;
      } catch {
        await new Promise((resolve) => setTimeout(resolve, 50));
      } finally {
        client?.close();
      }
    }
    const serving = await processTicks(member.pid());
    console.log(`restart: serving after ${((performance.now() - restartStart) / 1000).toFixed(1)} s, CPU ${(serving.total / ticksPerSecond).toFixed(1)} s (main thread ${(serving.main / ticksPerSecond).toFixed(1)} s); VmRSS ${(await memoryMiB(member.pid())).resident.toFixed(0)} MiB`);
  } finally {
    clients.forEach((client) => client.close());
    await cluster.stop();
    await rm(directory, { recursive: true, force: true });
  }
  const profiles = /--cpu-prof-dir=(\S+)/.exec(process.env.NODE_OPTIONS ?? '')?.[1];
  if (profiles !== undefined) console.log(await garbageCollectorShares(profiles));
}

await main();
