/**
 * Backups and the multi-member restore, on a real 3-member `rampart up` cluster: `rampart backup`
 * saves sealed backups (no value readable in the file; --no-seal only when asked), verifies and
 * prunes to --retention; --every runs it on a schedule until stopped; `rampart backup verify`
 * counts keys with the backup key and refuses a damaged file or a missing key; and the README's restore steps
 * bring back all three members from one backup, with the data and a working quorum.
 */
import { spawn } from 'node:child_process';
import { readFile, readdir, rename, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { cleanEnvironment, freeBasePort, rampartBin, removeDirectory, run, temporaryDirectory } from '../helpers/processes.js';

const rampart = (args: string[], timeoutMs = 60_000) => run(process.execPath, [rampartBin, ...args], { timeoutMs });

describe('backups and multi-member restore', () => {
  let home: string;
  let cluster: string;
  let basePort: number;
  const backups = (): string => path.join(home, 'backups');
  const backupKey = (): string => path.join(cluster, 'pki', 'backup.key');
  const etcdctl = (port: number, args: string[]) => run('etcdctl', ['--endpoints', `https://127.0.0.1:${port}`, '--cacert', path.join(cluster, 'pki', 'ca.crt'), '--cert', path.join(cluster, 'pki', 'admin.crt'), '--key', path.join(cluster, 'pki', 'admin.key'), '--command-timeout=10s', ...args], { env: cleanEnvironment() });

  beforeAll(async () => {
    home = await temporaryDirectory('backup');
    cluster = path.join(home, 'cluster');
    basePort = await freeBasePort();
    const result = await rampart(['up', '--dir', cluster, '--base-port', String(basePort)], 90_000);
    expect(result.code, result.stderr).toBe(0);
  }, 120_000);

  afterAll(async () => {
    await rampart(['down', '--dir', cluster]);
    await removeDirectory(home);
  }, 120_000);

  it('saves verified backups, keeps --retention of them, and verify counts keys and refuses damage', async () => {
    for (let index = 0; index < 20; index++) expect((await etcdctl(basePort, ['put', `/app/${index}`, `v${index}`])).stdout).toBe('OK\n');
    expect((await etcdctl(basePort, ['del', '/app/19'])).stdout).toBe('1\n');
    const made: string[] = [];
    for (let round = 0; round < 3; round++) {
      const result = await rampart(['backup', '--dir', cluster, '--out-dir', backups(), '--retention', '2']);
      expect(result.code, result.stderr).toBe(0);
      const file = /^backup (\S+) \(sealed\): 19 keys /m.exec(result.stdout)?.[1];
      expect(file, result.stdout).toBeDefined();
      made.push(file as string);
      if (round === 2) expect(result.stdout).toContain(`removed ${made[0]} (--retention 2)`);
    }
    expect((await readdir(backups())).sort()).toEqual(made.slice(1).map((file) => path.basename(file)).sort());

    // Sealed: no key or value of the cluster is readable in the file.
    const content = await readFile(made[2] as string);
    // (Key names, not the two-byte values: random ciphertext holds a given two-byte run in ~1 file of 10.)
    for (let index = 0; index < 19; index++) expect(content.includes(Buffer.from(`/app/${index}`))).toBe(false);
    // No key given: the one `rampart backup` sealed under by default, <dir>/pki/backup.key, opens it...
    const byDefault = await rampart(['backup', 'verify', made[2] as string, '--dir', cluster]);
    expect(byDefault.stdout, byDefault.stderr).toMatch(/^backup \S+ is intact: 19 keys /);
    // ...and with no such key a sealed backup is refused saying what to pass, not called damaged.
    const withoutKey = await rampart(['backup', 'verify', made[2] as string, '--dir', path.join(home, 'not-a-cluster')]);
    expect(withoutKey.code).toBe(1);
    expect(withoutKey.stderr).toBe(`rampart: ${made[2] as string} is a sealed backup and no key was given: pass --snapshot-key-file (rampart backup seals under <dir>/pki/backup.key by default; there is no ${path.join(home, 'not-a-cluster', 'pki', 'backup.key')}: give --dir of the rampart up directory that made it)\n`);
    const verified = await rampart(['backup', 'verify', made[2] as string, '--snapshot-key-file', backupKey()]);
    expect(verified.stdout).toMatch(/^backup \S+ is intact: 19 keys \(\d+ key revisions, 0 leases\) at revision \d+, \d+ bytes, sha256 [0-9a-f]{64}\n$/);
    content[100] = (content[100] ?? 0) ^ 0xff;
    const damaged = path.join(home, 'damaged.snapshot');
    await writeFile(damaged, content);
    const refused = await rampart(['backup', 'verify', damaged, '--snapshot-key-file', backupKey()]);
    expect(refused.code).toBe(1);
    expect(refused.stderr).toContain('altered or damaged');
    // Plaintext only when asked for, with a warning; its framing checks still catch damage.
    const plain = await rampart(['backup', '--dir', cluster, '--out-dir', path.join(home, 'plain-backups'), '--no-seal']);
    expect(plain.stderr).toContain('--no-seal: backups are written in plaintext');
    const plainFile = /^backup (\S+) \(not sealed\): 19 keys /m.exec(plain.stdout)?.[1] as string;
    const plainContent = await readFile(plainFile);
    expect(plainContent.includes(Buffer.from('/app/5'))).toBe(true);
    plainContent[100] = (plainContent[100] ?? 0) ^ 0xff;
    await writeFile(damaged, plainContent);
    const plainRefused = await rampart(['backup', 'verify', damaged]);
    expect(plainRefused.code).toBe(1);
    expect(plainRefused.stderr).toContain('SHA-256 mismatch');

    // Sealed to a recipient (an RSA certificate): this host writes it and cannot read it back; the private key verifies it.
    const recipientKey = path.join(home, 'recipient.key');
    const recipientCert = path.join(home, 'recipient.crt');
    expect((await run('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', recipientKey, '-out', recipientCert, '-subj', '/CN=backup recipient', '-days', '30'])).code).toBe(0);
    const toRecipient = await rampart(['backup', '--dir', cluster, '--out-dir', path.join(home, 'recipient-backups'), '--recipient-cert', recipientCert]);
    expect(toRecipient.code, toRecipient.stderr).toBe(0);
    const recipientFile = /^backup (\S+) \(sealed to a recipient\): 19 keys /m.exec(toRecipient.stdout)?.[1] as string;
    expect(recipientFile, toRecipient.stdout).toBeDefined();
    expect((await readFile(recipientFile)).includes(Buffer.from('/app/5'))).toBe(false);
    expect((await rampart(['backup', 'verify', recipientFile, '--snapshot-key-file', backupKey()])).stderr).toContain('pass its private key with --recipient-key');
    const recipientVerified = await rampart(['backup', 'verify', recipientFile, '--recipient-key', recipientKey]);
    expect(recipientVerified.stdout, recipientVerified.stderr).toMatch(/^backup \S+ is intact: 19 keys /);
  }, 180_000);

  it('--every backs up on a schedule until stopped', async () => {
    const scheduled = path.join(home, 'scheduled');
    const child = spawn(process.execPath, [rampartBin, 'backup', '--dir', cluster, '--out-dir', scheduled, '--every', '10s'], { env: cleanEnvironment(), stdio: ['ignore', 'pipe', 'pipe'] });
    let output = '';
    child.stdout.on('data', (chunk: Buffer) => {
      output += chunk.toString();
    });
    const deadline = Date.now() + 30_000;
    while (!output.includes('backup ') && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 200));
    child.kill('SIGTERM');
    const code = await new Promise<number | null>((resolve) => child.once('exit', resolve));
    expect(output).toMatch(/^backup \S+ \(sealed\): 19 keys/m);
    expect(code).toBe(0);
    expect(await readdir(scheduled)).toHaveLength(1);
  });

  it('restores every member from one backup (the README steps) and the cluster serves the data', async () => {
    const [backup] = (await readdir(backups())).sort().reverse();
    const file = path.join(backups(), backup as string);
    // Written after the backup: gone after the restore.
    expect((await etcdctl(basePort, ['put', '/after-backup', 'x'])).stdout).toBe('OK\n');
    expect((await rampart(['down', '--dir', cluster])).code).toBe(0);
    for (const member of ['m1', 'm2', 'm3']) {
      await rename(path.join(cluster, member, 'data'), path.join(cluster, member, 'data.before-restore'));
      const restored = await rampart(['snapshot', 'restore', file, '--snapshot-key-file', backupKey(), '--data-dir', path.join(cluster, member, 'data'), '--encryption-key-file', path.join(cluster, member, 'encryption.key')]);
      expect(restored.code, restored.stderr).toBe(0);
    }
    const upAgain = await rampart(['up', '--dir', cluster], 90_000);
    expect(upAgain.code, upAgain.stderr).toBe(0);
    for (const offset of [0, 10_000, 20_000]) {
      const port = basePort + offset;
      expect((await etcdctl(port, ['get', '/app/', '--prefix', '--keys-only', '--consistency=s'])).stdout.split('\n').filter((line) => line !== '')).toHaveLength(19);
      expect((await etcdctl(port, ['get', '/after-backup', '--consistency=s'])).stdout).toBe('');
    }
    expect((await etcdctl(basePort + 10_000, ['put', '/after-restore', 'y'])).stdout).toBe('OK\n');
    expect((await etcdctl(basePort + 20_000, ['get', '/after-restore', '--print-value-only'])).stdout).toBe('y\n');
    const status = await etcdctl(basePort, ['endpoint', 'status', '--cluster', '-w', 'json']);
    const members = JSON.parse(status.stdout) as { Status: { leader: string } }[];
    expect(members).toHaveLength(3);
    expect(new Set(members.map((member) => member.Status.leader)).size).toBe(1);
  }, 150_000);
});
