/**
 * Online DEK rotation on a 3-member encrypted cluster under a steady read/write load: `rampart
 * encryption rotate` once, every member rotates; zero failed requests; every member's re-seal pass
 * reaches 100% and the old DEK is deleted. A second rotation with a member SIGKILLed mid-pass
 * resumes to 100% after its restart, with HashKV equal across members. KEK rotation re-wraps
 * and the members restart with the new key file.
 */
import * as grpc from '@grpc/grpc-js';
import { randomBytes } from 'node:crypto';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readFile, stat } from 'node:fs/promises';
import { packageDefinition } from '../../src/api/proto.js';
import type { MemberEncryptionStatus } from '../../src/cli/encryption.js';
import { call, connect, type RawClient } from '../helpers/client.js';
import { etcdctl, rampartBin, removeDirectory, run, startCluster, temporaryDirectory, type Cluster } from '../helpers/processes.js';

const recordsPerTxn = 100;

/**
 * One member's encryption status from its Encryption service, in this process: the status CLI is a
 * process of its own, seconds to start on a loaded machine, longer than the re-seal pass it should
 * catch running.
 */
async function memberStatus(endpoint: string): Promise<MemberEncryptionStatus> {
  const loaded = grpc.loadPackageDefinition(packageDefinition) as unknown as { rampart: { Encryption: grpc.ServiceClientConstructor } };
  const client = new loaded.rampart.Encryption(endpoint, grpc.credentials.createInsecure()) as unknown as grpc.Client & {
    Status(request: object, options: grpc.CallOptions, callback: (error: grpc.ServiceError | null, response: MemberEncryptionStatus) => void): void;
  };
  try {
    return await new Promise((resolve, reject) => client.Status({}, { deadline: Date.now() + 20_000 }, (error, response) => (error === null ? resolve(response) : reject(error))));
  } finally {
    client.close();
  }
}

describe('online DEK rotation', () => {
  let cluster: Cluster;
  let keyDirectory: string;
  const endpoints = (): string => cluster.members.map((member) => `http://127.0.0.1:${member.port}`).join(',');
  const rampart = (args: string[]) => run(process.execPath, [rampartBin, ...args], { timeoutMs: 40_000 });
  const status = async (): Promise<MemberEncryptionStatus[]> => {
    const result = await rampart(['encryption', 'status', '--json', '--endpoints', endpoints()]);
    expect(result.code, result.stderr).toBe(0);
    return result.stdout.trim().split('\n').map((line) => JSON.parse(line) as MemberEncryptionStatus);
  };
  const allResealed = async (dek: number, timeoutMs: number): Promise<MemberEncryptionStatus[]> => {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const statuses = await status().catch(() => []);
      const done = statuses.length === 3 && statuses.every((member) => member.active_dek === dek && member.percent_resealed === 100 && member.deks.length === 1 && member.records_other === '0');
      if (done) return statuses;
      if (Date.now() > deadline) throw new Error(`not re-sealed within ${timeoutMs} ms: ${JSON.stringify(statuses)}`);
      await new Promise((resolve) => setTimeout(resolve, 500));
    }
  };

  /** Puts and ranges through every given member until stopped; counts what failed. */
  const load = (targets: readonly string[]) => {
    let running = true;
    let requests = 0;
    const failures: string[] = [];
    const clients: RawClient[] = targets.map((endpoint) => connect(endpoint));
    const loops = clients.map(async (client, index) => {
      for (let n = 0; running; n++) {
        const key = Buffer.from(`load/${index}/${n % 50}`);
        try {
          await call(client.kv, 'Put', { key, value: Buffer.from(`v${n}`) });
          await call(client.kv, 'Range', { key });
          requests += 2;
        } catch (error) {
          failures.push(String(error));
        }
      }
    });
    return {
      stop: async (): Promise<{ requests: number; failures: string[] }> => {
        running = false;
        await Promise.all(loops);
        clients.forEach((client) => client.close());
        return { requests, failures };
      },
    };
  };

  beforeAll(async () => {
    keyDirectory = await temporaryDirectory('rotation-key');
    // Development members (--insecure) encrypt when given a key file; each member has its own. A
    // slow re-seal rate, so that a pass is still running when a member is killed.
    cluster = await startCluster(3, ['--encryption-reseal-rate', '400'], (member) => ['--encryption-key-file', path.join(keyDirectory, `${member.name}.key`)]);
    const client = connect(cluster.members[0]?.process?.endpoint ?? '');
    try {
      for (let batch = 0; batch < 20; batch++) {
        const success = Array.from({ length: recordsPerTxn }, (_, index) => ({ request_put: { key: Buffer.from(`data/${batch}/${index}`), value: randomBytes(64) } }));
        await call(client.kv, 'Txn', { success });
      }
    } finally {
      client.close();
    }
  }, 60_000);

  afterAll(async () => {
    await cluster?.remove();
    if (keyDirectory !== undefined) await removeDirectory(keyDirectory);
  }, 60_000);

  it('rotates every member once, under load with zero failed requests, re-seals to 100% and deletes the old DEK', async () => {
    const before = await status();
    expect(before.map((member) => member.active_dek)).toEqual([1, 1, 1]);
    expect(before.every((member) => member.encrypted && member.percent_resealed === 100)).toBe(true);
    const running = load(cluster.members.map((member) => member.process?.endpoint ?? ''));
    await new Promise((resolve) => setTimeout(resolve, 500));
    const rotated = await rampart(['encryption', 'rotate', '--endpoints', endpoints()]);
    expect(rotated.code, rotated.stderr).toBe(0);
    const during = await status();
    expect(during.map((member) => member.active_dek)).toEqual([2, 2, 2]);
    const after = await allResealed(2, 60_000);
    const { requests, failures } = await running.stop();
    expect(failures).toEqual([]);
    expect(requests).toBeGreaterThan(50);
    expect(after.map((member) => member.deks.map((dek) => dek.id))).toEqual([[2], [2], [2]]);
  }, 120_000);

  it('resumes a re-seal pass after a SIGKILL and ends with HashKV equal on every member', async () => {
    // A follower: killing the leader fails the requests in flight (leader changed), rotation or not.
    const leaderOf = async (endpoint: string): Promise<boolean> => {
      const client = connect(endpoint);
      try {
        const answer = await call(client.maintenance, 'Status', {}) as { leader: string; header: { member_id: string } };
        return answer.leader === answer.header.member_id;
      } finally {
        client.close();
      }
    };
    const leaders = await Promise.all(cluster.members.map((member) => leaderOf(member.process?.endpoint ?? '')));
    const victim = cluster.members.find((_member, index) => leaders[index] === false);
    if (victim === undefined) throw new Error('no follower');
    const survivors = cluster.members.filter((member) => member !== victim).map((member) => member.process?.endpoint ?? '');
    const running = load(survivors);
    const rotated = await rampart(['encryption', 'rotate', '--endpoints', endpoints()]);
    expect(rotated.code, rotated.stderr).toBe(0);
    // Kill it while its pass is still running (2,000+ records at 400 per second).
    const victimStatus = await memberStatus(victim.process?.endpoint ?? '');
    expect(victimStatus.member).toBe(victim.name);
    expect(victimStatus?.active_dek).toBe(3);
    expect(victimStatus?.percent_resealed).toBeLessThan(100);
    await victim.process?.stop('SIGKILL');
    await new Promise((resolve) => setTimeout(resolve, 500));
    await cluster.start(victim);
    await allResealed(3, 90_000);
    const { failures } = await running.stop();
    expect(failures).toEqual([]);
    // Every member holds the same data (each sealed under its own keys): HashKV over plaintext agrees.
    let parsed: { HashKV: { hash: number; header: { revision: number } } }[] = [];
    for (let attempt = 0; attempt < 20; attempt++) {
      parsed = JSON.parse((await etcdctl(cluster.endpoints, ['endpoint', 'hashkv', '-w', 'json'])).stdout) as typeof parsed;
      if (new Set(parsed.map((entry) => entry.HashKV.header.revision)).size === 1) break;
      await new Promise((resolve) => setTimeout(resolve, 250));
    }
    expect(parsed).toHaveLength(3);
    expect(new Set(parsed.map((entry) => entry.HashKV.header.revision)).size).toBe(1);
    expect(new Set(parsed.map((entry) => entry.HashKV.hash)).size).toBe(1);
  }, 150_000);

  it('re-wraps the DEKs under a new KEK (rotate --kek); a restarted member opens them with its new key file', async () => {
    const before = await status();
    const keyBefore = await readFile(path.join(keyDirectory, 'm3.key'));
    const rotated = await rampart(['encryption', 'rotate', '--kek', '--endpoints', endpoints()]);
    expect(rotated.code, rotated.stderr).toBe(0);
    const deadline = Date.now() + 60_000;
    let after = await status();
    while (after.some((member, index) => member.kek_id === before[index]?.kek_id) && Date.now() < deadline) {
      await new Promise((resolve) => setTimeout(resolve, 300));
      after = await status();
    }
    expect(after.every((member, index) => member.kek_id !== before[index]?.kek_id && member.deks.every((dek) => dek.kek_id === member.kek_id))).toBe(true);
    expect((await readFile(path.join(keyDirectory, 'm3.key'))).equals(keyBefore)).toBe(false);
    expect((await stat(path.join(keyDirectory, 'm3.key'))).mode & 0o777).toBe(0o600);
    const member = cluster.members[2];
    if (member === undefined) throw new Error('no member');
    await member.process?.stop();
    await cluster.start(member);
    const restarted = (await status()).find((entry) => entry.member === member.name);
    expect(restarted?.kek_id).toBe(after[2]?.kek_id);
    const read = await etcdctl(member.process?.endpoint ?? '', ['get', 'data/3/7', '--print-value-only']);
    expect(read.code).toBe(0);
    expect(read.stdout.length).toBeGreaterThan(0);
  }, 150_000); // five status CLI processes and a member restart: 55-60 s at load average 30

  it('rotate --wait returns once every member has re-sealed everything and deleted the old DEK, with progress lines', async () => {
    const before = await status();
    const waited = await run(process.execPath, [rampartBin, 'encryption', 'rotate', '--wait', '--endpoints', endpoints()], { timeoutMs: 90_000 });
    expect(waited.code, waited.stderr).toBe(0);
    // Thousands of records at 400 a second: the pass takes seconds, so progress lines were printed.
    expect(waited.stderr).toMatch(/^re-sealing: m\d [\d.]+%, m\d [\d.]+%, m\d [\d.]+%, \d+ s$/m);
    const lines = waited.stdout.trim().split('\n');
    expect(lines).toHaveLength(3);
    const dek = (before[0]?.active_dek ?? 0) + 1;
    for (const line of lines) expect(line).toContain(`active dek ${dek}; dek ${dek}: `);
    // Done means done: asked right after, every member is finished, nothing to poll for.
    const after = await status();
    expect(after.every((member) => member.active_dek === dek && member.percent_resealed === 100 && !member.reseal_running && member.deks.map((entry) => entry.id).join() === String(dek))).toBe(true);
  }, 120_000);
});
