import { readFileSync } from 'node:fs';
import { appendFile, open, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { gunzipSync } from 'node:zlib';
import { describe, expect, it } from 'vitest';
import { createHash } from 'node:crypto';
import { auditFieldCharactersMax, auditKey, auditLineBytesMax, auditTargetsCharactersMax, chainFields, chainedEvent, eventLine, genesisHash, hashEvent, parseEventLine, type AuditEvent, type AuditFields } from '../../src/audit/event.js';
import { AuditLog, describeAuditWriteError } from '../../src/audit/log.js';
import { readRecords, recordBytesMax } from '../../src/audit/records.js';
import { readAudit, verifyAudit, type TrailCheckpoint } from '../../src/audit/verify.js';
import { csvCell } from '../../src/audit/csv.js';
import { targetsOf } from '../../src/api/audit-events.js';
import { CheckpointSigningKey, checkSignatures, checkpointBucketMs, decodeCheckpoint, encodeCheckpoint } from '../../src/audit/checkpoint.js';
import { AuditCheckpoints } from '../../src/server/audit-checkpoints.js';
import type { BatchOperation } from '../../src/storage/mvcc/store.js';
import { auditDirectories } from '../helpers/audit-directories.js';

describe('audit trail', () => {
  const { newDirectory, fail } = auditDirectories('audit');
  const eventsOf = async (directory: string): Promise<AuditEvent[]> => {
    const events: AuditEvent[] = [];
    await readAudit(directory, (event) => events.push(event));
    return events;
  };

  async function trail(runs = 2): Promise<{ directory: string; files: string[] }> {
    const directory = await newDirectory();
    for (let run = 0; run < runs; run++) {
      const log = await AuditLog.open(directory, 'abc', fail);
      await log.record({ action: 'Put', user: 'alice', via: 'certificate', targets: ['/app/1'], outcome: 'allowed', code: 'OK' });
      await log.record({ action: 'Put', user: 'alice', via: 'certificate', targets: ['/other'], outcome: 'denied', code: 'PERMISSION_DENIED', detail: 'etcdserver: permission denied' });
      await log.close();
    }
    // Closed files are compressed in the background; these tests edit them as text, so undo that.
    for (const name of await readdir(directory)) {
      if (!name.endsWith('.gz')) continue;
      await writeFile(path.join(directory, name.slice(0, -3)), gunzipSync(await readFile(path.join(directory, name))), { mode: 0o600 });
      await rm(path.join(directory, name));
    }
    return { directory, files: (await readdir(directory)).sort().map((name) => path.join(directory, name)) };
  }

  it('chains every event, across files, from the genesis hash, and verifies', async () => {
    const { directory, files } = await trail();
    expect(files).toHaveLength(2);
    const result = await verifyAudit(directory);
    expect(result).toMatchObject({ ok: true, events: 6, files: 2, member: 'abc' });
    const events = await eventsOf(directory);
    expect(events.map((event) => [event.seq, event.action, event.outcome])).toEqual([
      [0, 'audit.start', 'allowed'], [1, 'Put', 'allowed'], [2, 'Put', 'denied'],
      [0, 'audit.start', 'allowed'], [1, 'Put', 'allowed'], [2, 'Put', 'denied'],
    ]);
    expect(events[0]?.prev).toBe(genesisHash);
    expect(events[3]?.prev).toBe(events[2]?.hash);
    expect(events[3]?.targets).toEqual([path.basename(files[0] as string)]);
    expect(result.head).toBe(events[5]?.hash);
  });

  it('detects an altered, removed or moved line, a removed file, and a trail whose oldest file was removed', async () => {
    const check = async (change: (lines: string[]) => string[], expected: RegExp): Promise<void> => {
      const { directory, files } = await trail();
      const file = files[0] as string;
      await writeFile(file, `${change((await readFile(file, 'utf8')).trim().split('\n')).join('\n')}\n`);
      const result = await verifyAudit(directory);
      expect(result.ok).toBe(false);
      expect(result.problem).toMatch(expected);
    };
    await check((lines) => lines.map((line, index) => (index === 2 ? line.replace('"denied"', '"allowed"') : line)), /:3: hash does not match/);
    await check((lines) => lines.filter((_line, index) => index !== 1), /:2: does not follow the line before it/);
    await check((lines) => [lines[0] as string, lines[2] as string, lines[1] as string], /:2: does not follow/);
    await check((lines) => [...lines, '{"torn'], /:4: not a JSON event/);
    const { directory, files } = await trail(3);
    await rm(files[1] as string);
    expect((await verifyAudit(directory)).problem).toMatch(/does not continue the previous file/);
    await expect(eventsOf(directory)).rejects.toThrow('the audit trail is broken');
    // Removing the oldest file leaves a chain that links well but does not start at the genesis.
    const second = await trail(2);
    await rm(second.files[0] as string);
    expect((await verifyAudit(second.directory)).problem).toMatch(/does not start at the member's genesis \(its oldest files were removed/);
    // One file on its own is checked without that requirement.
    expect((await verifyAudit(second.files[1] as string)).ok).toBe(true);
  });

  it('accepts only canonical lines: a user spelled with \\u escapes, reordered or extra fields are refused', async () => {
    const { directory, files } = await trail(1);
    const file = files[0] as string;
    const lines = (await readFile(file, 'utf8')).trim().split('\n');
    const original = lines[1] as string;
    expect(original).toContain('"user":"alice"');
    const variants = [
      original.replace('"user":"alice"', '"user":"\\u0061lice"'),
      original.replace('"user":"alice","via":"certificate"', '"via":"certificate","user":"alice"'),
      original.replace('"action":"Put"', '"action":"Put","extra":1'),
      original.replace('{"action"', '{ "action"'),
    ];
    for (const variant of variants) {
      // The same event, so the same hash: only the canonical check can refuse it.
      const parsed = JSON.parse(variant) as AuditEvent;
      if (!variant.includes('extra')) expect(hashEvent({ ...parsed, hash: undefined } as unknown as AuditEvent)).toBeDefined();
      await writeFile(file, `${[lines[0], variant, ...lines.slice(2)].join('\n')}\n`);
      const result = await verifyAudit(directory);
      expect(result.ok, variant).toBe(false);
      expect(result.problem, variant).toMatch(/:2: (not in canonical form|unknown field)/);
    }
    expect(parseEventLine(original)).toMatchObject({ user: 'alice' });
  });

  it('bounds every field: a 1 MB user name, key and detail become a marker with length and hash', async () => {
    const directory = await newDirectory();
    const log = await AuditLog.open(directory, 'abc', fail);
    const huge = 'u'.repeat(1024 * 1024);
    await log.record({ action: 'Authenticate', user: huge, via: 'password', source: huge, targets: [huge, auditKey(Buffer.alloc(1024 * 1024, 0x41))], outcome: 'denied', detail: huge });
    await log.close();
    const events = await eventsOf(directory);
    const event = events[1] as AuditEvent;
    const line = eventLine(event);
    expect(Buffer.byteLength(line)).toBeLessThan(8 * 1024);
    expect(event.user).toMatch(new RegExp(`^u{${auditFieldCharactersMax}}…\\[cut: 1048576 chars sha256:[0-9a-f]{64}\\]$`));
    expect(event.targets?.[1]).toMatch(/^A{512}…\[cut: 1048576 bytes sha256:[0-9a-f]{64}\]$/);
    expect(auditKey(Buffer.from('/registry/pods/a'))).toBe('/registry/pods/a');
    expect(auditKey(Buffer.from([0, 1, 0xff]))).toBe('base64:AAH/');
  });

  it('reads files as streams: an oversized line is reported, never loaded, and a member still starts after it', async () => {
    const { directory, files } = await trail(1);
    const file = files[0] as string;
    // A 6 MB line with no end (as a pre-bounds trail or an attacker could leave it).
    const handle = await open(file, 'a');
    for (let chunk = 0; chunk < 6; chunk++) await handle.write(Buffer.alloc(1024 * 1024, 0x78));
    await handle.close();
    const kinds: string[] = [];
    for await (const record of readRecords(file)) kinds.push(record.kind === 'record' ? 'record' : record.kind === 'damaged' ? record.detail : `${record.kind}:${record.bytes}`);
    expect(kinds).toEqual(['record', 'record', 'record', `torn:${6 * 1024 * 1024}`]);
    await appendFile(file, '\n{"after":1}\n');
    kinds.length = 0;
    for await (const record of readRecords(file)) kinds.push(record.kind === 'record' ? 'record' : record.kind === 'damaged' ? record.detail : `${record.kind}:${record.bytes}`);
    expect(kinds).toEqual(['record', 'record', 'record', `oversized:${6 * 1024 * 1024}`, 'record']);
    expect(recordBytesMax).toBeLessThan(6 * 1024 * 1024);
    expect((await verifyAudit(directory)).problem).toMatch(/:4: a line of 6291456 bytes, longer than any event/);
    // The member opens a new file, linked to "unreadable": verification keeps naming the bad line.
    const next = await AuditLog.open(directory, 'abc', fail);
    await next.close();
    const [, newest] = (await readdir(directory)).sort();
    const start = parseEventLine((await readFile(path.join(directory, newest as string), 'utf8')).trim()) as AuditEvent;
    expect(start.prev).toBe('unreadable');
  });

  it('answers record() once the event is on disk, sharing one write among events recorded together', async () => {
    const directory = await newDirectory();
    const log = await AuditLog.open(directory, 'abc', fail);
    const file = path.join(directory, log.file);
    await Promise.all(Array.from({ length: 200 }, (_unused, index) => log.record({ action: 'Put', targets: [`/k/${index}`], outcome: 'allowed' })));
    const lines = (await readFile(file, 'utf8')).trim().split('\n');
    expect(lines).toHaveLength(201);
    expect(log.head).toEqual({ file: log.file, seq: 200, hash: (JSON.parse(lines[200] as string) as AuditEvent).hash });
    const one = log.record({ action: 'Put', targets: ['/one'], outcome: 'allowed' });
    expect(readFileSync(file, 'utf8').includes('/one')).toBe(false); // not yet: the answer waits for it
    await one;
    expect((await readFile(file, 'utf8')).includes('/one')).toBe(true);
    await log.close();
    await expect(log.record({ action: 'Put', outcome: 'allowed' })).rejects.toThrow('closed');
  });

  it('says how to recover when the audit disk is full', () => {
    const full = Object.assign(new Error('no space left on device'), { code: 'ENOSPC' });
    expect(describeAuditWriteError(full, '/data/audit')).toBe(
      'the audit disk is full (ENOSPC) at /data/audit: this member stops rather than serve unaudited. To recover: verify and archive old audit files ' +
      'elsewhere (rampart audit verify /data/audit), free space on that file system (or move the trail with --audit-dir), then start the member again');
  });

  it('checks a trail against checkpoints: a cut end, a rewritten chain and a deleted file are each caught', async () => {
    const { directory, files } = await trail(2);
    const events = await eventsOf(directory);
    const names = files.map((file) => path.basename(file));
    const checkpoint = (file: number, seq: number): TrailCheckpoint => ({ member: 'abc', file: names[file] as string, seq, hash: events[file * 3 + seq]?.hash as string, time: '2026-01-01T00:00:00.000Z' });
    const all = [checkpoint(0, 2), checkpoint(1, 2)];
    expect(await verifyAudit(directory, { checkpoints: all })).toMatchObject({ ok: true, checkpointsMatched: 2 });
    // Checkpoints of another member are not this trail's.
    expect(await verifyAudit(directory, { checkpoints: [{ ...checkpoint(1, 2), member: 'other', seq: 9 }] })).toMatchObject({ ok: true, checkpointsMatched: 0 });

    const lines = (await readFile(files[1] as string, 'utf8')).trim().split('\n');
    await writeFile(files[1] as string, `${lines.slice(0, 2).join('\n')}\n`);
    expect((await verifyAudit(directory)).ok).toBe(true); // without a witness, a shorter trail looks whole
    expect((await verifyAudit(directory, { checkpoints: all })).problem).toMatch(/ends at event 1, but the checkpoint of .* saw event 2 .*events were removed from its end/);

    // Rewritten with a recomputed chain: every hash checks out, but not against the witness.
    const rewritten: string[] = [];
    let prev = events[2]?.hash as string;
    for (const line of lines) {
      const { hash: _hash, ...rest } = JSON.parse(line) as AuditEvent;
      const changed = { ...rest, prev, ...(rest.outcome === 'denied' ? { outcome: 'allowed' as const } : {}) };
      const hash = hashEvent(changed);
      rewritten.push(eventLine({ ...changed, hash }));
      prev = hash;
    }
    await writeFile(files[1] as string, `${rewritten.join('\n')}\n`);
    expect((await verifyAudit(directory)).ok).toBe(true);
    expect((await verifyAudit(directory, { checkpoints: all })).problem).toMatch(/:3: differs from the checkpoint .*the trail was rewritten/);

    await rm(files[1] as string);
    expect((await verifyAudit(directory)).ok).toBe(true);
    expect((await verifyAudit(directory, { checkpoints: all })).problem).toBe(`${names[1]}: missing, but the checkpoint of 2026-01-01T00:00:00.000Z saw its event 2 (the file was deleted)`);
  });

  it('names every key of a Txn, and always the sensitive ones, however many decoys come first', () => {
    const key = (text: string): Buffer => Buffer.from(text);
    const decoys = Array.from({ length: 300 }, (_unused, index) => ({ key: key(`/decoy/${'d'.repeat(100)}/${index}`), range_end: Buffer.alloc(0) }));
    const txn = {
      compare: decoys,
      success: [{ request: 'request_put', request_put: { key: key('/registry/secrets/db'), value: key('v') } }],
      failure: [{ request: 'request_range', request_range: { key: key('/registry/secrets/'), range_end: key('/registry/secrets0') } }, { request: 'request_range', request_range: { key: key('/a'), range_end: Buffer.of(0) } }],
    };
    const { targets, named } = targetsOf('Txn', txn as unknown as Record<string, unknown>);
    expect(named).toBe(3);
    expect(targets.slice(0, 3)).toEqual(['/registry/secrets/db', '/registry/secrets/../registry/secrets0', '/a..']);
    expect(targets).toHaveLength(303);
    // Bounded in the trail: the sensitive ones first and kept, the rest summarised by count and hash.
    expect(targets.join('').length).toBeGreaterThan(auditTargetsCharactersMax);
  });

  it('keeps sensitive targets and summarises the rest within the line bound', async () => {
    const directory = await newDirectory();
    const log = await AuditLog.open(directory, 'abc', fail);
    const targets = ['/registry/secrets/a', ...Array.from({ length: 500 }, (_unused, index) => `/decoy/${'d'.repeat(100)}/${index}`)];
    await log.record({ action: 'Txn', targets, outcome: 'allowed' }, 1);
    await log.close();
    const event = (await eventsOf(directory))[1] as AuditEvent;
    expect(event.targets?.[0]).toBe('/registry/secrets/a');
    expect(event.targets?.[event.targets.length - 1]).toMatch(/^…\[\d+ more targets sha256:[0-9a-f]{64}\]$/);
    expect(Buffer.byteLength(eventLine(event))).toBeLessThan(auditLineBytesMax);
  });

  it('spells lines and hashes exactly as the generic JSON.stringify spelling did (the writer builds them by hand)', () => {
    // The spelling before: any difference would break every trail written since (hashes) or canonical form.
    const fieldOrder = ['action', 'user', 'via', 'source', 'targets', 'outcome', 'code', 'detail', 'request', 'seq', 'time', 'member', 'prev', 'hash'];
    const referenceHash = (event: Record<string, unknown>): string => {
      const { prev, ...rest } = event;
      return createHash('sha256').update(prev as string).update('\n').update(JSON.stringify(rest, Object.keys(rest).sort())).digest('hex');
    };
    const referenceLine = (event: Record<string, unknown>): string => {
      const ordered: Record<string, unknown> = {};
      for (const name of fieldOrder) if (event[name] !== undefined) ordered[name] = event[name];
      return JSON.stringify(ordered);
    };
    const texts = ['', 'alice', '/app/1', 'quote " back \\ slash', 'ctl \u0000\u001f\n\t\u007f', 'é ü 日本 😀', 'lone \ud800 surrogate', '\u2028\u2029', 'base64:AAEC'];
    const events: Record<string, unknown>[] = [
      { action: 'Put', outcome: 'allowed', seq: 0, time: '2026-11-27T00:00:00.000Z', member: 'm', prev: genesisHash },
      { action: 'Put', user: 'root', via: 'certificate', source: '127.0.0.1:1', targets: [], outcome: 'denied', code: 'PERMISSION_DENIED', detail: 'd', request: [], seq: 7, time: 't', member: 'm', prev: 'p' },
      { action: 'Txn', user: undefined, targets: ['a', 'b'], outcome: 'failed', request: ['key=a', 'value=hmac-sha256:00'], seq: 2 ** 40, time: 't', member: 'm', prev: 'x' },
    ];
    for (const [index, text] of texts.entries()) {
      events.push({ action: text, user: text, via: text, source: text, targets: [text, text], outcome: 'allowed', code: text, detail: text, request: [text], seq: index, time: text, member: text, prev: text });
    }
    for (const event of events) {
      const hash = referenceHash(event);
      expect(hashEvent(event as unknown as AuditEvent)).toBe(hash);
      expect(eventLine({ ...event, hash } as unknown as AuditEvent)).toBe(referenceLine({ ...event, hash }));
      expect(chainedEvent(event as unknown as AuditEvent)).toEqual({ hash, line: referenceLine({ ...event, hash }) });
      const { seq, time, member, prev, ...fields } = event;
      expect(chainFields(fields as unknown as AuditFields, seq as number, time as string, member as string, prev as string)).toEqual({ hash, line: referenceLine({ ...event, hash }) });
    }
    // Shapes no writer produces still hash and spell as before (the general path): an unknown field, a nested object.
    for (const odd of [{ ...events[1], extra: 'x' }, { ...events[1], targets: [{ b: 1, action: 'x' }] }, { ...events[1], hash: 'h' }]) {
      expect(hashEvent(odd as unknown as AuditEvent)).toBe(referenceHash(odd));
      expect(eventLine(odd as unknown as AuditEvent)).toBe(referenceLine(odd));
    }
    // A target that is no text (no writer makes one) takes the general path in chainFields too.
    const { seq, time, member, prev, ...nested } = { ...events[1], targets: [{ b: 1, action: 'x' }] } as Record<string, unknown>;
    const nestedHash = referenceHash({ ...nested, seq, time, member, prev });
    expect(chainFields(nested as unknown as AuditFields, seq as number, time as string, member as string, prev as string)).toEqual({ hash: nestedHash, line: referenceLine({ ...nested, seq, time, member, prev, hash: nestedHash }) });
  });

  it('writes CSV cells no spreadsheet runs as formulas', () => {
    for (const value of ['=1+1', '+1', '-1', '@SUM(A1)', '\t=1', '\r=1', ' =1', '|calc', 'a|b']) expect(csvCell(value).replace(/^"/, '')).toMatch(/^'/);
    expect(csvCell('/registry/pods/a')).toBe('/registry/pods/a');
    expect(csvCell('a,b')).toBe('"a,b"');
    expect(csvCell(['/a', '/b'])).toBe('/a /b');
  });
});

describe('audit checkpoints in the replicated state', () => {
  const checkpoint = (seq: number, time = '2026-01-01T00:00:00.000Z', file = 'audit-2026-01-01T00-00-00-000Z.jsonl'): string =>
    encodeCheckpoint({ member: 'a1', file, seq, hash: seq.toString(16).padStart(64, '0'), time });

  it('keeps the latest per file (growing only) and the first of each window, never replaced', () => {
    const kept = new AuditCheckpoints();
    const apply = (encoded: string): string[] => {
      const batch: BatchOperation[] = [];
      kept.apply(encoded, batch);
      return batch.map((operation) => operation.key.subarray(1).toString('utf8').split('\0')[2] as string);
    };
    const window = String(Math.floor(Date.parse('2026-01-01T00:00:00.000Z') / checkpointBucketMs)).padStart(12, '0');
    expect(apply(checkpoint(5))).toEqual(['latest', window]);
    expect(apply(checkpoint(9, '2026-01-01T00:01:00.000Z'))).toEqual(['latest']); // same window: its first stays
    expect(apply(checkpoint(7, '2026-01-01T00:02:00.000Z'))).toEqual([]); // backwards: ignored
    expect(apply(checkpoint(12, '2026-01-01T00:11:00.000Z'))).toHaveLength(2); // a new window
    // Rebuilt from its records (a restart, a snapshot), it decides the same.
    const reloaded = new AuditCheckpoints();
    reloaded.load(Buffer.from(`ca1\0audit-2026-01-01T00-00-00-000Z.jsonl\0latest`), Buffer.from(checkpoint(12)));
    const batch: BatchOperation[] = [];
    reloaded.apply(checkpoint(11, '2026-01-01T00:21:00.000Z'), batch);
    expect(batch.map((operation) => operation.key.toString('utf8').split('\0')[2])).not.toContain('latest');
  });

  it('refuses what is not a canonical checkpoint', () => {
    const kept = new AuditCheckpoints();
    for (const bad of ['{}', 'x', checkpoint(1).replace('"seq":1', '"seq":-1'), checkpoint(1).replace('"member":"a1"', '"member":"A1"'), checkpoint(1).replace('audit-', '../'), ` ${checkpoint(1)}`]) {
      expect(() => kept.apply(bad, []), bad).toThrow(/audit checkpoint/);
      expect(typeof decodeCheckpoint(bad)).toBe('string');
    }
  });
});

describe('signed audit checkpoints', () => {
  it('verify only under a CA-issued audit certificate: unsigned, altered, foreign-CA and non-audit signers are refused', async () => {
    const { createAuthority, issueCertificate } = await import('../../src/pki/authority.js');
    const authority = await createAuthority('test-ca');
    const audit = await issueCertificate(authority, { kind: 'audit', commonName: 'm1' });
    const key = new CheckpointSigningKey(audit.certificatePem, audit.keyPem);
    const base = { member: 'a1', file: 'audit-2026-01-01T00-00-00-000Z.jsonl', seq: 3, hash: 'ab'.repeat(32), time: new Date().toISOString() };
    const signed = key.sign(base);
    const signers = [{ member: 'a1', certificate: audit.certificatePem }];
    expect(checkSignatures([signed], signers, authority.certificatePem, 'a1')).toBeUndefined();
    // What a forger changes in an export: the hash. The signature no longer verifies.
    expect(checkSignatures([{ ...signed, hash: 'cd'.repeat(32) }], signers, authority.certificatePem, 'a1')).toMatch(/signature that does not verify \(forged or altered\)/);
    expect(checkSignatures([base], signers, authority.certificatePem, 'a1')).toMatch(/is not signed/);
    expect(checkSignatures([signed], [], authority.certificatePem, 'a1')).toMatch(/names a signing certificate the cluster does not hold/);
    const otherAuthority = await createAuthority('other-ca');
    expect(checkSignatures([signed], signers, otherAuthority.certificatePem, 'a1')).toMatch(/was not issued by this CA/);
    const peer = await issueCertificate(authority, { kind: 'peer', commonName: 'm1' });
    const peerKey = new CheckpointSigningKey(peer.certificatePem, peer.keyPem);
    expect(checkSignatures([peerKey.sign(base)], [{ member: 'a1', certificate: peer.certificatePem }], authority.certificatePem, 'a1')).toMatch(/not an audit certificate/);
    // A key that is not the certificate's is refused when the member starts.
    expect(() => new CheckpointSigningKey(audit.certificatePem, peer.keyPem)).toThrow('does not belong to its certificate');
    // The certificate travels with a checkpoint once and must be the signer's.
    const kept = new AuditCheckpoints();
    const batch: BatchOperation[] = [];
    kept.apply(encodeCheckpoint({ ...signed, certificate: audit.certificatePem }), batch);
    expect(batch).toHaveLength(3); // the signer record, latest, and the window's first
    expect(() => kept.apply(encodeCheckpoint({ ...signed, seq: 4, certificate: peer.certificatePem }), [])).toThrow('the certificate is not the signer');
  });
});
