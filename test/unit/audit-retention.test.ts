/**
 * The audit trail at rest: sealed files (tamper, truncation, reorder, wrong key), rotation by size,
 * background compression, retention deletion that verify accepts at a recorded, witnessed
 * boundary, and the trail key across a KEK rotation.
 */
import { cp, open, readFile, readdir, rm, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import type { AuditEvent } from '../../src/audit/event.js';
import { readEventsAfter } from '../../src/audit/cursor.js';
import { AuditLog } from '../../src/audit/log.js';
import { RecordWriter, compressTrailFile, listTrailFiles, readLastRecord, readRecords, sealedPreallocateBytes, type TrailFile } from '../../src/audit/records.js';
import { sealedTrailHeaderBytes, type TrailKey } from '../../src/audit/sealed-trail.js';
import { TrailKeyStore } from '../../src/audit/trail-key.js';
import { readAudit, verifyAudit, type TrailCheckpoint } from '../../src/audit/verify.js';
import { FileKekProvider } from '../../src/encryption/kek-file.js';
import { auditDirectories } from '../helpers/audit-directories.js';
import { fillDisk, mountSmallDisk, unmountSmallDisk } from '../soak/disk-faults.js';

const dayMs = 24 * 60 * 60 * 1000;

describe('audit trail at rest', () => {
  const { newDirectory, fail } = auditDirectories('audit-rest');
  const newKey = async (directory: string): Promise<{ key: TrailKey; provider: FileKekProvider; keyFile: string }> => {
    // Beside the trail, in a directory of its own that the tests' clean-up removes with the rest.
    const keyFile = path.join(await newDirectory(), `${path.basename(directory)}.kek`);
    await FileKekProvider.create(keyFile);
    const provider = await FileKekProvider.open(keyFile);
    return { key: (await TrailKeyStore.openOrCreate(directory, provider)).key, provider, keyFile };
  };
  const eventsOf = async (directory: string, key?: TrailKey): Promise<AuditEvent[]> => {
    const events: AuditEvent[] = [];
    await readAudit(directory, (event) => events.push(event), [], key);
    return events;
  };

  /** A sealed trail of one file with `events` Puts by a user named `secret-user`. */
  async function sealedTrail(events = 3): Promise<{ directory: string; file: string; key: TrailKey }> {
    const directory = await newDirectory();
    const { key } = await newKey(directory);
    const log = await AuditLog.open(directory, 'abc', fail, { key });
    // One batch per event: each its own frame.
    for (let index = 0; index < events; index++) await log.record({ action: 'Put', user: 'secret-user', targets: [`/secret/key/${index}`], outcome: 'allowed' });
    await log.close();
    return { directory, file: path.join(directory, log.file), key };
  }

  /** Byte ranges [start, end) of each frame of a sealed file (up to the zeros a file being written ends with). */
  const framesOf = (bytes: Buffer): Array<[number, number]> => {
    const frames: Array<[number, number]> = [];
    for (let offset = sealedTrailHeaderBytes; offset < bytes.length && bytes.readUInt32BE(offset) !== 0;) {
      const end = offset + 24 + bytes.readUInt32BE(offset) + 16 + 4;
      frames.push([offset, end]);
      offset = end;
    }
    return frames;
  };

  it('seals every file: no name or key on disk, verified with the key, refused without it or with another', async () => {
    const { directory, file, key } = await sealedTrail();
    const bytes = await readFile(file);
    expect(bytes.includes(Buffer.from('secret-user'))).toBe(false);
    expect(bytes.includes(Buffer.from('/secret/key'))).toBe(false);
    expect(await verifyAudit(directory, { key })).toMatchObject({ ok: true, events: 4, files: 1, member: 'abc' });
    expect((await eventsOf(directory, key)).map((event) => event.user)).toEqual([undefined, 'secret-user', 'secret-user', 'secret-user']);
    expect((await verifyAudit(directory)).problem).toMatch(/is sealed \(encryption at rest, trail key [0-9a-f]{16}\): give the member's key-encryption key \(--encryption-key-file/);
    const other = await newKey(await newDirectory());
    expect((await verifyAudit(directory, { key: other.key })).problem).toMatch(new RegExp(`sealed under trail key ${key.id}, not under the one given \\(${other.key.id}\\)`));
    // The same key under another file name (a file renamed or moved into its place) fails to open.
    const renamed = path.join(directory, 'audit-2000-01-01T00-00-00-000Z.jsonl');
    await writeFile(renamed, bytes);
    expect((await verifyAudit(renamed, { key })).problem).toMatch(/frame 0: authentication failed/);
  });

  it('detects a flipped byte, a frame removed or moved, and a torn end, naming the frame', async () => {
    const { file, key } = await sealedTrail(3);
    const original = await readFile(file);
    const frames = framesOf(original);
    expect(frames).toHaveLength(4);
    const problem = async (bytes: Buffer): Promise<string | undefined> => {
      await writeFile(file, bytes);
      return (await verifyAudit(file, { key })).problem;
    };
    const flipped = Buffer.from(original);
    flipped.writeUInt8(flipped.readUInt8((frames[2] as [number, number])[0] + 30) ^ 0x01, (frames[2] as [number, number])[0] + 30);
    expect(await problem(flipped)).toMatch(/frame 2: authentication failed \(altered/);
    const [a, b] = [frames[1] as [number, number], frames[2] as [number, number]];
    const swapped = Buffer.concat([original.subarray(0, a[0]), original.subarray(b[0], b[1]), original.subarray(a[0], a[1]), original.subarray(b[1])]);
    expect(await problem(swapped)).toMatch(/frame 1: holds frame 2 \(frames were removed, inserted or reordered\)/);
    const removed = Buffer.concat([original.subarray(0, a[0]), original.subarray(a[1])]);
    expect(await problem(removed)).toMatch(/frame 1: holds frame 2/);
    expect(await problem(original.subarray(0, original.length - 7))).toMatch(/bytes after the last complete line \(torn or altered\)/);
    // Whole frames cut from the end read as a shorter trail: the chain and checkpoints catch that (verify.ts).
    expect(await problem(original.subarray(0, b[1]))).toBeUndefined();
    const headerChanged = Buffer.from(original);
    headerChanged.writeUInt8(headerChanged.readUInt8(40) ^ 0x01, 40); // the salt: every frame's key changes
    expect(await problem(headerChanged)).toMatch(/frame 0: authentication failed/);
    expect(await problem(original)).toBeUndefined();
  });

  it('rotates by size, compresses closed files in the background, and verifies across them as one chain', async () => {
    for (const sealed of [true, false]) {
      const directory = await newDirectory();
      const key = sealed ? (await newKey(directory)).key : undefined;
      const log = await AuditLog.open(directory, 'abc', fail, { ...(key === undefined ? {} : { key }), maxFileBytes: 2000 });
      for (let index = 0; index < 40; index++) await log.record({ action: 'Put', user: 'alice', targets: [`/k/${index}`], outcome: 'allowed' });
      await log.settled();
      const files = await listTrailFiles(directory);
      expect(files.length).toBeGreaterThan(3);
      expect(files.slice(0, -1).every((file) => file.compressed && file.path.endsWith('.jsonl.gz'))).toBe(true);
      expect(files[files.length - 1]?.compressed).toBe(false);
      for (const file of files.filter((candidate) => sealed || candidate.compressed)) {
        const bytes = await readFile(file.path);
        expect(bytes.includes(Buffer.from('alice')), file.path).toBe(false); // sealed or gzip'd: not in the clear either way
      }
      const events = await eventsOf(directory, key);
      expect(events.filter((event) => event.action === 'Put').map((event) => event.targets?.[0])).toEqual(Array.from({ length: 40 }, (_unused, index) => `/k/${index}`));
      const starts = events.filter((event) => event.action === 'audit.start');
      expect(starts).toHaveLength(files.length);
      expect(starts.slice(1).every((event) => event.detail === 'rotated (size)')).toBe(true);
      expect(starts.slice(1).map((event) => event.targets?.[0])).toEqual(files.slice(0, -1).map((file) => file.name));
      // Checkpoints name files by their trail name, compressed or not.
      const lastOf = new Map<string, AuditEvent>();
      let fileIndex = -1;
      for (const event of events) {
        if (event.action === 'audit.start') fileIndex += 1;
        lastOf.set(files[fileIndex]?.name as string, event);
      }
      const checkpoints: TrailCheckpoint[] = [...lastOf].map(([file, last]) => ({ member: 'abc', file, seq: last.seq, hash: last.hash, time: '2026-01-01T00:00:00.000Z' }));
      expect(await verifyAudit(directory, { checkpoints, ...(key === undefined ? {} : { key }) })).toMatchObject({ ok: true, events: events.length, checkpointsMatched: files.length });
      // A rotated, compressed file deleted from the middle: the next file no longer continues the chain.
      await rm((files[1] as { path: string }).path);
      expect((await verifyAudit(directory, key === undefined ? {} : { key })).problem).toMatch(/does not continue the previous file/);
      await log.close();
    }
  });

  it('deletes files past their retention after recording it; verify accepts that boundary and no other', async () => {
    const directory = await newDirectory();
    const { key } = await newKey(directory);
    let now = Date.parse('2026-01-01T00:00:00.000Z');
    const clock = { nowMs: () => now };
    let log = await AuditLog.open(directory, 'abc', fail, { key, maxFileAgeMs: dayMs, retentionMs: 10 * dayMs, ...clock });
    const put = (index: number): Promise<void> => log.record({ action: 'Put', targets: [`/day/${index}`], outcome: 'allowed' });
    for (let day = 0; day < 5; day++) {
      await put(day);
      now += dayMs;
    }
    await log.settled();
    const before = await listTrailFiles(directory);
    expect(before.length).toBe(5);
    // Day 13: files closed before day 3 are past 10 days. A restart runs the retention pass too.
    now += 8 * dayMs;
    await log.close();
    log = await AuditLog.open(directory, 'abc', fail, { key, maxFileAgeMs: dayMs, retentionMs: 10 * dayMs, ...clock });
    await log.settled();
    await put(99);
    const after = await listTrailFiles(directory);
    expect(after.map((file) => file.name)).toEqual([...before.slice(3).map((file) => file.name), log.file]);
    const events = await eventsOf(directory, key);
    const retention = events.find((event) => event.action === 'audit.retention');
    expect(retention?.targets).toEqual([before[3]?.name, before[0]?.name, before[1]?.name, before[2]?.name]);
    expect(retention?.detail).toMatch(/^deleted 3 files closed before 2026-01-04T00:00:00.000Z/);
    // Checkpoints of the deleted files do not make their absence an error; the retention record
    // must be witnessed when checkpoints are given.
    const head = log.head;
    const deletedCheckpoint: TrailCheckpoint = { member: 'abc', file: before[0]?.name as string, seq: 1, hash: 'f'.repeat(64), time: '2026-01-01T00:00:01.000Z' };
    const headCheckpoint: TrailCheckpoint = { member: 'abc', file: head.file, seq: head.seq, hash: head.hash, time: '2026-01-14T00:00:00.000Z' };
    expect(await verifyAudit(directory, { key })).toMatchObject({ ok: true });
    expect(await verifyAudit(directory, { key, checkpoints: [deletedCheckpoint, headCheckpoint] })).toMatchObject({ ok: true, checkpointsMatched: 1 });
    expect((await verifyAudit(directory, { key, checkpoints: [deletedCheckpoint] })).problem).toMatch(/the retention record that deleted the files before .* is not witnessed by any checkpoint/);
    // One more file deleted, past the recorded boundary: caught.
    await rm((after[0] as { path: string }).path);
    expect((await verifyAudit(directory, { key })).problem).toMatch(/does not start at the member's genesis .*and the last retention record .* kept audit-.* onwards/);
    await log.close();
  });

  it('refuses a trail whose oldest file was deleted without a retention record', async () => {
    const directory = await newDirectory();
    for (let run = 0; run < 2; run++) {
      const log = await AuditLog.open(directory, 'abc', fail);
      await log.record({ action: 'Put', outcome: 'allowed' });
      await log.settled();
      await log.close();
    }
    const files = await listTrailFiles(directory);
    expect(files[0]?.compressed).toBe(true);
    expect(await verifyAudit(directory)).toMatchObject({ ok: true, files: 2 });
    await rm((files[0] as { path: string }).path);
    expect((await verifyAudit(directory)).problem).toMatch(/does not start at the member's genesis \(its oldest files were removed.*no retention record says they were deleted/);
  });

  it('compresses only what reads back the same, and a crash mid-compression leaves the original', async () => {
    const { directory, key } = await sealedTrail(2);
    const [file] = await listTrailFiles(directory);
    // A half-written copy from a crash is removed at the next start; the original is read meanwhile.
    await writeFile(`${file?.path as string}.gz.tmp`, 'partial');
    expect(await verifyAudit(directory, { key })).toMatchObject({ ok: true, files: 1 });
    const log = await AuditLog.open(directory, 'abc', fail, { key });
    await log.settled();
    await log.close();
    const names = await readdir(directory);
    expect(names.filter((name) => name.endsWith('.tmp'))).toEqual([]);
    expect(names.filter((name) => name.endsWith('.jsonl.gz'))).toHaveLength(1);
    expect(await verifyAudit(directory, { key })).toMatchObject({ ok: true, files: 2, events: 4 });
    // A member stopping aborts a compression: the original stays whole, no copy is left.
    const plainDirectory = await newDirectory();
    const plainLog = await AuditLog.open(plainDirectory, 'abc', fail);
    await plainLog.record({ action: 'Put', outcome: 'allowed' });
    await plainLog.close();
    const [plainFile] = await listTrailFiles(plainDirectory);
    const stopped = new AbortController();
    stopped.abort();
    await expect(compressTrailFile(plainFile as TrailFile, undefined, stopped.signal)).rejects.toThrow(/compression stopped \(the member is stopping\)/);
    expect(await readdir(plainDirectory)).toEqual([plainFile?.name]);
    expect(await verifyAudit(plainDirectory)).toMatchObject({ ok: true, events: 2 });
    // A damaged file is not compressed (it would hide where it was damaged).
    const damaged = await newDirectory();
    const broken = path.join(damaged, 'audit-2026-01-01T00-00-00-000Z.jsonl');
    await writeFile(broken, '{"torn');
    await expect(compressTrailFile({ name: path.basename(broken), path: broken, compressed: false }, undefined)).rejects.toThrow(/does not read whole/);
    expect(await readdir(damaged)).toEqual([path.basename(broken)]);
    const kinds: string[] = [];
    for await (const record of readRecords(broken)) kinds.push(record.kind);
    expect(kinds).toEqual(['torn']);
  });

  it('keeps the trail key readable across a KEK rotation, and after a crash on either side of it', async () => {
    const directory = await newDirectory();
    const { key, provider, keyFile } = await newKey(directory);
    // A rotation that completes: the trail key gets a wrapping under the new KEK before the old goes.
    await provider.beginRotation();
    await (await TrailKeyStore.open(directory, provider)).addWrapping((plaintext) => provider.wrap(plaintext));
    await provider.completeRotation();
    const reopened = await FileKekProvider.open(keyFile);
    expect((await TrailKeyStore.open(directory, reopened)).key.id).toBe(key.id);
    expect((await TrailKeyStore.openOrCreate(directory, reopened)).key.key.equals(key.key)).toBe(true);
    expect((JSON.parse(await readFile(path.join(directory, 'trail-key'), 'utf8')) as { wrappings: unknown[] }).wrappings).toHaveLength(1);
    // A rotation interrupted before the key store changed: the next start drops `.next`; the old KEK still opens it.
    await reopened.beginRotation();
    await (await TrailKeyStore.open(directory, reopened)).addWrapping((plaintext) => reopened.wrap(plaintext));
    const afterCrash = await FileKekProvider.open(keyFile);
    await afterCrash.settle();
    expect((await TrailKeyStore.open(directory, afterCrash)).key.key.equals(key.key)).toBe(true);
    // Another member's KEK: refused, naming the key file.
    const otherFile = path.join(await newDirectory(), 'other.kek');
    await FileKekProvider.create(otherFile);
    await expect(TrailKeyStore.open(directory, await FileKekProvider.open(otherFile))).rejects.toThrow(/does not unwrap with the file KEK provider .*other\.kek/);
    await rm(path.join(directory, 'trail-key'));
    await expect(TrailKeyStore.open(directory, afterCrash)).rejects.toThrow(/trail-key is missing: without it the sealed audit files/);
  });

  it('reads events after a cursor across rotated, compressed and sealed files (for sinks catching up)', async () => {
    const directory = await newDirectory();
    const { key } = await newKey(directory);
    const log = await AuditLog.open(directory, 'abc', fail, { key, maxFileBytes: 1500 });
    for (let index = 0; index < 20; index++) await log.record({ action: 'Put', targets: [`/c/${index}`], outcome: 'allowed' });
    await log.close();
    const all: Array<{ file: string; event: AuditEvent }> = [];
    for await (const item of readEventsAfter(directory, undefined, key)) all.push(item);
    expect(all.filter((item) => item.event.action === 'Put').map((item) => item.event.targets?.[0])).toEqual(Array.from({ length: 20 }, (_unused, index) => `/c/${index}`));
    expect(new Set(all.map((item) => item.file)).size).toBeGreaterThan(2);
    const middle = all[Math.floor(all.length / 2)] as { file: string; event: AuditEvent };
    const rest: AuditEvent[] = [];
    for await (const item of readEventsAfter(directory, { file: middle.file, seq: middle.event.seq }, key)) rest.push(item.event);
    expect(rest.map((event) => event.hash)).toEqual(all.slice(Math.floor(all.length / 2) + 1).map((item) => item.event.hash));
    await expect(readEventsAfter(directory).next()).rejects.toThrow(/is sealed/);
  });

  it('writes a sealed file ahead with zeros: a crash leaves them and the trail still reads, links and verifies; a torn end is still caught', async () => {
    const directory = await newDirectory();
    const { key } = await newKey(directory);
    const log = await AuditLog.open(directory, 'abc', fail, { key });
    for (let index = 0; index < 5; index++) await log.record({ action: 'Put', user: 'alice', targets: [`/k/${index}`], outcome: 'allowed' });
    const live = path.join(directory, log.file);
    // As a crash leaves it: the file is copied while the writer holds it open.
    const crashed = await newDirectory();
    await cp(directory, crashed, { recursive: true });
    const bytes = await readFile(path.join(crashed, log.file));
    const frames = framesOf(bytes);
    const dataEnd = (frames[frames.length - 1] as [number, number])[1];
    expect(frames).toHaveLength(6);
    // Written ahead: the file is longer than its frames, and the rest is zeros (its syncs commit no size change).
    expect(bytes.length).toBeGreaterThanOrEqual(dataEnd + sealedPreallocateBytes / 2);
    expect(bytes.subarray(dataEnd).every((byte) => byte === 0)).toBe(true);
    expect(await verifyAudit(crashed, { key })).toMatchObject({ ok: true, events: 6 });
    expect((await eventsOf(crashed, key)).map((event) => event.targets?.[0])).toEqual([undefined, '/k/0', '/k/1', '/k/2', '/k/3', '/k/4']);
    // Closed, the file ends at its last frame, as a file never written ahead.
    await log.close();
    expect((await stat(live)).size).toBe(dataEnd);
    expect((await readFile(live)).equals(bytes.subarray(0, dataEnd))).toBe(true);
    // A member starting after the crash links its new file to the last event (read from before the zeros).
    const restarted = await AuditLog.open(crashed, 'abc', fail, { key });
    await restarted.record({ action: 'Put', user: 'alice', targets: ['/k/5'], outcome: 'allowed' });
    await restarted.close();
    const linked = await eventsOf(crashed, key);
    expect(linked[6]).toMatchObject({ action: 'audit.start', targets: [log.file] });
    expect(linked[6]?.prev).toBe(linked[5]?.hash);
    expect(await verifyAudit(crashed, { key })).toMatchObject({ ok: true, events: 8, files: 2 });
    // A torn last write in a file written ahead: its missing sectors read as zeros, at its end or at its start.
    const single = path.join(crashed, log.file);
    const last = frames[frames.length - 1] as [number, number];
    const problem = async (file: Buffer): Promise<string | undefined> => {
      await writeFile(single, file);
      return (await verifyAudit(single, { key })).problem;
    };
    const tornEnd = Buffer.from(bytes);
    tornEnd.fill(0, last[1] - 20, last[1]);
    expect(await problem(tornEnd)).toMatch(/bytes after the last complete line \(torn or altered\)/);
    const tornStart = Buffer.from(bytes);
    tornStart.fill(0, last[0], last[0] + 24);
    expect(await problem(tornStart)).toMatch(/bytes after the last complete line \(torn or altered\)/);
    // Bytes after the zeros are no padding either; an altered frame before the last is still named.
    const afterZeros = Buffer.from(bytes);
    afterZeros.writeUInt8(1, bytes.length - 1);
    expect(await problem(afterZeros)).toMatch(/bytes after the last complete line \(torn or altered\)/);
    const flipped = Buffer.from(bytes);
    const second = frames[2] as [number, number];
    flipped.writeUInt8(flipped.readUInt8(second[0] + 30) ^ 0x01, second[0] + 30);
    expect(await problem(flipped)).toMatch(/frame 2: authentication failed \(altered/);
    expect(await problem(bytes)).toBeUndefined();
  });

  it('finds the last record of a file written ahead when its last frame ends in zero bytes (a length of 256)', async () => {
    const directory = await newDirectory();
    const { key } = await newKey(directory);
    const file = path.join(directory, 'audit-2026-01-01T00-00-00-000Z.jsonl');
    const writer = await RecordWriter.create(file, key);
    if (writer === undefined) throw new Error('the file exists');
    await writer.append(['first']);
    await writer.append(['x'.repeat(255)]); // 256 plaintext bytes: the frame's trailing length is 00 00 01 00
    const bytes = await readFile(file);
    expect(bytes.length).toBeGreaterThan(sealedTrailHeaderBytes + 2 * 44 + 262);
    expect(await readLastRecord(file, key)).toBe('x'.repeat(255));
    await writer.close();
    expect((await readFile(file)).at(-1)).toBe(0); // closed: it ends with that length field
    expect(await readLastRecord(file, key)).toBe('x'.repeat(255));
    const records: string[] = [];
    for await (const record of readRecords(file, key)) records.push(record.kind === 'record' ? record.text : record.kind);
    expect(records).toEqual(['first', 'x'.repeat(255)]);
  });

  it('on a nearly full disk writes the records without the zeros ahead, and a full one cuts the failed write off', async (context) => {
    const disk = path.join(await newDirectory(), 'disk');
    const problem = await mountSmallDisk(disk, 1);
    if (problem !== undefined) {
      console.log(`skipped: cannot mount a small file system here (${problem})`);
      context.skip();
      return;
    }
    try {
      await writeFile(path.join(disk, 'ballast'), Buffer.alloc(1024 * 1024 - sealedPreallocateBytes / 2, 0x5a)); // less room left than the zeros written ahead
      const { key } = await newKey(await newDirectory());
      const file = path.join(disk, 'audit-2026-01-01T00-00-00-000Z.jsonl');
      const writer = await RecordWriter.create(file, key);
      if (writer === undefined) throw new Error('the file exists');
      await writer.append(['first']);
      await writer.append(['second']);
      const records = async (): Promise<string[]> => {
        const read: string[] = [];
        for await (const record of readRecords(file, key)) read.push(record.kind === 'record' ? record.text : record.kind);
        return read;
      };
      expect(await records()).toEqual(['first', 'second']);
      await fillDisk(disk);
      await expect(writer.append(['x'.repeat(64 * 1024)])).rejects.toThrow(/ENOSPC|no more bytes/);
      expect(await records()).toEqual(['first', 'second']);
      await writer.close();
    } finally {
      await unmountSmallDisk(disk);
    }
  });

  it('writes one frame per batch with one fdatasync, whatever the batch holds', async () => {
    const directory = await newDirectory();
    const { key } = await newKey(directory);
    const log = await AuditLog.open(directory, 'abc', fail, { key });
    const handle = await open(path.join(directory, log.file), 'r');
    await Promise.all(Array.from({ length: 200 }, (_unused, index) => log.record({ action: 'Put', targets: [`/k/${index}`], outcome: 'allowed' })));
    const frames = framesOf(await readFile(path.join(directory, log.file)));
    expect(frames).toHaveLength(2); // audit.start, then the 200 events recorded together
    await handle.close();
    await log.close();
    expect((await eventsOf(directory, key)).length).toBe(201);
  });
});
