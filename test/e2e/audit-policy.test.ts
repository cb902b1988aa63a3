/**
 * The audit policy on a 3-member `rampart up` cluster: the shipped default is in force from the
 * first entries (writes, denials and secret reads recorded, ordinary reads not); a malformed file is
 * refused with file:line and changes nothing; a policy with `request` + `values: hmac` on a prefix,
 * applied once, is used by every member (each trail names the policy before the events it selected):
 * their events carry the value's HMAC, which
 * `rampart audit hmac` reproduces, and no audit file holds the value; the change itself is in the
 * trail, and the trails still verify.
 */
import { readFile, readdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { AuditEvent } from '../../src/audit/event.js';
import { listTrailFiles, readRecords } from '../../src/audit/records.js';
import { TrailKeyStore } from '../../src/audit/trail-key.js';
import { FileKekProvider } from '../../src/encryption/kek-file.js';
import { rampartCli, startUpCluster, type UpCluster } from '../helpers/up-cluster.js';

describe('the audit policy of a cluster', () => {
  let cluster: UpCluster;
  let home: string;
  const rampart = rampartCli;
  const etcdctl = (member: number, args: string[], input?: string) => cluster.etcdctl(args, member, input);
  const trailOf = (member: number): string => path.join(home, `m${member + 1}`, 'data', 'audit');
  const events = async (member: number): Promise<AuditEvent[]> => {
    // The trail is sealed (encryption at rest): read through the member's KEK, as root could.
    const key = (await TrailKeyStore.open(trailOf(member), await FileKekProvider.open(path.join(home, `m${member + 1}`, 'encryption.key')))).key;
    const all: AuditEvent[] = [];
    for (const file of await listTrailFiles(trailOf(member))) {
      for await (const record of readRecords(file, key)) if (record.kind === 'record') all.push(JSON.parse(record.text) as AuditEvent);
    }
    return all;
  };
  /** Waits until `member`'s trail has an event `found` accepts (reads are written after their answer). */
  const eventually = async (member: number, found: (event: AuditEvent) => boolean): Promise<AuditEvent[]> => {
    for (let attempt = 0; attempt < 100; attempt++) {
      const all = await events(member);
      if (all.some(found)) return all;
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
    throw new Error(`no such event in m${member + 1}'s trail`);
  };

  beforeAll(async () => {
    cluster = await startUpCluster('audit-policy', 3);
    home = cluster.home;
  }, 90_000);

  afterAll(async () => {
    await cluster?.down();
  }, 120_000);

  it('records writes, denials and secret reads by default, not ordinary reads', async () => {
    expect((await etcdctl(0, ['put', '/pods/p1', 'v'])).code).toBe(0);
    expect((await etcdctl(0, ['get', '/pods/p1'])).stdout).toContain('/pods/p1');
    const denied = await etcdctl(0, ['--user', 'ghost:wrong', 'get', '/pods/p1']);
    expect(denied.code).not.toBe(0);
    expect((await etcdctl(0, ['get', '/registry/secrets/default/db'])).code).toBe(0);
    const trail = await eventually(0, (event) => event.action === 'Range' && event.targets?.[0] === '/registry/secrets/default/db');
    expect(trail).toContainEqual(expect.objectContaining({ action: 'Put', user: 'root', targets: ['/pods/p1'], outcome: 'allowed' }));
    expect(trail).toContainEqual(expect.objectContaining({ action: 'Authenticate', user: 'ghost', outcome: 'denied' }));
    expect(trail.filter((event) => event.action === 'Range' && event.targets?.[0] === '/pods/p1')).toEqual([]);
    expect(trail.some((event) => event.request !== undefined)).toBe(false); // metadata only
    // The trail names the policy in force before the first event it selected.
    const named = trail.findIndex((event) => event.action === 'audit.policy');
    expect(trail[named]?.targets?.[0]).toMatch(/^audit-policy:sha256:[0-9a-f]{64}$/);
    expect(named).toBeLessThan(trail.findIndex((event) => event.action === 'Put'));
  }, 60_000);

  it('refuses a malformed policy with file:line and keeps the one in force', async () => {
    const before = await rampart(['audit', 'policy', 'show', '--dir', home]);
    expect(before.code, before.stderr).toBe(0);
    expect(before.stdout).toMatch(/^# The audit policy in force: sha256:[0-9a-f]{64}\n/);
    const malformed = path.join(path.dirname(home), 'malformed.yaml');
    await writeFile(malformed, 'rules:\n  - name: app\n    keys: [ { prefix: /app/ } ]\n    level: loud\n');
    const refused = await rampart(['audit', 'policy', 'apply', malformed, '--dir', home]);
    expect(refused.code).not.toBe(0);
    expect(refused.stderr).toContain(`${malformed}:4: level must be none, metadata or request`);
    expect(refused.stderr).toContain('nothing was changed');
    expect((await rampart(['audit', 'policy', 'show', '--dir', home])).stdout).toBe(before.stdout);
  }, 60_000);

  it('records HMACs of values under a request + values: hmac rule on every member, never the value', async () => {
    const file = path.join(path.dirname(home), 'audit.yaml');
    await writeFile(file, [
      'rules:',
      '  - name: app-values',
      '    keys: [ { prefix: /app/ } ]',
      '    level: request',
      '    values: hmac',
      '  - { operations: [read], level: none }',
      '  - { level: metadata }',
      '',
    ].join('\n'));
    const applied = await rampart(['audit', 'policy', 'apply', file, '--dir', home]);
    expect(applied.code, applied.stderr).toBe(0);
    const digest = /sha256:([0-9a-f]{64})/.exec(applied.stdout)?.[1];
    expect(digest, applied.stdout).toBeDefined();
    // The change is in the trail of the member that applied it (the CLI's first endpoint, m1).
    expect(await events(0)).toContainEqual(expect.objectContaining({ action: 'AuditPolicyApply', user: 'root', targets: [`audit-policy:sha256:${digest}`], outcome: 'allowed' }));

    const secret = 'plaintext-value-7c1e';
    // Written through m2 and m3: every member applies the replicated policy.
    expect((await etcdctl(1, ['put', '/app/db-password', secret, '--prev-kv'])).code).toBe(0);
    expect((await etcdctl(2, ['txn'], `value("/app/db-password") = "${secret}"\n\nput /app/other ${secret}-2\n\n\n`)).code).toBe(0);
    expect((await etcdctl(1, ['get', '/app/db-password', '--limit', '5'])).stdout).toContain(secret);
    const hmac = await rampart(['audit', 'hmac', secret, '--dir', home]);
    expect(hmac.code, hmac.stderr).toBe(0);
    const mac = hmac.stdout.trim();
    expect(mac).toMatch(/^hmac-sha256:[0-9a-f]{64}$/);

    const put = (await eventually(1, (event) => event.action === 'Range' && event.targets?.[0] === '/app/db-password')).find((event) => event.action === 'Put' && event.targets?.[0] === '/app/db-password');
    expect(put?.request).toEqual(['prev_kv', `value=${mac}`]);
    // m2 applied the entry it did not handle: its trail names the new policy before the events it selected.
    const m2 = await events(1);
    const namedAt = m2.findIndex((event) => event.action === 'audit.policy' && event.targets?.[0] === `audit-policy:sha256:${digest}`);
    expect(namedAt).toBeGreaterThan(0);
    expect(namedAt).toBeLessThan(m2.findIndex((event) => event.action === 'Put' && event.targets?.[0] === '/app/db-password'));
    const range = m2.find((event) => event.action === 'Range' && event.targets?.[0] === '/app/db-password');
    expect(range?.request).toEqual(['limit=5']);
    const txn = (await events(2)).find((event) => event.action === 'Txn');
    expect(txn?.request).toEqual([`compare=/app/db-password VALUE = ${mac}`, 'success.put=/app/other', expect.stringMatching(/^success\.value=hmac-sha256:[0-9a-f]{64}$/)]);

    // No audit file of any member holds the value, and every trail still verifies.
    for (const member of [0, 1, 2]) {
      for (const name of await readdir(trailOf(member))) expect((await readFile(path.join(trailOf(member), name))).includes(Buffer.from(secret))).toBe(false);
      const verified = await rampart(['audit', 'verify', trailOf(member)]);
      expect(verified.stdout, verified.stderr).toMatch(/^audit trail intact/);
    }
  }, 60_000);
});
