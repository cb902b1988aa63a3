/**
 * A follower that needs a snapshot of a large state gets it in bounded chunks (a LevelDB view on the
 * leader, staged on disk by the follower, moved into place crash-safely) and rejoins; its RSS while
 * installing is sampled and reported. Installing ~70,000 keys used to crash with
 * `RangeError: Maximum call stack size exceeded` (issue 10, bug 3).
 *
 * CI: 100,000 small keys, 64 KiB chunks (dozens of chunks). `RAMPART_BIG_SNAPSHOT=1`: 500,000 keys
 * of 1 KiB (the size), 1 MiB chunks (the default).
 */
import { readFileSync } from 'node:fs';
import { status as grpcStatus } from '@grpc/grpc-js';
import { afterEach, describe, expect, it } from 'vitest';
import { call, connect, leaderOf, type RawClient } from '../helpers/client.js';
import { etcdctl, startCluster, type Cluster, type ClusterMember } from '../helpers/processes.js';

const big = process.env.RAMPART_BIG_SNAPSHOT === '1';
const keysCount = big ? 500_000 : 100_000;
const valueBytes = big ? 1024 : 16;
const chunkBytes = big ? 1024 * 1024 : 64 * 1024;
const putsPerTxn = 128;

const endpointOf = (member: ClusterMember): string => `127.0.0.1:${member.port}`;


/** Writes keys in transactions of `putsPerTxn` puts, several in flight, retrying when briefly unavailable. */
async function load(client: RawClient, count: number): Promise<void> {
  const value = Buffer.alloc(valueBytes, 0x61);
  let next = 0;
  await Promise.all(
    Array.from({ length: 8 }, async () => {
      while (next < count) {
        const first = next;
        next = Math.min(count, next + putsPerTxn);
        const success = [];
        for (let index = first; index < next; index++) {
          success.push({ request_put: { key: Buffer.from(`big/${String(index).padStart(7, '0')}`), value } });
        }
        for (let attempt = 0; ; attempt++) {
          try {
            await call(client.kv, 'Txn', { compare: [], success, failure: [] });
            break;
          } catch (error) {
            if ((error as { code?: number }).code !== grpcStatus.UNAVAILABLE || attempt >= 10) throw error;
            await new Promise((resolve) => setTimeout(resolve, 200));
          }
        }
      }
    }),
  );
}

function residentBytes(pid: number): number {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  const match = /VmRSS:\s+(\d+) kB/.exec(status);
  return match === null ? 0 : Number(match[1]) * 1024;
}

describe('snapshot transfer', () => {
  let cluster: Cluster | undefined;

  afterEach(async () => {
    await cluster?.remove();
    cluster = undefined;
  });

  it(`a follower that needs a snapshot of ${keysCount} keys installs it in chunks and rejoins, with bounded RSS`, async () => {
    cluster = await startCluster(3, ['--snapshot-count', '200', '--snapshot-catch-up-entries', '50', '--snapshot-chunk-bytes', String(chunkBytes)]);
    const leader = await leaderOf(cluster);
    const lagging = cluster.members.find((member) => member !== leader) as ClusterMember;
    await lagging.process?.stop();
    const client = connect(endpointOf(leader));
    const loadStarted = Date.now();
    try {
      await load(client, keysCount);
      // Enough entries after the load that the leader's log no longer reaches back to the follower.
      for (let index = 0; index < 300; index++) await call(client.kv, 'Put', { key: Buffer.from('tail'), value: Buffer.from(String(index)) });
    } finally {
      client.close();
    }
    const loadMs = Date.now() - loadStarted;
    // The reference: the leader holds the same state (the MVCC store keeps every live value in memory).
    const leaderBytes = residentBytes(leader.process?.child.pid as number);

    const installStarted = Date.now();
    const restarted = await cluster.start(lagging, ['--log-level', 'info']);
    const pid = restarted.child.pid as number;
    const baselineBytes = residentBytes(pid);
    let peakBytes = baselineBytes;
    const sampler = setInterval(() => {
      try {
        peakBytes = Math.max(peakBytes, residentBytes(pid));
      } catch {
        // exited; the wait below reports it
      }
    }, 50);
    try {
      const deadline = Date.now() + (big ? 600_000 : 90_000);
      for (;;) {
        if (restarted.child.exitCode !== null) throw new Error(`the follower exited (${restarted.child.exitCode}):\n${restarted.output().slice(-3000)}`);
        const read = await etcdctl(endpointOf(lagging), ['get', 'tail', '--print-value-only', '--consistency=s']);
        if (read.stdout === '299\n') break;
        if (Date.now() > deadline) throw new Error(`the follower did not catch up:\n${restarted.output().slice(-3000)}`);
        await new Promise((resolve) => setTimeout(resolve, 200));
      }
    } finally {
      clearInterval(sampler);
    }
    const installMs = Date.now() - installStarted;
    const output = restarted.output();
    const staged = output.split('\n').find((line) => line.includes('snapshot from leader staged'));
    expect(staged, output.slice(-3000)).toBeDefined();
    const stagedRecord = JSON.parse(staged as string) as { records: number; chunks: number; bytes: number; ms: number };
    const { records, chunks, bytes, ms: stagingMs } = stagedRecord;
    console.log(`snapshot transfer: ${JSON.stringify({ keys: keysCount, valueBytes, chunkBytes, loadMs, installMs, records, chunks, bytes, stagingMs, baselineRssMiB: Math.round(baselineBytes / 2 ** 20), peakRssMiB: Math.round(peakBytes / 2 ** 20), leaderRssMiB: Math.round(leaderBytes / 2 ** 20) })}`);
    // Chunked: many chunks, each within a record of the limit.
    expect(stagedRecord.chunks).toBeGreaterThanOrEqual(big ? 100 : 24);
    expect(stagedRecord.records).toBeGreaterThan(keysCount);
    expect(output).toContain('installed snapshot from leader');
    expect(output).not.toContain('RangeError');
    // Memory: installing costs about what holding the state costs the leader; the old install held
    // the whole snapshot as one buffer, one decoded array and one batch on top of that.
    expect(peakBytes).toBeLessThan(leaderBytes * 1.5 + 100 * 2 ** 20);
    const count = await etcdctl(endpointOf(lagging), ['get', 'big/', '--prefix', '--keys-only', '--limit', '1', '-w', 'json', '--consistency=s']);
    expect((JSON.parse(count.stdout) as { count: number }).count).toBe(keysCount);
  }, big ? 1_800_000 : 240_000);
});
