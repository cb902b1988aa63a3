/**
 * Crash safety: SIGKILL a member in the middle of a write load, restart it, and check that every
 * acknowledged put is there with the revision it was acknowledged with, and that the revision
 * history has no gap and no repeat.
 */
import { describe, expect, it } from 'vitest';
import { call, connect, WatchRecorder } from '../helpers/client.js';
import { removeDirectory, startRampart, temporaryDirectory } from '../helpers/processes.js';

interface Acknowledged {
  readonly key: string;
  readonly value: string;
  readonly revision: number;
}

const writersCount = 32;

async function writeUntilFailure(endpoint: string, round: number, acknowledged: Acknowledged[]): Promise<void> {
  const client = connect(endpoint);
  let stopped = false;
  const writer = async (writer: number): Promise<void> => {
    for (let sequence = 0; !stopped; sequence++) {
      const key = `crash/${round}/${writer}/${sequence}`;
      const value = `${round}:${writer}:${sequence}`;
      try {
        const response = await call(client.kv, 'Put', { key: Buffer.from(key), value: Buffer.from(value) });
        acknowledged.push({ key, value, revision: Number((response.header as Record<string, string>).revision) });
      } catch {
        stopped = true;
      }
    }
  };
  await Promise.all(Array.from({ length: writersCount }, (_, index) => writer(index)));
  client.close();
}

describe('crash safety', () => {
  it('loses no acknowledged write across repeated SIGKILLs, and revisions have no gaps or repeats', async () => {
    const dataDir = await temporaryDirectory('crash');
    const acknowledged: Acknowledged[] = [];
    try {
      for (let round = 0; round < 3; round++) {
        const server = await startRampart({ dataDir });
        const load = writeUntilFailure(server.endpoint, round, acknowledged);
        // Killed once this round has acknowledged writes (a loaded machine may take seconds to
        // serve the first ones), at a point that moves from round to round.
        const before = acknowledged.length;
        for (const deadline = Date.now() + 40_000; acknowledged.length - before < 40 && Date.now() < deadline;) await new Promise((resolve) => setTimeout(resolve, 20));
        await new Promise((resolve) => setTimeout(resolve, 100 + round * 150));
        await server.stop('SIGKILL');
        await load;
      }
      expect(acknowledged.length).toBeGreaterThan(100);

      const server = await startRampart({ dataDir });
      const client = connect(server.endpoint);
      try {
        const missing: string[] = [];
        for (const write of acknowledged) {
          const response = await call(client.kv, 'Range', { key: Buffer.from(write.key) });
          const kv = (response.kvs as Record<string, unknown>[])[0];
          if (kv === undefined || (kv.value as Buffer).toString() !== write.value || Number(kv.mod_revision) !== write.revision) {
            missing.push(write.key);
          }
        }
        expect(missing).toEqual([]);

        const revisions = acknowledged.map((write) => write.revision);
        expect(new Set(revisions).size).toBe(revisions.length);

        // Every revision from the first put to the current one happened exactly once, in order.
        const status = await call(client.maintenance, 'Status', {});
        const current = Number((status.header as Record<string, string>).revision);
        expect(current).toBeGreaterThanOrEqual(Math.max(...revisions));
        const recorder = new WatchRecorder(client.watch.Watch());
        recorder.stream.write({ create_request: { key: Buffer.from('crash/'), range_end: Buffer.from('crash0'), start_revision: 2 } });
        await recorder.until(() => recorder.events().length === current - 1, 30_000);
        const seen = recorder.events().map((event) => Number((event.kv as Record<string, string>).mod_revision));
        expect(seen).toEqual(Array.from({ length: current - 1 }, (_, index) => index + 2));
        recorder.stream.end();

        const next = await call(client.kv, 'Put', { key: Buffer.from('after'), value: Buffer.from('crash') });
        expect(Number((next.header as Record<string, string>).revision)).toBe(current + 1);
      } finally {
        client.close();
        await server.stop();
      }
    } finally {
      await removeDirectory(dataDir);
    }
  }, 240_000);
});
