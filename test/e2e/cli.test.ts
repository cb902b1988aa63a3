/**
 * The `rampart` command as a user meets it: --version, output cut short by `head`, `up` when a member
 * cannot start, every policy problem at once, failing policy tests that say why, and bash completion.
 * All through the real binary.
 */
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { readFile, writeFile } from 'node:fs/promises';
import { createServer, type Server } from 'node:net';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AuditLog } from '../../src/audit/log.js';
import { cleanEnvironment, freeBasePort, projectRoot, rampartBin, removeDirectory, run, temporaryDirectory } from '../helpers/processes.js';

const rampart = (args: string[]) => run(process.execPath, [rampartBin, ...args], { timeoutMs: 30_000 });

describe('the rampart command', () => {
  let home: string;

  beforeAll(async () => {
    home = await temporaryDirectory('cli');
  });

  afterAll(async () => {
    await removeDirectory(home);
  });

  it('prints its version', async () => {
    const { version } = JSON.parse(await readFile(path.join(projectRoot, 'package.json'), 'utf8')) as { version: string };
    expect(await rampart(['--version'])).toMatchObject({ code: 0, stdout: `${version}\n`, stderr: '' });
  });

  it('ends quietly when its reader goes away (rampart … | head)', async () => {
    // A trail large enough that the export is still writing when the pipe closes.
    const trail = path.join(home, 'audit');
    const log = await AuditLog.open(trail, 'abc', (error) => {
      throw error;
    });
    for (let index = 0; index < 20_000; index++) log.record({ action: 'Put', user: 'alice', via: 'certificate', targets: [`/app/${index}`], outcome: 'allowed', code: 'OK' });
    await log.close();
    const child = spawn(process.execPath, [rampartBin, 'audit', 'export', trail], { env: cleanEnvironment(), stdio: ['ignore', 'pipe', 'pipe'] });
    let stderr = '';
    child.stderr.on('data', (chunk: Buffer) => {
      stderr += chunk.toString();
    });
    const firstLine = await new Promise<string>((resolve) => child.stdout.once('data', (chunk: Buffer) => resolve(chunk.toString().split('\n')[0] ?? '')));
    child.stdout.destroy(); // what `head -1` does after its line
    const code = await new Promise<number | null>((resolve) => child.once('exit', resolve));
    expect(JSON.parse(firstLine)).toHaveProperty('hash');
    expect(stderr).not.toContain('EPIPE');
    expect(stderr).not.toMatch(/\n\s+at /);
    expect(code).toBe(0);
  });

  it('up fails at once, with the member\'s own words, when a member cannot start', async () => {
    const base = await freeBasePort();
    // Someone else holds the peer port of m1.
    const squatter: Server = createServer();
    await new Promise<void>((resolve) => squatter.listen(base + 1, '127.0.0.1', resolve));
    try {
      const started = Date.now();
      const result = await run(process.execPath, [rampartBin, 'up', '--dir', path.join(home, 'up'), '--size', '1', '--base-port', String(base)], { timeoutMs: 60_000 });
      expect(result.code).toBe(1);
      expect(result.stderr).toContain('rampart: m1 exited with status 1 while the cluster was starting');
      expect(result.stderr).toContain('EADDRINUSE');
      expect(Date.now() - started).toBeLessThan(20_000); // not the 60 s health timeout
      expect((await rampart(['down', '--dir', path.join(home, 'up')])).stdout).toBe('m1 is not running\n');
    } finally {
      squatter.close();
    }
  }, 60_000);

  it('up refuses an audit sink the members would refuse before it creates or starts anything', async () => {
    const base = await freeBasePort();
    const refused = async (args: string[]): Promise<string> => {
      const directory = path.join(home, `up-refused-${args.length}-${Date.now()}`);
      const result = await run(process.execPath, [rampartBin, 'up', '--dir', directory, '--size', '1', '--base-port', String(base), ...args], { timeoutMs: 30_000 });
      expect(result.code).toBe(1);
      // Nothing made (no CA, no cluster file, no member directory) and nothing listening.
      expect(existsSync(directory)).toBe(false);
      expect(result.stdout).toBe('');
      return result.stderr;
    };
    expect(await refused(['--audit-sink', 'syslog://127.0.0.1:514'])).toBe('rampart: --audit-sink syslog://127.0.0.1:514: syslog is sent over TLS only: syslog+tls://HOST:PORT or relp+tls://HOST:PORT\n');
    expect(await refused(['--audit-sink', 'https://127.0.0.1:9/events?token-file=/nonexistent/token'])).toBe('rampart: --audit-sink https://127.0.0.1:9/events: cannot read its token file /nonexistent/token (ENOENT)\n');
    expect(await refused(['--audit-fail-closed'])).toBe('rampart: --audit-fail-closed needs at least one --audit-sink to fail on\n');
    // The same words as `serve` itself refuses the spec with.
    const serve = await run(process.execPath, [rampartBin, 'serve', '--insecure', '--data-dir', path.join(home, 'serve-refused'), '--listen-client-urls', `http://127.0.0.1:${base}`, '--listen-peer-urls', `http://127.0.0.1:${base + 1}`, '--audit-sink', 'syslog://127.0.0.1:514'], { timeoutMs: 30_000 });
    expect(serve.code).not.toBe(0);
    expect(serve.stderr).toContain('--audit-sink syslog://127.0.0.1:514: syslog is sent over TLS only');
  }, 60_000);

  it('cert list shows each certificate\'s status: revoked with its date, and revoked serials whose file is gone', async () => {
    const pki = path.join(home, 'cert-list-pki');
    for (const args of [['ca', 'init'], ['cert', 'issue', 'client', 'alice'], ['cert', 'issue', 'client', 'bob']]) expect((await rampart([...args, '--pki-dir', pki])).code).toBe(0);
    const revoked = await rampart(['cert', 'revoke', 'alice', '--pki-dir', pki]);
    const serial = /revoked serial ([0-9A-F]+)/.exec(revoked.stdout)?.[1] as string;
    expect(serial, revoked.stderr).toBeDefined();
    const listed = await rampart(['cert', 'list', '--pki-dir', pki]);
    expect(listed.stderr).toBe('');
    const line = (name: string): string => listed.stdout.split('\n').find((entry) => entry.startsWith(path.join(pki, name))) ?? '';
    expect(line('alice.crt')).toMatch(new RegExp(`\tCN=alice, OU=rampart-client\t-\texpires \\S+\tserial ${serial}\tREVOKED \\d{4}-\\d{2}-\\d{2}T[\\d:.]+Z$`));
    expect(line('bob.crt')).toMatch(/\tvalid$/);
    // Renewed: the file holds a new serial; the revoked one stays listed.
    expect((await rampart(['cert', 'renew', 'alice', '--pki-dir', pki])).code).toBe(0);
    const json = await rampart(['cert', 'list', '--pki-dir', pki, '--output', 'json']);
    const inventory = JSON.parse(json.stdout) as { certificates: { file: string; status: string; serialNumber: string }[]; revokedWithoutFile: { serialNumber: string; subject: string; revokedAt: string }[] };
    expect(inventory.certificates.find((entry) => entry.file === path.join(pki, 'alice.crt'))).toMatchObject({ status: 'valid' });
    expect(inventory.revokedWithoutFile).toEqual([{ serialNumber: serial, subject: 'CN=alice, OU=rampart-client', revokedAt: expect.stringMatching(/^\d{4}-\d{2}-\d{2}T/) }]);
    expect((await rampart(['cert', 'list', '--pki-dir', pki])).stdout).toContain(`(no file)\tCN=alice, OU=rampart-client\t-\t-\tserial ${serial}\tREVOKED `);
    // A CRL the CA did not sign is not trusted, and said so.
    await writeFile(path.join(pki, 'crl.pem'), '-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n');
    expect((await rampart(['cert', 'list', '--pki-dir', pki])).stderr).toMatch(/^rampart: warning: .*crl\.pem: not a CRL the CA signed/);
  }, 90_000);

  it('policy validate lists every problem; a failing policy test shows what it expected and got', async () => {
    const broken = path.join(home, 'broken');
    await run('mkdir', ['-p', broken]);
    await writeFile(path.join(broken, 'a.yaml'), [
      'users:',
      '  - { name: alice, roles: [nosuchrole] }',
      '  - { name: bob, roles: [r1], colour: blue }',
      'roles:',
      '  - name: r1',
      '    grants:',
      '      - { from: /z, to: /a, access: read }',
      'tests:',
      '  - { as: carol, access: read, key: /a/x, expect: allow }',
      '',
    ].join('\n'));
    await writeFile(path.join(broken, 'b.yaml'), 'roles:\n  - name: r2\n    grants:\n      - { prefix: /q/, access: sideways }\n');
    const result = await rampart(['policy', 'validate', broken]);
    expect(result.code).toBe(1);
    const file = (name: string): string => path.join(broken, name);
    // The schema problems, and the checks across entries that a schema problem used to hide.
    expect(result.stderr.split('\n').filter((line) => line !== '').sort()).toEqual([
      `${file('a.yaml')}:2: role nosuchrole is not defined`,
      `${file('a.yaml')}:3: Unrecognized key: "colour" (users.1.colour)`,
      `${file('a.yaml')}:7: "to" must sort after "from"`,
      `${file('a.yaml')}:9: test user carol is not defined`,
      `${file('b.yaml')}:4: expected exactly one of key, prefix, fromKey, or from+to, with access: read, write or readwrite (roles.0.grants.0)`,
      'rampart: 5 problems in the policy:',
    ]);

    const failing = path.join(home, 'failing');
    await run('mkdir', ['-p', failing]);
    await writeFile(path.join(failing, 'p.yaml'), 'users:\n  - { name: app, roles: [app] }\nroles:\n  - name: app\n    grants:\n      - { prefix: /app/, access: read }\ntests:\n  - { as: app, access: write, key: /app/1, expect: allow }\n  - { as: app, access: read, key: /app/1, expect: allow }\n');
    const tested = await rampart(['policy', 'test', failing]);
    expect(tested.code).toBe(1);
    expect(tested.stdout).toContain(`FAIL ${path.join(failing, 'p.yaml')}:8 as app, write /app/1: allow — expected allow, got deny\n`);
    expect(tested.stdout).toContain(`ok   ${path.join(failing, 'p.yaml')}:9 as app, read /app/1: allow\n`);
    expect(tested.stderr).toContain('1 of 2 policy tests failed');
    expect(tested.stderr).toContain('expected allow, got deny');
  });

  it('completes commands and flags in bash', async () => {
    const generated = await rampart(['completion', 'bash']);
    expect(generated.code).toBe(0);
    const scriptFile = path.join(home, 'rampart.bash');
    await writeFile(scriptFile, generated.stdout);
    const complete = async (words: string[]): Promise<string[]> => {
      const script = `source ${JSON.stringify(scriptFile)}
COMP_WORDS=(${words.map((word) => `'${word}'`).join(' ')}); COMP_CWORD=${words.length - 1}; _rampart; printf '%s\\n' "\${COMPREPLY[@]}"`;
      const result = await run('bash', ['-c', script]);
      expect(result.stderr).toBe('');
      return result.stdout.split('\n').filter((line) => line !== '');
    };
    expect(await complete(['rampart', 'po'])).toEqual(['policy']);
    expect(await complete(['rampart', 'policy', ''])).toEqual(expect.arrayContaining(['validate', 'test', 'diff', 'apply', 'export']));
    expect(await complete(['rampart', 'policy', 'apply', '--dr'])).toEqual(['--dry-run']);
    expect(await complete(['rampart', 'up', '--dir', 'x', '--base'])).toEqual(['--base-port']);
    expect(await complete(['rampart', 'snapshot', 'restore', '--data'])).toEqual(['--data-dir']);
  });
});
