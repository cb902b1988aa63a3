/**
 * The per-client limits `rampart serve` takes as flags, etcd's names and defaults: a value that
 * cannot work is refused at start with a message naming the flag and its range (nothing started);
 * --max-concurrent-streams bounds the streams of one client connection (a watch holding the only
 * stream leaves a Range waiting), where the default bounds nothing more than etcd's does.
 */
import * as grpc from '@grpc/grpc-js';
import { afterAll, describe, expect, it } from 'vitest';
import { connect, type RawClient } from '../helpers/client.js';
import { rampartBin, removeDirectory, run, startRampart, temporaryDirectory, type ServerProcess } from '../helpers/processes.js';

/** A Range over the connection `client` holds, with a deadline: its status code (0 when answered). */
function rangeCode(client: RawClient, deadlineMs: number): Promise<number> {
  return new Promise((resolve) => {
    const range = client.kv.Range as unknown as (request: object, metadata: grpc.Metadata, options: grpc.CallOptions, callback: (error: grpc.ServiceError | null) => void) => void;
    range.call(client.kv, { key: Buffer.from('k') }, new grpc.Metadata(), { deadline: Date.now() + deadlineMs }, (error) => resolve(error === null ? 0 : error.code));
  });
}

describe('limit flags of rampart serve', () => {
  const started: ServerProcess[] = [];
  afterAll(async () => {
    for (const server of started) {
      await server.stop();
      await removeDirectory(server.dataDir);
    }
  }, 120_000);

  it('refuses values that cannot work, naming the flag and its range', async () => {
    const dataDir = await temporaryDirectory('limit-flags');
    try {
      const serve = (...flags: string[]): Promise<{ code: number; stderr: string }> =>
        run(process.execPath, [rampartBin, 'serve', '--insecure', '--data-dir', dataDir, '--listen-client-urls', 'http://127.0.0.1:1', '--listen-peer-urls', 'http://127.0.0.1:2', ...flags]);
      const zeroBytes = await serve('--max-request-bytes', '0');
      expect(zeroBytes.code).toBe(1);
      expect(zeroBytes.stderr).toContain('rampart: --max-request-bytes must be between 1 and 67108864 (got 0)');
      const hugeBytes = await serve('--max-request-bytes', String(128 * 1024 * 1024));
      expect(hugeBytes.stderr).toContain('--max-request-bytes must be between 1 and 67108864 (got 134217728): a larger request could never arrive');
      const zeroStreams = await serve('--max-concurrent-streams', '0');
      expect(zeroStreams.code).toBe(1);
      expect(zeroStreams.stderr).toContain('rampart: --max-concurrent-streams must be between 1 and 4294967295 (got 0)');
      const tooManyStreams = await serve('--max-concurrent-streams', '4294967296');
      expect(tooManyStreams.stderr).toContain('--max-concurrent-streams must be between 1 and 4294967295 (got 4294967296)');
      const notNumber = await serve('--max-concurrent-streams', 'many');
      expect(notNumber.code).not.toBe(0);
      expect(notNumber.stderr).toContain('not a non-negative integer: many');
      // Nothing was started: no stack trace, no database.
      for (const result of [zeroBytes, hugeBytes, zeroStreams, tooManyStreams, notNumber]) expect(result.stderr).not.toMatch(/\n\s+at /);
    } finally {
      await removeDirectory(dataDir);
    }
  }, 60_000);

  it('--max-concurrent-streams bounds the streams of one connection; the default does not', async () => {
    const [bounded, unbounded] = await Promise.all([startRampart({ args: ['--max-concurrent-streams', '1'] }), startRampart()]);
    started.push(bounded, unbounded);
    for (const [server, expected] of [[bounded, grpc.status.DEADLINE_EXCEEDED], [unbounded, grpc.status.OK]] as const) {
      const client = connect(server.endpoint);
      try {
        expect(await rangeCode(client, 10_000)).toBe(grpc.status.OK); // connected, and serving
        const watch = client.watch.Watch();
        watch.on('error', () => undefined);
        const created = new Promise((resolve) => watch.once('data', resolve));
        watch.write({ create_request: { key: Buffer.from('w') } });
        await created;
        // The watch holds one stream of the connection; a Range needs another.
        expect(await rangeCode(client, 2_000)).toBe(expected);
        watch.cancel();
      } finally {
        client.close();
      }
    }
  }, 90_000);
});
