/**
 * A member's audit files, offline, on a real member that rotates its (sealed) trail every few
 * events and keeps closed files 8 seconds (`--audit-retention 8s`: the flag takes seconds, so the
 * retention really passes, no clock or mtime is faked):
 *   - `rampart audit tail PATH` prints the last events from the files, opening sealed ones with the
 *     member's KEK, and `--follow` prints new ones as the member writes them, across rotations;
 *   - retention deletes the expired rotated files after recording so, `rampart audit verify`
 *     against the cluster's checkpoints still passes (the chain starts at the retained, witnessed
 *     boundary), and a file deleted before its time (one just closed, no record of it) is caught.
 */
import { spawn } from 'node:child_process';
import { readdir, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { AuditEvent } from '../../src/audit/event.js';
import { auditRetentionControl } from '../../src/compliance/audit-retention-control.js';
import { observed } from '../../src/compliance/control.js';
import { parseMetrics } from '../../src/compliance/metrics-text.js';
import { call, type RawClient } from '../helpers/client.js';
import { cleanEnvironment, rampartBin, run } from '../helpers/processes.js';
import { startTlsMember, type TlsMember } from '../helpers/tls-member.js';

const retentionMs = 8000;

describe('a member\'s audit files offline: tail and retention', () => {
  let member: TlsMember;
  let client: RawClient;
  const trail = (): string => path.join(member.directory, 'data', 'audit');
  const kek = (): string[] => ['--encryption-key-file', path.join(member.directory, 'a', 'encryption.key')];
  const rampart = (args: string[]) => run(process.execPath, [rampartBin, ...args], { timeoutMs: 60_000 });
  const cluster = (): string[] => member.adminFlags.filter((flag) => !flag.startsWith('--dial') && !flag.startsWith('--command'));
  const put = async (key: string): Promise<void> => {
    await call(client.kv, 'Put', { key: Buffer.from(key), value: Buffer.from('v') });
  };
  const trailNames = async (): Promise<string[]> => (await readdir(trail())).filter((name) => name.startsWith('audit-')).map((name) => name.replace(/\.gz$/, '')).sort();
  const exported = async (): Promise<AuditEvent[]> => {
    const result = await rampart(['audit', 'export', trail(), ...kek()]);
    expect(result.code, result.stderr).toBe(0);
    return result.stdout.split('\n').filter((line) => line !== '').map((line) => JSON.parse(line) as AuditEvent);
  };

  beforeAll(async () => {
    member = await startTlsMember(['--audit-max-file-bytes', '1500', '--audit-retention', `${retentionMs / 1000}s`, '--audit-anchor-interval-ms', '300']);
    client = await member.client('root');
  }, 60_000);

  afterAll(async () => {
    client?.close();
    await member?.stop();
  }, 120_000);

  it('tails the sealed trail offline: the last events, then new ones as they are written, across rotations', async () => {
    for (let index = 0; index < 12; index++) await put(`/tail/before-${index}`);
    const all = await exported();
    expect((await trailNames()).length).toBeGreaterThan(2);
    const last = await rampart(['audit', 'tail', trail(), '-n', '5', ...kek()]);
    expect(last.code, last.stderr).toBe(0);
    const lines = last.stdout.split('\n').filter((line) => line !== '');
    // The same events, byte for byte, as the verified export's last five (the newest files may span two).
    expect(lines.map((line) => (JSON.parse(line) as AuditEvent).hash)).toEqual(all.slice(-5).map((event) => event.hash));
    // One file: its own events only.
    const [oldest] = await trailNames();
    const ofFile = await rampart(['audit', 'tail', path.join(trail(), oldest as string), '-n', '1000', ...kek()]);
    expect(ofFile.code, ofFile.stderr).toBe(0);
    expect(ofFile.stdout.split('\n').filter((line) => line !== '').map((line) => (JSON.parse(line) as AuditEvent).seq)[0]).toBe(0);
    // Without the KEK a sealed trail says what it needs.
    const withoutKey = await rampart(['audit', 'tail', trail()]);
    expect(withoutKey.code).toBe(1);
    expect(withoutKey.stderr).toMatch(/is sealed .*--encryption-key-file/);

    // --follow: every put made after it started shows up, across the rotations they cause.
    const follower = spawn(process.execPath, [rampartBin, 'audit', 'tail', trail(), '-n', '0', '--follow', ...kek()], { env: cleanEnvironment(), stdio: ['ignore', 'pipe', 'pipe'] });
    let followed = '';
    let note = '';
    follower.stdout.on('data', (chunk: Buffer) => (followed += chunk.toString()));
    follower.stderr.on('data', (chunk: Buffer) => (note += chunk.toString()));
    try {
      // It says where it follows from once it has read the files: writes after that are shown.
      for (let attempt = 0; attempt < 100 && !note.includes('rampart: following '); attempt++) await new Promise((resolve) => setTimeout(resolve, 100));
      expect(note).toMatch(/^rampart: following .* from audit-.*\.jsonl event \d+ \(interrupt to stop\)$/m);
      // A new file shows the rotation (counting files would not: retention may delete old ones meanwhile).
      const namesBefore = await trailNames();
      for (let index = 0; index < 12; index++) await put(`/tail/followed-${index}`);
      expect((await trailNames()).filter((name) => !namesBefore.includes(name)).length).toBeGreaterThan(0);
      for (let attempt = 0; attempt < 40 && !followed.includes('/tail/followed-11'); attempt++) await new Promise((resolve) => setTimeout(resolve, 250));
      const seen = followed.split('\n').filter((line) => line !== '').map((line) => JSON.parse(line) as AuditEvent);
      const keys = seen.filter((event) => event.action === 'Put').map((event) => event.targets?.[0]);
      expect(keys).toEqual(Array.from({ length: 12 }, (_, index) => `/tail/followed-${index}`));
      // The rotations' audit.start events came through too, each once, in chain order.
      expect(seen.filter((event) => event.action === 'audit.start').length).toBeGreaterThan(0);
      for (const [index, event] of seen.entries()) if (index > 0) expect(event.prev).toBe(seen[index - 1]?.hash);
    } finally {
      follower.kill('SIGTERM');
    }
  }, 90_000);

  it('a retention below a year is allowed but never quiet: the member warns, reports it, and the compliance control fails on it', async () => {
    expect(member.output()).toContain("audit files are deleted 8 s after they close (--audit-retention), less than PCI DSS 10.5.1's 365 days");
    const metricsText = await (await fetch(`http://127.0.0.1:${member.metricsPort}/metrics`)).text();
    const facts = parseMetrics(metricsText);
    expect(facts.auditRetentionSeconds).toBe(retentionMs / 1000);
    const control = auditRetentionControl(observed([{ name: 'm1', id: '1', clientUrls: [], peerUrls: [], metrics: observed(facts) }]));
    expect(control).toMatchObject({ id: 'RAMPART-AUDIT-RETENTION', status: 'fail', evidence: ['m1 metrics: rampart_audit_retention_seconds 8: closed audit files are deleted after 8 s, LESS than 365 days'] });
  });

  it('deletes expired rotated files after recording so; verify passes against the checkpoints and catches a file deleted early', async () => {
    const before = await trailNames();
    // Let every file closed so far pass its retention, then rotate again: the member deletes them.
    await new Promise((resolve) => setTimeout(resolve, retentionMs + 500));
    for (let index = 0; index < 12; index++) await put(`/retention/${index}`);
    let after = await trailNames();
    for (let attempt = 0; attempt < 40 && before.every((name) => after.includes(name)); attempt++) {
      await new Promise((resolve) => setTimeout(resolve, 250));
      after = await trailNames();
    }
    const deleted = before.filter((name) => !after.includes(name));
    expect(deleted.length).toBeGreaterThan(0);
    expect(deleted).toContain(before[0]);
    const retention = (await exported()).filter((event) => event.action === 'audit.retention');
    expect(retention.length).toBeGreaterThan(0);
    // The record names the oldest file kept, then every file deleted.
    const named = retention.flatMap((event) => event.targets?.slice(1) ?? []);
    for (const name of deleted) expect(named).toContain(name);
    // The rotations of those puts may still be deleting in the background (seen under load: a later
    // record, read seconds after `after`, kept a newer file): the last record names the oldest file
    // once the trail is quiet.
    let oldestKept = retention[retention.length - 1]?.targets?.[0];
    let oldestPresent = after[0];
    for (let attempt = 0; attempt < 40 && oldestKept !== oldestPresent; attempt++) {
      await new Promise((resolve) => setTimeout(resolve, 250));
      oldestPresent = (await trailNames())[0];
      const records = (await exported()).filter((event) => event.action === 'audit.retention');
      oldestKept = records[records.length - 1]?.targets?.[0];
    }
    expect(oldestKept).toBe(oldestPresent);

    // The chain starts at the retained boundary: intact against the cluster's checkpoints (saved, as
    // an auditor keeps them) once one witnessed the record. (This member has no audit signing key:
    // the checkpoints are unsigned, so they are checked without --cacert.)
    const checkpoints = path.join(member.directory, 'checkpoints.jsonl');
    const verify = async (): Promise<{ code: number; stdout: string; stderr: string }> => {
      const saved = await rampart(['audit', 'checkpoints', ...cluster()]);
      expect(saved.code, saved.stderr).toBe(0);
      await writeFile(checkpoints, saved.stdout);
      return rampart(['audit', 'verify', trail(), ...kek(), '--checkpoints', checkpoints]);
    };
    let verified = await verify();
    for (let attempt = 0; attempt < 20 && verified.code !== 0; attempt++) {
      await new Promise((resolve) => setTimeout(resolve, 500));
      verified = await verify();
    }
    expect(verified.code, verified.stderr).toBe(0);
    expect(verified.stdout).toMatch(/^audit trail intact: \d+ events in \d+ files; head [0-9a-f]{64}; [1-9]\d* checkpoints matched$/m);

    // A file deleted before its time: the newest closed file, which no retention record let go,
    // right after the trail verified, with no request since (one would be audited and could rotate;
    // `audit export` reads the files offline). The same saved checkpoints now catch the deletion.
    const names = await trailNames();
    const justClosed = names[names.length - 2] as string;
    const released = (await exported()).filter((event) => event.action === 'audit.retention').flatMap((event) => event.targets?.slice(1) ?? []);
    expect(released).not.toContain(justClosed);
    for (const name of [justClosed, `${justClosed}.gz`]) await rm(path.join(trail(), name), { force: true });
    expect(await trailNames()).not.toContain(justClosed);
    const broken = await rampart(['audit', 'verify', trail(), ...kek(), '--checkpoints', checkpoints]);
    expect(broken.code).toBe(1);
    // In the middle of the kept files, or the oldest kept one (the retention record kept it): either way named.
    expect(broken.stderr).toMatch(/^rampart: audit trail broken: .*: (begins after .*\(a file was removed or renamed\)|does not continue the previous file \(a file was removed or altered\)|the trail does not start at the member's genesis .*the last retention record .* kept audit-.* onwards)$/m);
  }, 90_000);
});
