/**
 * The key index checkpoint on a real member: after a clean stop (SIGTERM) the next start loads the
 * index from it, after a SIGKILL it rebuilds from the database, and both read back exactly what was
 * there before: every key with its revisions, version, lease, history at an older revision.
 */
import { connect as connectTcp, type Socket } from 'node:net';
import { describe, expect, it } from 'vitest';
import { call, connect, WatchRecorder } from '../helpers/client.js';
import { removeDirectory, startCluster, startRampart, temporaryDirectory, type ServerProcess } from '../helpers/processes.js';
import { startTlsMember } from '../helpers/tls-member.js';

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

  /**
   * The other members' message streams held the stopping member's peer transport open (grpc-js
   * waited for them), so it never reached the checkpoint: it exited 1 when `rampart serve`'s 8 s
   * limit ended it ('shutdown took too long'), and its next start rebuilt the index.
   */
  it('is written by a member stopped while the rest of its cluster runs, which exits cleanly', async () => {
    const cluster = await startCluster(3, ['--log-level', 'info']);
    try {
      const [first, stopped] = cluster.members;
      if (first?.process === undefined || stopped?.process === undefined) throw new Error('cluster not started');
      const client = connect(first.process.endpoint);
      for (let index = 0; index < 20; index++) await call(client.kv, 'Put', { key: Buffer.from(`k-${index}`), value: Buffer.from(`v-${index}`) });
      client.close();
      const code = await stopped.process.stop('SIGTERM');
      const output = stopped.process.output();
      expect(output).not.toContain('shutdown took too long');
      expect(code).toBe(0);
      expect(output).toContain('key index checkpoint written');
      const restarted = await cluster.start(stopped);
      expect(restarted.output()).toContain(loadedFromCheckpoint);
    } finally {
      await cluster.remove();
    }
  }, 120_000);

  /**
   * Clients holding the client port open: a Watch and a LeaseKeepAlive stream (open as long as the
   * client runs) and a TCP connection that never starts its TLS handshake. The port answers what is
   * in flight, ends them after a short grace, and the member closes and writes its checkpoint.
   * From the signal on, /readyz says not ready.
   */
  it('is written by a member stopped while clients hold streams and a handshake open, which exits cleanly', async () => {
    const member = await startTlsMember(['--log-level', 'info']);
    let stalled: Socket | undefined;
    try {
      const client = await member.client('root');
      await call(client.kv, 'Put', { key: Buffer.from('a'), value: Buffer.from('b') });
      const watch = new WatchRecorder(client.watch.Watch());
      watch.stream.write({ create_request: { key: Buffer.from('a') } });
      await watch.until(() => watch.responses.length > 0);
      const lease = await call(client.lease, 'LeaseGrant', { TTL: 60 });
      const keepAlive = client.lease.LeaseKeepAlive();
      keepAlive.on('error', () => undefined);
      const kept = new Promise((resolve) => keepAlive.once('data', resolve));
      keepAlive.write({ ID: lease.ID });
      await kept;
      const opened = connectTcp(member.clientPort, '127.0.0.1');
      stalled = opened;
      opened.on('error', () => undefined);
      await new Promise((resolve) => opened.once('connect', resolve));
      const readyz = async (): Promise<number | undefined> => {
        try {
          return (await fetch(`http://127.0.0.1:${member.metricsPort}/readyz`, { signal: AbortSignal.timeout(2000) })).status;
        } catch {
          return undefined; // the metrics port is gone with the process
        }
      };
      expect(await readyz()).toBe(200);
      let running = true;
      const exited = new Promise<number | null>((resolve) => member.child.once('exit', (code) => {
        running = false;
        resolve(code);
      }));
      member.child.kill('SIGTERM');
      // While the stop waits for the held streams (its grace), /readyz says not ready.
      const answers: number[] = [];
      while (running) {
        const status = await readyz();
        if (status !== undefined && running) answers.push(status);
        await new Promise((resolve) => setTimeout(resolve, 25));
      }
      const code = await exited;
      expect(answers.length).toBeGreaterThan(0);
      expect(answers.filter((status) => status !== 503)).toEqual([]);
      const output = member.output();
      expect(output).not.toContain('shutdown took too long');
      expect(code).toBe(0);
      expect(output).toContain('key index checkpoint written');
      client.close();
    } finally {
      stalled?.destroy();
      await member.stop();
    }
  }, 120_000);
});
