/**
 * Migration of a member that kept plaintext: restarted with a key file, it serves at once (reads of
 * plaintext records, writes sealed) while a background pass seals the rest under a steady load with
 * zero failed requests; at 100% no file under its data directory holds a value in plaintext.
 * And the automatic rotation schedule.
 */
import { randomBytes } from 'node:crypto';
import { readdir, readFile } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import type { MemberEncryptionStatus } from '../../src/cli/encryption.js';
import { call, connect } from '../helpers/client.js';
import { etcdctl, rampartBin, removeDirectory, run, startRampart, temporaryDirectory, type ServerProcess } from '../helpers/processes.js';

describe('migrating a plaintext member to encryption at rest', () => {
  let directory: string | undefined;
  let member: ServerProcess | undefined;

  afterAll(async () => {
    await member?.stop();
    if (directory !== undefined) await removeDirectory(directory);
  }, 30_000);

  it('seals every record online under load and leaves no plaintext on disk', async () => {
    directory = await temporaryDirectory('migration');
    const dataDir = path.join(directory, 'data');
    const marker = `plain-${randomBytes(5).toString('hex')}`;
    member = await startRampart({ dataDir });
    const client = connect(member.endpoint);
    for (let batch = 0; batch < 15; batch++) {
      const success = Array.from({ length: 100 }, (_, index) => ({ request_put: { key: Buffer.from(`old/${batch}/${index}`), value: Buffer.from(`${marker}-${batch}-${index}`) } }));
      await call(client.kv, 'Txn', { success });
    }
    client.close();
    await member.stop();

    // 1,500 records at 60 a second: a pass of 25 s, long enough that the first status (a CLI
    // process, which takes seconds to start on a loaded machine: 150 a second was over before it)
    // sees it running.
    member = await startRampart({ dataDir, port: member.port, args: ['--encryption-key-file', path.join(directory, 'kek'), '--encryption-reseal-rate', '60'] });
    const endpoint = member.endpoint;
    const status = async (): Promise<MemberEncryptionStatus> => {
      const result = await run(process.execPath, [rampartBin, 'encryption', 'status', '--json', '--endpoints', `http://${endpoint}`]);
      expect(result.code, result.stderr).toBe(0);
      return JSON.parse(result.stdout) as MemberEncryptionStatus;
    };
    const loadClient = connect(endpoint);
    let running = true;
    const failures: string[] = [];
    let requests = 0;
    const loop = (async () => {
      for (let n = 0; running; n++) {
        try {
          await call(loadClient.kv, 'Put', { key: Buffer.from(`new/${n % 40}`), value: Buffer.from(`${marker}-new-${n}`) });
          const read = await call(loadClient.kv, 'Range', { key: Buffer.from(`old/${n % 15}/${n % 100}`) }) as { kvs: { value: Buffer }[] };
          if (read.kvs[0]?.value.toString() !== `${marker}-${n % 15}-${n % 100}`) failures.push(`wrong value for old/${n % 15}/${n % 100}`);
          requests += 2;
        } catch (error) {
          failures.push(String(error));
        }
      }
    })();
    const first = await status();
    expect(first.encrypted).toBe(true);
    expect(first.percent_resealed).toBeLessThan(100);
    expect(Number(first.records_other)).toBeGreaterThan(0);
    const deadline = Date.now() + 90_000;
    let last = first;
    while (!(last.percent_resealed === 100 && last.records_other === '0' && !last.reseal_running)) {
      if (Date.now() > deadline) throw new Error(`migration did not finish: ${JSON.stringify(last)}`);
      await new Promise((resolve) => setTimeout(resolve, 500));
      last = await status();
    }
    running = false;
    await loop;
    loadClient.close();
    expect(failures).toEqual([]);
    expect(requests).toBeGreaterThan(20);
    expect((await etcdctl(endpoint, ['get', 'old/14/99', '--print-value-only'])).stdout).toBe(`${marker}-14-99\n`);
    await member.stop();
    const leaks: string[] = [];
    for (const entry of await readdir(dataDir, { withFileTypes: true, recursive: true })) {
      if (!entry.isFile()) continue;
      const file = path.join(entry.parentPath, entry.name);
      if ((await readFile(file)).includes(Buffer.from(marker))) leaks.push(file);
    }
    expect(leaks).toEqual([]);
  }, 150_000);

  it('leaves no plaintext on disk when the member held a view of its plaintext state (a Raft snapshot) across the migration', async () => {
    // A member whose Raft log was compacted holds, from its start, a view of the database at its
    // snapshot (for followers that need it). Taken before the migration, that view saw the plaintext
    // records, and the migration's final compaction had to keep them on disk for it.
    const home = await temporaryDirectory('migration-view');
    const dataDir = path.join(home, 'data');
    const marker = `viewed-${randomBytes(5).toString('hex')}`;
    let plain: ServerProcess | undefined = await startRampart({ dataDir, args: ['--snapshot-count', '10', '--snapshot-catch-up-entries', '5'] });
    try {
      const client = connect(plain.endpoint);
      for (let batch = 0; batch < 40; batch++) {
        const success = Array.from({ length: 20 }, (_, index) => ({ request_put: { key: Buffer.from(`v/${batch}/${index}`), value: Buffer.from(`${marker}-${batch}-${index}`) } }));
        await call(client.kv, 'Txn', { success });
      }
      client.close();
      await plain.stop();
      plain = await startRampart({ dataDir, port: plain.port, args: ['--encryption-key-file', path.join(home, 'kek')] });
      const endpoint = plain.endpoint;
      const deadline = Date.now() + 90_000;
      for (;;) {
        const result = await run(process.execPath, [rampartBin, 'encryption', 'status', '--json', '--endpoints', `http://${endpoint}`]);
        expect(result.code, result.stderr).toBe(0);
        const seen = JSON.parse(result.stdout) as MemberEncryptionStatus;
        if (seen.percent_resealed === 100 && seen.records_other === '0' && !seen.reseal_running) break;
        if (Date.now() > deadline) throw new Error(`migration did not finish: ${JSON.stringify(seen)}`);
        await new Promise((resolve) => setTimeout(resolve, 500));
      }
      expect((await etcdctl(endpoint, ['get', 'v/39/19', '--print-value-only'])).stdout).toBe(`${marker}-39-19\n`);
      expect(plain.output()).not.toContain('its plaintext stays on disk');
      await plain.stop();
      plain = undefined;
      const leaks: string[] = [];
      for (const entry of await readdir(dataDir, { withFileTypes: true, recursive: true })) {
        if (!entry.isFile()) continue;
        const file = path.join(entry.parentPath, entry.name);
        // The audit trail is sealed apart from the database.
        if (file.includes(`${path.sep}audit${path.sep}`)) continue;
        if ((await readFile(file)).includes(Buffer.from(marker))) leaks.push(file);
      }
      expect(leaks).toEqual([]);
    } finally {
      await plain?.stop();
      await removeDirectory(home);
    }
  }, 150_000);

  it('rotates its data key on the schedule (--encryption-rotation-interval) and deletes the old one', async () => {
    const scheduled = await temporaryDirectory('schedule');
    const server = await startRampart({ dataDir: path.join(scheduled, 'data'), args: ['--encryption-key-file', path.join(scheduled, 'kek'), '--encryption-rotation-interval', '3s'] });
    try {
      expect((await etcdctl(server.endpoint, ['put', 'scheduled', 'value'])).stdout).toBe('OK\n');
      const deadline = Date.now() + 30_000;
      let seen: MemberEncryptionStatus | undefined;
      for (;;) {
        const result = await run(process.execPath, [rampartBin, 'encryption', 'status', '--json', '--endpoints', `http://${server.endpoint}`]);
        seen = JSON.parse(result.stdout) as MemberEncryptionStatus;
        if (seen.active_dek >= 3 && seen.deks.length === 1 && seen.percent_resealed === 100) break;
        if (Date.now() > deadline) throw new Error(`no scheduled rotation: ${result.stdout}`);
        await new Promise((resolve) => setTimeout(resolve, 500));
      }
      expect(Number(seen.last_rotation_unix_ms)).toBeGreaterThan(Date.now() - 10_000);
      expect((await etcdctl(server.endpoint, ['get', 'scheduled', '--print-value-only'])).stdout).toBe('value\n');
    } finally {
      await server.stop();
      await removeDirectory(scheduled);
    }
  }, 60_000);
});
