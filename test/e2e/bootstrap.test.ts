/**
 * A new secure cluster is secure from its first client request: someone holding a valid
 * certificate who races the first leader (issue 8, item 5) cannot get an auth change in before the
 * default policies and auth are in force, and so cannot leave the cluster with auth off.
 */
import { spawn } from 'node:child_process';
import path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { afterAll, describe, expect, it } from 'vitest';
import { packageDefinition } from '../../src/api/proto.js';
import { cleanEnvironment, freeBasePort, freePort, projectRoot, rampartBin, removeDirectory, run, temporaryDirectory } from '../helpers/processes.js';

/** Sends RoleAdd from every endpoint as fast as it can, each call queued until the port opens. */
function raceRoleAdds(endpoints: readonly string[], credentials: grpc.ChannelCredentials): { answers(): Promise<Map<string, number>>; stop(): Promise<Map<string, number>> } {
  const Auth = (grpc.loadPackageDefinition(packageDefinition) as unknown as { etcdserverpb: { Auth: grpc.ServiceClientConstructor } }).etcdserverpb.Auth;
  const clients = endpoints.map((endpoint) => new Auth(endpoint, credentials, { 'grpc.initial_reconnect_backoff_ms': 20, 'grpc.max_reconnect_backoff_ms': 50 }) as unknown as grpc.Client & {
    RoleAdd(request: object, metadata: grpc.Metadata, options: grpc.CallOptions, callback: (error: grpc.ServiceError | null) => void): void;
  });
  const answers = new Map<string, number>();
  let racing = true;
  const race = async (client: (typeof clients)[number]): Promise<void> => {
    while (racing) {
      const metadata = new grpc.Metadata();
      // waitForReady: queued until the port opens, then sent at once (the attacker's best chance).
      metadata.setOptions({ waitForReady: true });
      const answer = await new Promise<string>((resolve) =>
        client.RoleAdd({ name: 'mallory-role' }, metadata, { deadline: Date.now() + 500 }, (error) => resolve(error === null ? 'OK' : error.code === grpc.status.UNAVAILABLE || error.code === grpc.status.DEADLINE_EXCEEDED ? 'unreachable' : error.details)),
      );
      answers.set(answer, (answers.get(answer) ?? 0) + 1);
    }
  };
  const racers = clients.flatMap((client) => Array.from({ length: 8 }, () => race(client)));
  return {
    answers: () => Promise.resolve(answers),
    stop: async () => {
      racing = false;
      await Promise.all(racers);
      clients.forEach((client) => client.close());
      return answers;
    },
  };
}


describe('bootstrap auth', () => {
  let home: string | undefined;
  const directories: string[] = [];
  afterAll(async () => {
    for (const directory of directories) await removeDirectory(directory);
    if (home !== undefined) {
      await run(process.execPath, [rampartBin, 'down', '--dir', path.join(home, '.rampart')], { timeoutMs: 50_000 });
      await removeDirectory(home);
    }
  }, 60_000);

  it('serves no client before the policies and auth are in force: a racing RoleAdd never gets in', async () => {
    home = await temporaryDirectory('bootstrap');
    const directory = path.join(home, '.rampart');
    const pki = path.join(directory, 'pki');
    // The attacker: a client certificate of the cluster CA (made before the cluster starts) naming no user.
    const { initAuthority, issueCertificate, writeKeyPair } = await import('../../src/pki/authority.js');
    const { authority } = await initAuthority(pki, 'bootstrap-race');
    const mallory = await writeKeyPair(path.join(home, 'mallory'), 'mallory', await issueCertificate(authority, { kind: 'client', commonName: 'mallory' }));
    const { readFile } = await import('node:fs/promises');
    const credentials = grpc.credentials.createSsl(Buffer.from(authority.certificatePem), await readFile(mallory.keyFile), await readFile(mallory.certificateFile));
    const base = await freeBasePort();
    const racing = raceRoleAdds([base, base + 10_000, base + 20_000].map((port) => `127.0.0.1:${port}`), credentials);
    const child = spawn(process.execPath, [rampartBin, 'up', '--dir', directory, '--base-port', String(base)], { env: cleanEnvironment(), stdio: ['ignore', 'pipe', 'pipe'] });
    let output = '';
    child.stdout.on('data', (chunk: Buffer) => (output += chunk.toString()));
    child.stderr.on('data', (chunk: Buffer) => (output += chunk.toString()));
    const code = await new Promise<number | null>((resolve) => child.once('exit', resolve));
    // Keep trying a little after the cluster is up.
    await new Promise((resolve) => setTimeout(resolve, 500));
    const answers = await racing.stop();
    expect(code, output).toBe(0);
    expect(output).toContain('auth is enabled; users: auditor, kube-apiserver, root');
    expect(answers.get('OK')).toBeUndefined();
    expect(answers.get('etcdserver: user name not found')).toBeGreaterThan(0);
    const admin = ['--endpoints', `https://127.0.0.1:${base}`, '--cacert', path.join(pki, 'ca.crt'), '--cert', path.join(pki, 'admin.crt'), '--key', path.join(pki, 'admin.key')];
    const { PolicyConnection } = await import('../../src/cli/policy.js');
    const live = await PolicyConnection.using({ dir: directory }, (connection) => connection.export());
    expect(live.enabled).toBe(true);
    expect((await run('etcdctl', [...admin, 'role', 'list'], { env: cleanEnvironment() })).stdout).not.toContain('mallory-role');
  }, 120_000);

  it('a member whose leader does not bootstrap keeps its client port closed until auth is on', async () => {
    // m2 (--no-bootstrap-auth, short election timeout) leads; m1 bootstraps by default but is not
    // leader, so the cluster stays pristine: m1 must not serve (before the fix it served with auth off).
    const out = await temporaryDirectory('bootstrap-two');
    directories.push(out);
    const ports = { c1: await freePort(), p1: await freePort(), c2: await freePort(), p2: await freePort(), metrics1: await freePort(), metrics2: await freePort() };
    expect((await run(process.execPath, [rampartBin, 'init', '--member', 'm1=127.0.0.1', '--member', 'm2=127.0.0.1', '--out', out])).code).toBe(0);
    const { readKeyPair, issueCertificate, writeKeyPair } = await import('../../src/pki/authority.js');
    const authority = await readKeyPair(path.join(out, 'pki', 'ca'), 'ca');
    const mallory = await writeKeyPair(path.join(out, 'mallory'), 'mallory', await issueCertificate(authority, { kind: 'client', commonName: 'mallory' }));
    const { readFile } = await import('node:fs/promises');
    const credentials = grpc.credentials.createSsl(Buffer.from(authority.certificatePem), await readFile(mallory.keyFile), await readFile(mallory.certificateFile));
    const initialCluster = `m1=https://127.0.0.1:${ports.p1},m2=https://127.0.0.1:${ports.p2}`;
    const start = (name: string, client: number, peer: number, metrics: number, extra: string[]) =>
      spawn(process.execPath, [rampartBin, 'serve', '--config-file', 'rampart.yaml', '--data-dir', path.join(out, name, 'data'), '--initial-cluster', initialCluster,
        '--listen-client-urls', `https://127.0.0.1:${client}`, '--listen-peer-urls', `https://127.0.0.1:${peer}`, '--listen-metrics-urls', `https://127.0.0.1:${metrics}`,
        '--log-level', 'warn', ...extra], { cwd: path.join(out, name), env: cleanEnvironment(), stdio: 'ignore' });
    const m2 = start('m2', ports.c2, ports.p2, ports.metrics2, ['--no-bootstrap-auth', '--election-timeout', '300', '--heartbeat-interval', '50']);
    await new Promise((resolve) => setTimeout(resolve, 1500));
    const m1 = start('m1', ports.c1, ports.p1, ports.metrics1, ['--election-timeout', '10000', '--heartbeat-interval', '50']);
    const racing = raceRoleAdds([`127.0.0.1:${ports.c1}`], credentials);
    try {
      const admin = ['--cacert', path.join(out, 'pki', 'ca.crt'), '--cert', path.join(out, 'pki', 'admin.crt'), '--key', path.join(out, 'pki', 'admin.key'), '--dial-timeout=1s', '--command-timeout=2s'];
      const deadline = Date.now() + 20_000;
      while ((await run('etcdctl', ['--endpoints', `https://127.0.0.1:${ports.c2}`, ...admin, 'put', 'ready', 'yes'], { env: cleanEnvironment() })).code !== 0) {
        if (Date.now() > deadline) throw new Error('m2 never served');
        await new Promise((resolve) => setTimeout(resolve, 200));
      }
      await new Promise((resolve) => setTimeout(resolve, 3000));
      const before = new Map(await racing.answers());
      expect(before.get('OK')).toBeUndefined();
      expect([...before.keys()]).toEqual(['unreachable']);
      // The operator secures the cluster through m2: m1 then serves, with auth on.
      const applied = await run(process.execPath, [rampartBin, 'policy', 'apply', path.join(projectRoot, 'policies'), '--endpoints', `https://127.0.0.1:${ports.c2}`, '--cacert', path.join(out, 'pki', 'ca.crt'), '--cert', path.join(out, 'pki', 'admin.crt'), '--key', path.join(out, 'pki', 'admin.key')]);
      expect(applied.code, applied.stderr).toBe(0);
      expect((await run('etcdctl', ['--endpoints', `https://127.0.0.1:${ports.c2}`, ...admin, 'auth', 'enable'], { env: cleanEnvironment() })).stdout).toBe('Authentication Enabled\n');
      const served = Date.now() + 15_000;
      while (((await racing.answers()).get('etcdserver: user name not found') ?? 0) === 0 && Date.now() < served) await new Promise((resolve) => setTimeout(resolve, 100));
      const answers = await racing.stop();
      expect(answers.get('OK')).toBeUndefined();
      expect(answers.get('etcdserver: user name not found')).toBeGreaterThan(0);
    } finally {
      await racing.stop();
      for (const child of [m1, m2]) {
        child.kill('SIGTERM');
        await new Promise((resolve) => (child.exitCode === null ? child.once('exit', resolve) : resolve(null)));
      }
    }
  }, 90_000);
});
