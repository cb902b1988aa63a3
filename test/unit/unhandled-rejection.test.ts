/**
 * The serve command's last resort for a promise rejection nothing handled: the member stops
 * through its failure path (logged, closed, exit 1) rather than Node's crash. One member in this
 * process, real Raft loop and database. The listener is called directly: emitting the event would
 * reach vitest's own listener too, which reports it as an error of the run.
 */
import { rm } from 'node:fs/promises';
import pino from 'pino';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { stopOnUnhandledRejection } from '../../src/cli/unhandled-rejection.js';
import { openOneMember, putRetrying, recordedLog, until } from '../helpers/in-process-cluster.js';
import { temporaryDirectory } from '../helpers/processes.js';

describe('an unhandled promise rejection in a serving member', () => {
  let dataDir: string | undefined;
  afterEach(async () => {
    if (dataDir !== undefined) await rm(dataDir, { recursive: true, force: true });
  });

  it('is logged and stops the member through its failure path, once', async () => {
    dataDir = await temporaryDirectory('unhandled-rejection');
    const log = recordedLog();
    const logger = pino({ level: 'info' }, log.stream);
    const member = await openOneMember(dataDir, log.stream, { initialClusterToken: 'unhandled-rejection', requestTimeoutMs: 2_000, logger });
    const exit = vi.spyOn(process, 'exit').mockImplementation((() => undefined) as never);
    const installed = stopOnUnhandledRejection(member, logger);
    try {
      expect(process.listeners('unhandledRejection')).toContain(installed.listener);
      await member.whenReady();
      await putRetrying(member, 'a', 'v0');
      const reason = Object.assign(new Error('IO error: /tmp/db/000123.log: No space left on device'), { code: 'LEVEL_IO_ERROR' });
      installed.listener(reason);
      installed.listener(reason); // a second one while the member closes changes nothing
      await until(() => exit.mock.calls.length > 0, 'the member to close and exit', 10_000);
      expect(exit).toHaveBeenCalledWith(1);
      const unhandled = log.records('unhandled promise rejection; stopping');
      expect(unhandled).toHaveLength(2);
      expect(unhandled[0]?.code).toBe('LEVEL_IO_ERROR');
      expect(unhandled[0]?.stack).toContain('unhandled-rejection.test.ts');
      const failed = log.records('member failed; stopping');
      expect(failed).toHaveLength(1);
      expect(failed[0]?.err).toContain('No space left on device');
      // Stopped: no more writes are taken.
      await expect(putRetrying(member, 'b', 'v1')).rejects.toThrow();
    } finally {
      installed.remove();
      exit.mockRestore();
      process.exitCode = 0;
      await member.close().catch(() => undefined);
    }
    expect(process.listeners('unhandledRejection')).not.toContain(installed.listener);
  });
});
