/**
 * RBAC on a `rampart up` cluster (mutual TLS, auth enabled with the default policies): identity by
 * client certificate (CN, or a CN bound to a user by policy) and by password token, allowed and
 * denied requests through etcdctl, stale and forged tokens, failed-login limiting, and policy files
 * applied, re-applied, dry-run, diffed, exported and refused.
 */
import * as grpc from '@grpc/grpc-js';
import { cp, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { packageDefinition } from '../../src/api/proto.js';
import { RecordWriter, listTrailFiles, readRecords, type TrailFile } from '../../src/audit/records.js';
import type { TrailKey } from '../../src/audit/sealed-trail.js';
import { TrailKeyStore } from '../../src/audit/trail-key.js';
import { FileKekProvider } from '../../src/encryption/kek-file.js';
import { cleanEnvironment, freeBasePort, projectRoot, rampartBin, removeDirectory, run, temporaryDirectory } from '../helpers/processes.js';

/** The records of a (sealed) trail file. */
async function linesOf(file: TrailFile, key: TrailKey): Promise<string[]> {
  const lines: string[] = [];
  for await (const record of readRecords(file, key)) if (record.kind === 'record') lines.push(record.text);
  return lines;
}

/** What root with the member's KEK can do: a trail file's records replaced, resealed. */
async function rewrite(file: string, lines: readonly string[], key: TrailKey): Promise<void> {
  await rm(file);
  const writer = await RecordWriter.create(file, key);
  await writer?.append(lines);
  await writer?.close();
}

describe('RBAC on a secure cluster', () => {
  let home: string;
  let endpoint: string;
  const pki = (): string => path.join(home, 'pki');
  const identity = (name: string): string[] => ['--cert', path.join(pki(), `${name}.crt`), '--key', path.join(pki(), `${name}.key`)];
  const etcdctlAs = (name: string, args: string[], input?: string) =>
    run('etcdctl', ['--endpoints', endpoint, '--cacert', path.join(pki(), 'ca.crt'), '--command-timeout=5s', ...identity(name), ...args], { env: cleanEnvironment(), ...(input === undefined ? {} : { input }) });
  const rampart = (args: string[]) => run(process.execPath, [rampartBin, ...args], { timeoutMs: 30_000 });
  const denied = 'Error: etcdserver: permission denied\n';
  const lastLine = (text: string): string => `${text.trim().split('\n').pop() ?? ''}\n`;

  beforeAll(async () => {
    home = path.join(await temporaryDirectory('rbac'), 'cluster');
    const base = await freeBasePort();
    const result = await run(process.execPath, [rampartBin, 'up', '--dir', home, '--size', '1', '--base-port', String(base)], { timeoutMs: 60_000 });
    expect(result.code, result.stderr).toBe(0);
    expect(result.stdout).toContain('auth is enabled; users: auditor, kube-apiserver, root');
    endpoint = `https://127.0.0.1:${base}`;
    for (const name of ['alice', 'auditor', 'kube-apiserver-etcd-client', 'mallory']) {
      expect((await rampart(['cert', 'issue', 'client', name, '--pki-dir', pki()])).code).toBe(0);
    }
  }, 90_000);

  afterAll(async () => {
    if (home !== undefined) {
      await rampart(['down', '--dir', home]);
      await removeDirectory(path.dirname(home));
    }
  }, 120_000);

  it('identifies callers by certificate CN and by a CN bound in the policy; allows and denies like etcd', async () => {
    for (const line of ['role add app', 'role grant-permission app readwrite /app/ --prefix', 'user add alice --no-password', 'user grant-role alice app']) {
      const result = await etcdctlAs('admin', line.split(' '));
      expect(result.code, result.stderr).toBe(0);
    }
    expect((await etcdctlAs('admin', ['put', '/registry/secrets/db', 's3cret'])).stdout).toBe('OK\n');
    expect((await etcdctlAs('admin', ['put', '/other', 'x'])).stdout).toBe('OK\n');

    expect((await etcdctlAs('alice', ['put', '/app/1', 'one'])).stdout).toBe('OK\n');
    expect((await etcdctlAs('alice', ['get', '/app/1', '--print-value-only'])).stdout).toBe('one\n');
    expect((await etcdctlAs('alice', ['get', '/app/', '--prefix', '--keys-only'])).stdout).toBe('/app/1\n\n');
    for (const args of [['put', '/other', 'y'], ['get', '/other'], ['get', '/', '--prefix'], ['del', '/other'], ['compaction', '1'], ['user', 'list']]) {
      const result = await etcdctlAs('alice', args);
      expect(result.code, args.join(' ')).toBe(1);
      expect(lastLine(result.stderr), args.join(' ')).toBe(denied);
    }
    // Txn: every compare and every op of both branches needs its permission.
    expect((await etcdctlAs('alice', ['txn'], 'value("/app/1") = "one"\n\nput /app/2 two\n\nget /app/1\n\n')).stdout).toBe('SUCCESS\n\nOK\n');
    expect(lastLine((await etcdctlAs('alice', ['txn'], 'value("/app/1") = "one"\n\nput /app/3 three\n\nput /other z\n\n')).stderr)).toBe(denied);
    expect(lastLine((await etcdctlAs('alice', ['txn'], 'value("/other") = "x"\n\nput /app/3 three\n\n\n')).stderr)).toBe(denied);
    // Watch: refused at creation with etcd's reason; allowed ones deliver events.
    const refused = await run('timeout', ['-s', 'INT', '3', 'etcdctl', '--endpoints', endpoint, '--cacert', path.join(pki(), 'ca.crt'), ...identity('alice'), 'watch', '/other'], { env: cleanEnvironment() });
    expect(refused.stdout + refused.stderr).toContain('permission denied');
    const watched = await run('timeout', ['-s', 'INT', '3', 'etcdctl', '--endpoints', endpoint, '--cacert', path.join(pki(), 'ca.crt'), ...identity('alice'), 'watch', '/app/', '--prefix', '--rev', '1'], { env: cleanEnvironment() });
    expect(watched.stdout).toBe('PUT\n/app/1\none\nPUT\n/app/2\ntwo\n');

    // Revoking a lease deletes its keys: it needs write on every one of them.
    const lease = /lease ([0-9a-f]+) granted/.exec((await etcdctlAs('alice', ['lease', 'grant', '600'])).stdout)?.[1] ?? 'none';
    expect((await etcdctlAs('admin', ['put', '/other-leased', 'x', `--lease=${lease}`])).stdout).toBe('OK\n');
    expect(lastLine((await etcdctlAs('alice', ['lease', 'revoke', lease])).stderr)).toBe('Error: failed to revoke lease (etcdserver: permission denied)\n');
    expect((await etcdctlAs('admin', ['get', '/other-leased', '--print-value-only'])).stdout).toBe('x\n');
    expect((await etcdctlAs('admin', ['lease', 'revoke', lease])).stdout).toBe(`lease ${lease} revoked\n`);

    // Leases belong to who granted them (Rampart, stricter than etcd): only they or root use them.
    expect(lastLine((await etcdctlAs('mallory', ['lease', 'grant', '60'])).stderr)).toBe('Error: failed to grant lease (etcdserver: user name not found)\n');
    expect(lastLine((await etcdctlAs('alice', ['lease', 'grant', String(31 * 86_400)])).stderr)).toBe('Error: failed to grant lease (etcdserver: too large lease TTL)\n');
    const alices = /lease ([0-9a-f]+) granted/.exec((await etcdctlAs('alice', ['lease', 'grant', '60'])).stdout)?.[1] ?? 'none';
    const auditors = /lease ([0-9a-f]+) granted/.exec((await etcdctlAs('auditor', ['lease', 'grant', '60'])).stdout)?.[1] ?? 'none';
    expect(lastLine((await etcdctlAs('alice', ['put', '/app/leased', 'x', `--lease=${auditors}`])).stderr)).toBe(denied);
    expect(lastLine((await etcdctlAs('alice', ['lease', 'revoke', auditors])).stderr)).toBe('Error: failed to revoke lease (etcdserver: permission denied)\n');
    expect(lastLine((await etcdctlAs('alice', ['lease', 'timetolive', auditors])).stderr)).toBe(denied);
    expect((await etcdctlAs('alice', ['lease', 'keep-alive', '--once', auditors])).stdout).not.toContain('keepalived');
    expect((await etcdctlAs('auditor', ['lease', 'keep-alive', '--once', auditors])).stdout).toBe(`lease ${auditors} keepalived with TTL(60)\n`);
    const listed = (await etcdctlAs('alice', ['lease', 'list'])).stdout;
    expect(listed).toContain(alices);
    expect(listed).not.toContain(auditors);
    expect((await etcdctlAs('admin', ['lease', 'list'])).stdout).toContain(auditors);
    expect((await etcdctlAs('alice', ['put', '/app/leased', 'x', `--lease=${alices}`])).stdout).toBe('OK\n');
    expect((await etcdctlAs('alice', ['lease', 'revoke', alices])).stdout).toBe(`lease ${alices} revoked\n`);
    expect((await etcdctlAs('admin', ['lease', 'revoke', auditors])).stdout).toBe(`lease ${auditors} revoked\n`);

    // The default auditor reads everything but secrets and writes nothing (an explicit deny wins).
    expect((await etcdctlAs('auditor', ['get', '/app/1', '--print-value-only'])).stdout).toBe('one\n');
    expect(lastLine((await etcdctlAs('auditor', ['get', '/registry/secrets/db'])).stderr)).toBe(denied);
    expect(lastLine((await etcdctlAs('auditor', ['put', '/app/1', 'x'])).stderr)).toBe(denied);
    // kubeadm's CN, bound to kube-apiserver by the default policy: /registry/ only.
    expect((await etcdctlAs('kube-apiserver-etcd-client', ['put', '/registry/pods/p1', 'spec'])).stdout).toBe('OK\n');
    expect(lastLine((await etcdctlAs('kube-apiserver-etcd-client', ['get', '/other'])).stderr)).toBe(denied);
    // A CA-signed certificate for an unknown user gets nothing; a certificate-only user has no password.
    expect(lastLine((await etcdctlAs('mallory', ['get', '/app/1'])).stderr)).toBe(denied);
    expect(lastLine((await etcdctlAs('mallory', ['--user', 'alice:guess', 'get', '/app/1'])).stderr)).toBe('Error: etcdserver: authentication failed, invalid user ID or password\n');
  }, 60_000);

  it('lets a password login win over the certificate, and refuses stale and forged tokens', async () => {
    for (const line of ['user add bob:bob-pw', 'user grant-role bob app']) expect((await etcdctlAs('admin', line.split(' '))).code).toBe(0);
    // mallory's certificate alone may do nothing; with bob's password the call is bob's.
    expect((await etcdctlAs('mallory', ['--user', 'bob:bob-pw', 'put', '/app/bob', 'b'])).stdout).toBe('OK\n');

    const [ca, cert, key] = await Promise.all(['ca.crt', 'mallory.crt', 'mallory.key'].map((name) => import('node:fs/promises').then((fs) => fs.readFile(path.join(pki(), name)))));
    const loaded = grpc.loadPackageDefinition(packageDefinition) as unknown as { etcdserverpb: { KV: grpc.ServiceClientConstructor; Auth: grpc.ServiceClientConstructor } };
    const credentials = grpc.credentials.createSsl(ca as Buffer, key as Buffer, cert as Buffer);
    type Callback = (error: grpc.ServiceError | null, response: { token?: string; kvs?: unknown[] }) => void;
    const authClient = new loaded.etcdserverpb.Auth(new URL(endpoint).host, credentials) as unknown as grpc.Client & { Authenticate(request: object, callback: Callback): void };
    const kvClient = new loaded.etcdserverpb.KV(new URL(endpoint).host, credentials) as unknown as grpc.Client & { Range(request: object, metadata: grpc.Metadata, callback: Callback): void };
    const range = (token: string) => new Promise<{ error: grpc.ServiceError | null; count: number }>((resolve) => {
      const metadata = new grpc.Metadata();
      metadata.set('token', token);
      kvClient.Range({ key: Buffer.from('/app/bob') }, metadata, (error, response) => resolve({ error, count: response?.kvs?.length ?? 0 }));
    });
    try {
      const token = await new Promise<string>((resolve, reject) => authClient.Authenticate({ name: 'bob', password: 'bob-pw' }, (error, response) => (error === null ? resolve(response.token ?? '') : reject(error))));
      expect(token.split('.')).toHaveLength(3);
      expect(await range(token)).toEqual({ error: null, count: 1 });
      // Any auth change makes earlier tokens stale.
      expect((await etcdctlAs('admin', ['role', 'add', 'unused'])).code).toBe(0);
      const stale = await range(token);
      expect([stale.error?.code, stale.error?.details]).toEqual([grpc.status.INVALID_ARGUMENT, 'etcdserver: revision of auth store is old']);
      const forged = await range(`${token.slice(0, -4)}AAAA`);
      expect([forged.error?.code, forged.error?.details]).toEqual([grpc.status.UNAUTHENTICATED, 'etcdserver: invalid auth token']);
    } finally {
      authClient.close();
      kvClient.close();
    }

    // Five wrong passwords from one source lock that user out there for a while, the right one too.
    for (let attempt = 0; attempt < 5; attempt++) {
      expect(lastLine((await etcdctlAs('mallory', ['--user', 'bob:guess', 'get', '/app/bob'])).stderr)).toBe('Error: etcdserver: authentication failed, invalid user ID or password\n');
    }
    expect(lastLine((await etcdctlAs('mallory', ['--user', 'bob:bob-pw', 'get', '/app/bob'])).stderr)).toBe('Error: etcdserver: too many requests\n');
    await new Promise((resolve) => setTimeout(resolve, 1_200));
    expect((await etcdctlAs('mallory', ['--user', 'bob:bob-pw', 'get', '/app/bob', '--print-value-only'])).stdout).toBe('b\n');
  }, 60_000);

  it('serves the etcd3 npm client over mutual TLS with a password: KV, txn, watch, lease, lock; denials as etcd errors', async () => {
    const { Etcd3, EtcdPermissionDeniedError } = await import('etcd3');
    const { readFile } = await import('node:fs/promises');
    for (const line of ['user add carol:carol-pw', 'role add js', 'role grant-permission js readwrite /js/ --prefix', 'user grant-role carol js']) {
      expect((await etcdctlAs('admin', line.split(' '))).code).toBe(0);
    }
    const [rootCertificate, privateKey, certChain] = await Promise.all(['ca.crt', 'mallory.key', 'mallory.crt'].map((name) => readFile(path.join(pki(), name))));
    const client = new Etcd3({
      hosts: endpoint,
      credentials: { rootCertificate: rootCertificate as Buffer, privateKey: privateKey as Buffer, certChain: certChain as Buffer },
      auth: { username: 'carol', password: 'carol-pw' },
    });
    try {
      await client.put('/js/a').value('1');
      await client.put('/js/b').value('2');
      expect(await client.get('/js/a').string()).toBe('1');
      expect(await client.getAll().prefix('/js/').strings()).toEqual({ '/js/a': '1', '/js/b': '2' });
      const txn = await client.if('/js/a', 'Value', '==', '1').then(client.put('/js/c').value('3')).else(client.put('/js/d').value('4')).commit();
      expect(txn.succeeded).toBe(true);

      const watcher = await client.watch().prefix('/js/').create();
      const seen = new Promise<string>((resolve) => watcher.on('put', (kv) => resolve(`${kv.key.toString()}=${kv.value.toString()}`)));
      await client.put('/js/w').value('watched');
      expect(await seen).toBe('/js/w=watched');
      await watcher.cancel();

      const lease = client.lease(30);
      await lease.put('/js/leased').value('x');
      expect(await client.get('/js/leased').string()).toBe('x');
      await lease.revoke();
      expect(await client.get('/js/leased').string()).toBeNull();

      const lock = client.lock('/js/lock');
      await lock.acquire();
      await lock.release();

      await expect(client.put('/elsewhere').value('x')).rejects.toBeInstanceOf(EtcdPermissionDeniedError);
    } finally {
      client.close();
    }
  }, 60_000);

  it('applies policy files atomically and idempotently; a bad file changes nothing and names its line', async () => {
    const policies = await mkdtemp(path.join(home, '..', 'policies-'));
    await cp(path.join(projectRoot, 'policies'), policies, { recursive: true });
    await writeFile(path.join(policies, 'app.yaml'), [
      'users:',
      '  - { name: alice, roles: [app] }',
      'roles:',
      '  - name: app',
      '    grants:',
      '      - { prefix: /app/, access: readwrite }',
      '    deny:',
      '      - { key: /app/frozen, access: write }',
      'tests:',
      '  - { as: alice, access: write, key: /app/1, expect: allow }',
      '  - { as: alice, access: write, key: /app/frozen, expect: deny }',
      '',
    ].join('\n'));
    const connection = ['--dir', home];
    expect((await rampart(['policy', 'validate', policies])).stdout).toBe('policy is valid: 4 files, 4 users, 4 roles, 1 certificate bindings, 15 tests\n');
    expect((await rampart(['policy', 'test', policies])).stdout).toContain('all 15 policy tests passed');

    const exportBefore = (await rampart(['policy', 'export', ...connection])).stdout;
    const dryRun = await rampart(['policy', 'apply', policies, '--dry-run', ...connection]);
    expect(dryRun.stdout).toContain('- user bob\n');
    expect(dryRun.stdout).toContain('- role unused\n');
    expect(dryRun.stdout).toContain('~ role app: + deny {"key":"/app/frozen","access":"write"}\n');
    expect(dryRun.stdout).toMatch(/dry run: \d+ changes not applied\n$/);
    expect((await rampart(['policy', 'export', ...connection])).stdout).toBe(exportBefore);

    const applied = await rampart(['policy', 'apply', policies, ...connection]);
    expect(applied.stdout).toMatch(/applied \d+ changes as one entry; auth revision (\d+)\n$/);
    const revision = /auth revision (\d+)/.exec(applied.stdout)?.[1];
    expect((await rampart(['policy', 'apply', policies, ...connection])).stdout).toBe(`no changes (auth revision ${revision})\n`);
    expect((await rampart(['policy', 'diff', policies, ...connection])).stdout).toBe('no changes\n');
    expect(lastLine((await etcdctlAs('admin', ['user', 'get', 'bob'])).stderr)).toBe('Error: etcdserver: user name not found\n');
    expect(lastLine((await etcdctlAs('alice', ['put', '/app/frozen', 'x'])).stderr)).toBe(denied);
    expect((await etcdctlAs('alice', ['put', '/app/fresh', 'x'])).stdout).toBe('OK\n');
    expect(await rampart(['auth', 'can-i', 'alice', 'write', '/app/x', ...connection])).toMatchObject({ code: 0, stdout: 'yes\n' });
    expect(await rampart(['auth', 'can-i', 'alice', 'write', '/app/frozen', ...connection])).toMatchObject({ code: 1, stdout: 'no\n' });
    expect(await rampart(['auth', 'can-i', 'auditor', 'read', '/registry/', '--prefix', '--policy', policies])).toMatchObject({ code: 1, stdout: 'no\n' });
    // An unknown user is named as such, not answered with a bare "no"; a bound certificate CN stands for its user.
    expect(await rampart(['auth', 'can-i', 'nobody', 'read', '/app/x', ...connection])).toMatchObject({ code: 1, stdout: '', stderr: 'rampart: user nobody does not exist in the cluster (nor is it a certificate CN bound to a user)\n' });
    expect(await rampart(['auth', 'can-i', 'kube-apiserver-etcd-client', 'write', '/registry/pods/p', ...connection])).toMatchObject({ code: 0, stdout: 'yes\n' });

    // A broken file: the whole apply is refused with file:line, and the live policy stays.
    const exported = (await rampart(['policy', 'export', ...connection])).stdout;
    await writeFile(path.join(policies, 'broken.yaml'), 'roles:\n  - name: broken\n    grants:\n      - { prefix: /b/, access: everything }\n');
    const broken = await rampart(['policy', 'apply', policies, ...connection]);
    expect(broken.code).toBe(1);
    expect(broken.stderr).toContain(`${path.join(policies, 'broken.yaml')}:4: `);
    expect(broken.stderr).not.toMatch(/\n\s+at /);
    // A policy without the root user would lock everyone out: refused by the cluster.
    await writeFile(path.join(policies, 'broken.yaml'), '# nothing\n');
    await writeFile(path.join(policies, 'root.yaml'), 'users: []\n');
    // The dry run reports that refusal too, instead of "N changes not applied".
    const rootlessDryRun = await rampart(['policy', 'apply', policies, '--dry-run', ...connection]);
    expect(rootlessDryRun.code).toBe(1);
    expect(rootlessDryRun.stderr).toContain('dry run: the cluster would refuse this policy: auth is enabled and the policy has no root user with the root role');
    expect(rootlessDryRun.stdout).not.toContain('not applied');
    const rootless = await rampart(['policy', 'apply', policies, ...connection]);
    expect(rootless.code).toBe(1);
    expect(rootless.stderr).toContain('etcdserver: invalid auth management');
    expect((await rampart(['policy', 'export', ...connection])).stdout).toBe(exported);
  }, 90_000);

  it('records every request and decision in a hash-chained audit trail that verifies, exports, and exposes tampering', async () => {
    const audit = path.join(home, 'm1', 'data', 'audit');
    // LeaseGrant is recorded with its caller and the id it granted.
    const granted = /^lease ([0-9a-f]+) granted/.exec((await etcdctlAs('alice', ['lease', 'grant', '60'])).stdout)?.[1];
    expect(granted).toMatch(/^[0-9a-f]+$/);
    // Every answered request's event is already durable: nothing to wait for.
    const verified = await rampart(['audit', 'verify', audit]);
    expect(verified.stderr).toBe('');
    expect(verified.stdout).toMatch(/^audit trail intact: \d+ events in 1 files; head [0-9a-f]{64} \(no checkpoints given/);

    const denied = await rampart(['audit', 'export', audit, '--user', 'alice', '--outcome', 'denied']);
    const events = denied.stdout.trim().split('\n').map((line) => JSON.parse(line) as { action: string; user: string; via: string; targets: string[]; outcome: string; detail: string; code: string });
    expect(events).toContainEqual(expect.objectContaining({ action: 'Put', user: 'alice', via: 'certificate', targets: ['/other'], outcome: 'denied', code: 'PERMISSION_DENIED', detail: 'etcdserver: permission denied' }));
    expect(events).toContainEqual(expect.objectContaining({ action: 'Watch.create', user: 'alice', targets: ['/other'], outcome: 'denied' }));
    const everything = (await rampart(['audit', 'export', audit])).stdout;
    expect(everything).toContain('"action":"Authenticate","user":"bob","via":"password"');
    expect(everything).toContain('"action":"UserAdd"');
    expect(everything).toContain(`"action":"LeaseGrant","user":"alice","via":"certificate","source":`);
    expect(everything).toContain(`"targets":["lease:${granted ?? 'none'}"]`);
    expect(everything).toContain('"outcome":"allowed"');
    // Keys and names only: no values, passwords or tokens.
    for (const secret of ['s3cret', 'bob-pw', 'carol-pw', 'eyJ']) expect(everything).not.toContain(secret);
    const csv = (await rampart(['audit', 'export', audit, '--format', 'csv', '--outcome', 'denied'])).stdout.split('\n');
    expect(csv[0]).toBe('time,member,seq,action,user,via,source,outcome,code,detail,targets,request,hash');
    expect(csv.some((line) => /,Put,alice,certificate,.*,denied,PERMISSION_DENIED,etcdserver: permission denied,\/other,,[0-9a-f]{64}$/.test(line))).toBe(true);

    // Alter one decision in a copy: verification names the line, export refuses. The trail is
    // sealed: without the member's KEK a flipped byte fails to open; with it (root on the host) the
    // edit is resealed, and the chain names the line.
    const copy = await mkdtemp(path.join(path.dirname(home), 'audit-copy-'));
    await cp(audit, copy, { recursive: true });
    const kek = ['--encryption-key-file', path.join(home, 'm1', 'encryption.key')];
    const key = (await TrailKeyStore.open(copy, await FileKekProvider.open(kek[1] as string))).key;
    const [trailFile] = await listTrailFiles(copy);
    const file = (trailFile as TrailFile).path;
    const sealedBytes = await readFile(file);
    // The file being written is followed by zeros written ahead: its frames end where they begin.
    // A byte flipped inside (not in the last frame, which with only zeros after it reads as a
    // write that never completed: "torn or altered") fails to open.
    let framesEnd = sealedBytes.length;
    while (framesEnd > 0 && sealedBytes[framesEnd - 1] === 0) framesEnd -= 1;
    const flipped = Buffer.from(sealedBytes);
    const inside = Math.floor(framesEnd / 2);
    flipped.writeUInt8(flipped.readUInt8(inside) ^ 1, inside);
    await writeFile(file, flipped);
    expect((await rampart(['audit', 'verify', copy, ...kek])).stderr).toMatch(/frame \d+: authentication failed \(altered/);
    // A byte set in the zeros after the frames, or flipped in the last frame: refused too.
    for (const at of [sealedBytes.length - 30, framesEnd - 30]) {
      const altered = Buffer.from(sealedBytes);
      altered.writeUInt8(altered.readUInt8(at) ^ 1, at);
      await writeFile(file, altered);
      const verdict = await rampart(['audit', 'verify', copy, ...kek]);
      expect(verdict.code).toBe(1);
      expect(verdict.stderr).toMatch(/torn or altered|authentication failed \(altered/);
    }
    await writeFile(file, sealedBytes);
    const lines = await linesOf(trailFile as TrailFile, key);
    const target = lines.findIndex((line) => line.includes('"outcome":"denied"'));
    lines[target] = (lines[target] as string).replace('"outcome":"denied"', '"outcome":"allowed"');
    await rewrite(file, lines, key);
    const broken = await rampart(['audit', 'verify', copy, ...kek]);
    expect(broken.code).toBe(1);
    expect(broken.stderr).toBe(`rampart: audit trail broken: ${file}:${target + 1}: hash does not match the event (altered)\n`);
    expect((await rampart(['audit', 'export', copy, ...kek])).code).toBe(1);

    // The member writes the chain head to its log: with that anchor, cutting the trail's end shows.
    const memberLog = await readFile(path.join(home, 'm1', 'log'), 'utf8');
    const anchors = memberLog.split('\n').filter((line) => line.includes('"msg":"audit chain head"')).map((line) => (JSON.parse(line) as { auditHead: string }).auditHead);
    const anchor = anchors[anchors.length - 1] ?? 'none';
    expect(anchor).toMatch(/^[0-9a-f]{64}$/);
    expect((await rampart(['audit', 'verify', audit, '--anchor', anchor])).code).toBe(0);
    const cut = await mkdtemp(path.join(path.dirname(home), 'audit-cut-'));
    await cp(audit, cut, { recursive: true });
    const [cutFile] = await listTrailFiles(cut);
    const kept = await linesOf(cutFile as TrailFile, key);
    await rewrite((cutFile as TrailFile).path, kept.slice(0, kept.findIndex((line) => line.includes(anchor))), key);
    expect((await rampart(['audit', 'verify', cut, ...kek])).code).toBe(0); // without the anchor, a shorter trail looks whole
    const cutVerify = await rampart(['audit', 'verify', cut, '--anchor', anchor, ...kek]);
    expect(cutVerify.code).toBe(1);
    expect(cutVerify.stderr).toContain(`the anchored event ${anchor} is not in the trail`);

    // Live: root can tail the events as they are written; others may not.
    const { spawn } = await import('node:child_process');
    const { hashEvent } = await import('../../src/audit/event.js');
    const tail = spawn(process.execPath, [rampartBin, 'audit', 'tail', '--dir', home], { env: cleanEnvironment(), stdio: ['ignore', 'pipe', 'pipe'] });
    let streamed = '';
    tail.stdout.on('data', (chunk: Buffer) => (streamed += chunk.toString()));
    try {
      // The stream's first event is its own opening: after it, every event reaches the tail.
      for (let attempt = 0; attempt < 100 && !streamed.includes('"action":"Audit.Stream"'); attempt++) await new Promise((resolve) => setTimeout(resolve, 100));
      expect(streamed).toContain('"action":"Audit.Stream","user":"root"');
      expect(lastLine((await etcdctlAs('alice', ['put', '/stream-check', 'x'])).stderr)).toBe('Error: etcdserver: permission denied\n');
      for (let attempt = 0; attempt < 50 && !streamed.includes('/stream-check'); attempt++) await new Promise((resolve) => setTimeout(resolve, 100));
      const line = streamed.split('\n').find((entry) => entry.includes('/stream-check')) ?? '{}';
      const event = JSON.parse(line) as { hash: string; action: string; user: string; outcome: string };
      expect(event).toMatchObject({ action: 'Put', user: 'alice', outcome: 'denied' });
      const { hash, ...rest } = event;
      expect(hashEvent(rest as Parameters<typeof hashEvent>[0])).toBe(hash);
    } finally {
      tail.kill('SIGTERM');
    }
    const refusedTail = await rampart(['audit', 'tail', '--dir', home, '--cert', path.join(pki(), 'alice.crt'), '--key', path.join(pki(), 'alice.key')]);
    expect(refusedTail.code).toBe(1);
    expect(refusedTail.stderr).toBe('rampart: etcdserver: permission denied\n');
    // Refused streams end with their status, not a hang (snapshot needs root too).
    const snapshot = await etcdctlAs('alice', ['snapshot', 'save', path.join(path.dirname(home), 'alice.db')]);
    expect(snapshot.code).not.toBe(0);
    expect(lastLine(snapshot.stderr)).toBe('Error: etcdserver: permission denied\n');
  }, 120_000);
});
