/**
 * Where the audit checkpoints live in a member's database. They are written every few seconds, so
 * their prefix decides the key range of almost every LevelDB table: below the key-value records
 * ('k') each level-0 table spanned all of them and every compaction rewrote the levels below. They
 * sort after the key-value records now, and a member whose data (or a snapshot from an older member)
 * still holds them under the old prefix moves them when it loads its state.
 */
import { rm } from 'node:fs/promises';
import { Writable } from 'node:stream';
import { afterEach, describe, expect, it } from 'vitest';
import { encodeCheckpoint } from '../../src/audit/checkpoint.js';
import { AuditCheckpoints } from '../../src/server/audit-checkpoints.js';
import type { Member } from '../../src/server/member.js';
import { SealedDatabase } from '../../src/storage/database.js';
import type { BatchOperation } from '../../src/storage/mvcc/store.js';
import { prefix, prefixEnd } from '../../src/storage/schema.js';
import { openOneMember, putRetrying } from '../helpers/in-process-cluster.js';
import { freePort, temporaryDirectory } from '../helpers/processes.js';

const quiet = new Writable({ write(_chunk, _encoding, done) { done(); } });
const file = 'audit-2026-01-01T00-00-00-000Z.jsonl';

describe('audit checkpoint records', () => {
  let dataDir: string | undefined;
  afterEach(async () => {
    if (dataDir !== undefined) await rm(dataDir, { recursive: true, force: true });
  });

  it('sort after every key-value record and the store metadata', () => {
    const batch: BatchOperation[] = [];
    new AuditCheckpoints().apply(encodeCheckpoint({ member: 'a1', file, seq: 3, hash: 'ab'.repeat(32), time: '2026-01-01T00:00:00.000Z' }), batch);
    expect(batch).toHaveLength(2); // latest and the window's first
    for (const operation of batch) {
      expect(operation.key[0]).toBe(prefix.auditCheckpoint);
      expect(operation.key[0]).toBeGreaterThan(prefix.keyValue);
      expect(operation.key[0]).toBeGreaterThan(prefix.meta);
    }
  });

  it('kept under the old prefix are moved when the member starts, and still count', async () => {
    dataDir = await temporaryDirectory('checkpoint-prefix');
    const peerUrl = `http://127.0.0.1:${await freePort()}`;
    const open = (): Promise<Member> => openOneMember(dataDir as string, quiet, { initialClusterToken: 'checkpoint-prefix', requestTimeoutMs: 2_000 }, peerUrl);
    let member = await open();
    await member.whenReady();
    await putRetrying(member, 'a', 'v0');
    const checkpoint = { member: member.memberHex, file, seq: 7, hash: 'cd'.repeat(32), time: '2026-01-01T00:00:00.000Z' };
    await member.proposeAuditCheckpoint(checkpoint);
    // Closed, its applied batches are written (a caller is answered before its batch lands).
    await member.close();

    const records = async (prefixByte: number): Promise<[Buffer, Buffer][]> => {
      const db = await SealedDatabase.open(dataDir as string, undefined);
      try {
        const found: [Buffer, Buffer][] = [];
        for await (const entry of db.iterator({ gte: Buffer.of(prefixByte), lt: prefixEnd(prefixByte) })) found.push(entry);
        return found;
      } finally {
        await db.close();
      }
    };
    const current = await records(prefix.auditCheckpoint);
    expect(current.map(([, value]) => value.toString('utf8'))).toEqual([encodeCheckpoint(checkpoint), encodeCheckpoint(checkpoint)]); // latest and the window's first
    // The records as an older version kept them: under the old prefix.
    const db = await SealedDatabase.open(dataDir, undefined);
    await db.batch(current.flatMap(([key, value]) => [{ type: 'put' as const, key: Buffer.concat([Buffer.of(prefix.legacyAuditCheckpoint), key.subarray(1)]), value }, { type: 'del' as const, key }]), { sync: true });
    await db.close();
    expect(await records(prefix.auditCheckpoint)).toHaveLength(0);

    member = await open();
    try {
      await member.whenReady();
      expect((await member.auditCheckpointRecords()).checkpoints).toEqual([checkpoint, checkpoint]);
      // An older sequence number for the same file and window changes nothing: the index was rebuilt
      // from the moved records (with an empty one it would replace both with seq 5).
      await member.proposeAuditCheckpoint({ ...checkpoint, seq: 5 });
    } finally {
      await member.close();
    }
    expect(await records(prefix.legacyAuditCheckpoint)).toHaveLength(0);
    const moved = await records(prefix.auditCheckpoint);
    expect(moved.map(([key]) => key.subarray(1).toString('utf8'))).toEqual(current.map(([key]) => key.subarray(1).toString('utf8')));
    expect(moved.map(([, value]) => value.toString('utf8'))).toEqual([encodeCheckpoint(checkpoint), encodeCheckpoint(checkpoint)]);
  });
});
