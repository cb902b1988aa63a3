/**
 * The evidence bundle's parts: the strict ustar archive (GNU tar lists what the writer makes; the
 * reader refuses appended, truncated or altered bytes), the signed manifest (one byte changed
 * anywhere in a bundle — every byte is tried — is refused; a bundle re-signed under another CA is
 * refused against the real one), the AU-3 CSV rows and the HTML summary's escaping.
 */
import { execFileSync } from 'node:child_process';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CheckpointSigningKey, encodeCheckpoint, encodeSigner } from '../../src/audit/checkpoint.js';
import { eventLine, genesisHash, hashEvent, type AuditEvent, type AuditFields } from '../../src/audit/event.js';
import { createAuthority, issueCertificate, type KeyPairPem } from '../../src/pki/authority.js';
import { verifyBundle } from '../../src/compliance/bundle-verify.js';
import { writeBundle, type BundleFile } from '../../src/compliance/bundle-write.js';
import { EvidenceSummary, evidenceCsvRow } from '../../src/compliance/evidence-events.js';
import { renderSummary } from '../../src/compliance/summary-html.js';
import { TarReader, TarWriter, tarBlockBytes } from '../../src/compliance/tar.js';

let directory: string;
let authority: KeyPairPem;
let signing: KeyPairPem;

beforeAll(async () => {
  directory = await mkdtemp(path.join(tmpdir(), 'rampart-bundle-'));
  authority = await createAuthority('bundle root CA');
  signing = await issueCertificate(authority, { kind: 'audit', commonName: 'compliance-signing' });
});

afterAll(async () => {
  await rm(directory, { recursive: true, force: true });
});

function chain(fields: AuditFields[], member = 'a1'): AuditEvent[] {
  let prev = genesisHash;
  return fields.map((entry, seq) => {
    const base = { ...entry, seq, time: `2026-11-2${seq % 3}T10:00:0${seq}.000Z`, member, prev };
    const event = { ...base, hash: hashEvent(base) };
    prev = event.hash;
    return event;
  });
}

describe('ustar archive', () => {
  it('is read back whole, listed by GNU tar, and refused when anything is appended, cut or altered', async () => {
    const file = path.join(directory, 'plain.tar');
    const writer = await TarWriter.create(file, new Date('2026-11-26T00:00:00Z'));
    await writer.addBuffer('empty', '');
    await writer.addBuffer('dir/exact', Buffer.alloc(tarBlockBytes, 0x61));
    await writer.addBuffer('dir/odd.txt', 'odd length\n');
    await writer.finish();
    expect(execFileSync('tar', ['-tf', file], { encoding: 'utf8' })).toBe('empty\ndir/exact\ndir/odd.txt\n');
    const reader = await TarReader.open(file);
    expect(reader.entries.map((entry) => [entry.name, entry.size])).toEqual([['empty', 0], ['dir/exact', 512], ['dir/odd.txt', 11]]);
    expect(await reader.text(reader.entry('dir/odd.txt') ?? reader.entries[0]!, 100)).toBe('odd length\n');
    await reader.close();

    const bytes = await readFile(file);
    const attempt = async (altered: Buffer): Promise<string> => {
      const target = path.join(directory, 'altered.tar');
      await writeFile(target, altered);
      return TarReader.open(target).then(async (opened) => {
        await opened.close();
        return 'accepted';
      }, (error: Error) => error.message);
    };
    expect(await attempt(Buffer.concat([bytes, Buffer.of(0)]))).toMatch(/after the end of the archive/);
    expect(await attempt(bytes.subarray(0, bytes.length - 1))).toMatch(/truncated/);
    const padded = Buffer.from(bytes);
    padded[4 * tarBlockBytes + 11] = 0x20; // the padding after dir/odd.txt (headers: blocks 0, 1, 3)
    expect(await attempt(padded)).toMatch(/padding after dir\/odd\.txt is altered/);
    const header = Buffer.from(bytes);
    header[tarBlockBytes * 1 + 140] = (header[tarBlockBytes * 1 + 140] ?? 0) ^ 0x01; // mtime of dir/exact
    expect(await attempt(header)).toMatch(/header of entry 2 \("dir\/exact"\) is altered/);
    await expect(TarWriter.create(file, new Date())).rejects.toThrow(/EEXIST/);
    const unsafe = await TarWriter.create(path.join(directory, 'unsafe.tar'), new Date());
    await expect(unsafe.addBuffer('../escape', 'x')).rejects.toThrow(/not allowed/);
    await unsafe.abandon();
  });
});

describe('evidence bundle', () => {
  const events = chain([
    { action: 'audit.start', targets: [], outcome: 'allowed' },
    { action: 'Put', user: 'root', via: 'certificate', source: '127.0.0.1:5', targets: ['/k'], outcome: 'allowed', code: 'OK' },
    { action: 'Authenticate', user: 'mallory', via: 'password', source: '127.0.0.1:6', outcome: 'denied', code: 'INVALID_ARGUMENT', detail: 'authentication failed' },
  ]);
  const files = async (): Promise<BundleFile[]> => {
    const member = await issueCertificate(authority, { kind: 'audit', commonName: 'm1' });
    const key = new CheckpointSigningKey(member.certificatePem, member.keyPem);
    const last = events.at(-1) as AuditEvent;
    const checkpoint = key.sign({ member: 'a1', file: 'audit-1.jsonl', seq: last.seq, hash: last.hash, time: new Date().toISOString() });
    return [
      { path: 'ca.crt', content: authority.certificatePem },
      { path: 'audit/events.jsonl', content: events.map((event) => `${eventLine(event)}\n`).join('') },
      { path: 'audit/checkpoints.jsonl', content: `${encodeCheckpoint(checkpoint)}\n${encodeSigner({ member: 'a1', certificate: member.certificatePem })}\n` },
    ];
  };
  const window = { from: '2026-11-01T00:00:00.000Z', to: '2026-12-01T00:00:00.000Z' };

  it('verifies under the CA the auditor holds, and refuses a byte changed anywhere in it', async () => {
    const out = path.join(directory, 'evidence.tar');
    await writeBundle({ out, created: new Date(), window, caPem: authority.certificatePem, signing, files: await files() });
    const verified = await verifyBundle(out, { caPem: authority.certificatePem });
    expect(verified).toMatchObject({ ok: true, pinned: true, files: 5, events: 3 });
    // Against the CA inside the bundle only: intact but not authenticated, unless its fingerprint is pinned.
    const unpinned = await verifyBundle(out, {});
    expect(unpinned).toMatchObject({ ok: true, pinned: false });
    expect(await verifyBundle(out, { caFingerprint: (unpinned.caFingerprint ?? '').replace(/:/g, '').toLowerCase() })).toMatchObject({ ok: true, pinned: true });
    expect((await verifyBundle(out, { caFingerprint: 'AB'.repeat(32) })).problem).toMatch(/not the ABAB/);

    const original = await readFile(out);
    const problems = new Set<string>();
    // Every byte, 8 at a time (each its own file).
    const parallel = 8;
    for (let start = 0; start < original.length; start += parallel) {
      await Promise.all(Array.from({ length: Math.min(parallel, original.length - start) }, async (_, lane) => {
        const offset = start + lane;
        const copy = Buffer.from(original);
        copy[offset] = (copy[offset] ?? 0) ^ 0x01;
        const altered = path.join(directory, `altered-${lane}.tar`);
        await writeFile(altered, copy);
        const result = await verifyBundle(altered, { caPem: authority.certificatePem });
        if (result.ok) throw new Error(`a changed byte at offset ${offset} of ${original.length} was accepted`);
        problems.add((result.problem ?? '').replace(/entry \d+ \("[^"]*"\)/, 'entry N'));
      }));
    }
    // Each refusal names what failed: the manifest, its signature, a file, a header, padding, the end.
    const named = [...problems].join('\n');
    for (const expected of [/manifest\.json/, /manifest\.sig/, /audit\/events\.jsonl: its SHA-256 does not match/, /ca\.crt/, /header of entry N is altered/, /padding after/, /end-of-archive/]) expect(named).toMatch(expected);
  }, 120_000);

  it('refuses a bundle re-made and re-signed under another CA, checked against the real one', async () => {
    const forger = await createAuthority('forged root CA');
    const forgedSigning = await issueCertificate(forger, { kind: 'audit', commonName: 'compliance-signing' });
    const out = path.join(directory, 'forged.tar');
    const forged = (await files()).filter((file) => file.path !== 'audit/checkpoints.jsonl').map((file) => (file.path === 'ca.crt' ? { path: 'ca.crt', content: forger.certificatePem } : file));
    await writeBundle({ out, created: new Date(), window, caPem: forger.certificatePem, signing: forgedSigning, files: forged });
    expect(await verifyBundle(out, {})).toMatchObject({ ok: true, pinned: false });
    expect((await verifyBundle(out, { caPem: authority.certificatePem })).problem).toMatch(/the manifest was made for the CA .*, not /);
    // A client (not signing) certificate of the real CA cannot sign evidence.
    const client = await issueCertificate(authority, { kind: 'client', commonName: 'root' });
    await expect(writeBundle({ out: path.join(directory, 'client-signed.tar'), created: new Date(), window, caPem: authority.certificatePem, signing: client, files: await files() })).rejects.toThrow(/not a signing \(audit\) certificate/);
  });
});

describe('evidence formats', () => {
  const hostile = chain([
    { action: 'audit.start', targets: [], outcome: 'allowed' },
    { action: 'UserAdd', user: '<script>alert(1)</script>', via: 'certificate', source: '"><img src=x onerror=alert(1)>', targets: ['</svg><script>x</script>', "=HYPERLINK(\"http://evil\")"], outcome: 'allowed', code: 'OK' },
    { action: 'Range', user: '=cmd|/c calc', source: '127.0.0.1:1', targets: ['/a'], outcome: 'denied', code: 'PERMISSION_DENIED', detail: "<b onmouseover='x'>" },
    { action: 'Authenticate', user: "o'brien&co", via: 'password', source: '127.0.0.1:2', outcome: 'denied', detail: 'authentication failed' },
  ]);

  it('writes the AU-3 fields as formula-safe CSV cells', () => {
    expect(evidenceCsvRow(hostile[2] as AuditEvent)).toMatch(/^2026-11-22T10:00:02\.000Z,'=cmd\|\/c calc,,Range,failure,denied,PERMISSION_DENIED,127\.0\.0\.1:1,a1,\/a,<b onmouseover='x'>|/);
    expect(evidenceCsvRow(hostile[2] as AuditEvent).split(',')[1]).toBe('"\'=cmd|/c calc"');
  });

  it('escapes every string from events in the HTML summary, which loads nothing', () => {
    const summary = new EvidenceSummary();
    for (const event of hostile) summary.add(event);
    expect([summary.total, summary.deniedTotal, summary.administrativeTotal, summary.failedLoginTotal]).toEqual([4, 2, 1, 1]);
    const html = renderSummary({
      created: '2026-11-26T00:00:00.000Z', window: { from: '2026-11-01', to: '2026-12-01' }, caFingerprint: 'AA:BB',
      controls: [{ id: 'RAMPART-AUTH', title: 'Auth <on>', status: 'fail', evidence: ['<script>evidence</script>'], fix: 'x' }],
      trails: [{ member: '<m1>', memberId: 'a1', events: 4, inWindow: 4, checkpointsMatched: 1 }],
      summary,
    });
    expect(html).not.toMatch(/<script|<img|<b |onmouseover='|<\/svg><script/i);
    expect(html).toContain('&lt;script&gt;alert(1)&lt;/script&gt;');
    expect(html).toContain('&quot;&gt;&lt;img src=x onerror=alert(1)&gt;');
    expect(html).toContain('o&#39;brien&amp;co');
    expect(html).toContain('&lt;m1&gt;');
    // No external resource of any kind; the only URL is SVG's namespace name.
    expect((html.match(/https?:\/\/[^\s"<&]*/g) ?? []).filter((url) => url !== 'http://www.w3.org/2000/svg' && url !== 'http://evil')).toEqual([]);
    expect(html).not.toMatch(/<[a-z]+[^>]*\s(src|href)=|url\(|@import/i);
    expect(html).toContain(`content="default-src 'none'; style-src 'unsafe-inline'"`);
    expect(html).toMatch(/<svg [^>]*aria-label="events per day">/);
  });
});
