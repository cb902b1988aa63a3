/**
 * `rampart up`: a secure cluster in one command, and mutual TLS that refuses everything else —
 * plaintext, no certificate, another CA's certificate, an expired certificate, and a client
 * certificate posing as a peer.
 */
import * as grpc from '@grpc/grpc-js';
import { existsSync } from 'node:fs';
import { readFile, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createAuthority, issueCertificate, readKeyPair, writeKeyPair } from '../../src/pki/authority.js';
import { cleanEnvironment, freeBasePort, rampartBin, removeDirectory, run, temporaryDirectory } from '../helpers/processes.js';

describe('rampart up: a secure cluster in one command', () => {
  let home: string;
  let pki: string;
  let endpoints: string;

  const etcdctlAs = (credentials: string[], args: string[]) => etcdctlAt(endpoints, credentials, args);
  /** etcdctl against `at` alone (a second --endpoints flag would add to the list, not replace it). */
  const etcdctlAt = (at: string, credentials: string[], args: string[]) =>
    run('etcdctl', ['--endpoints', at, '--command-timeout=3s', '--dial-timeout=2s', ...credentials, ...args], { env: cleanEnvironment() });
  const admin = (): string[] => ['--cacert', path.join(pki, 'ca.crt'), '--cert', path.join(pki, 'admin.crt'), '--key', path.join(pki, 'admin.key')];
  /**
   * Asks again (every 250 ms, up to 30 s) until `holds` says the answer is the awaited one, and
   * returns the last answer. A member takes a new CRL at its next file poll (1 s), later on a
   * loaded machine: a fixed 2.5 s wait is not a bound there.
   */
  const eventually = async <T>(ask: () => Promise<T>, holds: (answer: T) => boolean): Promise<T> => {
    let answer = await ask();
    for (const deadline = Date.now() + 30_000; !holds(answer) && Date.now() < deadline;) {
      await new Promise((resolve) => setTimeout(resolve, 250));
      answer = await ask();
    }
    return answer;
  };

  beforeAll(async () => {
    home = await temporaryDirectory('up');
    const base = await freeBasePort();
    const result = await run(process.execPath, [rampartBin, 'up', '--dir', path.join(home, '.rampart'), '--base-port', String(base)], { timeoutMs: 90_000 });
    expect(result.stderr).toBe('');
    expect(result.code).toBe(0);
    pki = path.join(home, '.rampart', 'pki');
    const line = /etcdctl --endpoints (\S+) --cacert (\S+) --cert (\S+) --key (\S+)/.exec(result.stdout);
    expect(line?.slice(2)).toEqual([path.join(pki, 'ca.crt'), path.join(pki, 'admin.crt'), path.join(pki, 'admin.key')]);
    endpoints = line?.[1] ?? '';
    expect(endpoints.split(',')).toHaveLength(3);
  }, 120_000);

  afterAll(async () => {
    if (home !== undefined) {
      const stopped = await run(process.execPath, [rampartBin, 'down', '--dir', path.join(home, '.rampart')], { timeoutMs: 50_000 });
      expect(stopped.stdout).toBe('stopped m1\nstopped m2\nstopped m3\n');
      await removeDirectory(home);
    }
  }, 60_000);

  it('serves etcdctl with the admin certificate, including --cluster commands over TLS', async () => {
    expect((await etcdctlAs(admin(), ['put', 'secure', 'yes'])).stdout).toBe('OK\n');
    expect((await etcdctlAs(admin(), ['get', 'secure', '--print-value-only'])).stdout).toBe('yes\n');
    const status = await etcdctlAs(admin(), ['endpoint', 'status', '--cluster', '-w', 'json']);
    const members = JSON.parse(status.stdout) as { Endpoint: string; Status: { leader: number } }[];
    expect(members).toHaveLength(3);
    expect(new Set(members.map((member) => member.Status.leader)).size).toBe(1);
    const health = await etcdctlAs(admin(), ['endpoint', 'health', '--cluster']);
    expect(health.stderr.match(/is healthy/g)).toHaveLength(3);
  });

  it('keeps keys private: mode 0600 for keys, 0700 for directories, and no CA key near a member', async () => {
    expect((await stat(path.join(pki, 'admin.key'))).mode & 0o777).toBe(0o600);
    expect((await stat(path.join(pki, 'ca', 'ca.key'))).mode & 0o777).toBe(0o600);
    expect((await stat(path.join(pki, 'ca'))).mode & 0o777).toBe(0o700);
    expect((await stat(path.join(home, '.rampart', 'm1'))).mode & 0o777).toBe(0o700);
    expect(existsSync(path.join(home, '.rampart', 'm1', 'ca.key'))).toBe(false);
    const log = await readFile(path.join(home, '.rampart', 'm1', 'log'), 'utf8');
    expect(log).not.toContain('PRIVATE KEY');
  });

  it('refuses plaintext, no certificate, another CA and an expired certificate', async () => {
    const plaintext = await run('etcdctl', ['--endpoints', endpoints.replace(/https:\/\//g, ''), '--command-timeout=2s', '--dial-timeout=1s', 'get', 'secure'], { env: cleanEnvironment() });
    expect(plaintext.code).not.toBe(0);
    const noCertificate = await etcdctlAs(['--cacert', path.join(pki, 'ca.crt')], ['get', 'secure']);
    expect(noCertificate.code).not.toBe(0);
    expect(noCertificate.stdout).toBe('');

    const other = await createAuthority('another cluster');
    const intruder = await writeKeyPair(path.join(home, 'other'), 'intruder', await issueCertificate(other, { kind: 'client', commonName: 'root' }));
    const foreign = await etcdctlAs(['--cacert', path.join(pki, 'ca.crt'), '--cert', intruder.certificateFile, '--key', intruder.keyFile], ['get', 'secure']);
    expect(foreign.code).not.toBe(0);
    expect(foreign.stdout).toBe('');

    const authority = await readKeyPair(path.join(pki, 'ca'), 'ca');
    const expired = await writeKeyPair(path.join(home, 'other'), 'expired', await issueCertificate(authority, { kind: 'client', commonName: 'root', notBefore: new Date(Date.now() - 10 * 86_400_000), validityDays: 1 }));
    const stale = await etcdctlAs(['--cacert', path.join(pki, 'ca.crt'), '--cert', expired.certificateFile, '--key', expired.keyFile], ['get', 'secure']);
    expect(stale.code).not.toBe(0);
    expect(stale.stdout).toBe('');

    // Plaintext and a missing certificate leave a clear line in a member's log, with the reason.
    // (A certificate that fails verification is dropped by Node's TLS layer after the handshake,
    // without an event to log: the client gets the clear error there.)
    const logs = (await Promise.all(['m1', 'm2', 'm3'].map((name) => readFile(path.join(home, '.rampart', name, 'log'), 'utf8')))).join('\n');
    const reasons = new Set(logs.split('\n').filter((line) => line.includes('refused a TLS connection')).map((line) => (JSON.parse(line) as { reason: string }).reason));
    expect(reasons).toContain('ERR_SSL_WRONG_VERSION_NUMBER');
    expect(reasons).toContain('ERR_SSL_PEER_DID_NOT_RETURN_A_CERTIFICATE');
  });

  it('renews every certificate and rotates the CA under continuous writes with zero failed requests', async () => {
    const { pino } = await import('pino');
    const { copyFile } = await import('node:fs/promises');
    const { ReloadingCertificateProvider } = await import('../../src/pki/reloading-provider.js');
    const { packageDefinition } = await import('../../src/api/proto.js');
    await copyFile(path.join(pki, 'ca.crt'), path.join(home, 'old-ca.crt'));
    await copyFile(path.join(pki, 'admin.crt'), path.join(home, 'old-admin.crt'));
    await copyFile(path.join(pki, 'admin.key'), path.join(home, 'old-admin.key'));
    // A client that, like the members, picks up renewed certificates and CA bundles from its files.
    const provider = await ReloadingCertificateProvider.open(
      { certificateFile: path.join(pki, 'admin.crt'), keyFile: path.join(pki, 'admin.key'), caFile: path.join(pki, 'ca.crt') },
      pino({ level: 'silent' }),
      'test client',
      250,
    );
    const credentials = grpc.experimental.createCertificateProviderChannelCredentials(provider, provider);
    const loaded = grpc.loadPackageDefinition(packageDefinition) as unknown as { etcdserverpb: { KV: grpc.ServiceClientConstructor } };
    const clients = endpoints.split(',').map((endpoint) => new loaded.etcdserverpb.KV(new URL(endpoint).host, credentials, { 'grpc.use_local_subchannel_pool': 1 }) as unknown as grpc.Client & { Put(request: object, options: grpc.CallOptions, callback: (error: grpc.ServiceError | null) => void): void });
    let running = true;
    let succeeded = 0;
    const failures: string[] = [];
    const writer = async (index: number): Promise<void> => {
      const client = clients[index % clients.length];
      for (let sequence = 0; running && client !== undefined; sequence++) {
        await new Promise<void>((resolve) =>
          client.Put({ key: Buffer.from(`rotate/${index}`), value: Buffer.from(String(sequence)) }, { deadline: Date.now() + 5000 }, (error) => {
            if (error === null) succeeded += 1;
            else failures.push(`${error.code} ${error.details}`);
            resolve();
          }),
        );
      }
    };
    const writers = Array.from({ length: 6 }, (_, index) => writer(index));
    try {
      await new Promise((resolve) => setTimeout(resolve, 1000));
      const rotated = await run(process.execPath, [rampartBin, 'rotate', '--dir', path.join(home, '.rampart'), '--new-ca', '--reload-wait-ms', '2500'], { timeoutMs: 60_000 });
      expect(rotated.stderr).toBe('');
      expect(rotated.stdout).toContain('phase 3/3');
      await new Promise((resolve) => setTimeout(resolve, 1000));
    } finally {
      running = false;
      await Promise.all(writers);
      clients.forEach((client) => client.close());
      provider.close();
    }
    expect(failures).toEqual([]);
    expect(succeeded).toBeGreaterThan(100);

    // Members now serve certificates from the new CA, and only the new CA is trusted.
    expect((await etcdctlAs(admin(), ['get', 'rotate/0', '--print-value-only'])).code).toBe(0);
    const oldTrust = await etcdctlAs(['--cacert', path.join(home, 'old-ca.crt'), '--cert', path.join(pki, 'admin.crt'), '--key', path.join(pki, 'admin.key')], ['get', 'rotate/0']);
    expect(oldTrust.code).not.toBe(0);
    const oldAdmin = await etcdctlAs(['--cacert', path.join(pki, 'ca.crt'), '--cert', path.join(home, 'old-admin.crt'), '--key', path.join(home, 'old-admin.key')], ['get', 'rotate/0']);
    expect(oldAdmin.code).not.toBe(0);
    const log = await readFile(path.join(home, '.rampart', 'm1', 'log'), 'utf8');
    expect(log).toContain('reloaded certificates');
  }, 90_000);

  it('revokes a client certificate: refused from the next call, on open connections too', async () => {
    const issued = await run(process.execPath, [rampartBin, 'cert', 'issue', 'client', 'alice', '--pki-dir', pki]);
    expect(issued.code).toBe(0);
    // Auth is on in a `rampart up` cluster: alice (her certificate's CN) gets write access to "by".
    for (const line of ['user add alice --no-password', 'role add by-writer', 'role grant-permission by-writer readwrite by', 'user grant-role alice by-writer']) {
      expect((await etcdctlAs(admin(), line.split(' '))).code).toBe(0);
    }
    const alice = ['--cacert', path.join(pki, 'ca.crt'), '--cert', path.join(pki, 'alice.crt'), '--key', path.join(pki, 'alice.key')];
    expect((await etcdctlAs(alice, ['put', 'by', 'alice'])).stdout).toBe('OK\n');
    const files = await Promise.all(['ca.crt', 'alice.key', 'alice.crt'].map((name) => readFile(path.join(pki, name))));
    const open = new grpc.Client(new URL(endpoints.split(',')[0] as string).host, grpc.credentials.createSsl(files[0], files[1], files[2]));
    const ping = (): Promise<{ code: number; details: string } | null> =>
      new Promise((resolve) => open.makeUnaryRequest('/etcdserverpb.Maintenance/Status', (value: Buffer) => value, (value: Buffer) => value, Buffer.alloc(0), (error) => resolve(error === null ? null : { code: error.code, details: error.details })));
    expect(await ping()).toBe(null);

    // Only the PKI directory is named: it is a `rampart up` one, so the members get the CRL too.
    const revoked = await run(process.execPath, [rampartBin, 'cert', 'revoke', 'alice', '--pki-dir', pki]);
    expect(revoked.stdout).toMatch(/^revoked serial [0-9A-F]+; CRL written to .*crl\.pem\nhanded the CRL to m1, m2, m3\n$/);
    const serial = /revoked serial ([0-9A-F]+)/.exec(revoked.stdout)?.[1] ?? '';
    const listed = await run(process.execPath, [rampartBin, 'cert', 'list', '--pki-dir', pki]);
    expect(listed.stdout).toMatch(new RegExp(`serial ${serial}\tREVOKED \\d{4}-\\d{2}-\\d{2}T`));
    // The standard PEM label: OpenSSL reads the members' CRL, numbered, with the serial printed as we do.
    const openssl = await run('openssl', ['crl', '-in', path.join(home, '.rampart', 'm1', 'crl.pem'), '-noout', '-text']);
    expect(openssl.code).toBe(0);
    expect(openssl.stdout).toMatch(/X509v3 CRL Number: \n\s+\d+/);
    expect(openssl.stdout.replace(/:/g, '')).toMatch(new RegExp(`Serial Number 0*${serial}\\b`));
    const refused = await eventually(() => etcdctlAs(alice, ['get', 'by']), (answer) => answer.stderr.includes('rampart: certificate revoked'));
    expect(refused.stderr).toContain('Error: rpc error: code = Unauthenticated desc = rampart: certificate revoked');
    expect(await eventually(ping, (answer) => answer !== null && answer.code !== grpc.status.UNAVAILABLE)).toEqual({ code: grpc.status.UNAUTHENTICATED, details: 'rampart: certificate revoked' });
    open.close();
    expect((await etcdctlAs(admin(), ['get', 'by', '--print-value-only'])).stdout).toBe('alice\n');
    let log = await readFile(path.join(home, '.rampart', 'm1', 'log'), 'utf8');
    expect(log).toContain('loaded certificate revocation list');
    expect(log).toContain('refused a client certificate');

    // Rollback: the CRL from before root's revocation, validly signed, copied over the current one.
    const { copyFile, utimes } = await import('node:fs/promises');
    const memberCrl = path.join(home, '.rampart', 'm1', 'crl.pem');
    await copyFile(memberCrl, path.join(home, 'older-crl.pem'));
    const rootIssued = await run(process.execPath, [rampartBin, 'cert', 'issue', 'client', 'root', '--pki-dir', pki, '--out', path.join(home, 'second-root')]);
    expect(rootIssued.code).toBe(0);
    const secondRoot = ['--cacert', path.join(pki, 'ca.crt'), '--cert', path.join(home, 'second-root', 'root.crt'), '--key', path.join(home, 'second-root', 'root.key')];
    const m1 = endpoints.split(',')[0] as string;
    expect((await etcdctlAt(m1, secondRoot, ['get', 'by', '--print-value-only'])).stdout).toBe('alice\n');
    expect((await run(process.execPath, [rampartBin, 'cert', 'revoke', path.join(home, 'second-root', 'root.crt'), '--pki-dir', pki])).code).toBe(0);
    expect((await eventually(() => etcdctlAt(m1, secondRoot, ['get', 'by']), (answer) => answer.stderr.includes('rampart: certificate revoked'))).stderr).toContain('rampart: certificate revoked');
    // m1 itself has loaded the CRL with both revocations before it is rolled back (seen in CI: a
    // rollback copied before m1's next poll is simply the CRL m1 last enforced, and is taken).
    const loadedBoth = /"revoked":2,"msg":"loaded certificate revocation list"/;
    expect(await eventually(() => readFile(path.join(home, '.rampart', 'm1', 'log'), 'utf8'), (text) => loadedBoth.test(text))).toMatch(loadedBoth);
    await copyFile(path.join(home, 'older-crl.pem'), memberCrl);
    await utimes(memberCrl, new Date(), new Date(Date.now() + 10_000));
    // Once m1 has looked at the older CRL (and refused it), the certificate is still refused.
    log = await eventually(() => readFile(path.join(home, '.rampart', 'm1', 'log'), 'utf8'), (text) => /refused CRL .*older than \d+, already enforced/.test(text));
    expect(log).toMatch(/refused CRL .*older than \d+, already enforced/);
    expect((await etcdctlAt(m1, secondRoot, ['get', 'by'])).stderr).toContain('rampart: certificate revoked');
    await copyFile(path.join(pki, 'crl.pem'), memberCrl);
  }, 120_000);

  it('does not let a member with a client certificate as its peer certificate join', async () => {
    const cluster = JSON.parse(await readFile(path.join(home, '.rampart', 'cluster.json'), 'utf8')) as { token: string; members: { name: string; peerPort: number }[] };
    const { freePort } = await import('../helpers/processes.js');
    const peerPort = await freePort();
    const added = await etcdctlAs(admin(), ['member', 'add', 'rogue', `--peer-urls=https://127.0.0.1:${peerPort}`, '--learner']);
    expect(added.stdout).toContain('added to cluster');
    const authority = await readKeyPair(path.join(pki, 'ca'), 'ca');
    const rogueHome = path.join(home, 'rogue');
    const server = await writeKeyPair(rogueHome, 'server', await issueCertificate(authority, { kind: 'server', commonName: 'rogue', subjectAltNames: ['127.0.0.1'] }));
    const client = await writeKeyPair(rogueHome, 'client', await issueCertificate(authority, { kind: 'client', commonName: 'rogue', subjectAltNames: ['127.0.0.1'] }));
    await writeFile(path.join(rogueHome, 'ca.crt'), authority.certificatePem);
    const initialCluster = [...cluster.members.map((member) => `${member.name}=https://127.0.0.1:${member.peerPort}`), `rogue=https://127.0.0.1:${peerPort}`].join(',');
    const { spawn } = await import('node:child_process');
    const { connect } = await import('node:net');
    const clientPort = await freePort();
    const rogue = spawn(process.execPath, [
      rampartBin, 'serve', '--name', 'rogue', '--data-dir', path.join(rogueHome, 'data'),
      '--listen-client-urls', `https://127.0.0.1:${clientPort}`, '--listen-peer-urls', `https://127.0.0.1:${peerPort}`,
      '--initial-cluster', initialCluster, '--initial-cluster-state', 'existing', '--initial-cluster-token', cluster.token,
      '--cert-file', server.certificateFile, '--key-file', server.keyFile, '--trusted-ca-file', path.join(rogueHome, 'ca.crt'),
      '--peer-cert-file', client.certificateFile, '--peer-key-file', client.keyFile, '--peer-trusted-ca-file', path.join(rogueHome, 'ca.crt'),
    ], { env: cleanEnvironment(), stdio: 'ignore' });
    try {
      await new Promise((resolve) => setTimeout(resolve, 6000));
      // A member serves clients only once it has joined; this one never may.
      const serving = await new Promise<boolean>((resolve) => {
        const socket = connect(clientPort, '127.0.0.1');
        socket.once('connect', () => {
          socket.destroy();
          resolve(true);
        });
        socket.once('error', () => resolve(false));
      });
      expect(rogue.exitCode).toBe(null);
      expect(serving).toBe(false);
    } finally {
      rogue.kill('SIGKILL');
    }
    const members = await etcdctlAs(admin(), ['member', 'list']);
    expect(members.stdout).toMatch(/, unstarted, , https:\/\/127\.0\.0\.1:\d+, , true/);
    // Members could not reach it (its peer port presents a certificate not made for serving) ...
    const logs = await Promise.all(cluster.members.map((member) => readFile(path.join(home, '.rampart', member.name, 'log'), 'utf8')));
    expect(logs.join('\n')).toMatch(new RegExp(`"url":"https://127.0.0.1:${peerPort}".*"msg":"cannot reach peer"`));
    // ... and a client certificate calling a member's peer port is refused as not a peer.
    const adminFiles = await Promise.all(['ca.crt', 'admin.key', 'admin.crt'].map((name) => readFile(path.join(pki, name))));
    const peerClient = new grpc.Client(`127.0.0.1:${cluster.members[0]?.peerPort}`, grpc.credentials.createSsl(adminFiles[0], adminFiles[1], adminFiles[2]));
    const refused = await new Promise<{ code: number; details: string } | null>((resolve) =>
      peerClient.makeUnaryRequest('/rampart.Peer/LeaseRenew', (value: Buffer) => value, (value: Buffer) => value, Buffer.alloc(0), (error) => resolve(error === null ? null : { code: error.code, details: error.details })),
    );
    peerClient.close();
    expect(refused).toEqual({ code: grpc.status.PERMISSION_DENIED, details: 'not a cluster peer: certificate "root" is not a peer certificate' });
    const refusedLogs = await Promise.all(cluster.members.map((member) => readFile(path.join(home, '.rampart', member.name, 'log'), 'utf8')));
    expect(refusedLogs.join('\n')).toMatch(/refused a peer connection/);
    const memberId = /Member +([0-9a-f]+) added/.exec(added.stdout)?.[1] ?? '';
    expect((await etcdctlAs(admin(), ['member', 'remove', memberId])).stdout).toContain('removed from cluster');
  }, 60_000);

  it('enables auth with the default policies, and honours a token from one member on every other', async () => {
    const users = (await etcdctlAs(admin(), ['user', 'list'])).stdout.trim().split('\n');
    expect(users).toEqual(expect.arrayContaining(['auditor', 'kube-apiserver', 'root']));
    for (const line of ['user add token-user:token-pw', 'role add tokens', 'role grant-permission tokens readwrite token/ --prefix', 'user grant-role token-user tokens']) {
      expect((await etcdctlAs(admin(), line.split(' '))).code).toBe(0);
    }
    const [ca, key, cert] = await Promise.all(['ca.crt', 'admin.key', 'admin.crt'].map((name) => readFile(path.join(pki, name))));
    const credentials = grpc.credentials.createSsl(ca as Buffer, key as Buffer, cert as Buffer);
    const { packageDefinition } = await import('../../src/api/proto.js');
    const loaded = grpc.loadPackageDefinition(packageDefinition) as unknown as { etcdserverpb: { KV: grpc.ServiceClientConstructor; Auth: grpc.ServiceClientConstructor } };
    const hosts = endpoints.split(',').map((endpoint) => new URL(endpoint).host);
    type Callback = (error: grpc.ServiceError | null, response: { token?: string }) => void;
    const auth = new loaded.etcdserverpb.Auth(hosts[0] as string, credentials) as unknown as grpc.Client & { Authenticate(request: object, callback: Callback): void };
    const kvs = hosts.map((host) => new loaded.etcdserverpb.KV(host, credentials, { 'grpc.use_local_subchannel_pool': 1 }) as unknown as grpc.Client & { Put(request: object, metadata: grpc.Metadata, callback: Callback): void });
    const putWith = (client: (typeof kvs)[number], token: string, key: string) => new Promise<string>((resolve) => {
      const metadata = new grpc.Metadata();
      metadata.set('token', token);
      client.Put({ key: Buffer.from(key), value: Buffer.from('v') }, metadata, (error) => resolve(error === null ? 'OK' : error.details));
    });
    try {
      const token = await new Promise<string>((resolve, reject) => auth.Authenticate({ name: 'token-user', password: 'token-pw' }, (error, response) => (error === null ? resolve(response.token ?? '') : reject(error))));
      // The admin certificate would allow anything: these answers are the token's user's.
      for (const [index, client] of kvs.entries()) {
        expect(await putWith(client, token, `token/${index}`)).toBe('OK');
        expect(await putWith(client, token, `elsewhere/${index}`)).toBe('etcdserver: permission denied');
      }
      expect((await etcdctlAs(admin(), ['role', 'add', 'bump'])).code).toBe(0);
      for (const client of kvs) {
        // Stale on every member once the change is applied there.
        let answer = '';
        for (let attempt = 0; attempt < 50 && answer !== 'etcdserver: revision of auth store is old'; attempt++) {
          answer = await putWith(client, token, 'token/again');
          if (answer !== 'etcdserver: revision of auth store is old') await new Promise((resolve) => setTimeout(resolve, 50));
        }
        expect(answer).toBe('etcdserver: revision of auth store is old');
      }
    } finally {
      auth.close();
      for (const client of kvs) client.close();
    }
  }, 60_000);
  it('binds each peer connection to the member its certificate names: a forged sender is dropped', async () => {
    const cluster = JSON.parse(await readFile(path.join(home, '.rampart', 'cluster.json'), 'utf8')) as { members: { name: string; clientPort: number; peerPort: number }[] };
    interface Status { Endpoint: string; Status: { header: { cluster_id: string; member_id: string; raft_term: number }; leader: string } }
    const status = async (): Promise<Status[]> => {
      // During the leader change this test provokes, etcdctl may miss a member or fail: ask again.
      for (let attempt = 0; ; attempt++) {
        const result = await etcdctlAs(admin(), ['endpoint', 'status', '--cluster', '-w', 'json']);
        // uint64 ids do not fit a JSON number: read them as strings.
        const parsed = result.code === 0 ? (JSON.parse(result.stdout.replace(/:(\d{10,})/g, ':"$1"')) as Status[]) : [];
        if (parsed.length === cluster.members.length || attempt === 20) return parsed;
        await new Promise((resolve) => setTimeout(resolve, 250));
      }
    };
    const byName = async (): Promise<{ leader: string; term: number; clusterId: string; ids: Map<string, string> }> => {
      const all = await status();
      const ids = new Map<string, string>();
      for (const member of cluster.members) {
        const entry = all.find((candidate) => new URL(candidate.Endpoint).port === String(member.clientPort));
        ids.set(member.name, BigInt(entry?.Status.header.member_id ?? '0').toString(16));
      }
      const first = all[0];
      if (first === undefined) throw new Error('etcdctl endpoint status answered for no member');
      const leaderId = BigInt(first.Status.leader).toString(16);
      const leader = [...ids].find(([, id]) => id === leaderId)?.[0] ?? '';
      return { leader, term: Math.max(...all.map((entry) => entry.Status.header.raft_term)), clusterId: BigInt(first.Status.header.cluster_id).toString(16), ids };
    };
    const before = await byName();
    expect(before.leader).not.toBe('');
    const [follower, third] = cluster.members.filter((member) => member.name !== before.leader);
    if (follower === undefined || third === undefined) throw new Error('expected three members');
    const protoLoader = await import('@grpc/proto-loader');
    const { decodeOptions, protoDirectory } = await import('../../src/api/proto.js');
    const definition = protoLoader.loadSync(['raft.proto'], { ...decodeOptions, includeDirs: [protoDirectory] });
    const Peer = (grpc.loadPackageDefinition(definition) as unknown as { rampart: { Peer: grpc.ServiceClientConstructor } }).rampart.Peer;
    // The third member's own peer certificate: valid, a peer certificate, but it names `third`.
    const thirdHome = path.join(home, '.rampart', third.name);
    const [ca, key, certificate] = await Promise.all(['ca.crt', 'peer.key', 'peer.crt'].map((name) => readFile(path.join(thirdHome, name))));
    const peer = new Peer(`127.0.0.1:${follower.peerPort}`, grpc.credentials.createSsl(ca as Buffer, key as Buffer, certificate as Buffer), { 'grpc.use_local_subchannel_pool': 1 }) as unknown as grpc.Client & {
      Messages(callback: (error: grpc.ServiceError | null) => void): grpc.ClientWritableStream<object>;
    };
    const sendTimeoutNow = (from: string, term: number): Promise<string | null> =>
      new Promise((resolve) => {
        const stream = peer.Messages((error) => resolve(error === null ? null : error.details));
        stream.write({ cluster_id: before.clusterId, messages: [{ type: 'timeoutNow', from, to: before.ids.get(follower.name), term }] });
        stream.end();
      });
    const leaderAfter = async (wanted: string, timeoutMs: number): Promise<string> => {
      const deadline = Date.now() + timeoutMs;
      let current = '';
      while (Date.now() < deadline) {
        current = (await byName()).leader;
        if (current === wanted) break;
        await new Promise((resolve) => setTimeout(resolve, 300));
      }
      return current;
    };
    try {
      // Claiming to be the leader (a leadership transfer order): dropped, leadership stays.
      expect(await sendTimeoutNow(before.ids.get(before.leader) ?? '', before.term)).toBe(null);
      expect(await leaderAfter(follower.name, 3000)).toBe(before.leader);
      const log = await readFile(path.join(home, '.rampart', follower.name, 'log'), 'utf8');
      const dropped = log.split('\n').filter((line) => line.includes('dropped raft messages whose sender is not the member named by the peer certificate')).map((line) => JSON.parse(line) as { certificate: string; claimedSender: string; type: string });
      expect(dropped).toContainEqual(expect.objectContaining({ certificate: third.name, claimedSender: before.ids.get(before.leader), type: 'timeoutNow' }));
      // The same connection speaking as its own member is heard (so the drop above was the binding).
      const now = await byName();
      expect(await sendTimeoutNow(now.ids.get(third.name) ?? '', now.term)).toBe(null);
      expect(await leaderAfter(follower.name, 10_000)).toBe(follower.name);
    } finally {
      peer.close();
    }
  }, 60_000);
});
