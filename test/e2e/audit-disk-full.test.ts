/**
 * Issue 8, item 2: a full audit disk, for real. The audit directory sits on its own 4 MiB tmpfs
 * (needs root and a container that allows mounts; skipped, saying why, where it cannot), which a
 * ballast file fills until the kernel answers ENOSPC. The member stops with the error that names
 * the fix, every write it acknowledged is in the trail, it refuses to start while the disk is full
 * (same message), and once space is freed it starts, serves every acknowledged write, and the
 * trail verifies.
 */
import { mkdir, readFile, readdir } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import type { AuditEvent } from '../../src/audit/event.js';
import { call, connect } from '../helpers/client.js';
import { freePort, rampartBin, removeDirectory, run, startRampart, temporaryDirectory, type ServerProcess } from '../helpers/processes.js';
import { drainDisk, fillDisk, mountSmallDisk, unmountSmallDisk } from '../soak/disk-faults.js';

async function auditedKeys(directory: string): Promise<Set<string>> {
  const keys = new Set<string>();
  for (const name of (await readdir(directory)).sort()) {
    for (const line of (await readFile(path.join(directory, name), 'utf8')).split('\n')) {
      // A record the full disk cut short is no event: only complete lines count.
      let event: AuditEvent;
      try {
        event = JSON.parse(line) as AuditEvent;
      } catch {
        continue;
      }
      for (const target of event.targets ?? []) keys.add(target);
    }
  }
  return keys;
}

describe('a full audit disk', () => {
  const cleanup: (() => Promise<unknown>)[] = [];
  afterAll(async () => {
    for (const step of cleanup.reverse()) await step();
  });

  it('stops the member with the fix named, acknowledges nothing unaudited, and it starts once space is freed', async (context) => {
    const home = await temporaryDirectory('audit-disk-full');
    cleanup.push(() => removeDirectory(home));
    const disk = path.join(home, 'disk');
    const problem = await mountSmallDisk(disk, 4);
    if (problem !== undefined) {
      console.log(`skipped: cannot mount a small file system here (${problem})`);
      context.skip();
      return;
    }
    cleanup.push(() => unmountSmallDisk(disk));
    const auditDir = path.join(disk, 'audit');
    await mkdir(auditDir, { mode: 0o700 });
    const dataDir = path.join(home, 'data');
    const args = ['--audit-dir', auditDir];
    const server: ServerProcess = await startRampart({ dataDir, args });
    cleanup.push(() => server.stop('SIGKILL'));
    const client = connect(server.endpoint);
    cleanup.push(() => Promise.resolve(client.close()));
    const acknowledged: string[] = [];
    const put = async (key: string): Promise<boolean> => {
      try {
        await call(client.kv, 'Put', { key: Buffer.from(key), value: Buffer.from('v') });
        acknowledged.push(key);
        return true;
      } catch {
        return false;
      }
    };
    for (let index = 0; index < 20; index++) expect(await put(`before-${index}`)).toBe(true);

    const ballastBytes = await fillDisk(disk);
    expect(ballastBytes).toBeGreaterThan(0);
    let failedAt = -1;
    for (let index = 0; index < 200 && server.child.exitCode === null; index++) {
      if (!(await put(`after-${index}`))) {
        failedAt = index;
        break;
      }
    }
    const code = await new Promise<number | null>((resolve) => {
      if (server.child.exitCode !== null) resolve(server.child.exitCode);
      else server.child.once('exit', (exitCode) => resolve(exitCode));
    });
    console.log(`audit disk full: ${ballastBytes} bytes of ballast; first refused put after ${failedAt} more; ${acknowledged.length} acknowledged`);
    expect(code).toBe(1);
    expect(failedAt).toBeGreaterThanOrEqual(0);
    const stopped = server.output();
    expect(stopped).toContain(`rampart: the audit disk is full (ENOSPC) at ${auditDir}: this member stops rather than serve unaudited.`);
    expect(stopped).toContain(`To recover: verify and archive old audit files elsewhere (rampart audit verify ${auditDir})`);

    // Every acknowledged write is in the trail (an answer waits for its audit record to be durable).
    const audited = await auditedKeys(auditDir);
    expect(acknowledged.filter((key) => !audited.has(key))).toEqual([]);

    // While the disk is full the member does not start: it says why and how to recover.
    const port = await freePort();
    const peerPort = await freePort();
    const refused = await run(process.execPath, [rampartBin, 'serve', '--insecure', '--name', 'default', '--data-dir', dataDir,
      '--listen-client-urls', `http://127.0.0.1:${port}`, '--listen-peer-urls', `http://127.0.0.1:${peerPort}`, ...args], { timeoutMs: 30_000 });
    expect(refused.code).toBe(1);
    expect(refused.stderr).toContain('the audit disk is full (ENOSPC)');
    expect(refused.stderr).toContain('To recover');

    // Space freed: it starts, serves every acknowledged write, and the trail verifies.
    await drainDisk(disk);
    const again = await startRampart({ dataDir, args });
    cleanup.push(() => again.stop('SIGKILL'));
    const reader = connect(again.endpoint);
    try {
      for (const key of acknowledged) {
        const answer = await call(reader.kv, 'Range', { key: Buffer.from(key) });
        expect((answer.kvs as unknown[]).length, key).toBe(1);
      }
      await call(reader.kv, 'Put', { key: Buffer.from('after-recovery'), value: Buffer.from('v') });
    } finally {
      reader.close();
    }
    await again.stop('SIGTERM');
    const verified = await run(process.execPath, [rampartBin, 'audit', 'verify', auditDir], { timeoutMs: 60_000 });
    expect(verified.code, verified.stdout + verified.stderr).toBe(0);
  }, 90_000);
});
