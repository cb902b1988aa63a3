/**
 * Snapshot files (format in `api/snapshot-stream.ts`): read and verified whole (magic, record
 * framing, SHA-256) before anything is written, then restored into a new data directory or, for
 * `rampart backup verify`, summarised.
 * Like `etcdctl snapshot restore`, restoring keeps the data (keys, history, leases) and founds a new
 * cluster: membership and the applied log position are dropped, and the restored member bootstraps
 * its membership from its own flags (`--initial-cluster`).
 */
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { access, mkdir, stat } from 'node:fs/promises';
import { SealedDatabase, type KekProvider } from '../storage/database.js';
import { snapshotAlignmentBytes, snapshotMagic } from '../api/snapshot-stream.js';
import { decodeKeyValueRecord, decodeRevisionKey, recordKind } from '../storage/encoding.js';
import { isMemberLocalKey, metaKey, prefix } from '../storage/schema.js';
import type { Progress } from './progress.js';

export interface SnapshotRecord {
  readonly key: Buffer;
  readonly value: Buffer;
}

export interface SnapshotSummary {
  readonly bytes: number;
  /** Every state-machine record in the file. */
  readonly records: number;
  /** Keys present (not deleted) at the snapshot's revision. */
  readonly keys: number;
  /** Stored key revisions (puts and deletions) kept as history. */
  readonly keyRevisions: number;
  readonly leases: number;
  /** The newest revision in the file (0 when it holds no keys). */
  readonly revision: number;
  readonly sha256: string;
}

/** Reads a whole snapshot file and checks it; throws naming the problem when it is not intact. */
export async function readSnapshot(file: string, progress?: Progress): Promise<{ records: SnapshotRecord[]; summary: SnapshotSummary }> {
  const total = (await stat(file)).size;
  const chunks: Buffer[] = [];
  let read = 0;
  for await (const chunk of createReadStream(file)) {
    chunks.push(chunk as Buffer);
    read += (chunk as Buffer).length;
    progress?.update(read, total);
  }
  progress?.finish();
  const content = Buffer.concat(chunks);
  const digestBytes = 32;
  if (content.length < snapshotMagic.length + digestBytes || !content.subarray(0, snapshotMagic.length).equals(snapshotMagic)) {
    throw new Error(`${file} is not a Rampart snapshot`);
  }
  const body = content.subarray(0, content.length - digestBytes);
  const digest = content.subarray(content.length - digestBytes);
  if (!createHash('sha256').update(body).digest().equals(digest)) {
    throw new Error(`${file}: SHA-256 mismatch; the snapshot is damaged or incomplete`);
  }
  const records: SnapshotRecord[] = [];
  let offset = snapshotMagic.length;
  const next = (): Buffer => {
    if (offset + 4 > body.length) throw new Error(`${file}: truncated record at byte ${offset}`);
    const length = body.readUInt32BE(offset);
    offset += 4;
    if (offset + length > body.length) throw new Error(`${file}: truncated record at byte ${offset}`);
    const bytes = body.subarray(offset, offset + length);
    offset += length;
    return bytes;
  };
  for (;;) {
    const key = next();
    if (key.length === 0) break;
    records.push({ key, value: next() });
  }
  if (body.subarray(offset).some((byte) => byte !== 0) || body.length % snapshotAlignmentBytes !== 0) {
    throw new Error(`${file}: malformed padding after the end marker`);
  }
  // Key-value records are stored in revision order: the last record of a key says whether it exists.
  const latest = new Map<string, number>();
  let keyRevisions = 0;
  let leases = 0;
  let revision = 0;
  for (const record of records) {
    if (record.key[0] === prefix.keyValue) {
      let decoded;
      try {
        decoded = decodeKeyValueRecord(record.value);
      } catch (error) {
        throw new Error(`${file}: a key-value record does not decode: ${error instanceof Error ? error.message : String(error)}`);
      }
      keyRevisions += 1;
      revision = Math.max(revision, decodeRevisionKey(record.key).main);
      latest.set(decoded.kv.key.toString('hex'), decoded.kind);
    } else if (record.key[0] === prefix.lease) {
      leases += 1;
    }
  }
  const keys = [...latest.values()].filter((kind) => kind === recordKind.put).length;
  return { records, summary: { bytes: content.length, records: records.length, keys, keyRevisions, leases, revision, sha256: digest.toString('hex') } };
}

/** With a key provider the restored records are sealed under the new member's own keys. */
export async function restoreSnapshot(file: string, dataDir: string, keyProvider: KekProvider | undefined, progress?: Progress): Promise<number> {
  const exists = await access(dataDir).then(() => true, () => false);
  if (exists) {
    throw new Error(`data directory ${dataDir} already exists; restore needs a new one`);
  }
  const { records: all } = await readSnapshot(file, progress);
  const records = all.filter(({ key }) => !(isMemberLocalKey(key) || key[0] === prefix.member || key.equals(metaKey.consistentIndex)));
  await mkdir(dataDir, { recursive: true, mode: 0o700 });
  const db = await SealedDatabase.open(dataDir, keyProvider);
  try {
    // One batch: a restore that stops half-way leaves no half-filled database that could start.
    await db.batch(records.map((record) => ({ type: 'put' as const, key: record.key, value: record.value })), { sync: true });
  } finally {
    await db.close();
  }
  return records.length;
}
