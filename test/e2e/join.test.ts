/**
 * Joining as etcd does: `etcdctl member add` on a TLS cluster started by `rampart up` (which has a
 * random cluster token), then a fourth member started with exactly the settings etcdctl prints —
 * no token. It learns the cluster and its own id from the members over mutual TLS, joins and serves.
 */
import { spawn } from 'node:child_process';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { cleanEnvironment, freeBasePort, freePort, rampartBin, removeDirectory, run, temporaryDirectory } from '../helpers/processes.js';

describe('member add, then start the new member with the printed settings', () => {
  let home: string;
  let pki: string;
  let endpoints: string;
  const stops: (() => Promise<void>)[] = [];

  const admin = (): string[] => ['--cacert', path.join(pki, 'ca.crt'), '--cert', path.join(pki, 'admin.crt'), '--key', path.join(pki, 'admin.key')];
  const etcdctl = (endpoint: string, args: string[]) =>
    run('etcdctl', ['--endpoints', endpoint, '--command-timeout=5s', '--dial-timeout=2s', ...admin(), ...args], { env: cleanEnvironment() });

  beforeAll(async () => {
    home = await temporaryDirectory('join');
    const base = await freeBasePort();
    const result = await run(process.execPath, [rampartBin, 'up', '--dir', path.join(home, '.rampart'), '--base-port', String(base)], { timeoutMs: 90_000 });
    expect(result.code).toBe(0);
    pki = path.join(home, '.rampart', 'pki');
    endpoints = /etcdctl --endpoints (\S+)/.exec(result.stdout)?.[1] ?? '';
    expect(endpoints.split(',')).toHaveLength(3);
  }, 120_000);

  afterAll(async () => {
    for (const stop of stops) await stop();
    if (home !== undefined) {
      await run(process.execPath, [rampartBin, 'down', '--dir', path.join(home, '.rampart')], { timeoutMs: 50_000 });
      await removeDirectory(home);
    }
  }, 60_000);

  /** Starts `rampart serve` with TLS for the new member; the cluster settings come from `settings`. */
  const startFourth = async (name: string, settings: Map<string, string>, clientPort: number, peerPort: number): Promise<{ output: () => string; exited: () => boolean }> => {
    const directory = path.join(home, name);
    // Each certificate is issued for the member's name (a peer certificate speaks for the member
    // its CN names), one directory per kind.
    for (const kind of ['server', 'peer'] as const) {
      const issued = await run(process.execPath, [rampartBin, 'cert', 'issue', kind, name, '--pki-dir', pki, '--san', '127.0.0.1', 'localhost', '--out', path.join(directory, kind)]);
      expect(issued.code).toBe(0);
    }
    const child = spawn(process.execPath, [
      rampartBin, 'serve',
      '--name', settings.get('ETCD_NAME') ?? '',
      '--initial-cluster', settings.get('ETCD_INITIAL_CLUSTER') ?? '',
      '--initial-advertise-peer-urls', settings.get('ETCD_INITIAL_ADVERTISE_PEER_URLS') ?? '',
      '--initial-cluster-state', settings.get('ETCD_INITIAL_CLUSTER_STATE') ?? '',
      '--data-dir', path.join(directory, 'data'),
      '--listen-client-urls', `https://127.0.0.1:${clientPort}`,
      '--listen-peer-urls', `https://127.0.0.1:${peerPort}`,
      '--cert-file', path.join(directory, 'server', `${name}.crt`), '--key-file', path.join(directory, 'server', `${name}.key`), '--trusted-ca-file', path.join(pki, 'ca.crt'),
      '--peer-cert-file', path.join(directory, 'peer', `${name}.crt`), '--peer-key-file', path.join(directory, 'peer', `${name}.key`), '--peer-trusted-ca-file', path.join(pki, 'ca.crt'),
      '--log-level', 'info',
    ], { env: cleanEnvironment(), stdio: ['ignore', 'pipe', 'pipe'] });
    let text = '';
    child.stdout.on('data', (chunk: Buffer) => (text += chunk.toString()));
    child.stderr.on('data', (chunk: Buffer) => (text += chunk.toString()));
    stops.push(async () => {
      if (child.exitCode !== null || child.signalCode !== null) return;
      const exited = new Promise((resolve) => child.once('exit', resolve));
      child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), 10_000);
      await exited;
      clearTimeout(timer);
    });
    return { output: () => text, exited: () => child.exitCode !== null };
  };

  const waitFor = async (check: () => Promise<boolean>, timeoutMs: number, what: string): Promise<void> => {
    const deadline = Date.now() + timeoutMs;
    while (!(await check())) {
      if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
      await new Promise((resolve) => setTimeout(resolve, 200));
    }
  };

  it('joins a TLS cluster without the cluster token and serves reads and writes', async () => {
    expect((await etcdctl(endpoints, ['put', 'before-join', 'yes'])).stdout).toBe('OK\n');
    const clientPort = await freePort();
    const peerPort = await freePort();
    const peerUrl = `https://127.0.0.1:${peerPort}`;
    const added = await etcdctl(endpoints, ['member', 'add', 'm4', `--peer-urls=${peerUrl}`]);
    expect(added.stderr).toBe('');
    // etcdctl prints both ids with %16x: a short id is padded with spaces.
    const memberId = /^Member +([0-9a-f]+) added to cluster +([0-9a-f]+)/.exec(added.stdout);
    expect(memberId).not.toBeNull();
    const settings = new Map([...added.stdout.matchAll(/^(ETCD_[A-Z_]+)="(.*)"$/gm)].map((match) => [match[1] ?? '', match[2] ?? '']));
    expect([...settings.keys()].sort()).toEqual(['ETCD_INITIAL_ADVERTISE_PEER_URLS', 'ETCD_INITIAL_CLUSTER', 'ETCD_INITIAL_CLUSTER_STATE', 'ETCD_NAME']);
    expect(settings.get('ETCD_INITIAL_CLUSTER_STATE')).toBe('existing');

    const fourth = await startFourth('m4', settings, clientPort, peerPort);
    const endpoint = `https://127.0.0.1:${clientPort}`;
    await waitFor(async () => (await etcdctl(endpoint, ['get', 'before-join', '--print-value-only'])).stdout === 'yes\n', 60_000, 'the new member to serve');
    expect(fourth.output()).not.toContain('refused raft messages from another cluster');
    // Asked again until answered (the same value: idempotent): a loaded machine's cluster of four may
    // hold an election as the new member comes in.
    await waitFor(async () => (await etcdctl(endpoint, ['put', 'from-m4', 'written'])).stdout === 'OK\n', 30_000, 'a put through the new member');
    expect((await etcdctl(endpoints, ['get', 'from-m4', '--print-value-only'])).stdout).toBe('written\n');

    // The new member reports the id `member add` gave it and the cluster's id (64-bit numbers in
    // etcdctl's JSON: read as text, JSON.parse would round them).
    const status = (await etcdctl(endpoint, ['endpoint', 'status', '-w', 'json'])).stdout;
    expect(BigInt(/"member_id":(\d+)/.exec(status)?.[1] ?? '0').toString(16)).toBe(memberId?.[1]);
    expect(BigInt(/"cluster_id":(\d+)/.exec(status)?.[1] ?? '0').toString(16)).toBe(memberId?.[2]);
    const list = await etcdctl(endpoints, ['member', 'list']);
    expect(list.stdout).toContain(`${memberId?.[1]}, started, m4, ${peerUrl}, ${endpoint}, false`);
  }, 150_000);

  it('refuses to start a member that was never added, with a clear error', async () => {
    const clientPort = await freePort();
    const peerPort = await freePort();
    const members = (await etcdctl(endpoints, ['member', 'list', '-w', 'json'])).stdout;
    const peers = (JSON.parse(members) as { members: { name: string; peerURLs: string[] }[] }).members.map((member) => `${member.name}=${member.peerURLs[0] ?? ''}`);
    const settings = new Map([
      ['ETCD_NAME', 'm5'],
      ['ETCD_INITIAL_CLUSTER', [...peers, `m5=https://127.0.0.1:${peerPort}`].join(',')],
      ['ETCD_INITIAL_ADVERTISE_PEER_URLS', `https://127.0.0.1:${peerPort}`],
      ['ETCD_INITIAL_CLUSTER_STATE', 'existing'],
    ]);
    const fifth = await startFourth('m5', settings, clientPort, peerPort);
    await waitFor(async () => fifth.exited(), 60_000, 'the unknown member to exit');
    expect(fifth.output()).toContain(`the cluster has no member with peer URLs https://127.0.0.1:${peerPort}`);
  }, 120_000);
});
