/**
 * Certificate material checks and hot reload at unit level: what is refused and why, the expiry
 * warning, and that a bad update leaves the working material in place.
 */
import { Writable } from 'node:stream';
import { writeFile } from 'node:fs/promises';
import path from 'node:path';
import { pino, type Logger } from 'pino';
import { afterAll, describe, expect, it } from 'vitest';
import { createAuthority, issueCertificate, writeKeyPair } from '../../src/pki/authority.js';
import { ReloadingCertificateProvider, expiresSoon, loadMaterial } from '../../src/pki/reloading-provider.js';
import { removeDirectory, temporaryDirectory } from '../helpers/processes.js';

function capture(): { logger: Logger; lines: () => { level: number; msg: string }[] } {
  const chunks: string[] = [];
  const stream = new Writable({ write: (chunk: Buffer, _encoding, done) => { chunks.push(chunk.toString()); done(); } });
  return { logger: pino({ level: 'info' }, stream) as Logger, lines: () => chunks.join('').split('\n').filter(Boolean).map((line) => JSON.parse(line) as { level: number; msg: string }) };
}

describe('certificate material', () => {
  const directories: string[] = [];
  afterAll(async () => {
    for (const directory of directories) await removeDirectory(directory);
  });

  it('refuses a key that does not match, another CA, and expired or not-yet-valid certificates, naming the file', async () => {
    const directory = await temporaryDirectory('pki');
    directories.push(directory);
    const authority = await createAuthority('unit');
    const other = await createAuthority('other');
    const caFile = path.join(directory, 'ca.crt');
    await writeFile(caFile, authority.certificatePem);
    const good = await writeKeyPair(directory, 'good', await issueCertificate(authority, { kind: 'server', commonName: 'm1' }));
    const second = await writeKeyPair(directory, 'second', await issueCertificate(authority, { kind: 'server', commonName: 'm1' }));
    const foreign = await writeKeyPair(directory, 'foreign', await issueCertificate(other, { kind: 'server', commonName: 'm1' }));
    const expired = await writeKeyPair(directory, 'expired', await issueCertificate(authority, { kind: 'server', commonName: 'm1', notBefore: new Date(Date.now() - 3 * 86_400_000), validityDays: 1 }));
    const future = await writeKeyPair(directory, 'future', await issueCertificate(authority, { kind: 'server', commonName: 'm1', notBefore: new Date(Date.now() + 86_400_000) }));

    expect((await loadMaterial({ certificateFile: good.certificateFile, keyFile: good.keyFile, caFile })).leaf.subject).toContain('CN=m1');
    await expect(loadMaterial({ certificateFile: good.certificateFile, keyFile: second.keyFile, caFile })).rejects.toThrow(`${second.keyFile} does not match ${good.certificateFile}`);
    await expect(loadMaterial({ certificateFile: foreign.certificateFile, keyFile: foreign.keyFile, caFile })).rejects.toThrow(`${foreign.certificateFile} is not signed by a CA in ${caFile}`);
    await expect(loadMaterial({ certificateFile: expired.certificateFile, keyFile: expired.keyFile, caFile })).rejects.toThrow(/expired on/);
    await expect(loadMaterial({ certificateFile: future.certificateFile, keyFile: future.keyFile, caFile })).rejects.toThrow(/is not valid before/);
    await expect(loadMaterial({ certificateFile: caFile, keyFile: caFile, caFile })).rejects.toThrow(`${caFile}: not a PEM private key`);
  });

  it('warns in the last 30% of a lifetime, reloads a good update and keeps the old material on a bad one', async () => {
    const directory = await temporaryDirectory('pki');
    directories.push(directory);
    const authority = await createAuthority('unit');
    const caFile = path.join(directory, 'ca.crt');
    await writeFile(caFile, authority.certificatePem);
    const aging = await issueCertificate(authority, { kind: 'server', commonName: 'm1', notBefore: new Date(Date.now() - 75 * 86_400_000), validityDays: 90 });
    const files = await writeKeyPair(directory, 'server', aging);
    const { logger, lines } = capture();
    const provider = await ReloadingCertificateProvider.open({ certificateFile: files.certificateFile, keyFile: files.keyFile, caFile }, logger, 'client port', 20);
    try {
      expect(expiresSoon(provider.certificate)).toBe(true);
      expect(lines().some((line) => line.level === 40 && line.msg === 'certificate is in the last 30% of its lifetime; renew it')).toBe(true);

      const fresh = await issueCertificate(authority, { kind: 'server', commonName: 'm1' });
      await writeKeyPair(directory, 'server', fresh);
      const waitFor = async (condition: () => boolean): Promise<void> => {
        for (let attempt = 0; attempt < 200 && !condition(); attempt++) await new Promise((resolve) => setTimeout(resolve, 10));
      };
      await waitFor(() => provider.reloads === 1);
      expect(provider.reloads).toBe(1);
      expect(expiresSoon(provider.certificate)).toBe(false);
      const serial = provider.certificate.serialNumber;

      // A key from elsewhere: refused, logged, the working certificate stays. (Counted from here: the
      // poll may also have caught the renewal above half-written, and refused that moment too.)
      const refusals = (): number => lines().filter((line) => line.msg === 'refused new certificates; still using the previous ones').length;
      const before = refusals();
      await writeFile(files.keyFile, (await issueCertificate(authority, { kind: 'server', commonName: 'x' })).keyPem);
      await waitFor(() => refusals() > before);
      expect(refusals()).toBeGreaterThan(before);
      expect(provider.certificate.serialNumber).toBe(serial);
      expect(provider.reloads).toBe(1);
      expect(JSON.stringify(lines())).not.toContain('PRIVATE KEY');
    } finally {
      provider.close();
    }
  });
});
