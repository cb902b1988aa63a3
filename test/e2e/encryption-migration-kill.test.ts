/**
 * Issue 9, faults: a plaintext member of a 3-member cluster restarted with a key file migrates
 * online; SIGKILLed in the middle of its sealing pass, it resumes on restart to 100%, every
 * acknowledged write is intact (HashKV equal across members) and no plaintext is left on its disk.
 * `rampart encryption status` is given one endpoint and reports every member.
 */
import { randomBytes } from 'node:crypto';
import { readdir, readFile } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import type { MemberEncryptionStatus } from '../../src/cli/encryption.js';
import { call, connect, type RawClient } from '../helpers/client.js';
import { etcdctl, rampartBin, removeDirectory, run, startCluster, temporaryDirectory, type Cluster, type ClusterMember } from '../helpers/processes.js';

describe('a migration killed mid-way', () => {
  let cluster: Cluster | undefined;
  let keyDirectory: string | undefined;
  afterAll(async () => {
    await cluster?.remove();
    if (keyDirectory !== undefined) await removeDirectory(keyDirectory);
  }, 120_000);

  it('resumes after a SIGKILL to 100%, with HashKV equal on every member; status from one endpoint covers all', async () => {
    cluster = await startCluster(3);
    keyDirectory = await temporaryDirectory('migration-kill-keys');
    const marker = `plain-${randomBytes(5).toString('hex')}`;
    const writer = connect(`127.0.0.1:${cluster.members[0]?.port}`);
    for (let batch = 0; batch < 20; batch++) {
      const success = Array.from({ length: 100 }, (_, index) => ({ request_put: { key: Buffer.from(`old/${batch}/${index}`), value: Buffer.from(`${marker}-${batch}-${index}`) } }));
      await call(writer.kv, 'Txn', { success });
    }
    writer.close();
    const isLeader = async (member: ClusterMember): Promise<boolean> => {
      const client = connect(`127.0.0.1:${member.port}`);
      try {
        const answer = await call(client.maintenance, 'Status', {}) as { leader: string; header: { member_id: string } };
        return answer.leader === answer.header.member_id;
      } finally {
        client.close();
      }
    };
    const leaders = await Promise.all(cluster.members.map(isLeader));
    const victim = cluster.members.find((_member, index) => leaders[index] === false) as ClusterMember;
    const survivors = cluster.members.filter((member) => member !== victim);
    const statusOf = async (endpoint: string): Promise<MemberEncryptionStatus[]> => {
      const result = await run(process.execPath, [rampartBin, 'encryption', 'status', '--json', '--endpoints', `http://${endpoint}`], { timeoutMs: 30_000 });
      expect(result.code, result.stderr).toBe(0);
      return result.stdout.trim().split('\n').map((line) => JSON.parse(line) as MemberEncryptionStatus);
    };

    // Acknowledged writes through the survivors the whole time; each one's last value is checked at the end.
    let running = true;
    const acknowledged = new Map<string, string>();
    const failures: string[] = [];
    const clients: RawClient[] = survivors.map((member) => connect(`127.0.0.1:${member.port}`));
    const loops = clients.map(async (client, index) => {
      for (let n = 0; running; n++) {
        const key = `new/${index}/${n % 40}`;
        const value = `${marker}-new-${index}-${n}`;
        try {
          await call(client.kv, 'Put', { key: Buffer.from(key), value: Buffer.from(value) });
          acknowledged.set(key, value);
        } catch (error) {
          failures.push(String(error));
        }
      }
    });
    const args = ['--encryption-key-file', path.join(keyDirectory, `${victim.name}.key`), '--encryption-reseal-rate', '200'];
    try {
      await victim.process?.stop();
      await cluster.start(victim, args);
      const victimEndpoint = `127.0.0.1:${victim.port}`;
      const during = (await statusOf(victimEndpoint)).find((status) => status.member === victim.name);
      expect(during?.encrypted).toBe(true);
      expect(during?.percent_resealed).toBeLessThan(100);
      await victim.process?.stop('SIGKILL');
      await new Promise((resolve) => setTimeout(resolve, 500));
      await cluster.start(victim, args);
      // One endpoint (a survivor, which is not encrypted) reports all three members.
      const deadline = Date.now() + 90_000;
      let statuses = await statusOf(`127.0.0.1:${survivors[0]?.port}`);
      expect(statuses.map((status) => status.member).sort()).toEqual(['m1', 'm2', 'm3']);
      let migrated = statuses.find((status) => status.member === victim.name);
      while (!(migrated?.percent_resealed === 100 && migrated.records_other === '0' && !migrated.reseal_running && !migrated.plaintext_on_disk)) {
        if (Date.now() > deadline) throw new Error(`the migration did not resume to 100%: ${JSON.stringify(migrated)}`);
        await new Promise((resolve) => setTimeout(resolve, 500));
        statuses = await statusOf(`127.0.0.1:${survivors[0]?.port}`);
        migrated = statuses.find((status) => status.member === victim.name);
      }
    } finally {
      running = false;
      await Promise.all(loops);
      for (const client of clients) client.close();
    }
    expect(failures).toEqual([]);
    expect(acknowledged.size).toBeGreaterThan(10);
    let parsed: { HashKV: { hash: number; header: { revision: number } } }[] = [];
    for (let attempt = 0; attempt < 20; attempt++) {
      parsed = JSON.parse((await etcdctl(cluster.endpoints, ['endpoint', 'hashkv', '-w', 'json'])).stdout) as typeof parsed;
      if (new Set(parsed.map((entry) => entry.HashKV.header.revision)).size === 1) break;
      await new Promise((resolve) => setTimeout(resolve, 250));
    }
    expect(parsed).toHaveLength(3);
    expect(new Set(parsed.map((entry) => entry.HashKV.hash)).size).toBe(1);
    const reader = connect(`127.0.0.1:${victim.port}`);
    try {
      for (const [key, value] of acknowledged) {
        const answer = await call(reader.kv, 'Range', { key: Buffer.from(key), serializable: true }) as { kvs: { value: Buffer }[] };
        expect(answer.kvs[0]?.value.toString(), key).toBe(value);
      }
      const old = await call(reader.kv, 'Range', { key: Buffer.from('old/19/99'), serializable: true }) as { kvs: { value: Buffer }[] };
      expect(old.kvs[0]?.value.toString()).toBe(`${marker}-19-99`);
    } finally {
      reader.close();
    }
    await victim.process?.stop();
    const leaks: string[] = [];
    for (const entry of await readdir(victim.dataDir, { withFileTypes: true, recursive: true })) {
      if (!entry.isFile()) continue;
      const file = path.join(entry.parentPath, entry.name);
      // The audit trail is sealed apart from the database (and was written in plaintext before the migration).
      if (file.includes(`${path.sep}audit${path.sep}`)) continue;
      if ((await readFile(file)).includes(Buffer.from(marker))) leaks.push(file);
    }
    expect(leaks).toEqual([]);
  }, 150_000);
});
