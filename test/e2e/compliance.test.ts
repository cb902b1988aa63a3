/**
 * `rampart compliance check` on one 3-member `rampart up` cluster: it passes on the default
 * cluster, and fails naming the control when auth is disabled, when a data directory is made
 * world-readable (after start: members refuse to start on one), and when a member serves a
 * certificate close to expiry (renewed with the CA for 10 days, reloaded while serving). And the
 * evidence bundle: `compliance export` then `compliance verify` offline, and a byte changed in a
 * member file, the manifest or the signature refused, naming it. Then one member started with
 * --client-cert-auth false: CIS-2.2 fails from what its listener does.
 */
import { existsSync } from 'node:fs';
import { chmod, cp, mkdir, readFile, readdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { rampartBin, removeDirectory, run, temporaryDirectory } from '../helpers/processes.js';
import { rampartCli, startUpCluster, type UpCluster } from '../helpers/up-cluster.js';
import { startTlsMember } from '../helpers/tls-member.js';

interface Control {
  id: string;
  status: 'pass' | 'fail' | 'warn' | 'skip';
  evidence: string[];
  fix: string;
}

/** `rampart compliance check --dir HOME --output json`: its exit status, controls and stderr. */
async function checkCluster(home: string, extra: readonly string[] = []): Promise<{ code: number; controls: Control[]; stderr: string }> {
  const result = await rampartCli(['compliance', 'check', '--dir', home, '--output', 'json', ...extra]);
  const controls = result.stdout === '' ? [] : (JSON.parse(result.stdout) as { controls: Control[] }).controls;
  return { code: result.code, controls, stderr: result.stderr };
}

function control(controls: readonly Control[], id: string): Control {
  const found = controls.find((candidate) => candidate.id === id);
  if (found === undefined) throw new Error(`no control ${id}`);
  return found;
}

describe('rampart compliance', () => {
  let cluster: UpCluster;
  let home: string;
  let base: number;
  const rampart = rampartCli;
  const pki = (): string => cluster.pki;
  const etcdctl = (args: string[]) => cluster.etcdctl(args);
  const check = (extra: string[] = []) => checkCluster(home, extra);

  beforeAll(async () => {
    cluster = await startUpCluster('compliance', 3);
    ({ home, base } = cluster);
    expect((await etcdctl(['put', '/compliance/k', 'v'])).code).toBe(0);
  }, 90_000);

  afterAll(async () => {
    await cluster?.down();
  }, 120_000);

  it('passes on a default rampart up cluster, in every format', async () => {
    // Members propose their first audit checkpoint within seconds of starting: wait for it.
    let result = await check();
    for (let attempt = 0; attempt < 30 && control(result.controls, 'RAMPART-AUDIT').status !== 'pass'; attempt++) {
      await new Promise((resolve) => setTimeout(resolve, 1000));
      result = await check();
    }
    expect(result.stderr).toBe('');
    expect(result.code).toBe(0);
    expect(result.controls.map((entry) => entry.id)).toEqual([
      'CIS-2.1', 'CIS-2.2', 'CIS-2.3', 'CIS-2.4', 'CIS-2.5', 'CIS-2.6', 'CIS-2.7', 'CIS-1.1.11', 'CIS-1.1.12',
      'RAMPART-AUTH', 'RAMPART-ROOT-CERT', 'RAMPART-ENCRYPTION', 'RAMPART-AUDIT', 'RAMPART-AUDIT-POLICY', 'RAMPART-AUDIT-RETENTION', 'RAMPART-AUDIT-VERIFY', 'RAMPART-CERT-EXPIRY', 'RAMPART-CRL', 'RAMPART-NO-PLAINTEXT',
    ]);
    // Everything passes, with no warning: `up` wrote the CA's first CRL and every member enforces it.
    for (const entry of result.controls) expect(entry.status, `${entry.id}: ${entry.evidence.join('; ')}`).toBe('pass');
    const crl = control(result.controls, 'RAMPART-CRL').evidence;
    expect(crl.filter((line) => /^m\d .*CRL number 1, 0 revoked, .*; the member enforces number 1$/.test(line)), crl.join('\n')).toHaveLength(3);
    // Live evidence: every member's client and peer listener refused a TLS client without a certificate.
    expect(control(result.controls, 'CIS-2.2').evidence.filter((line) => line.includes('was refused'))).toHaveLength(3);
    expect(control(result.controls, 'CIS-2.5').evidence.filter((line) => line.includes('was refused'))).toHaveLength(3);
    expect(control(result.controls, 'RAMPART-AUDIT-VERIFY').evidence.join('\n')).toMatch(/m1 .*intact, \d+ events .*signatures verified against the cluster CA/);
    // The default retention (400d) as each member reports it: PCI DSS 10.5.1's year is met.
    expect(control(result.controls, 'RAMPART-AUDIT-RETENTION').evidence).toEqual(['m1', 'm2', 'm3'].map((name) => `${name} metrics: rampart_audit_retention_seconds 34560000: closed audit files are deleted after 400 days`));

    const table = await rampart(['compliance', 'check', '--dir', home]);
    expect(table.code).toBe(0);
    expect(table.stdout).toMatch(/^PASS {2}CIS-2\.1 +Ensure that the --cert-file and --key-file arguments are set as appropriate$/m);
    expect(table.stdout).toMatch(/^19 controls: 19 pass, 0 fail, 0 warn, 0 skip$/m);
    const junit = await rampart(['compliance', 'check', '--dir', home, '--output', 'junit']);
    expect(junit.code).toBe(0);
    expect(junit.stdout).toContain('<testsuites name="rampart compliance check" tests="19" failures="0" skipped="0">');
    expect(junit.stdout).not.toContain('<failure');
  }, 60_000);

  it('fails RAMPART-AUTH, naming it, while auth is disabled', async () => {
    expect((await etcdctl(['auth', 'disable'])).code).toBe(0);
    try {
      const result = await check();
      expect(result.code).toBe(1);
      const auth = control(result.controls, 'RAMPART-AUTH');
      expect(auth.status).toBe('fail');
      expect(auth.evidence.join('\n')).toMatch(/auth is DISABLED/);
      expect(auth.evidence.join('\n')).toMatch(/m1 metrics: rampart_auth_enabled 0/);
      const junit = await rampart(['compliance', 'check', '--dir', home, '--output', 'junit']);
      expect(junit.code).toBe(1);
      expect(junit.stdout).toContain('<failure message="RAMPART-AUTH failed: Authentication and RBAC are enabled" type="RAMPART-AUTH">');
    } finally {
      expect((await etcdctl(['auth', 'enable'])).code).toBe(0);
    }
  }, 60_000);

  it('exports an evidence bundle that verifies offline, and refuses one byte changed in it', async () => {
    const bundle = path.join(path.dirname(home), 'evidence.tar');
    const from = new Date(Date.now() - 3_600_000).toISOString();
    const to = new Date(Date.now() + 3_600_000).toISOString();
    const exported = await rampart(['compliance', 'export', '--dir', home, '--from', from, '--to', to, '--out', bundle]);
    expect(exported.stderr).toMatch(/reading the audit trail of m1/);
    expect(exported.code, exported.stderr).toBe(0);
    const summary = /^wrote .*evidence\.tar: (\d+) audit events of 3 members, 16 files; cluster CA SHA-256 ([0-9A-F:]{95})$/m.exec(exported.stdout);
    expect(summary, exported.stdout).not.toBeNull();
    const fingerprint = summary?.[2] as string;
    const openssl = await run('openssl', ['x509', '-noout', '-fingerprint', '-sha256', '-in', path.join(pki(), 'ca.crt')]);
    expect(openssl.stdout.trim()).toBe(`sha256 Fingerprint=${fingerprint}`);
    const listing = await run('tar', ['-tf', bundle]);
    expect(listing.stdout.split('\n').filter((line) => line !== '').sort()).toEqual([
      'audit/checkpoints.jsonl', 'audit/events.csv', 'audit/events.jsonl', 'audit/trails.json', 'ca.crt', 'certificates.json', 'cluster.json',
      'compliance/check.json', 'compliance/check.junit.xml', 'compliance/check.txt', 'encryption.json', 'index.html', 'manifest.json', 'manifest.sig', 'policies/audit.yaml', 'policies/rbac.yaml',
    ]);

    const verified = await rampart(['compliance', 'verify', bundle, '--cacert', path.join(pki(), 'ca.crt')]);
    expect(verified.stderr).toBe('');
    expect(verified.code).toBe(0);
    expect(verified.stdout).toMatch(new RegExp(`^bundle verified: 16 files, ${summary?.[1] ?? ''} audit events from ${from.replace(/\./g, '\\.')} to .*; signed by a key the cluster CA \\(SHA-256 ${fingerprint}\\) issued$`, 'm'));
    // Without the auditor's CA: intact, but not authenticated (exit 2) until its fingerprint is pinned.
    const unpinned = await rampart(['compliance', 'verify', bundle]);
    expect(unpinned.code).toBe(2);
    expect(unpinned.stdout).toContain(`signed under the CA it carries, SHA-256 ${fingerprint}`);
    expect(unpinned.stderr).toMatch(/NOT authenticated/);
    expect((await rampart(['compliance', 'verify', bundle, '--ca-fingerprint', fingerprint])).code).toBe(0);

    // What an auditor reads: the AU-3 CSV and the HTML page, with the auth change of the test before.
    const extracted = path.join(path.dirname(home), 'extracted');
    await mkdir(extracted);
    expect((await run('tar', ['-xf', bundle, '-C', extracted])).code).toBe(0);
    const csv = await readFile(path.join(extracted, 'audit', 'events.csv'), 'utf8');
    expect(csv.split('\n')[0]).toBe('date_time,user,identified_by,event_type,success_or_failure,outcome,code,origin,member,affected_data,detail,seq,hash');
    expect(csv).toMatch(/^[^,]+,root,certificate,AuthDisable,success,allowed,OK,127\.0\.0\.1:\d+,[0-9a-f]+,/m);
    expect(csv).toMatch(/^[^,]+,root,certificate,Put,success,allowed,OK,127\.0\.0\.1:\d+,[0-9a-f]+,\/compliance\/k,/m);
    expect(await readFile(path.join(extracted, 'policies', 'audit.yaml'), 'utf8')).toMatch(/^# The audit policy in force when this bundle was made( \(the shipped default: none applied\))?: sha256:[0-9a-f]{64}\nrules:\n/);
    const html = await readFile(path.join(extracted, 'index.html'), 'utf8');
    expect(html).toMatch(/<h2>Administrative actions: ([2-9]|[1-9]\d+)\b/);
    expect(html).toMatch(/<td>AuthDisable<\/td>/);
    expect(html).not.toMatch(/<script|\ssrc=|\shref=/);

    // One byte changed in a member file, the manifest or the signature: refused, naming it.
    const original = await readFile(bundle);
    const flipAt = async (offset: number): Promise<{ code: number; stderr: string }> => {
      const copy = Buffer.from(original);
      copy[offset] = (copy[offset] ?? 0) ^ 0x01;
      const altered = path.join(path.dirname(home), 'altered.tar');
      await writeFile(altered, copy);
      return rampart(['compliance', 'verify', altered, '--cacert', path.join(pki(), 'ca.crt')]);
    };
    const putEvent = original.indexOf('"action":"Put"');
    expect((await flipAt(putEvent + 11)).stderr).toMatch(/^rampart: compliance: bundle REFUSED: audit\/events\.jsonl: its SHA-256 does not match the manifest \(altered\)$/m);
    const inManifest = original.indexOf('"sha256"');
    // A flipped bit in a hash digit may leave a hex digit (the signature then fails) or not (a malformed entry).
    expect((await flipAt(inManifest + 12)).stderr).toMatch(/bundle REFUSED: manifest\.json is not in canonical form|bundle REFUSED: manifest\.sig: the signature does not match manifest\.json|bundle REFUSED: manifest\.json has a malformed file entry \(altered\)/);
    const inSignature = original.indexOf('"signature": "') + 20;
    const refusedSignature = await flipAt(inSignature);
    expect(refusedSignature.code).toBe(1);
    expect(refusedSignature.stderr).toMatch(/bundle REFUSED: manifest\.sig/);
    expect((await flipAt(original.length - 1)).stderr).toMatch(/bundle REFUSED: not an intact bundle: the end-of-archive blocks are altered/);

    // Never over an existing file.
    const again = await rampart(['compliance', 'export', '--dir', home, '--from', from, '--to', to, '--out', bundle]);
    expect(again.code).toBe(2);
    expect(again.stderr).toMatch(/exists/);
  }, 90_000);

  it('fails CIS-1.1.11, naming the member and every path, on a data directory made world-readable', async () => {
    const data = path.join(home, 'm2', 'data');
    const trailFile = (await readdir(path.join(data, 'audit'))).find((name) => name.startsWith('audit-'));
    const levelFile = (await readdir(path.join(data, 'db'))).find((name) => name.startsWith('MANIFEST-'));
    if (trailFile === undefined || levelFile === undefined) throw new Error('no trail or LevelDB file in m2');
    const exposed = [path.join(data, 'audit', 'trail-key'), path.join(data, 'audit', trailFile), path.join(data, 'db', levelFile)];
    // What an operator does: chmod -R o+r (the directory 704, every file in it 604).
    expect((await run('chmod', ['-R', 'o+r', data])).code).toBe(0);
    try {
      const result = await check();
      expect(result.code).toBe(1);
      const permissions = control(result.controls, 'CIS-1.1.11');
      expect(permissions.status).toBe('fail');
      expect(permissions.evidence).toContain(`m2 ${data}: mode 704, group or others may access it`);
      const inside = permissions.evidence.find((line) => line.startsWith(`m2 ${data}: group or others may access `)) ?? '';
      for (const file of exposed) expect(inside).toContain(`${file} (604)`);
      expect(permissions.fix).toMatch(/chmod -R go-rwx/);
      const table = await rampart(['compliance', 'check', '--dir', home]);
      expect(table.code).toBe(1);
      expect(table.stdout).toMatch(/^FAIL {2}CIS-1\.1\.11 +Ensure that the etcd data directory permissions are set to 700 or more restrictive$/m);
    } finally {
      expect((await run('chmod', ['-R', 'o-r', data])).code).toBe(0);
    }
    // The directory kept 700, but a key, a sealed trail file and a LevelDB file made 0644: still a failure, each named.
    for (const file of exposed) await chmod(file, 0o644);
    try {
      const result = await check();
      expect(result.code).toBe(1);
      const permissions = control(result.controls, 'CIS-1.1.11');
      expect(permissions.status).toBe('fail');
      expect(permissions.evidence).toContain(`m2 ${data}: mode 700`);
      const inside = permissions.evidence.find((line) => line.startsWith(`m2 ${data}: group or others may access 3 entries inside it: `)) ?? '';
      for (const file of exposed) expect(inside).toContain(`${file} (644)`);
    } finally {
      for (const file of exposed) await chmod(file, 0o600);
    }
    expect(control((await check()).controls, 'CIS-1.1.11').status).toBe('pass');
  }, 60_000);

  it.skipIf(process.getuid?.() !== 0)('export as an unprivileged user names the file it could not read and why, exit status 2', async () => {
    // An auditor account (nobody) with its own copies of the CA, a client certificate, a signing
    // certificate, and a copy of m1's trail with its KEK; the cluster's own files stay root's.
    const auditor = await temporaryDirectory('compliance-auditor');
    try {
      const own = (name: string): string => path.join(auditor, name);
      for (const name of ['ca.crt', 'admin.crt', 'admin.key']) await cp(path.join(pki(), name), own(name));
      expect((await rampart(['cert', 'issue', 'audit', 'auditor', '--pki-dir', pki(), '--out', auditor])).code).toBe(0);
      await cp(path.join(home, 'm1', 'data', 'audit'), own('m1/data/audit'), { recursive: true });
      await cp(path.join(home, 'm1', 'encryption.key'), own('m1/encryption.key'));
      expect((await run('chown', ['-R', 'nobody', auditor])).code).toBe(0);
      const asNobody = (args: string[]) => run('runuser', ['-u', 'nobody', '--', process.execPath, rampartBin, 'compliance', 'export',
        '--from', '2026-01-01', '--to', '2100-01-01', '--out', own('evidence.tar'), '--signing-cert', own('auditor.crt'), '--signing-key', own('auditor.key'), ...args], { timeoutMs: 60_000 });
      const connection = (key: string): string[] => ['--endpoints', `https://127.0.0.1:${base}`, '--cacert', own('ca.crt'), '--cert', own('admin.crt'), '--key', key];
      const denied = (file: string): RegExp => new RegExp(`cannot read ${file.replace(/[.]/g, '\\.')}: permission denied \\(EACCES\\) for uid \\d+`);

      // The cluster's trail itself: its directory is named, not reported missing.
      const trail = path.join(home, 'm1', 'data', 'audit');
      const ofCluster = await asNobody([...connection(own('admin.key')), '--audit-dir', `m1=${trail}`]);
      expect(ofCluster.code).toBe(2);
      expect(ofCluster.stderr).toMatch(new RegExp(`^rampart: compliance: the audit trail of m1 \\(${trail.replace(/[.]/g, '\\.')}\\): ${denied(trail).source}`, 'm'));
      // A readable trail, but a client key it may not read: the checkpoints are unreadable, not "not witnessed yet".
      const rootKey = path.join(pki(), 'admin.key');
      const noCheckpoints = await asNobody([...connection(rootKey), '--audit-dir', `m1=${own('m1/data/audit')}`]);
      expect(noCheckpoints.code).toBe(2);
      expect(noCheckpoints.stderr).toMatch(/^rampart: compliance: the cluster's audit checkpoints could not be read, so no trail can be checked against them: audit checkpoints failed: EACCES: permission denied, open '.*admin\.key'$/m);
      expect(noCheckpoints.stderr).not.toMatch(/not witnessed/);
      // The rampart up directory itself: the first file it needs is named.
      const ofDirectory = await run('runuser', ['-u', 'nobody', '--', process.execPath, rampartBin, 'compliance', 'export', '--dir', home, '--from', '2026-01-01', '--to', '2100-01-01', '--out', own('evidence.tar')], { timeoutMs: 60_000 });
      expect(ofDirectory.code).toBe(2);
      expect(ofDirectory.stderr).toMatch(/^rampart: compliance: the signing key: cannot read .*\/pki\/compliance-signing\.(crt|key): permission denied \(EACCES\)/m);
      expect(existsSync(own('evidence.tar'))).toBe(false);
    } finally {
      await removeDirectory(auditor);
    }
  }, 60_000);

  it('fails RAMPART-CERT-EXPIRY, naming the listener, when a member serves a certificate near expiry', async () => {
    // A real short-lived certificate from the cluster CA, which m3 reloads while serving.
    const renewed = await rampart(['cert', 'renew', 'server', '--pki-dir', pki(), '--dir', path.join(home, 'm3'), '--days', '10']);
    expect(renewed.code, renewed.stderr).toBe(0);
    let result = await check();
    for (let attempt = 0; attempt < 20 && !control(result.controls, 'RAMPART-CERT-EXPIRY').evidence.some((line) => line.startsWith('m3 client listener') && line.includes('expires in')); attempt++) {
      await new Promise((resolve) => setTimeout(resolve, 500));
      result = await check();
    }
    expect(result.code).toBe(1);
    const expiry = control(result.controls, 'RAMPART-CERT-EXPIRY');
    expect(expiry.status).toBe('fail');
    expect(expiry.evidence.join('\n')).toMatch(new RegExp(`^m3 client listener https://127\\.0\\.0\\.1:${base + 20_000} \\(CN=m3, OU=rampart-server\\): expires in 9 days .*within the 30-day threshold$`, 'm'));
    expect(expiry.evidence.join('\n')).toMatch(/^m3 metrics: the client certificate in use: expires in 9 days/m);
    // The other members' certificates are not blamed.
    expect(expiry.evidence.filter((line) => line.includes('expires in'))).toHaveLength(3);
    // A lower threshold passes the same certificate.
    const lenient = await check(['--expiry-warning-days', '5']);
    expect(control(lenient.controls, 'RAMPART-CERT-EXPIRY').status).toBe('pass');
  }, 60_000);
});

describe('rampart compliance check on a member that takes clients without a certificate', () => {
  it('fails CIS-2.2 from what the listener does, and warns about its plaintext metrics URL', async () => {
    const member = await startTlsMember(['--client-cert-auth', 'false']);
    const kept = await temporaryDirectory('compliance-pki');
    try {
      await cp(path.join(member.directory, 'pki'), kept, { recursive: true });
      const pki = path.join(member.directory, 'pki');
      const result = await run(process.execPath, [rampartBin, 'compliance', 'check', '--output', 'json',
        '--endpoints', `https://127.0.0.1:${member.clientPort}`, '--cacert', path.join(pki, 'ca.crt'), '--cert', path.join(pki, 'admin.crt'), '--key', path.join(pki, 'admin.key'),
        '--metrics-url', `a=http://127.0.0.1:${member.metricsPort}`], { timeoutMs: 60_000 });
      expect(result.code, result.stderr).toBe(1);
      const controls = (JSON.parse(result.stdout) as { controls: Control[] }).controls;
      const byId = new Map(controls.map((entry) => [entry.id, entry]));
      expect(byId.get('CIS-2.2')).toMatchObject({ status: 'fail', evidence: [`a client https://127.0.0.1:${member.clientPort}: a TLS connection offering no client certificate was ACCEPTED (it answered HTTP/2)`] });
      // Its peer port still requires one; its metrics URL is plaintext (metrics only: a warning).
      expect(byId.get('CIS-2.5')?.status).toBe('pass');
      expect(byId.get('RAMPART-NO-PLAINTEXT')?.status).toBe('warn');
      expect(byId.get('RAMPART-NO-PLAINTEXT')?.evidence).toContain(`a metrics http://127.0.0.1:${member.metricsPort}: a plaintext URL (metrics and health only)`);
      // No host files were named: those controls skip, with the reason.
      expect(byId.get('CIS-1.1.11')).toMatchObject({ status: 'skip', evidence: ['no data directory given (--dir of a rampart up cluster on this host, or --data-dir)'] });
    } finally {
      await member.stop();
    }
    // A cluster that cannot be reached is no passing gate, however few controls could fail.
    const pki = kept;
    const unreachable = await run(process.execPath, [rampartBin, 'compliance', 'check', '--endpoints', `https://127.0.0.1:${member.clientPort}`,
      '--cacert', path.join(pki, 'ca.crt'), '--cert', path.join(pki, 'admin.crt'), '--key', path.join(pki, 'admin.key')], { timeoutMs: 60_000 });
    expect(unreachable.code).toBe(2);
    // Where it tried and why, in words, in every format: never grpc-js's "14 UNAVAILABLE: No connection established…".
    const cannotReach = `cannot reach the cluster at https://127.0.0.1:${member.clientPort}: connection refused (ECONNREFUSED)`;
    expect(unreachable.stderr).toBe(`rampart: compliance: the cluster could not be checked: ${cannotReach}\n`);
    expect(unreachable.stdout).toContain(`- no member list: ${cannotReach}\n`);
    expect(unreachable.stdout).toContain(`- auth state: ${cannotReach}\n`);
    const connection = ['--endpoints', `https://127.0.0.1:${member.clientPort}`, '--cacert', path.join(pki, 'ca.crt'), '--cert', path.join(pki, 'admin.crt'), '--key', path.join(pki, 'admin.key')];
    const [json, junit] = await Promise.all(['json', 'junit'].map((output) => run(process.execPath, [rampartBin, 'compliance', 'check', '--output', output, ...connection], { timeoutMs: 60_000 })));
    const skipped = (JSON.parse(json?.stdout ?? '') as { controls: Control[] }).controls.filter((entry) => entry.status === 'skip');
    expect(skipped.find((entry) => entry.id === 'RAMPART-AUDIT-POLICY')?.evidence).toEqual([`audit policy: ${cannotReach}`]);
    expect(junit?.stdout).toContain(`<skipped message="no member list: ${cannotReach}"/>`);
    for (const output of [unreachable.stdout, json?.stdout, junit?.stdout]) expect(output).not.toMatch(/UNAVAILABLE|No connection established|Resolution note/);
    await removeDirectory(kept);
  }, 60_000);
});

describe('rampart compliance check on a cluster started with rampart up --no-auth', () => {
  it('fails RAMPART-AUTH, naming it, with exit status 1', async () => {
    const cluster = await startUpCluster('compliance-no-auth', 1, ['--no-auth']);
    try {
      const result = await checkCluster(cluster.home);
      expect(result.code, result.stderr).toBe(1);
      const auth = control(result.controls, 'RAMPART-AUTH');
      expect(auth.status).toBe('fail');
      expect(auth.evidence.join('\n')).toMatch(/^auth is DISABLED \(auth revision \d+\): every certificate holder may read and write every key$/m);
      expect(auth.evidence).toContain('m1 metrics: rampart_auth_enabled 0');
      // The failure is auth's alone: the listeners, files, encryption and audit of the same cluster pass.
      expect(result.controls.filter((entry) => entry.status === 'fail').map((entry) => entry.id)).toEqual(['RAMPART-AUTH']);
      const table = await rampartCli(['compliance', 'check', '--dir', cluster.home]);
      expect(table.code).toBe(1);
      expect(table.stdout).toMatch(/^FAIL {2}RAMPART-AUTH +Authentication and RBAC are enabled$/m);
    } finally {
      await cluster.down();
    }
  }, 90_000);
});
