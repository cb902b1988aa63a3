/**
 * Snapshot files: `rampart snapshot restore` and `rampart snapshot save`, and reading Rampart's
 * own snapshots whole for `rampart backup verify`.
 *
 * Restore reads either format and founds a new cluster from it, like `etcdctl snapshot restore`:
 * - Rampart's own (format in `api/snapshot-stream.ts`: magic, length-framed state records,
 *   SHA-256), as `etcdctl snapshot save` against Rampart writes it;
 * - etcd's (a bbolt database and its SHA-256, `storage/etcd-snapshot.ts`), as `etcdctl snapshot
 *   save` against etcd writes it: the migration path from etcd.
 * The whole file is verified and converted in memory before anything is written (and before the
 * new member's key is made); a failed write removes the new data directory, so there is never a
 * partial restore. Membership and the applied log position are dropped; the restored member
 * bootstraps its membership from its own flags (`--initial-cluster`).
 *
 * Save streams a member's snapshot (Maintenance.Snapshot, as etcdctl does) and writes it in
 * Rampart's format or, with `--format etcd`, in etcd's, which `etcdctl snapshot restore` accepts.
 */
import { isSealedFile, openSealedFile, sealFile, sealFileTo, sealedFileNeeds, type SnapshotOpenKey } from '../encryption/sealed-file.js';
import { createHash, KeyObject } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { access, mkdir, rename, rm, stat, writeFile } from 'node:fs/promises';
import * as grpc from '@grpc/grpc-js';
import { packageDefinition } from '../api/proto.js';
import { SealedDatabase, type KekProvider } from '../storage/database.js';
import { snapshotAlignmentBytes, snapshotMagic } from '../api/snapshot-stream.js';
import { decodeKeyValueRecord, decodeRevisionKey, recordKind } from '../storage/encoding.js';
import { looksLikeBbolt, readEtcdSnapshot, writeEtcdSnapshot } from '../storage/etcd-snapshot.js';
import { isMemberLocalKey, metaKey, prefix } from '../storage/schema.js';
import { etcdFromRecords, recordsFromEtcd } from './etcd-conversion.js';
import { connectionTarget, type ConnectionOptions } from './policy.js';
import type { Progress } from './progress.js';

/** Snapshots are verified and converted in memory; Node buffers stop short of 4 GiB. */
export const snapshotFileBytesMax = 4 * 1024 * 1024 * 1024 - 1;

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

/** Reads a whole file (at most `snapshotFileBytesMax`), reporting progress. */
async function readWhole(file: string, progress?: Progress): Promise<Buffer> {
  const total = (await stat(file)).size;
  if (total > snapshotFileBytesMax) throw new Error(`${file}: ${total} bytes is more than a snapshot may hold here (${snapshotFileBytesMax})`);
  const chunks: Buffer[] = [];
  let read = 0;
  for await (const chunk of createReadStream(file)) {
    chunks.push(chunk as Buffer);
    read += (chunk as Buffer).length;
    progress?.update(read, total);
  }
  progress?.finish();
  return Buffer.concat(chunks);
}

/**
 * Reads a whole Rampart snapshot file, opening it first when it is sealed, and checks it; throws
 * naming the problem when it is not intact.
 */
export async function readSnapshot(file: string, progress?: Progress, snapshotKey?: SnapshotOpenKey): Promise<{ records: SnapshotRecord[]; summary: SnapshotSummary }> {
  let content = await readWhole(file, progress);
  if (isSealedFile(content)) {
    if (snapshotKey === undefined) throw new Error(sealedFileNeeds(content, file));
    content = openSealedFile(snapshotKey, content, file);
  }
  return parseSnapshot(content, file);
}

/** Checks a Rampart snapshot's bytes whole (magic, framing, padding, SHA-256, records) and summarises it. */
export function parseSnapshot(content: Buffer, file: string): { records: SnapshotRecord[]; summary: SnapshotSummary } {
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

export type SnapshotFormat = 'rampart' | 'etcd';

export interface RestoreResult {
  readonly format: SnapshotFormat;
  readonly records: number;
}

/**
 * `keyProvider` is asked only once the snapshot has been verified; with a provider the restored
 * records are sealed under the new member's own keys.
 */
export async function restoreSnapshot(file: string, dataDir: string, keyProvider: () => Promise<KekProvider | undefined>, progress?: Progress, snapshotKey?: () => Promise<SnapshotOpenKey>): Promise<RestoreResult> {
  const exists = await access(dataDir).then(() => true, () => false);
  if (exists) {
    throw new Error(`data directory ${dataDir} already exists; restore needs a new one`);
  }
  let content = await readWhole(file, progress);
  if (isSealedFile(content)) {
    if (snapshotKey === undefined) throw new Error(sealedFileNeeds(content, file));
    content = openSealedFile(await snapshotKey(), content, file);
  }
  let format: SnapshotFormat;
  let records: SnapshotRecord[];
  if (content.subarray(0, snapshotMagic.length).equals(snapshotMagic)) {
    format = 'rampart';
    records = parseSnapshot(content, file).records.filter(({ key }) => !(isMemberLocalKey(key) || key[0] === prefix.member || key.equals(metaKey.consistentIndex)));
  } else if (looksLikeBbolt(content)) {
    format = 'etcd';
    try {
      records = recordsFromEtcd(readEtcdSnapshot(content)).map(([key, value]) => ({ key, value }));
    } catch (error) {
      throw new Error(`${file}: not a usable etcd snapshot: ${error instanceof Error ? error.message : String(error)}`);
    }
  } else {
    throw new Error(`${file} is neither a Rampart snapshot nor an etcd snapshot (bbolt database)`);
  }
  await writeRecords(dataDir, records, await keyProvider());
  return { format, records: records.length };
}

/** A new member database holding `records`, written in one synced batch; nothing is left on failure. */
async function writeRecords(dataDir: string, records: readonly SnapshotRecord[], keyProvider: KekProvider | undefined): Promise<void> {
  await mkdir(dataDir, { recursive: true, mode: 0o700 });
  try {
    const db = await SealedDatabase.open(dataDir, keyProvider);
    try {
      // One batch: a restore that stops half-way leaves no half-filled database that could start.
      await db.batch([
        ...records.map((record) => ({ type: 'put' as const, key: record.key, value: record.value })),
        { type: 'put' as const, key: metaKey.restoredState, value: Buffer.of(1) },
      ], { sync: true });
    } finally {
      await db.close();
    }
  } catch (error) {
    await rm(dataDir, { recursive: true, force: true });
    throw error;
  }
}

interface MaintenanceClient extends grpc.Client {
  Snapshot(request: object, options: grpc.CallOptions): grpc.ClientReadableStream<{ blob: Buffer; remaining_bytes: string }>;
}

/**
 * Streams a member's snapshot and writes it to `file` (via a temporary file, renamed when
 * complete). `sealTo`: a snapshot key, or a recipient's public key (then only its private key
 * opens the file). Returns the checked snapshot's summary and the SHA-256 of the bytes written.
 */
export async function saveSnapshot(connection: ConnectionOptions, file: string, format: SnapshotFormat, progress?: Progress, sealTo?: Buffer | KeyObject): Promise<{ bytes: number; keys: number; summary: SnapshotSummary; writtenSha256: string }> {
  const { target, credentials } = await connectionTarget(connection);
  const loaded = grpc.loadPackageDefinition(packageDefinition) as unknown as { etcdserverpb: { Maintenance: grpc.ServiceClientConstructor } };
  const client = new loaded.etcdserverpb.Maintenance(target, credentials, { 'grpc.max_receive_message_length': 64 * 1024 * 1024 }) as unknown as MaintenanceClient;
  const chunks: Buffer[] = [];
  let received = 0;
  try {
    await new Promise<void>((resolve, reject) => {
      const stream = client.Snapshot({}, {});
      stream.on('data', (response: { blob: Buffer }) => {
        received += response.blob.length;
        if (received > snapshotFileBytesMax) {
          stream.cancel();
          reject(new Error(`the snapshot exceeds ${snapshotFileBytesMax} bytes`));
          return;
        }
        chunks.push(Buffer.from(response.blob));
        progress?.update(received);
      });
      stream.on('error', (error: grpc.ServiceError) => reject(new Error(error.details)));
      stream.on('end', () => resolve());
    });
  } finally {
    client.close();
  }
  progress?.finish();
  const content = Buffer.concat(chunks);
  const { records, summary } = parseSnapshot(content, 'the received snapshot');
  const plain: Buffer = format === 'etcd' ? writeEtcdSnapshot(etcdFromRecords(records.map((record) => [record.key, record.value] as const))) : content;
  const output = sealTo === undefined ? plain : sealTo instanceof KeyObject ? sealFileTo(sealTo, plain) : sealFile(sealTo, plain);
  const keys = summary.keyRevisions;
  const partial = `${file}.part`;
  await writeFile(partial, output, { mode: 0o600 });
  await rename(partial, file);
  return { bytes: output.length, keys, summary, writtenSha256: createHash('sha256').update(output).digest('hex') };
}
