/**
 * A whole restart of one secure member on a kept data directory, repeatable and A/B-able (issue 13).
 * bench/scale.ts loads 500,000 keys (minutes) for each restart it measures; this loads once and then
 * restarts the same member again and again, with this build or another one.
 *
 *   node dist/bench/restart-member.js load <directory> [keys=500000]
 *       `rampart up` of one member in <directory>, KEYS keys loaded as bench/scale.ts loads them
 *       (1 KiB values under five /registry/ prefixes, Txns of 16 puts, 32 in flight), the member's
 *       command line saved to <directory>/member.json, the member stopped (SIGTERM).
 *   node dist/bench/restart-member.js restart <directory> [project root=this build's]
 *       starts the member with the saved command line (the root's bin/rampart.js), times it until it
 *       answers a linearizable Range, reads its CPU then (all threads, and the main thread, from
 *       /proc), counts the keys, then stops it (SIGTERM) and times the stop and its CPU.
 */
import { spawn } from 'node:child_process';
import { readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { adminCredentials, environment, kvClients, startRampartSecure, unary, waitForPort, type KvClient } from './secure-members.js';
import { loadKeys } from './load-keys.js';
import { loadAverage, processTicks, ticksPerSecond } from './proc.js';

const prefixes = ['/registry/pods/', '/registry/configmaps/', '/registry/events/', '/registry/services/specs/', '/registry/deployments/'];

function keyOf(index: number): Buffer {
  const prefix = prefixes[index % prefixes.length] as string;
  return Buffer.from(`${prefix}ns-${String(index % 97).padStart(3, '0')}/object-${String(index).padStart(9, '0')}`);
}

interface Saved {
  readonly line: string[];
  readonly clientPort: number;
  readonly pki: string;
}

async function load(directory: string, keyCount: number): Promise<void> {
  const cluster = await startRampartSecure(directory, 1);
  try {
    const member = cluster.members[0];
    if (member === undefined) throw new Error('no member');
    const line = (await readFile(`/proc/${member.pid()}/cmdline`, 'utf8')).split('\0').filter((part) => part !== '');
    const clientPort = Number((cluster.endpoints[0] as string).split(':')[1]);
    const clients = kvClients(cluster.endpoints, cluster.credentials, 8);
    const loadSeconds = await loadKeys(clients, keyCount, keyOf, Buffer.alloc(1024, 'v'), 120_000);
    clients.forEach((client) => client.close());
    const saved: Saved = { line, clientPort, pki: path.join(directory, 'pki') };
    await writeFile(path.join(directory, 'member.json'), JSON.stringify(saved));
    console.log(`loaded ${keyCount} keys in ${loadSeconds.toFixed(1)} s`);
  } finally {
    await cluster.stop();
  }
}

async function restart(directory: string, root: string): Promise<void> {
  const saved = JSON.parse(await readFile(path.join(directory, 'member.json'), 'utf8')) as Saved;
  const script = saved.line.findIndex((part) => part.endsWith('bin/rampart.js'));
  const line = saved.line.map((part, index) => (index === script ? path.join(root, 'bin/rampart.js') : part));
  const started = performance.now();
  const child = spawn(line[0] as string, [...line.slice(1), '--log-level', 'error'], { env: environment(), stdio: 'ignore' });
  try {
    await waitForPort(saved.clientPort, child, 300_000);
    const creds = await adminCredentials(saved.pki);
    const endpoint = `127.0.0.1:${saved.clientPort}`;
    let serving = 0;
    for (;;) {
      const [client] = kvClients([endpoint], creds, 1);
      try {
        await unary(client as KvClient, 'Range', { key: keyOf(0) }, 2_000);
        serving = performance.now();
        break;
      } catch {
        await new Promise((resolve) => setTimeout(resolve, 50));
      } finally {
        client?.close();
      }
    }
    const atServing = await processTicks(child.pid as number);
    const [client] = kvClients([endpoint], creds, 1);
    const end = Buffer.from('/registry0');
    const counted = await unary(client as KvClient, 'Range', { key: Buffer.from('/registry/'), range_end: end, count_only: true }, 120_000);
    client?.close();
    const beforeStop = await processTicks(child.pid as number);
    let last = beforeStop;
    const stopping = performance.now();
    const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
    child.kill('SIGTERM');
    let done = false;
    void exited.then(() => (done = true));
    while (!done) {
      last = await processTicks(child.pid as number).catch(() => last);
      await Promise.race([exited, new Promise((resolve) => setTimeout(resolve, 20))]);
    }
    const stopped = performance.now();
    const load = await loadAverage();
    console.log(`${root}: serving after ${((serving - started) / 1000).toFixed(2)} s, CPU ${(atServing.total / ticksPerSecond).toFixed(2)} s (main thread ${(atServing.main / ticksPerSecond).toFixed(2)} s); ` +
      `${String(counted.count)} keys; stop ${((stopped - stopping) / 1000).toFixed(2)} s, CPU ~${((last.total - beforeStop.total) / ticksPerSecond).toFixed(2)} s; load average ${load}`);
  } finally {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  }
}

const [mode, directory, extra] = process.argv.slice(2);
if (directory === undefined || (mode !== 'load' && mode !== 'restart')) {
  process.stderr.write('usage: node dist/bench/restart-member.js load <directory> [keys] | restart <directory> [project root]\n');
  process.exit(2);
}
if (mode === 'load') await load(path.resolve(directory), Number(extra ?? 500_000));
else await restart(path.resolve(directory), path.resolve(extra ?? path.join(path.dirname(fileURLToPath(import.meta.url)), '../..')));
