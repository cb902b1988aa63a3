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
        for (const deadline = Date.now() + 30_000; !condition() && Date.now() < deadline;) await new Promise((resolve) => setTimeout(resolve, 10));
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

describe('certificate revocation lists', () => {
  it('numbers each CRL one above the last, and a member refuses an older one, after a restart too', async () => {
    const { copyFile, readFile, utimes } = await import('node:fs/promises');
    const { initAuthority } = await import('../../src/pki/authority.js');
    const { RevocationList, crlNumberOf, revoke, writeRevocationList } = await import('../../src/pki/revocation.js');
    const x509 = await import('@peculiar/x509');
    const home = await temporaryDirectory('crl');
    const pki = path.join(home, 'pki');
    const { authority } = await initAuthority(pki, 'crl');
    const member = await writeKeyPair(pki, 'member', await issueCertificate(authority, { kind: 'client', commonName: 'member' }));
    const root = await writeKeyPair(pki, 'root', await issueCertificate(authority, { kind: 'client', commonName: 'root' }));
    const crlFile = await writeRevocationList(pki);
    const first = await readFile(crlFile, 'utf8');
    expect(first.startsWith('-----BEGIN X509 CRL-----\n')).toBe(true);
    expect(crlNumberOf(new x509.X509Crl(first))).toBe(1n);
    const numberFile = path.join(home, 'crl-number');
    const caFile = path.join(pki, 'ca.crt');
    const { serialNumber } = await revoke(pki, root.certificateFile);
    await revoke(pki, member.certificateFile);
    expect(crlNumberOf(new x509.X509Crl(await readFile(crlFile, 'utf8')))).toBe(3n);

    const { logger, lines } = capture();
    const list = await RevocationList.open(crlFile, [caFile], logger, 20, numberFile);
    expect(list.isRevoked(serialNumber)).toBe(true);
    expect((await readFile(numberFile, 'utf8')).trim()).toBe('3');
    // The first CRL (validly signed, nothing revoked) copied over the current one: refused, root stays revoked.
    await writeFile(crlFile, first);
    await utimes(crlFile, new Date(), new Date(Date.now() + 5000));
    // Waited for (the 20 ms poll's refusal), not a fixed 200 ms that a loaded machine can outlast.
    const refusedOlder = (): boolean => lines().some((line) => line.msg.includes('its CRL number 1 is older than 3, already enforced'));
    for (const deadline = Date.now() + 30_000; !refusedOlder() && Date.now() < deadline;) await new Promise((resolve) => setTimeout(resolve, 10));
    expect(list.isRevoked(serialNumber)).toBe(true);
    expect(lines().map((line) => line.msg)).toContainEqual(expect.stringContaining('its CRL number 1 is older than 3, already enforced'));
    list.close();
    // A restart remembers the number: the older CRL stops the start, and so does a removed one.
    await expect(RevocationList.open(crlFile, [caFile], logger, 20, numberFile)).rejects.toThrow('its CRL number 1 is older than 3');
    await copyFile(crlFile, `${crlFile}.old`);
    const { rm } = await import('node:fs/promises');
    await rm(crlFile);
    await expect(RevocationList.open(crlFile, [caFile], logger, 20, numberFile)).rejects.toThrow('is missing, but this member has enforced CRL number 3');
    await removeDirectory(home);
  });
});
