/**
 * `rampart init`: per-host bundles that start a TLS member from their own rampart.yaml, reachable
 * with the admin certificate; bad member specs are refused before anything is written.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { readFile, readdir, stat } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { cleanEnvironment, freePort, rampartBin, removeDirectory, run, temporaryDirectory, type CommandResult } from '../helpers/processes.js';

/** Retries `etcdctl put k v` with these flags until the member serves it (or exits); the last result. */
async function putWhenServing(flags: readonly string[], child: ChildProcess): Promise<CommandResult> {
  let put = await run('etcdctl', [...flags, 'put', 'k', 'v'], { env: cleanEnvironment() });
  for (let attempt = 0; put.code !== 0 && attempt < 60 && child.exitCode === null; attempt++) {
    await new Promise((resolve) => setTimeout(resolve, 250));
    put = await run('etcdctl', [...flags, 'put', 'k', 'v'], { env: cleanEnvironment() });
  }
  return put;
}

async function stopChild(child: ChildProcess): Promise<void> {
  child.kill('SIGTERM');
  await new Promise((resolve) => (child.exitCode === null ? child.once('exit', resolve) : resolve(null)));
}

describe('rampart init', () => {
  const directories: string[] = [];
  afterAll(async () => {
    for (const directory of directories) await removeDirectory(directory);
  });

  it('writes per-host bundles whose config starts a TLS member that the admin certificate can use', async () => {
    const out = await temporaryDirectory('init');
    directories.push(out);
    const [clientPort, peerPort] = [await freePort(), await freePort()];
    const result = await run(process.execPath, [rampartBin, 'init', '--member', 'a=127.0.0.1', '--member', 'b=db-2.example.internal', '--out', out,
      '--client-port', String(clientPort), '--peer-port', String(peerPort), '--data-dir', path.join(out, 'data')]);
    expect(result.stderr).toBe('');
    expect(result.code).toBe(0);
    expect((await readdir(out)).sort()).toEqual(['a', 'b', 'pki']);
    for (const name of ['a', 'b']) {
      expect((await readdir(path.join(out, name))).sort()).toEqual(['audit.crt', 'audit.key', 'ca.crt', 'crl.pem', 'encryption.key', 'peer.crt', 'peer.key', 'rampart.service', 'rampart.yaml', 'server.crt', 'server.key']);
      expect((await stat(path.join(out, name, 'server.key'))).mode & 0o777).toBe(0o600);
      expect((await stat(path.join(out, name, 'encryption.key'))).mode & 0o777).toBe(0o600);
      expect(existsSync(path.join(out, name, 'ca.key'))).toBe(false);
    }
    const config = await readFile(path.join(out, 'b', 'rampart.yaml'), 'utf8');
    expect(config).toContain(`initial-cluster: a=https://127.0.0.1:${peerPort},b=https://db-2.example.internal:${peerPort}`);
    expect(config).toContain(`- https://db-2.example.internal:${clientPort}`);
    expect(config).toContain('encryption-key-file: encryption.key');
    expect(config).toContain('audit-signing-key-file: audit.key');

    // Member "a" alone (its config names two members): start it as a one-member cluster from the
    // bundle directory, overriding only the cluster list, and reach it with the admin certificate.
    const metricsPort = await freePort();
    const child = spawn(process.execPath, [rampartBin, 'serve', '--config-file', 'rampart.yaml', '--initial-cluster', `a=https://127.0.0.1:${peerPort}`, '--log-level', 'warn', '--listen-metrics-urls', `http://127.0.0.1:${metricsPort}`, '--audit-anchor-interval-ms', '300'],
      { cwd: path.join(out, 'a'), env: cleanEnvironment(), stdio: ['ignore', 'pipe', 'pipe'] });
    let output = '';
    child.stdout.on('data', (chunk: Buffer) => (output += chunk.toString()));
    child.stderr.on('data', (chunk: Buffer) => (output += chunk.toString()));
    try {
      const pki = path.join(out, 'pki');
      const admin = ['--endpoints', `https://127.0.0.1:${clientPort}`, '--cacert', path.join(pki, 'ca.crt'), '--cert', path.join(pki, 'admin.crt'), '--key', path.join(pki, 'admin.key'), '--dial-timeout=2s', '--command-timeout=3s'];
      expect((await putWhenServing(admin, child)).stdout, output).toBe('OK\n');
      expect((await run('etcdctl', [...admin, 'get', 'k', '--print-value-only'], { env: cleanEnvironment() })).stdout).toBe('v\n');
      // A new TLS cluster enables auth with the shipped policies on its own (not only under rampart up).
      expect((await run('etcdctl', [...admin, 'user', 'list'], { env: cleanEnvironment() })).stdout).toBe('auditor\nkube-apiserver\nroot\n');
      const { issueCertificate, readKeyPair, writeKeyPair } = await import('../../src/pki/authority.js');
      const stranger = await writeKeyPair(out, 'stranger', await issueCertificate(await readKeyPair(path.join(pki, 'ca'), 'ca'), { kind: 'client', commonName: 'stranger' }));
      const denied = await run('etcdctl', [...admin.slice(0, 4), '--cert', stranger.certificateFile, '--key', stranger.keyFile, '--command-timeout=3s', 'get', 'k'], { env: cleanEnvironment() });
      expect(denied.stderr).toContain('Error: etcdserver: permission denied');
      expect((await run('etcdctl', ['--endpoints', `https://127.0.0.1:${clientPort}`, '--cacert', path.join(pki, 'ca.crt'), '--dial-timeout=2s', 'get', 'k'], { env: cleanEnvironment() })).code).not.toBe(0);

      // Metrics and health: etcd's names where etcd has one; certificate expiry for both ports.
      const fetchText = async (route: string): Promise<{ status: number; body: string }> => {
        const response = await fetch(`http://127.0.0.1:${metricsPort}${route}`);
        return { status: response.status, body: await response.text() };
      };
      expect(await fetchText('/health')).toEqual({ status: 200, body: '{"health":"true","reason":""}\n' });
      expect((await fetchText('/readyz')).status).toBe(200);
      const metrics = (await fetchText('/metrics')).body;
      expect(metrics).toMatch(/^etcd_server_has_leader 1$/m);
      expect(metrics).toMatch(/^etcd_server_is_leader 1$/m);
      expect(metrics).toMatch(/^etcd_server_leader_changes_seen_total 1$/m);
      expect(metrics).toMatch(/^etcd_debugging_mvcc_current_revision 2$/m);
      expect(metrics).toMatch(/^grpc_server_handled_total\{grpc_type="unary",grpc_method="Put",grpc_code="OK"\} 1$/m);
      for (const use of ['client', 'peer']) {
        const seconds = Number(new RegExp(`^rampart_certificate_expiry_seconds\\{use="${use}"\\} (\\d+)$`, 'm').exec(metrics)?.[1]);
        expect(seconds).toBeGreaterThan(89 * 86_400);
        expect(seconds).toBeLessThanOrEqual(90 * 86_400);
      }
      expect(metrics).not.toContain('PRIVATE');
      expect((await fetchText('/nothing')).status).toBe(404);

      // The bundle's audit key signs the member's checkpoints: its trail verifies against the CA.
      const verifyFlags = [...admin.slice(0, 8), '--encryption-key-file', path.join(out, 'a', 'encryption.key')];
      let verified = await run(process.execPath, [rampartBin, 'audit', 'verify', path.join(out, 'data', 'audit'), ...verifyFlags]);
      for (let attempt = 0; !/checkpoints matched/.test(verified.stdout) && attempt < 20; attempt++) {
        await new Promise((resolve) => setTimeout(resolve, 250));
        verified = await run(process.execPath, [rampartBin, 'audit', 'verify', path.join(out, 'data', 'audit'), ...verifyFlags]);
      }
      expect(verified.stderr).toBe('');
      expect(verified.stdout).toMatch(/^audit trail intact: .*[1-9]\d* checkpoints matched, each signed by the member's audit key \(CA-issued\)\n$/);
    } finally {
      await stopChild(child);
    }
  }, 60_000);

  it('refuses to start with a broken bootstrap policy, naming its line; --no-bootstrap-auth skips it', async () => {
    const out = await temporaryDirectory('init-policy');
    directories.push(out);
    const [clientPort, peerPort] = [await freePort(), await freePort()];
    expect((await run(process.execPath, [rampartBin, 'init', '--member', 'a=127.0.0.1', '--out', out, '--client-port', String(clientPort), '--peer-port', String(peerPort), '--data-dir', path.join(out, 'data')])).code).toBe(0);
    const { writeFile } = await import('node:fs/promises');
    await writeFile(path.join(out, 'bad.yaml'), 'roles:\n  - name: r\n    grants:\n      - { prefix: /x/, access: sometimes }\n');
    const config = path.join(out, 'a', 'rampart.yaml');
    const bundle = (file: string): string => path.join(out, 'a', file);
    // Each bundle holds the crl.pem its rampart.yaml names: the CA's CRL, readable by OpenSSL.
    const crl = await run('openssl', ['crl', '-in', bundle('crl.pem'), '-noout', '-text']);
    expect(crl.code, crl.stderr).toBe(0);
    expect(crl.stdout).toContain('No Revoked Certificates');
    const tls = ['--cert-file', bundle('server.crt'), '--key-file', bundle('server.key'), '--trusted-ca-file', bundle('ca.crt'), '--peer-cert-file', bundle('peer.crt'), '--peer-key-file', bundle('peer.key'), '--peer-trusted-ca-file', bundle('ca.crt'), '--crl-file', bundle('crl.pem')];
    const refused = await run(process.execPath, [rampartBin, 'serve', '--config-file', config, ...tls, '--bootstrap-policies', path.join(out, 'bad.yaml')]);
    expect(refused.code).toBe(1);
    expect(refused.stderr).toContain(`${path.join(out, 'bad.yaml')}:4: `);
    expect(refused.stderr).not.toMatch(/\n\s+at /);

    const child = spawn(process.execPath, [rampartBin, 'serve', '--config-file', config, ...tls, '--no-bootstrap-auth', '--log-level', 'warn'], { cwd: path.join(out, 'a'), env: cleanEnvironment(), stdio: 'ignore' });
    try {
      const admin = ['--endpoints', `https://127.0.0.1:${clientPort}`, '--cacert', path.join(out, 'pki', 'ca.crt'), '--cert', path.join(out, 'pki', 'admin.crt'), '--key', path.join(out, 'pki', 'admin.key'), '--dial-timeout=2s'];
      expect((await putWhenServing(admin, child)).stdout).toBe('OK\n');
      await new Promise((resolve) => setTimeout(resolve, 1_000)); // longer than a bootstrap attempt would take
      expect((await run('etcdctl', [...admin, 'user', 'list'], { env: cleanEnvironment() })).stdout).toBe('');
    } finally {
      await stopChild(child);
    }
  }, 60_000);

  it('refuses bad member specs and duplicate names without writing anything', async () => {
    const out = await temporaryDirectory('init-bad');
    directories.push(out);
    for (const members of [['a'], ['a=host with space'], ['a=h1', 'a=h2']]) {
      const result = await run(process.execPath, [rampartBin, 'init', ...members.flatMap((member) => ['--member', member]), '--out', path.join(out, 'bundles')]);
      expect(result.code).toBe(1);
      expect(result.stderr).toMatch(/--member expects name=host|is not a host name|member names must be unique/);
      expect(result.stderr).not.toMatch(/\n\s+at /);
      expect(existsSync(path.join(out, 'bundles'))).toBe(false);
    }
  });
});
