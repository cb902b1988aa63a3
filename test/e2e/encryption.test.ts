/**
 * Encryption at rest on a `rampart up` cluster: keys, values, a user's name and password and a
 * lease's keys are written; no file under any member's data directory (its audit trail included)
 * holds any of them, before
 * and after a LevelDB compaction (defrag); after a restart everything reads back. A member
 * started with the wrong key file, or without it, refuses to start and names the file.
 */
import { randomBytes } from 'node:crypto';
import { readdir, readFile, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FileKekProvider, defaultKeyFile } from '../../src/encryption/kek-file.js';
import { SealedDatabase } from '../../src/storage/database.js';
import { MvccStore } from '../../src/storage/mvcc/store.js';
import { cleanEnvironment, freeBasePort, rampartBin, removeDirectory, run, temporaryDirectory } from '../helpers/processes.js';

/** Every file under `directory` (recursively) whose bytes contain `needle`. */
async function filesContaining(directory: string, needle: Buffer, skip: (file: string) => boolean = () => false): Promise<string[]> {
  const found: string[] = [];
  for (const entry of await readdir(directory, { withFileTypes: true, recursive: true })) {
    if (!entry.isFile()) continue;
    const file = path.join(entry.parentPath, entry.name);
    if (skip(file)) continue;
    if ((await readFile(file)).includes(needle)) found.push(file);
  }
  return found;
}

describe('encryption at rest on a rampart up cluster', () => {
  let home: string;
  let endpoints: string;
  const secrets = {
    key: `/vault/k-${randomBytes(6).toString('hex')}`,
    value: `value-${randomBytes(6).toString('hex')}`,
    user: `user${randomBytes(5).toString('hex')}`,
    password: `pw-${randomBytes(6).toString('hex')}`,
    leaseKey: `/vault/lease-${randomBytes(6).toString('hex')}`,
    historic: `old-${randomBytes(6).toString('hex')}`,
  };
  const members = ['m1', 'm2', 'm3'];
  const pki = (): string => path.join(home, 'pki');
  const etcdctl = (args: string[]) =>
    run('etcdctl', ['--endpoints', endpoints, '--cacert', path.join(pki(), 'ca.crt'), '--cert', path.join(pki(), 'admin.crt'), '--key', path.join(pki(), 'admin.key'), '--command-timeout=5s', ...args], { env: cleanEnvironment() });
  const rampart = (args: string[], timeoutMs = 60_000) => run(process.execPath, [rampartBin, ...args], { timeoutMs });

  const leaks = async (): Promise<string[]> => {
    const found: string[] = [];
    for (const member of members) {
      for (const [name, secret] of Object.entries(secrets)) {
        for (const file of await filesContaining(path.join(home, member, 'data'), Buffer.from(secret))) found.push(`${name} in ${file}`);
      }
    }
    return found;
  };

  beforeAll(async () => {
    home = path.join(await temporaryDirectory('encryption'), 'cluster');
    const base = await freeBasePort();
    const result = await rampart(['up', '--dir', home, '--base-port', String(base)], 90_000);
    expect(result.code, result.stderr).toBe(0);
    endpoints = [0, 10_000, 20_000].map((offset) => `https://127.0.0.1:${base + offset}`).join(',');
  }, 120_000);

  afterAll(async () => {
    if (home !== undefined) {
      await rampart(['down', '--dir', home]);
      await removeDirectory(path.dirname(home));
    }
  }, 60_000);

  it('the grep finds a secret where one is written (the check can fail)', async () => {
    const directory = await temporaryDirectory('grep');
    await writeFile(path.join(directory, 'plain'), `prefix ${secrets.value} suffix`);
    expect(await filesContaining(directory, Buffer.from(secrets.value))).toEqual([path.join(directory, 'plain')]);
    await removeDirectory(directory);
  });

  it('keeps every key file 0600 beside, not inside, the data directory', async () => {
    for (const member of members) {
      const info = await stat(path.join(home, member, 'encryption.key'));
      expect(info.size).toBe(32);
      expect(info.mode & 0o777).toBe(0o600);
      expect(await filesContaining(path.join(home, member, 'data'), await readFile(path.join(home, member, 'encryption.key')))).toEqual([]);
    }
  });

  it('leaves no key, value, user name, password or lease key readable on disk, after compaction too, and reads all back after a restart', async () => {
    const ok = async (args: string[]): Promise<string> => {
      const result = await etcdctl(args);
      expect(result.code, `${args.join(' ')}: ${result.stderr}`).toBe(0);
      return result.stdout;
    };
    await ok(['put', secrets.key, secrets.historic]);
    await ok(['put', secrets.key, secrets.value]);
    await ok(['role', 'add', 'vault']);
    await ok(['role', 'grant-permission', 'vault', 'readwrite', '/vault/', '--prefix']);
    await ok(['user', 'add', `${secrets.user}:${secrets.password}`, '--interactive=false']);
    await ok(['user', 'grant-role', secrets.user, 'vault']);
    const lease = /lease ([0-9a-f]+) granted/.exec(await ok(['lease', 'grant', '3600']))?.[1];
    expect(lease).toBeDefined();
    await ok(['put', secrets.leaseKey, 'leased', `--lease=${lease}`]);
    // Every member has applied the writes before the files are read.
    for (const endpoint of endpoints.split(',')) {
      const read = await run('etcdctl', ['--endpoints', endpoint, '--cacert', path.join(pki(), 'ca.crt'), '--cert', path.join(pki(), 'admin.crt'), '--key', path.join(pki(), 'admin.key'), 'get', secrets.leaseKey, '--print-value-only', '--consistency=s'], { env: cleanEnvironment() });
      expect(read.stdout).toBe('leased\n');
    }
    expect(await leaks()).toEqual([]);

    await ok(['defrag', '--cluster']);
    expect(await leaks()).toEqual([]);

    expect((await rampart(['down', '--dir', home])).code).toBe(0);
    // Not vacuous for the audit trail: it names the key and the user, sealed on disk, and opens with
    // each member's KEK (found beside its data directory).
    let exported = '';
    for (const member of members) {
      const exportedTrail = await rampart(['audit', 'export', path.join(home, member, 'data', 'audit')]);
      expect(exportedTrail.code, exportedTrail.stderr).toBe(0);
      exported += exportedTrail.stdout;
    }
    expect(exported).toContain(secrets.key);
    expect(exported).toContain(secrets.user);
    expect(await leaks()).toEqual([]);
    const again = await rampart(['up', '--dir', home], 90_000);
    expect(again.code, again.stderr).toBe(0);
    expect(await ok(['get', secrets.key, '--print-value-only'])).toBe(`${secrets.value}\n`);
    const revision = Number(/"mod_revision":(\d+)/.exec(await ok(['get', secrets.key, '-w', 'json']))?.[1]);
    expect(await ok(['get', secrets.key, '--print-value-only', `--rev=${revision - 1}`])).toBe(`${secrets.historic}\n`);
    expect(await ok(['get', secrets.leaseKey, '--print-value-only'])).toBe('leased\n');
    expect(await ok(['lease', 'timetolive', lease ?? '', '--keys'])).toContain(secrets.leaseKey);
    expect(await ok(['--user', `${secrets.user}:${secrets.password}`, 'get', secrets.key, '--print-value-only'])).toBe(`${secrets.value}\n`);
    expect(await leaks()).toEqual([]);
  }, 180_000);

  it('saves a sealed snapshot that opens only with its key, and restores it re-sealed under the new member\'s key', async () => {
    const work = await temporaryDirectory('sealed-snapshot');
    try {
      const plainFile = path.join(work, 'plain.snap');
      const sealedFile = path.join(work, 'sealed.snap');
      const snapshotKey = path.join(work, 'snapshot.key');
      expect((await rampart(['snapshot', 'save', plainFile, '--dir', home])).code).toBe(0);
      expect((await readFile(plainFile)).includes(Buffer.from(secrets.value))).toBe(true);
      const saved = await rampart(['snapshot', 'save', sealedFile, '--dir', home, '--seal-key-file', snapshotKey]);
      expect(saved.code, saved.stderr).toBe(0);
      expect((await stat(snapshotKey)).mode & 0o777).toBe(0o600);
      expect(await filesContaining(work, Buffer.from(secrets.value), (file) => file !== sealedFile)).toEqual([]);
      expect(await filesContaining(work, Buffer.from(secrets.key), (file) => file !== sealedFile)).toEqual([]);

      const withoutKey = await rampart(['snapshot', 'restore', sealedFile, '--data-dir', path.join(work, 'r1')]);
      expect(withoutKey.stderr).toContain('is a sealed snapshot: pass its --snapshot-key-file');
      const otherKey = path.join(work, 'other.key');
      await writeFile(otherKey, randomBytes(32), { mode: 0o600 });
      const wrongKey = await rampart(['snapshot', 'restore', sealedFile, '--data-dir', path.join(work, 'r2'), '--snapshot-key-file', otherKey]);
      expect(wrongKey.stderr).toMatch(/is sealed under snapshot key [0-9a-f]{16}, not under the one given/);
      const damaged = Buffer.from(await readFile(sealedFile));
      damaged[damaged.length - 40] = (damaged[damaged.length - 40] ?? 0) ^ 1;
      await writeFile(path.join(work, 'damaged.snap'), damaged);
      const altered = await rampart(['snapshot', 'restore', path.join(work, 'damaged.snap'), '--data-dir', path.join(work, 'r3'), '--snapshot-key-file', snapshotKey]);
      expect(altered.stderr).toContain('was altered or damaged');

      const restoredDir = path.join(work, 'restored');
      const restored = await rampart(['snapshot', 'restore', sealedFile, '--data-dir', restoredDir, '--snapshot-key-file', snapshotKey]);
      expect(restored.code, restored.stderr).toBe(0);
      expect(await filesContaining(restoredDir, Buffer.from(secrets.value))).toEqual([]);
      const db = await SealedDatabase.open(restoredDir, await FileKekProvider.open(defaultKeyFile(restoredDir)));
      try {
        const store = await MvccStore.open(db);
        expect(store.get(Buffer.from(secrets.key))?.value.toString()).toBe(secrets.value);
      } finally {
        await db.close();
      }
    } finally {
      await removeDirectory(work);
    }
  }, 60_000);

  it('seals a snapshot to a recipient certificate: the saving host cannot open it; its private key restores it', async () => {
    const work = await temporaryDirectory('recipient-snapshot');
    try {
      // The recipient's key pair lives elsewhere (an offline backup key); the saving host gets only the certificate.
      const recipientKey = path.join(work, 'recipient.key');
      const recipientCert = path.join(work, 'recipient.crt');
      const made = await run('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', recipientKey, '-out', recipientCert, '-subj', '/CN=backup recipient', '-days', '30']);
      expect(made.code, made.stderr).toBe(0);
      const sealedFile = path.join(work, 'to-recipient.snap');
      const saved = await rampart(['snapshot', 'save', sealedFile, '--dir', home, '--recipient-cert', recipientCert]);
      expect(saved.code, saved.stderr).toBe(0);
      expect(await filesContaining(work, Buffer.from(secrets.value), (file) => file !== sealedFile)).toEqual([]);
      expect(await filesContaining(work, Buffer.from(secrets.key), (file) => file !== sealedFile)).toEqual([]);

      const withoutKey = await rampart(['snapshot', 'restore', sealedFile, '--data-dir', path.join(work, 'r1')]);
      expect(withoutKey.stderr).toMatch(/is sealed to recipient key [0-9a-f]{16}: pass its private key with --recipient-key/);
      const otherKey = path.join(work, 'other.key');
      expect((await run('openssl', ['genpkey', '-algorithm', 'EC', '-pkeyopt', 'ec_paramgen_curve:P-256', '-out', otherKey])).code).toBe(0);
      const wrongKey = await rampart(['snapshot', 'restore', sealedFile, '--data-dir', path.join(work, 'r2'), '--recipient-key', otherKey]);
      expect(wrongKey.stderr).toMatch(/is sealed to recipient key [0-9a-f]{16}, not to the one given/);
      const damaged = Buffer.from(await readFile(sealedFile));
      damaged[damaged.length - 40] = (damaged[damaged.length - 40] ?? 0) ^ 1;
      await writeFile(path.join(work, 'damaged.snap'), damaged);
      const altered = await rampart(['snapshot', 'restore', path.join(work, 'damaged.snap'), '--data-dir', path.join(work, 'r3'), '--recipient-key', recipientKey]);
      expect(altered.stderr).toContain('was altered or damaged');
      for (const refused of ['r1', 'r2', 'r3']) expect(await stat(path.join(work, refused)).then(() => true, () => false)).toBe(false);

      const restoredDir = path.join(work, 'restored');
      const restored = await rampart(['snapshot', 'restore', sealedFile, '--data-dir', restoredDir, '--recipient-key', recipientKey]);
      expect(restored.code, restored.stderr).toBe(0);
      expect(await filesContaining(restoredDir, Buffer.from(secrets.value))).toEqual([]);
      const db = await SealedDatabase.open(restoredDir, await FileKekProvider.open(defaultKeyFile(restoredDir)));
      try {
        const store = await MvccStore.open(db);
        expect(store.get(Buffer.from(secrets.key))?.value.toString()).toBe(secrets.value);
      } finally {
        await db.close();
      }
    } finally {
      await removeDirectory(work);
    }
  }, 60_000);

  it('refuses to start with a wrong, missing or unreadable key file, naming it, and starts again with the right one', async () => {
    const member = 'm3';
    const pid = Number((await readFile(path.join(home, member, 'pid'), 'utf8')).trim());
    process.kill(pid, 'SIGTERM');
    for (let waited = 0; waited < 100 && isAlive(pid); waited++) await new Promise((resolve) => setTimeout(resolve, 100));
    const wrongKey = path.join(home, 'wrong.key');
    await writeFile(wrongKey, randomBytes(32), { mode: 0o600 });
    const shortKey = path.join(home, 'short.key');
    await writeFile(shortKey, randomBytes(16), { mode: 0o600 });
    const cluster = JSON.parse(await readFile(path.join(home, 'cluster.json'), 'utf8')) as { token: string; members: { name: string; clientPort: number; peerPort: number }[] };
    const self = cluster.members.find((entry) => entry.name === member);
    const serve = (extra: string[]) => rampart([
      'serve', '--name', member, '--data-dir', path.join(home, member, 'data'),
      '--listen-client-urls', `https://127.0.0.1:${self?.clientPort}`, '--listen-peer-urls', `https://127.0.0.1:${self?.peerPort}`,
      '--initial-cluster', cluster.members.map((entry) => `${entry.name}=https://127.0.0.1:${entry.peerPort}`).join(','),
      '--initial-cluster-token', cluster.token,
      '--cert-file', path.join(home, member, 'server.crt'), '--key-file', path.join(home, member, 'server.key'), '--trusted-ca-file', path.join(home, member, 'ca.crt'),
      '--peer-cert-file', path.join(home, member, 'peer.crt'), '--peer-key-file', path.join(home, member, 'peer.key'), '--peer-trusted-ca-file', path.join(home, member, 'ca.crt'),
      ...extra,
    ], 20_000);
    const wrong = await serve(['--encryption-key-file', wrongKey]);
    expect(wrong.code).not.toBe(0);
    expect(wrong.stderr).toContain(wrongKey);
    expect(wrong.stderr).toContain('wrong key file');
    const missing = await serve(['--encryption-key-file', path.join(home, 'absent.key')]);
    expect(missing.code).not.toBe(0);
    expect(missing.stderr).toContain(`encryption key file ${path.join(home, 'absent.key')} does not exist`);
    const short = await serve(['--encryption-key-file', shortKey]);
    expect(short.stderr).toContain(`encryption key file ${shortKey} must hold exactly 32 bytes, it holds 16`);
    const unreadable = await serve(['--encryption-key-file', home]);
    expect(unreadable.stderr).toContain(`encryption key file ${home} is not a regular file`);
    const plaintext = await serve(['--no-encryption']);
    expect(plaintext.code).not.toBe(0);
    expect(plaintext.stderr).toContain('is encrypted');
    // None of the refusals changed anything: with its own key the member rejoins and serves.
    const restarted = await rampart(['up', '--dir', home], 90_000);
    expect(restarted.code, restarted.stderr).toBe(0);
    const read = await run('etcdctl', ['--endpoints', `https://127.0.0.1:${self?.clientPort}`, '--cacert', path.join(pki(), 'ca.crt'), '--cert', path.join(pki(), 'admin.crt'), '--key', path.join(pki(), 'admin.key'), 'get', secrets.key, '--print-value-only'], { env: cleanEnvironment() });
    expect(read.stdout).toBe(`${secrets.value}\n`);
  }, 120_000);
});

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}
