/**
 * Restores a snapshot stream (format in `api/snapshot-stream.ts`) into a new data directory.
 * The file is verified whole (magic, record framing, SHA-256) before anything is written.
 * Like `etcdctl snapshot restore`, this keeps the data (keys, history, leases) and founds a new
 * cluster: membership and the applied log position are dropped, and the restored member bootstraps
 * its membership from its own flags (`--initial-cluster`).
 */
import { createHash } from 'node:crypto';
import { access, mkdir, readFile } from 'node:fs/promises';
import { snapshotAlignmentBytes, snapshotMagic } from '../api/snapshot-stream.js';
import { isMemberLocalKey, metaKey, prefix } from '../storage/schema.js';
import { SealedDatabase, type KekProvider } from '../storage/database.js';

/** With a key provider the restored records are sealed under the new member's own keys. */
export async function restoreSnapshot(file: string, dataDir: string, keyProvider: KekProvider | undefined): Promise<number> {
  const exists = await access(dataDir).then(() => true, () => false);
  if (exists) {
    throw new Error(`data directory ${dataDir} already exists; restore needs a new one`);
  }
  const content = await readFile(file);
  const digestBytes = 32;
  if (content.length < snapshotMagic.length + digestBytes || !content.subarray(0, snapshotMagic.length).equals(snapshotMagic)) {
    throw new Error(`${file} is not a Rampart snapshot`);
  }
  const body = content.subarray(0, content.length - digestBytes);
  const digest = content.subarray(content.length - digestBytes);
  if (!createHash('sha256').update(body).digest().equals(digest)) {
    throw new Error(`${file}: SHA-256 mismatch; the snapshot is damaged or incomplete`);
  }
  const records: { key: Buffer; value: Buffer }[] = [];
  let offset = snapshotMagic.length;
  const read = (): Buffer => {
    if (offset + 4 > body.length) throw new Error(`${file}: truncated record at byte ${offset}`);
    const length = body.readUInt32BE(offset);
    offset += 4;
    if (offset + length > body.length) throw new Error(`${file}: truncated record at byte ${offset}`);
    const bytes = body.subarray(offset, offset + length);
    offset += length;
    return bytes;
  };
  for (;;) {
    const key = read();
    if (key.length === 0) break;
    const value = read();
    if (isMemberLocalKey(key) || key[0] === prefix.member || key.equals(metaKey.consistentIndex)) continue;
    records.push({ key, value });
  }
  if (body.subarray(offset).some((byte) => byte !== 0) || body.length % snapshotAlignmentBytes !== 0) {
    throw new Error(`${file}: malformed padding after the end marker`);
  }
  await mkdir(dataDir, { recursive: true, mode: 0o700 });
  const db = await SealedDatabase.open(dataDir, keyProvider);
  try {
    await db.batch(records.map((record) => ({ type: 'put' as const, key: record.key, value: record.value })), { sync: true });
  } finally {
    await db.close();
  }
  return records.length;
}
