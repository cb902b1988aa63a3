/**
 * State snapshots in chunks (src/server/state-snapshot.ts) on real LevelDB databases: a view does
 * not see later writes, chunks stay near their limit, staging then installing replaces the state,
 * and an install a crash interrupted is finished on the next open.
 */
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { SealedDatabase } from '../../src/storage/database.js';
import { encodeHardState } from '../../src/storage/log.js';
import { openRaftLog } from '../../src/storage/wal/migration.js';
import { readMetaNumber } from '../../src/storage/mvcc/store.js';
import { metaKey, prefix } from '../../src/storage/schema.js';
import { decodeChunk, finishInterruptedInstall, installStaged, isStaged, snapshotChunks, stageSnapshot } from '../../src/server/state-snapshot.js';
import { removeDirectory, temporaryDirectory } from '../helpers/processes.js';

const stateKey = (index: number): Buffer => Buffer.concat([Buffer.of(prefix.keyValue), Buffer.from(String(index).padStart(6, '0'))]);

async function collect<T>(items: AsyncIterable<T>): Promise<T[]> {
  const all: T[] = [];
  for await (const item of items) all.push(item);
  return all;
}

async function stateOf(db: SealedDatabase): Promise<Map<string, string>> {
  const state = new Map<string, string>();
  for await (const [key, value] of db.iterator({ gte: Buffer.of(prefix.keyValue), lt: Buffer.of(prefix.keyValue + 1) })) state.set(key.toString('hex'), value.toString());
  return state;
}

describe('state snapshots in chunks', () => {
  let directory: string;
  let leader: SealedDatabase;
  let follower: SealedDatabase;

  beforeEach(async () => {
    directory = await temporaryDirectory('state-snapshot');
    leader = await SealedDatabase.open(path.join(directory, 'leader'), undefined);
    follower = await SealedDatabase.open(path.join(directory, 'follower'), undefined);
  });

  afterEach(async () => {
    await leader.close();
    await follower.close();
    await removeDirectory(directory);
  });

  it('streams a view in bounded chunks, stages it, and installs it; a crash mid-install is finished on reopen', async () => {
    await leader.batch(Array.from({ length: 500 }, (_, index) => ({ type: 'put' as const, key: stateKey(index), value: Buffer.alloc(100, 0x61 + (index % 26)) })));
    await leader.batch([{ type: 'put', key: metaKey.memberId, value: Buffer.alloc(8, 1) }]);
    const view = leader.snapshot();
    // Written after the view: not part of the snapshot.
    await leader.batch([{ type: 'put', key: stateKey(999), value: Buffer.from('later') }]);
    const chunks = await collect(snapshotChunks(leader, view, 1024));
    await view.close();
    expect(chunks.length).toBeGreaterThan(40);
    for (const chunk of chunks) expect(chunk.length).toBeLessThan(1024 + 200);
    const records = chunks.flatMap((chunk) => decodeChunk(chunk));
    expect(records).toHaveLength(500);
    expect(records.some(([key]) => key.equals(stateKey(999)) || key.equals(metaKey.memberId))).toBe(false);

    // The follower holds older state that must disappear, and its own identity that must stay.
    await follower.batch([
      { type: 'put', key: stateKey(700), value: Buffer.from('stale') },
      { type: 'put', key: metaKey.memberId, value: Buffer.alloc(8, 2) },
    ]);
    const openLog = (): ReturnType<typeof openRaftLog> => openRaftLog({ dataDir: path.join(directory, 'follower'), db: follower, sealer: undefined });
    const { store: logStore } = await openLog();
    const staged = await stageSnapshot(follower, { index: 40, term: 3, configuration: { voters: [], learners: [] } }, (async function* () {
      yield* chunks;
    })());
    expect(staged).toMatchObject({ records: 500, chunks: chunks.length });
    expect(await isStaged(follower, 40, 3)).toBe(true);
    expect(await isStaged(follower, 41, 3)).toBe(false);
    await expect(installStaged(follower, logStore, 41, 3, undefined)).rejects.toThrow('not staged');

    // Crash after the marker and part of the move: the marker is durable, half the old state gone.
    const hardState = encodeHardState({ term: 3, vote: '', commit: 40 });
    await follower.batch([{ type: 'put', key: metaKey.snapshotInstalling, value: Buffer.concat([bigint64(40), bigint64(3), hardState]) }], { sync: true });
    await follower.batch([{ type: 'put', key: stateKey(3), value: Buffer.from('half-moved') }]);
    await logStore.close();
    const reopened = await openLog();
    expect(await finishInterruptedInstall(follower, reopened.store)).toBe(true);
    expect(await finishInterruptedInstall(follower, reopened.store)).toBe(false);
    await reopened.store.close();

    const expected = await stateOf(leader);
    expected.delete(stateKey(999).toString('hex'));
    expect(await stateOf(follower)).toEqual(expected);
    expect(await readMetaNumber(follower, metaKey.consistentIndex)).toBe(40);
    expect((await follower.get(metaKey.memberId))?.equals(Buffer.alloc(8, 2))).toBe(true);
    expect(await collect(follower.keys({ gte: Buffer.of(prefix.snapshotStaging), lt: Buffer.of(prefix.snapshotStaging + 1) }))).toHaveLength(0);
    const { store: last, loaded } = await openLog();
    await last.close();
    expect(loaded.logStart).toEqual({ index: 40, term: 3 });
    expect(loaded.hardState.commit).toBe(40);
  });

  it('refuses a malformed chunk whole', () => {
    expect(() => decodeChunk(Buffer.from([0, 0, 0, 9, 1]))).toThrow('truncated snapshot chunk');
    const local = Buffer.concat([Buffer.from([0, 0, 0, 1, prefix.logEntry]), Buffer.from([0, 0, 0, 0])]);
    expect(() => decodeChunk(local)).toThrow('member-local');
  });
});

function bigint64(value: number): Buffer {
  const bytes = Buffer.alloc(8);
  bytes.writeBigUInt64BE(BigInt(value));
  return bytes;
}
