/**
 * Watching certificate, key and CRL files: a change is reported within a few poll intervals
 * (rewritten in place or replaced by a rename, as `rampart rotate` and `cert revoke` do), an
 * unchanged or merely read file is not reported at all (no work per interval), readers of one file
 * are independent, and checks run one at a time. Then a member's revocation list picks up a new CRL.
 */
import { readFile, rename, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { pino } from 'pino';
import { afterAll, describe, expect, it } from 'vitest';
import { serialized, watchFiles } from '../../src/pki/file-watch.js';
import { removeDirectory, temporaryDirectory } from '../helpers/processes.js';

const intervalMs = 20;

async function waitFor(condition: () => boolean, timeoutMs = 5000): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  while (!condition() && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 5));
  return condition();
}

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

describe('watching files', () => {
  const directories: string[] = [];
  afterAll(async () => {
    for (const directory of directories) await removeDirectory(directory);
  });

  it('reports a rewrite and a replacing rename, and nothing for a file only read or left alone', async () => {
    const directory = await temporaryDirectory('watch');
    directories.push(directory);
    const file = path.join(directory, 'server.crt');
    await writeFile(file, 'first');
    let changes = 0;
    const watch = watchFiles([file, file], intervalMs, () => (changes += 1));
    try {
      await sleep(intervalMs * 10);
      await readFile(file);
      await sleep(intervalMs * 10);
      expect(changes).toBe(0);

      await writeFile(file, 'second, longer');
      expect(await waitFor(() => changes === 1)).toBe(true);
      // Same size, written elsewhere and renamed over it: only the inode tells.
      await writeFile(`${file}.new`, 'second, LONGER');
      await rename(`${file}.new`, file);
      expect(await waitFor(() => changes === 2)).toBe(true);
      await sleep(intervalMs * 10);
      expect(changes).toBe(2);
    } finally {
      watch.close();
    }
    await writeFile(file, 'after close');
    await sleep(intervalMs * 10);
    expect(changes).toBe(2);
  });

  it('reports a change made right after the watch starts (its first stat is taken at once)', async () => {
    const directory = await temporaryDirectory('watch');
    directories.push(directory);
    const file = path.join(directory, 'crl.pem');
    await writeFile(file, 'number 1');
    let changes = 0;
    const watch = watchFiles([file], intervalMs, () => (changes += 1));
    try {
      await writeFile(`${file}.new`, 'number 2');
      await rename(`${file}.new`, file);
      expect(await waitFor(() => changes === 1)).toBe(true);
    } finally {
      watch.close();
    }
  });

  it('keeps one reader of a file watching when another closes its watch', async () => {
    const directory = await temporaryDirectory('watch');
    directories.push(directory);
    const file = path.join(directory, 'ca.crt');
    await writeFile(file, 'ca');
    let first = 0;
    let second = 0;
    const one = watchFiles([file], intervalMs, () => (first += 1));
    const two = watchFiles([file], intervalMs, () => (second += 1));
    one.close();
    try {
      await writeFile(file, 'rotated ca');
      expect(await waitFor(() => second === 1)).toBe(true);
      expect(first).toBe(0);
    } finally {
      two.close();
    }
  });

  it('runs checks one at a time, and once more for a call made while one ran', async () => {
    let running = 0;
    let most = 0;
    let runs = 0;
    const check = serialized(async () => {
      running += 1;
      most = Math.max(most, running);
      runs += 1;
      await sleep(10);
      running -= 1;
    });
    await Promise.all([check(), check(), check()]);
    expect(most).toBe(1);
    expect(runs).toBe(2);
    await check();
    expect(runs).toBe(3);
  });

  it('enforces a new CRL within a few intervals of it being written', async () => {
    const { initAuthority, issueCertificate, writeKeyPair } = await import('../../src/pki/authority.js');
    const { RevocationList, revoke, writeRevocationList } = await import('../../src/pki/revocation.js');
    const home = await temporaryDirectory('watch-crl');
    directories.push(home);
    const pki = path.join(home, 'pki');
    const { authority } = await initAuthority(pki, 'watch');
    const alice = await writeKeyPair(pki, 'alice', await issueCertificate(authority, { kind: 'client', commonName: 'alice' }));
    const crlFile = await writeRevocationList(pki);
    const list = await RevocationList.open(crlFile, [path.join(pki, 'ca.crt')], pino({ level: 'silent' }), intervalMs, path.join(home, 'crl-number'));
    try {
      const { serialNumber } = await revoke(pki, alice.certificateFile);
      expect(list.isRevoked(serialNumber)).toBe(false);
      expect(await waitFor(() => list.isRevoked(serialNumber))).toBe(true);
    } finally {
      list.close();
    }
  });
});
