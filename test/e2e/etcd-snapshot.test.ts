/**
 * Migration both ways through etcd's snapshot format, against real processes:
 * - an etcd 3.4 snapshot (thousands of keys with overwrites, deletions and a compaction, leases
 *   with keys, users and roles, auth on) restored with `rampart snapshot restore` serves the same
 *   keys, values, revisions and history, leases and auth as etcd did (etcdctl output compared);
 * - `rampart snapshot save --format etcd` writes a file `etcdctl snapshot status` and
 *   `etcdctl snapshot restore` accept, and etcd 3.4 then serves the same data;
 * - truncated or corrupt files are refused with a clear error and leave no data directory.
 */
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { readdir, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createAuthority, issueCertificate, writeKeyPair } from '../../src/pki/authority.js';
import { call, connect } from '../helpers/client.js';
import {
  cleanEnvironment,
  etcdAvailable,
  freePort,
  rampartBin,
  removeDirectory,
  run,
  startEtcd,
  temporaryDirectory,
  type CommandResult,
  type ServerProcess,
} from '../helpers/processes.js';

const keyCount = 3000;
const rootPassword = 'root-secret-1';

/**
 * A command's stderr less the progress lines a save or restore prints every 2 s while it runs
 * (src/cli/progress.ts): on a loaded machine they come, and they are not errors.
 */
const withoutProgress = (stderr: string): string =>
  stderr.split('\n').filter((line) => !/^(receiving the snapshot for|reading) \S+: [\d.]+ MiB( of [\d.]+ MiB \(\d+%\))?, \d+ s(, done)?$/.test(line)).join('\n');

/** etcdctl's JSON less the response header (cluster and member ids differ by design). */
const withoutHeader = (result: CommandResult): string => {
  expect(result.stderr).toBe('');
  return result.stdout.replace(/^\{"header":\{[^}]*\},?/, '{');
};

describe.skipIf(!etcdAvailable())('etcd snapshot format: migration from etcd 3.4 and back', () => {
  let home: string;
  let etcd: ServerProcess | undefined;
  let restoredEtcd: ServerProcess | undefined;
  let rampart: { endpoint: string; stop: () => Promise<void> } | undefined;
  let tls: string[];
  let etcdSnapshot: string;
  let revisionAfterLoad = 0;
  let compactedAt = 0;
  let leaseId = '';

  const etcdctlEtcd = (endpoint: string, args: string[]) => run('etcdctl', ['--endpoints', endpoint, '--user', `root:${rootPassword}`, ...args], { env: cleanEnvironment() });
  // Generous client timeouts: a password login checks a bcrypt hash (etcd's, migrated) in pure
  // JavaScript, seconds on a loaded machine, past etcdctl's default 2 s to dial and log in.
  const slowMachine = ['--dial-timeout=20s', '--command-timeout=30s'];
  const etcdctlRampart = (args: string[]) => run('etcdctl', ['--endpoints', rampart?.endpoint ?? '', ...slowMachine, ...tls, ...args], { env: cleanEnvironment(), timeoutMs: 60_000 });

  beforeAll(async () => {
    home = await temporaryDirectory('etcd-snapshot');
    const authority = await createAuthority('migration test');
    const pki = path.join(home, 'pki');
    await writeFile(path.join(home, 'ca.crt'), authority.certificatePem);
    await writeKeyPair(pki, 'server', await issueCertificate(authority, { kind: 'server', commonName: 'member', subjectAltNames: ['127.0.0.1'] }));
    await writeKeyPair(pki, 'peer', await issueCertificate(authority, { kind: 'peer', commonName: 'migrated', subjectAltNames: ['127.0.0.1'] }));
    await writeKeyPair(pki, 'root', await issueCertificate(authority, { kind: 'client', commonName: 'root' }));
    await writeKeyPair(pki, 'm2', await issueCertificate(authority, { kind: 'peer', commonName: 'm2', subjectAltNames: ['127.0.0.1'] }));
    await writeKeyPair(pki, 'alice', await issueCertificate(authority, { kind: 'client', commonName: 'alice' }));
    tls = ['--cacert', path.join(home, 'ca.crt'), '--cert', path.join(pki, 'root.crt'), '--key', path.join(pki, 'root.key')];

    // A real etcd with history: puts, overwrites, deletions, a compaction, leases, users and roles.
    etcd = await startEtcd();
    const client = connect(etcd.endpoint);
    try {
      const put = (key: string, value: string, lease?: string) => call(client.kv, 'Put', { key: Buffer.from(key), value: Buffer.from(value), ...(lease === undefined ? {} : { lease }) });
      for (let start = 0; start < keyCount; start += 100) {
        await Promise.all(Array.from({ length: 100 }, (_, offset) => put(`/registry/items/${String(start + offset).padStart(5, '0')}`, `value-${start + offset}`)));
      }
      for (let index = 0; index < keyCount; index += 7) await put(`/registry/items/${String(index).padStart(5, '0')}`, `overwritten-${index}`);
      const compact = await call(client.kv, 'Range', { key: Buffer.from('x') });
      compactedAt = Number((compact.header as { revision: string }).revision);
      await call(client.kv, 'Compact', { revision: compactedAt, physical: true });
      for (let index = 0; index < keyCount; index += 11) await call(client.kv, 'DeleteRange', { key: Buffer.from(`/registry/items/${String(index).padStart(5, '0')}`) });
      for (let index = 0; index < keyCount; index += 13) await put(`/registry/items/${String(index).padStart(5, '0')}`, `again-${index}`);
      const granted = await call(client.lease, 'LeaseGrant', { TTL: 3600 });
      leaseId = String(granted.ID);
      for (let index = 0; index < 20; index++) await put(`/leased/${index}`, `leased-${index}`, leaseId);
      await call(client.kv, 'DeleteRange', { key: Buffer.from('/leased/0') });
    } finally {
      client.close();
    }
    const admin = (args: string[]) => run('etcdctl', ['--endpoints', etcd?.endpoint ?? '', ...args], { env: cleanEnvironment() });
    for (const args of [
      ['user', 'add', `root:${rootPassword}`],
      ['role', 'add', 'root'],
      ['user', 'grant-role', 'root', 'root'],
      ['role', 'add', 'reader'],
      ['role', 'grant-permission', 'reader', 'read', '/registry/', '--prefix=true'],
      ['role', 'add', 'writer'],
      ['role', 'grant-permission', 'writer', 'readwrite', '/leased/a', '/leased/z'],
      ['role', 'grant-permission', 'writer', 'write', 'single-key'],
      ['user', 'add', 'alice:alice-pass-1'],
      ['user', 'grant-role', 'alice', 'reader'],
      ['user', 'grant-role', 'alice', 'writer'],
      ['user', 'add', 'bob:bob-pass-1'],
      ['auth', 'enable'],
    ]) {
      const result = await admin(args);
      expect(result.code, `etcdctl ${args.join(' ')}: ${result.stderr}`).toBe(0);
    }
    const status = await etcdctlEtcd(etcd.endpoint, ['endpoint', 'status', '-w', 'json']);
    revisionAfterLoad = Number(/"revision":(\d+)/.exec(status.stdout)?.[1]);
    etcdSnapshot = path.join(home, 'etcd.snapshot');
    const saved = await etcdctlEtcd(etcd.endpoint, ['snapshot', 'save', etcdSnapshot]);
    expect(saved.code, saved.stderr).toBe(0);
  }, 120_000);

  afterAll(async () => {
    for (const member of members) await member.stop();
    await etcd?.stop();
    await restoredEtcd?.stop();
    if (home !== undefined) await removeDirectory(home);
  }, 60_000);

  interface Member { readonly endpoint: string; stop(): Promise<void> }
  const members: Member[] = [];

  /** A TLS Rampart member named `name` (its peer certificate names it), serving once it answers a read. */
  const startMember = async (name: string, dataDir: string, args: readonly string[] = [], peerPort?: number): Promise<Member> => {
    const clientPort = await freePort();
    const listenPeerPort = peerPort ?? (await freePort());
    const pki = path.join(home, 'pki');
    const peer = name === 'migrated' ? 'peer' : name;
    const child = spawn(process.execPath, [
      rampartBin, 'serve', '--name', name, '--data-dir', dataDir,
      '--listen-client-urls', `https://127.0.0.1:${clientPort}`, '--listen-peer-urls', `https://127.0.0.1:${listenPeerPort}`,
      '--cert-file', path.join(pki, 'server.crt'), '--key-file', path.join(pki, 'server.key'), '--trusted-ca-file', path.join(home, 'ca.crt'),
      '--peer-cert-file', path.join(pki, `${peer}.crt`), '--peer-key-file', path.join(pki, `${peer}.key`), '--peer-trusted-ca-file', path.join(home, 'ca.crt'),
      '--log-level', process.env.RAMPART_TEST_LOG_LEVEL ?? 'warn', ...args,
    ], { env: cleanEnvironment(), stdio: ['ignore', 'pipe', 'pipe'] });
    let output = '';
    child.stderr.on('data', (chunk: Buffer) => (output += chunk.toString()));
    const member: Member = {
      endpoint: `https://127.0.0.1:${clientPort}`,
      stop: async () => {
        if (child.exitCode !== null) return;
        const exited = new Promise((resolve) => child.once('exit', resolve));
        child.kill('SIGTERM');
        await exited;
      },
    };
    members.push(member);
    const deadline = Date.now() + 30_000;
    while ((await run('etcdctl', ['--endpoints', member.endpoint, ...tls, 'get', 'probe', '--consistency=s'], { env: cleanEnvironment() })).code !== 0) {
      if (Date.now() > deadline || child.exitCode !== null) throw new Error(`${name} did not serve:\n${output}`);
      await new Promise((resolve) => setTimeout(resolve, 200));
    }
    return member;
  };
  const startRampart = async (dataDir: string): Promise<void> => {
    rampart = await startMember('migrated', dataDir);
  };

  it('restores an etcd 3.4 snapshot into Rampart: keys, revisions, history, leases and auth as etcd serves them', async () => {
    const dataDir = path.join(home, 'rampart-data');
    const restored = await run(process.execPath, [rampartBin, 'snapshot', 'restore', etcdSnapshot, '--data-dir', dataDir]);
    expect(withoutProgress(restored.stderr)).toBe('');
    expect(restored.stdout).toMatch(/^restored \d+ records from an etcd snapshot into /);
    // Restored through the storage layer: sealed under the new member's key, no value in plaintext.
    for (const name of await readdir(path.join(dataDir, 'db'))) {
      expect((await readFile(path.join(dataDir, 'db', name))).includes('overwritten-'), name).toBe(false);
    }
    await startRampart(dataDir);
    const endpoint = etcd?.endpoint ?? '';

    // Every live key with create/mod revision, version, value and lease, and the count.
    const live = withoutHeader(await etcdctlEtcd(endpoint, ['get', '', '--prefix', '-w', 'json']));
    const liveItems = Array.from({ length: keyCount }, (_, index) => index).filter((index) => index % 11 !== 0 || index % 13 === 0).length;
    expect(live).toContain(`"count":${liveItems + 19}`);
    expect(withoutHeader(await etcdctlRampart(['get', '', '--prefix', '-w', 'json']))).toBe(live);
    const rampartStatus = await etcdctlRampart(['endpoint', 'status', '-w', 'json']);
    expect(Number(/"revision":(\d+)/.exec(rampartStatus.stdout)?.[1])).toBe(revisionAfterLoad);
    // History: revisions after the compaction as they were; before it, compacted on both.
    for (const revision of [compactedAt, compactedAt + 5, compactedAt + 300, revisionAfterLoad - 3]) {
      const expected = withoutHeader(await etcdctlEtcd(endpoint, ['get', '/registry/items/', '--prefix', '--rev', String(revision), '-w', 'json']));
      expect(withoutHeader(await etcdctlRampart(['get', '/registry/items/', '--prefix', '--rev', String(revision), '-w', 'json']))).toBe(expected);
    }
    const compacted = await etcdctlRampart(['get', 'x', '--rev', String(compactedAt - 1)]);
    expect(compacted.stderr).toContain('required revision has been compacted');
    // Leases and the keys attached to them.
    const leaseHex = BigInt(leaseId).toString(16);
    expect((await etcdctlRampart(['lease', 'list'])).stdout).toContain(leaseHex);
    // etcd lists a lease's keys in map order: compare them as sets.
    const keys = (result: CommandResult): string[] => (/attached keys\(\[(.*)\]\)/.exec(result.stdout)?.[1] ?? '').split(' ').sort();
    expect(keys(await etcdctlRampart(['lease', 'timetolive', leaseHex, '--keys']))).toEqual(keys(await etcdctlEtcd(endpoint, ['lease', 'timetolive', leaseHex, '--keys'])));
    // Users and roles, as etcdctl prints them.
    for (const args of [['user', 'list'], ['role', 'list'], ['user', 'get', 'alice'], ['user', 'get', 'root'], ['role', 'get', 'reader'], ['role', 'get', 'writer']]) {
      const expected = await etcdctlEtcd(endpoint, args);
      expect(expected.code).toBe(0);
      expect((await etcdctlRampart(args)).stdout, args.join(' ')).toBe(expected.stdout);
    }
    // Auth is on and enforced: alice (her certificate's CN) reads under /registry/, writes nothing there.
    const asAlice = (args: string[]) => run('etcdctl', ['--endpoints', rampart?.endpoint ?? '', ...slowMachine, '--cacert', path.join(home, 'ca.crt'), '--cert', path.join(home, 'pki', 'alice.crt'), '--key', path.join(home, 'pki', 'alice.key'), ...args], { env: cleanEnvironment() });
    expect((await asAlice(['get', '/registry/items/00001', '--print-value-only'])).stdout).toBe('value-1\n');
    expect((await asAlice(['put', '/registry/items/00001', 'changed'])).stderr).toContain('etcdserver: permission denied');
    // etcd's password hashes came along: alice logs in with her etcd password (it wins over the certificate).
    const withPassword = (password: string, args: string[]) => etcdctlRampart(['--user', `alice:${password}`, ...args]);
    expect((await withPassword('alice-pass-1', ['get', '/registry/items/00002', '--print-value-only'])).stdout).toBe('value-2\n');
    expect((await withPassword('alice-pass-1', ['put', '/registry/items/00002', 'changed'])).stderr).toContain('etcdserver: permission denied');
    expect((await withPassword('wrong-password', ['get', '/registry/items/00002'])).stderr).toContain('etcdserver: authentication failed, invalid user ID or password');
  }, 120_000);

  it('saves a Rampart snapshot in etcd\'s format that etcdctl checks and restores, and etcd 3.4 serves the same data', async () => {
    expect(rampart).toBeDefined();
    const file = path.join(home, 'rampart-as-etcd.db');
    const saved = await run(process.execPath, [rampartBin, 'snapshot', 'save', file, '--format', 'etcd', '--endpoints', rampart?.endpoint ?? '', ...tls]);
    expect(withoutProgress(saved.stderr)).toBe('');
    expect(saved.stdout).toMatch(/^saved an etcd snapshot of \d+ key revisions/);
    const status = await run('etcdctl', ['snapshot', 'status', file, '-w', 'json'], { env: cleanEnvironment() });
    expect(status.code, status.stderr).toBe(0);
    expect(Number(/"revision":(\d+)/.exec(status.stdout)?.[1])).toBe(revisionAfterLoad);

    const peerPort = await freePort();
    const clientPort = await freePort();
    const dataDir = path.join(home, 'etcd-restored');
    const peerUrl = `http://127.0.0.1:${peerPort}`;
    const restore = await run('etcdctl', ['snapshot', 'restore', file, '--data-dir', dataDir, '--name', 'restored', '--initial-cluster', `restored=${peerUrl}`, '--initial-advertise-peer-urls', peerUrl], { env: cleanEnvironment() });
    expect(restore.code, restore.stderr).toBe(0);
    const child = spawn('etcd', [
      '--name', 'restored', '--data-dir', dataDir,
      '--listen-client-urls', `http://127.0.0.1:${clientPort}`, '--advertise-client-urls', `http://127.0.0.1:${clientPort}`,
      '--listen-peer-urls', peerUrl, '--initial-advertise-peer-urls', peerUrl, '--initial-cluster', `restored=${peerUrl}`, '--log-level', 'error',
    ], { env: cleanEnvironment(), stdio: ['ignore', 'pipe', 'pipe'] });
    let output = '';
    child.stderr.on('data', (chunk: Buffer) => (output += chunk.toString()));
    restoredEtcd = {
      endpoint: `127.0.0.1:${clientPort}`, port: clientPort, dataDir, child, output: () => output,
      stop: async () => {
        if (child.exitCode !== null) return child.exitCode;
        const exited = new Promise<number | null>((resolve) => child.once('exit', resolve));
        child.kill('SIGTERM');
        return exited;
      },
    };
    const endpoint = restoredEtcd.endpoint;
    const deadline = Date.now() + 30_000;
    // The root password travelled as etcd's own bcrypt hash: etcd accepts it.
    while ((await etcdctlEtcd(endpoint, ['get', 'probe'])).code !== 0) {
      if (Date.now() > deadline || child.exitCode !== null) throw new Error(`restored etcd did not serve:\n${output}`);
      await new Promise((resolve) => setTimeout(resolve, 200));
    }
    expect(withoutHeader(await etcdctlEtcd(endpoint, ['get', '', '--prefix', '-w', 'json']))).toBe(withoutHeader(await etcdctlRampart(['get', '', '--prefix', '-w', 'json'])));
    for (const revision of [compactedAt + 5, revisionAfterLoad - 3]) {
      const args = ['get', '/registry/items/', '--prefix', '--rev', String(revision), '-w', 'json'];
      expect(withoutHeader(await etcdctlEtcd(endpoint, args))).toBe(withoutHeader(await etcdctlRampart(args)));
    }
    for (const args of [['user', 'list'], ['role', 'list'], ['user', 'get', 'alice'], ['role', 'get', 'reader'], ['role', 'get', 'writer']]) {
      expect((await etcdctlEtcd(endpoint, args)).stdout, args.join(' ')).toBe((await etcdctlRampart(args)).stdout);
    }
    // alice's password hash came along too.
    const alice = await run('etcdctl', ['--endpoints', endpoint, '--user', 'alice:alice-pass-1', 'get', '/registry/items/00001', '--print-value-only'], { env: cleanEnvironment() });
    expect(alice.stdout).toBe('value-1\n');
    const leaseHex = BigInt(leaseId).toString(16);
    expect((await etcdctlEtcd(endpoint, ['lease', 'list'])).stdout).toContain(leaseHex);
    expect((await etcdctlEtcd(endpoint, ['put', 'after-migration', 'yes'])).stdout).toBe('OK\n');
  }, 120_000);

  it('grows the migrated member into a cluster: member add, then a second member started with the printed settings gets the data', async () => {
    expect(rampart).toBeDefined();
    const peerPort = await freePort();
    const added = await etcdctlRampart(['member', 'add', 'm2', `--peer-urls=https://127.0.0.1:${peerPort}`]);
    expect(added.stderr).toBe('');
    const settings = new Map([...added.stdout.matchAll(/^(ETCD_[A-Z_]+)="(.*)"$/gm)].map((match) => [match[1] ?? '', match[2] ?? '']));
    const second = await startMember('m2', path.join(home, 'm2-data'), [
      '--initial-cluster', settings.get('ETCD_INITIAL_CLUSTER') ?? '',
      '--initial-advertise-peer-urls', settings.get('ETCD_INITIAL_ADVERTISE_PEER_URLS') ?? '',
      '--initial-cluster-state', settings.get('ETCD_INITIAL_CLUSTER_STATE') ?? '',
    ], peerPort);
    const onSecond = (args: string[]) => run('etcdctl', ['--endpoints', second.endpoint, ...tls, ...args], { env: cleanEnvironment() });
    const deadline = Date.now() + 30_000;
    while ((await onSecond(['get', '/registry/items/00001', '--print-value-only'])).stdout !== 'value-1\n') {
      if (Date.now() > deadline) throw new Error('the second member never served the migrated data');
      await new Promise((resolve) => setTimeout(resolve, 200));
    }
    expect(withoutHeader(await onSecond(['get', '/registry/', '--prefix', '--keys-only', '-w', 'json']))).toBe(withoutHeader(await etcdctlRampart(['get', '/registry/', '--prefix', '--keys-only', '-w', 'json'])));
    expect((await onSecond(['put', 'grown', 'yes'])).stdout).toBe('OK\n');
  }, 90_000);

  it('refuses truncated and corrupt files with a clear error and leaves no data directory', async () => {
    const content = await readFile(etcdSnapshot);
    const cases: [string, Buffer, RegExp][] = [
      ['truncated', content.subarray(0, Math.floor(content.length / 2)), /not a usable etcd snapshot: .*(truncated|multiple of the page size|claims)/],
      ['corrupt', Buffer.concat([content.subarray(0, 9000), Buffer.from('garbage!'), content.subarray(9008)]), /not a usable etcd snapshot: SHA-256 mismatch/],
      ['corrupt-without-checksum', Buffer.concat([content.subarray(0, 4096 * 3), Buffer.alloc(4096, 0xab), content.subarray(4096 * 4, content.length - 32)]), /not a usable etcd snapshot: /],
      ['not-a-snapshot', Buffer.from('hello world, this is not a database'), /neither a Rampart snapshot nor an etcd snapshot/],
    ];
    for (const [name, bytes, message] of cases) {
      const file = path.join(home, `${name}.db`);
      await writeFile(file, bytes);
      const dataDir = path.join(home, `restore-${name}`);
      const result = await run(process.execPath, [rampartBin, 'snapshot', 'restore', file, '--data-dir', dataDir]);
      expect(result.code, name).toBe(1);
      expect(result.stderr, name).toMatch(message);
      expect(result.stderr, name).not.toMatch(/\n\s+at /); // no stack trace
      expect(existsSync(dataDir), name).toBe(false);
      expect(existsSync(`${dataDir}.encryption-key`), name).toBe(false);
    }
  });
});
