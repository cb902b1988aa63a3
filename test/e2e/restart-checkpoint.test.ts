/**
 * The key index checkpoint on a real member: after a clean stop (SIGTERM) the next start loads the
 * index from it, after a SIGKILL it rebuilds from the database, and both read back exactly what was
 * there before: every key with its revisions, version, lease, history at an older revision.
 */
import { describe, expect, it } from 'vitest';
import { call, connect } from '../helpers/client.js';
import { removeDirectory, startRampart, temporaryDirectory, type ServerProcess } from '../helpers/processes.js';

const loadedFromCheckpoint = 'key index loaded from its checkpoint';

async function state(server: ServerProcess, oldRevision: number): Promise<unknown> {
  const client = connect(server.endpoint);
  try {
    const all = await call(client.kv, 'Range', { key: Buffer.of(0), range_end: Buffer.of(0) });
    const old = await call(client.kv, 'Range', { key: Buffer.of(0), range_end: Buffer.of(0), revision: oldRevision });
    const plain = (response: Record<string, unknown>): unknown => ({
      revision: (response.header as Record<string, string>).revision,
      kvs: (response.kvs as Record<string, unknown>[]).map((kv) => ({ ...kv, key: (kv.key as Buffer).toString('hex'), value: (kv.value as Buffer).toString('hex') })),
    });
    return { all: plain(all), old: plain(old) };
  } finally {
    client.close();
  }
}

describe('key index checkpoint', () => {
  it('is loaded after a clean stop, not after a SIGKILL, and both read back the same state', async () => {
    const dataDir = await temporaryDirectory('restart-checkpoint');
    const args = ['--log-level', 'info'];
    let server = await startRampart({ dataDir, args });
    try {
      const client = connect(server.endpoint);
      const lease = await call(client.lease, 'LeaseGrant', { TTL: 3600 });
      let oldRevision = 0;
      for (let round = 0; round < 3; round++) {
        for (let index = 0; index < 60; index++) {
          const response = await call(client.kv, 'Put', { key: Buffer.from(`/registry/k-${index}`), value: Buffer.alloc(index * 40, round), lease: index % 7 === 0 ? lease.ID : 0 });
          if (round === 1 && index === 30) oldRevision = Number((response.header as Record<string, string>).revision);
        }
      }
      await call(client.kv, 'DeleteRange', { key: Buffer.from('/registry/k-1'), range_end: Buffer.from('/registry/k-2') });
      await call(client.kv, 'Compact', { revision: oldRevision - 5, physical: true });
      client.close();
      const before = await state(server, oldRevision);

      expect(await server.stop('SIGTERM')).toBe(0);
      server = await startRampart({ dataDir, args });
      expect(server.output()).toContain(loadedFromCheckpoint);
      expect(await state(server, oldRevision)).toEqual(before);

      // Taken at start: a crash after it rebuilds from the database (and reads the same).
      await server.stop('SIGKILL');
      server = await startRampart({ dataDir, args });
      expect(await state(server, oldRevision)).toEqual(before);
      expect(server.output()).not.toContain(loadedFromCheckpoint);
    } finally {
      await server.stop('SIGKILL');
      await removeDirectory(dataDir);
    }
  }, 120_000);
});
