import { readFile, readdir, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { AuditLog, auditKey, genesisHash, readAudit, verifyAudit } from '../../src/audit/log.js';
import { removeDirectory, temporaryDirectory } from '../helpers/processes.js';

describe('audit trail', () => {
  const directories: string[] = [];
  afterAll(async () => {
    for (const directory of directories) await removeDirectory(directory);
  });
  const fail = (error: unknown): never => {
    throw error;
  };

  async function trail(): Promise<{ directory: string; files: string[] }> {
    const directory = await temporaryDirectory('audit');
    directories.push(directory);
    for (let run = 0; run < 2; run++) {
      const log = await AuditLog.open(directory, 'abc', fail);
      log.record({ action: 'Put', user: 'alice', via: 'certificate', targets: ['/app/1'], outcome: 'allowed', code: 'OK' });
      log.record({ action: 'Put', user: 'alice', via: 'certificate', targets: ['/other'], outcome: 'denied', code: 'PERMISSION_DENIED', detail: 'etcdserver: permission denied' });
      await log.close();
    }
    return { directory, files: (await readdir(directory)).sort().map((name) => path.join(directory, name)) };
  }

  it('chains every event, across files, and verifies', async () => {
    const { directory, files } = await trail();
    expect(files).toHaveLength(2);
    const result = await verifyAudit(directory);
    expect(result).toMatchObject({ ok: true, events: 6, files: 2 });
    const events = await readAudit(directory);
    expect(events.map((event) => [event.seq, event.action, event.outcome])).toEqual([
      [0, 'audit.start', 'allowed'], [1, 'Put', 'allowed'], [2, 'Put', 'denied'],
      [0, 'audit.start', 'allowed'], [1, 'Put', 'allowed'], [2, 'Put', 'denied'],
    ]);
    expect(events[0]?.prev).toBe(genesisHash);
    expect(events[3]?.prev).toBe(events[2]?.hash);
    expect(events[3]?.targets).toEqual([path.basename(files[0] as string)]);
    expect(result.head).toBe(events[5]?.hash);
  });

  it('detects an altered, removed or moved line, and a removed file', async () => {
    const check = async (change: (lines: string[]) => string[], expected: RegExp): Promise<void> => {
      const { directory, files } = await trail();
      const file = files[0] as string;
      await writeFile(file, `${change((await readFile(file, 'utf8')).trim().split('\n')).join('\n')}\n`);
      const result = await verifyAudit(directory);
      expect(result.ok).toBe(false);
      expect(result.problem).toMatch(expected);
    };
    await check((lines) => lines.map((line, index) => (index === 2 ? line.replace('"denied"', '"allowed"') : line)), /:3: hash does not match/);
    await check((lines) => lines.filter((_line, index) => index !== 1), /:2: does not follow the line before it/);
    await check((lines) => [lines[0] as string, lines[2] as string, lines[1] as string], /:2: does not follow/);
    await check((lines) => [...lines, '{"torn'], /:4: not a JSON event/);
    const { directory, files } = await trail();
    const third = await AuditLog.open(directory, 'abc', fail);
    await third.close();
    await rm(files[1] as string);
    expect((await verifyAudit(directory)).problem).toMatch(/does not continue the previous file/);
    await expect(readAudit(directory)).rejects.toThrow('the audit trail is broken');
  });

  it('writes keys as text when printable, base64 otherwise', () => {
    expect(auditKey(Buffer.from('/registry/pods/a'))).toBe('/registry/pods/a');
    expect(auditKey(Buffer.from([0, 1, 0xff]))).toBe('base64:AAH/');
  });
});
