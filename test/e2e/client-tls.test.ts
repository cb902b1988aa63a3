/**
 * The client port beyond mutual TLS: passwords over server TLS as an explicit opt-in
 * (`--client-cert-auth false`), the JSON gateway over the same TLS, python3-etcd3 (which sends its
 * token header twice), and what happens to open streams when a certificate is revoked or expires,
 * or a token expires.
 */
import * as grpc from '@grpc/grpc-js';
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { packageDefinition } from '../../src/api/proto.js';
import { issueCertificate, readKeyPair, writeKeyPair } from '../../src/pki/authority.js';
import { httpCall } from '../helpers/http-gateway.js';
import { cleanEnvironment, freeBasePort, rampartBin, removeDirectory, run, temporaryDirectory } from '../helpers/processes.js';

const python = '/usr/bin/python3';
const tokenTtlSeconds = 4;
/** How soon the streams of a revoked certificate must end. */
const revokedEndMaxMs = 20_000;

type Stream = grpc.ClientDuplexStream<object, Record<string, unknown>>;
type Unary = (request: object, metadata: grpc.Metadata, callback: (error: grpc.ServiceError | null, response: Record<string, unknown>) => void) => void;

describe('client TLS: passwords without client certificates, and open streams of revoked or expired credentials', () => {
  let home = '';
  let port = 0;
  let member: ChildProcess | undefined;
  const rampartDir = (): string => path.join(home, '.rampart');
  const pki = (): string => path.join(rampartDir(), 'pki');
  const etcdctl = (credentials: string[], args: string[]) =>
    run('etcdctl', ['--endpoints', `https://127.0.0.1:${port}`, '--command-timeout=5s', ...credentials, ...args], { env: cleanEnvironment() });
  const admin = (): string[] => ['--cacert', path.join(pki(), 'ca.crt'), '--cert', path.join(pki(), 'admin.crt'), '--key', path.join(pki(), 'admin.key')];
  const serverOnly = (): string[] => ['--cacert', path.join(pki(), 'ca.crt')];

  const loaded = grpc.loadPackageDefinition(packageDefinition) as unknown as Record<string, Record<string, grpc.ServiceClientConstructor>>;
  const client = (service: 'Watch' | 'Lease' | 'Auth' | 'KV', credentials: grpc.ChannelCredentials): grpc.Client & Record<string, Unary> & { Watch(metadata?: grpc.Metadata): Stream; LeaseKeepAlive(): Stream } =>
    new (loaded.etcdserverpb?.[service] as grpc.ServiceClientConstructor)(`127.0.0.1:${port}`, credentials) as never;
  const unary = (target: grpc.Client & Record<string, Unary>, method: string, request: object, metadata = new grpc.Metadata()): Promise<Record<string, unknown>> =>
    new Promise((resolve, reject) => (target[method] as Unary).call(target, request, metadata, (error, response) => (error === null ? resolve(response) : reject(error))));
  /** Resolves when the stream ends (error or end), with how it ended. */
  const ended = (stream: Stream): Promise<string> => new Promise((resolve) => {
    stream.on('error', (error: grpc.ServiceError) => resolve(`error ${error.code}`));
    stream.on('end', () => resolve('end'));
  });
  const responses = (stream: Stream): Record<string, unknown>[] => {
    const seen: Record<string, unknown>[] = [];
    stream.on('data', (response: Record<string, unknown>) => seen.push(response));
    return seen;
  };
  const until = async (check: () => boolean, timeoutMs = 10_000, seen: unknown = undefined): Promise<void> => {
    const deadline = Date.now() + timeoutMs;
    while (!check()) {
      if (Date.now() > deadline) throw new Error(`condition not met in time; seen ${JSON.stringify(seen)}`);
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
  };
  const tlsFiles = async (name: string): Promise<[Buffer, Buffer, Buffer]> =>
    Promise.all([readFile(path.join(pki(), 'ca.crt')), readFile(path.join(pki(), `${name}.key`)), readFile(path.join(pki(), `${name}.crt`))]);

  beforeAll(async () => {
    home = await temporaryDirectory('client-tls');
    const base = await freeBasePort();
    port = base;
    const up = await run(process.execPath, [rampartBin, 'up', '--dir', rampartDir(), '--size', '1', '--base-port', String(base)], { timeoutMs: 90_000 });
    expect(up.code, up.stderr).toBe(0);
    for (const args of [
      ['role', 'add', 'app'],
      ['role', 'grant-permission', 'app', 'readwrite', '/app/', '--prefix'],
      ['user', 'add', 'bob:bob-password'],
      ['user', 'grant-role', 'bob', 'app'],
      ['user', 'add', 'alice', '--no-password'],
      ['user', 'grant-role', 'alice', 'app'],
    ]) expect((await etcdctl(admin(), args)).code).toBe(0);
    for (const name of ['alice', 'carol']) await run(process.execPath, [rampartBin, 'cert', 'issue', 'client', name, '--pki-dir', pki()]);
    // The same member again, now with client certificates optional.
    await run(process.execPath, [rampartBin, 'down', '--dir', rampartDir()], { timeoutMs: 50_000 });
    const cluster = JSON.parse(await readFile(path.join(rampartDir(), 'cluster.json'), 'utf8')) as { token: string };
    const m1 = path.join(rampartDir(), 'm1');
    member = spawn(process.execPath, [
      rampartBin, 'serve', '--name', 'm1', '--data-dir', path.join(m1, 'data'),
      '--listen-client-urls', `https://127.0.0.1:${base}`, '--listen-peer-urls', `https://127.0.0.1:${base + 1}`,
      '--initial-cluster', `m1=https://127.0.0.1:${base + 1}`, '--initial-cluster-token', cluster.token,
      '--cert-file', path.join(m1, 'server.crt'), '--key-file', path.join(m1, 'server.key'), '--trusted-ca-file', path.join(m1, 'ca.crt'),
      '--peer-cert-file', path.join(m1, 'peer.crt'), '--peer-key-file', path.join(m1, 'peer.key'), '--peer-trusted-ca-file', path.join(m1, 'ca.crt'),
      '--crl-file', path.join(m1, 'crl.pem'), '--certificate-reload-interval-ms', '500', '--encryption-key-file', path.join(m1, 'encryption.key'),
      '--client-cert-auth', 'false', '--auth-token-ttl', String(tokenTtlSeconds), '--log-level', 'warn',
    ], { env: cleanEnvironment(), stdio: ['ignore', 'ignore', 'pipe'] });
    let log = '';
    member.stderr?.on('data', (chunk: Buffer) => (log += chunk.toString()));
    const deadline = Date.now() + 30_000;
    while ((await etcdctl(admin(), ['get', 'x'])).code !== 0) {
      if (Date.now() > deadline || member.exitCode !== null) throw new Error(`member did not start:\n${log}`);
      await new Promise((resolve) => setTimeout(resolve, 200));
    }
  }, 150_000);

  afterAll(async () => {
    if (member !== undefined && member.exitCode === null) {
      const exited = new Promise((resolve) => member?.once('exit', resolve));
      member.kill('SIGTERM');
      await exited;
    }
    await removeDirectory(home);
  });

  it('serves password users over server TLS without a client certificate, and nobody else without one', async () => {
    expect((await etcdctl([...serverOnly(), '--user', 'bob:bob-password'], ['put', '/app/k', 'v'])).stdout).toBe('OK\n');
    const anonymous = await etcdctl(serverOnly(), ['get', '/app/k']);
    expect(anonymous.code).not.toBe(0);
    expect(anonymous.stderr).toContain('rampart: no client certificate; authenticate with a user name and password first');
    expect((await etcdctl([...serverOnly(), '--user', 'bob:wrong'], ['get', '/app/k'])).stderr).toContain('etcdserver: authentication failed, invalid user ID or password');
    // Status stays open (health probes); certificates still identify their holders.
    expect((await etcdctl(serverOnly(), ['endpoint', 'status'])).code).toBe(0);
    expect((await etcdctl(admin(), ['get', '/app/k', '--print-value-only'])).stdout).toBe('v\n');

    // The JSON gateway on the same port and TLS, with the same rules.
    const ca = await readFile(path.join(pki(), 'ca.crt'));
    const https = { port, tls: { ca } };
    const body = JSON.stringify({ key: Buffer.from('/app/k').toString('base64') });
    const refused = await httpCall(https, '/v3/kv/range', { body });
    expect([refused.status, JSON.parse(refused.body)]).toEqual([401, { error: 'rampart: no client certificate; authenticate with a user name and password first', message: 'rampart: no client certificate; authenticate with a user name and password first', code: 16 }]);
    const login = await httpCall(https, '/v3/auth/authenticate', { body: JSON.stringify({ name: 'bob', password: 'bob-password' }) });
    const token = (JSON.parse(login.body) as { token: string }).token;
    const read = await httpCall(https, '/v3/kv/range', { body, headers: { authorization: token } });
    expect((JSON.parse(read.body) as { kvs: { value: string }[] }).kvs[0]?.value).toBe(Buffer.from('v').toString('base64'));
    const [, key, cert] = await tlsFiles('admin');
    const asAdmin = await httpCall({ port, tls: { ca, key, cert } }, '/v3/kv/range', { body });
    expect(asAdmin.status).toBe(200);
    expect((await httpCall({ port, tls: { ca } }, '/health', { method: 'GET' })).body).toBe('{"health":"true"}');
  }, 60_000);

  it.skipIf(!existsSync(python))('serves python3-etcd3 with a password (it sends the token header twice)', async () => {
    const script = [
      'import etcd3, sys',
      `c = etcd3.client(host="127.0.0.1", port=${port}, ca_cert=sys.argv[1], user="bob", password="bob-password")`,
      'c.put("/app/py", "from python")',
      'value, _ = c.get("/app/py")',
      'print(value.decode())',
      'print(len(list(c.get_prefix("/app/"))))',
    ].join('\n');
    const result = await run(python, ['-c', script, path.join(pki(), 'ca.crt')], { timeoutMs: 30_000 });
    expect(result.stderr).toBe('');
    expect(result.stdout).toBe('from python\n2\n');
  }, 60_000);

  it('ends every stream of a revoked or expired certificate, and checks a token on every new watch', async () => {
    const watchFrom = (stream: Stream, watchId: number): void => {
      stream.write({ create_request: { key: Buffer.from('/app/'), range_end: Buffer.from('/app0'), watch_id: watchId } });
    };
    // Revoked: alice's open Watch and keep-alive streams end, on their open connection.
    const [ca, aliceKey, aliceCert] = await tlsFiles('alice');
    const aliceCredentials = grpc.credentials.createSsl(ca, aliceKey, aliceCert);
    const aliceWatch = client('Watch', aliceCredentials).Watch();
    const aliceSeen = responses(aliceWatch);
    const aliceEnded = ended(aliceWatch);
    watchFrom(aliceWatch, 1);
    await until(() => aliceSeen.some((response) => response.created === true), 10_000, aliceSeen);
    const leases = client('Lease', aliceCredentials);
    const lease = await unary(leases, 'LeaseGrant', { TTL: 60 });
    const keepAlive = leases.LeaseKeepAlive();
    const keepAliveEnded = ended(keepAlive);
    keepAlive.on('data', () => undefined);
    keepAlive.write({ ID: lease.ID });
    // A certificate that expires a few seconds from now watches too.
    const authority = await readKeyPair(path.join(pki(), 'ca'), 'ca');
    await writeKeyPair(pki(), 'brief', await issueCertificate(authority, { kind: 'client', commonName: 'bob', notBefore: new Date(Date.now() - 86_400_000 + 5_000), validityDays: 1 }));
    const [, briefKey, briefCert] = await tlsFiles('brief');
    const briefWatch = client('Watch', grpc.credentials.createSsl(ca, briefKey, briefCert)).Watch();
    const briefSeen = responses(briefWatch);
    const briefEnded = ended(briefWatch);
    watchFrom(briefWatch, 1);
    await until(() => briefSeen.some((response) => response.created === true), 10_000, briefSeen);

    const revoked = await run(process.execPath, [rampartBin, 'cert', 'revoke', 'alice', '--dir', rampartDir()]);
    expect(revoked.code, revoked.stderr).toBe(0);
    // The member looks every 500 ms (--certificate-reload-interval-ms); the bounds leave a loaded
    // machine room, and a stream left open (the bug) stays open for good.
    const revokedAt = Date.now();
    const outcome = await Promise.race([aliceEnded, new Promise((resolve) => setTimeout(() => resolve('still open'), revokedEndMaxMs))]);
    expect(outcome).toMatch(/^error \d+$/);
    expect(Date.now() - revokedAt).toBeLessThan(revokedEndMaxMs);
    expect(await Promise.race([keepAliveEnded, new Promise((resolve) => setTimeout(() => resolve('still open'), 10_000))])).toMatch(/^error \d+$/);
    // Its connection is gone; a new one is refused.
    expect((await etcdctl(['--cacert', path.join(pki(), 'ca.crt'), '--cert', path.join(pki(), 'alice.crt'), '--key', path.join(pki(), 'alice.key')], ['get', '/app/k'])).stderr).toContain('rampart: certificate revoked');

    // Expired: the connection of the expiring certificate ends once it is past its end date.
    expect(await Promise.race([briefEnded, new Promise((resolve) => setTimeout(() => resolve('still open'), 30_000))])).toMatch(/^error \d+$/);

    // A token is checked on every new watch of an open stream: once it expires, no new watch.
    const serverTls = grpc.credentials.createSsl(ca);
    const login = await unary(client('Auth', serverTls), 'Authenticate', { name: 'bob', password: 'bob-password' });
    const metadata = new grpc.Metadata();
    metadata.set('token', String(login.token));
    const bobWatch = client('Watch', serverTls).Watch(metadata);
    const bobSeen = responses(bobWatch);
    bobWatch.on('error', () => undefined);
    watchFrom(bobWatch, 1);
    await until(() => bobSeen.some((response) => response.created === true && response.canceled !== true), 10_000, bobSeen);
    await new Promise((resolve) => setTimeout(resolve, (tokenTtlSeconds + 1) * 1000));
    watchFrom(bobWatch, 2);
    await until(() => bobSeen.some((response) => String(response.watch_id) === '2'));
    expect(bobSeen.find((response) => String(response.watch_id) === '2')).toMatchObject({ canceled: true, cancel_reason: 'rpc error: code = PermissionDenied desc = etcdserver: permission denied' });
    bobWatch.cancel();
  }, 150_000);
});
