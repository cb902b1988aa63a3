/**
 * `rampart compliance check` on one 3-member `rampart up` cluster: it passes on the default
 * cluster, and fails naming the control when auth is disabled, when a data directory is made
 * world-readable (after start: members refuse to start on one), and when a member serves a
 * certificate close to expiry (renewed with the CA for 10 days, reloaded while serving).
 */
import { chmod } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { cleanEnvironment, freeBasePort, rampartBin, removeDirectory, run, temporaryDirectory } from '../helpers/processes.js';

interface Control {
  id: string;
  status: 'pass' | 'fail' | 'warn' | 'skip';
  evidence: string[];
  fix: string;
}

describe('rampart compliance', () => {
  let home: string;
  let base: number;
  const rampart = (args: string[]) => run(process.execPath, [rampartBin, ...args], { timeoutMs: 60_000 });
  const pki = (): string => path.join(home, 'pki');
  const etcdctl = (args: string[]) => run('etcdctl', ['--endpoints', `https://127.0.0.1:${base}`, '--cacert', path.join(pki(), 'ca.crt'), '--cert', path.join(pki(), 'admin.crt'), '--key', path.join(pki(), 'admin.key'), '--command-timeout=5s', ...args], { env: cleanEnvironment() });
  const check = async (extra: string[] = []): Promise<{ code: number; controls: Control[]; stderr: string }> => {
    const result = await rampart(['compliance', 'check', '--dir', home, '--output', 'json', ...extra]);
    const controls = result.stdout === '' ? [] : (JSON.parse(result.stdout) as { controls: Control[] }).controls;
    return { code: result.code, controls, stderr: result.stderr };
  };
  const control = (controls: Control[], id: string): Control => {
    const found = controls.find((candidate) => candidate.id === id);
    if (found === undefined) throw new Error(`no control ${id}`);
    return found;
  };

  beforeAll(async () => {
    home = path.join(await temporaryDirectory('compliance'), 'cluster');
    base = await freeBasePort();
    const result = await rampart(['up', '--dir', home, '--size', '3', '--base-port', String(base)]);
    expect(result.code, result.stderr).toBe(0);
    expect((await etcdctl(['put', '/compliance/k', 'v'])).code).toBe(0);
  }, 90_000);

  afterAll(async () => {
    if (home !== undefined) {
      await rampart(['down', '--dir', home]);
      await removeDirectory(path.dirname(home));
    }
  }, 30_000);

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
      'RAMPART-AUTH', 'RAMPART-ROOT-CERT', 'RAMPART-ENCRYPTION', 'RAMPART-AUDIT', 'RAMPART-AUDIT-VERIFY', 'RAMPART-CERT-EXPIRY', 'RAMPART-CRL', 'RAMPART-NO-PLAINTEXT',
    ]);
    // Everything that can be seen here passes; the only warning is the CRL no revoke has written yet.
    for (const entry of result.controls) expect(entry.status, `${entry.id}: ${entry.evidence.join('; ')}`).toBe(entry.id === 'RAMPART-CRL' ? 'warn' : 'pass');
    // Live evidence: every member's client and peer listener refused a TLS client without a certificate.
    expect(control(result.controls, 'CIS-2.2').evidence.filter((line) => line.includes('was refused'))).toHaveLength(3);
    expect(control(result.controls, 'CIS-2.5').evidence.filter((line) => line.includes('was refused'))).toHaveLength(3);
    expect(control(result.controls, 'RAMPART-AUDIT-VERIFY').evidence.join('\n')).toMatch(/m1 .*intact, \d+ events .*signatures verified against the cluster CA/);

    const table = await rampart(['compliance', 'check', '--dir', home]);
    expect(table.code).toBe(0);
    expect(table.stdout).toMatch(/^PASS {2}CIS-2\.1 +Ensure that the --cert-file and --key-file arguments are set as appropriate$/m);
    expect(table.stdout).toMatch(/^17 controls: 16 pass, 0 fail, 1 warn, 0 skip$/m);
    const junit = await rampart(['compliance', 'check', '--dir', home, '--output', 'junit']);
    expect(junit.code).toBe(0);
    expect(junit.stdout).toContain('<testsuites name="rampart compliance check" tests="17" failures="0" skipped="0">');
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

  it('fails CIS-1.1.11, naming the member and mode, on a world-readable data directory', async () => {
    const data = path.join(home, 'm2', 'data');
    await chmod(data, 0o755);
    try {
      const result = await check();
      expect(result.code).toBe(1);
      const permissions = control(result.controls, 'CIS-1.1.11');
      expect(permissions.status).toBe('fail');
      expect(permissions.evidence).toContain(`m2 ${data}: mode 755, group or others may access it`);
      expect(permissions.fix).toMatch(/chmod 700/);
      const table = await rampart(['compliance', 'check', '--dir', home]);
      expect(table.code).toBe(1);
      expect(table.stdout).toMatch(/^FAIL {2}CIS-1\.1\.11 +Ensure that the etcd data directory permissions are set to 700 or more restrictive$/m);
    } finally {
      await chmod(data, 0o700);
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
