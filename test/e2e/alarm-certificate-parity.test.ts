/**
 * `etcdctl alarm list` by a client certificate whose CN is no user, side by side with etcd 3.4 with
 * client-certificate auth and auth on, on the same CA: etcd answers every caller (Alarm is not
 * an admin call there) with an AlarmResponse that has no header, which `-w json` prints as `{}`;
 * Rampart answers the same, for the admin and for the stranger.
 */
import { spawn } from 'node:child_process';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { issueCertificate, readKeyPair, writeKeyPair } from '../../src/pki/authority.js';
import { cleanEnvironment, etcdAvailable, freePort, run, type ServerProcess } from '../helpers/processes.js';
import { startTlsMember, type TlsMember } from '../helpers/tls-member.js';

describe.runIf(etcdAvailable())('alarm list by a certificate that is no user, as etcd 3.4', () => {
  let member: TlsMember;
  let etcd: Pick<ServerProcess, 'child'> & { endpoint: string };

  beforeAll(async () => {
    member = await startTlsMember();
    const pki = path.join(member.directory, 'pki');
    const served = await writeKeyPair(member.directory, 'etcd-server', await issueCertificate(await readKeyPair(path.join(pki, 'ca'), 'ca'), { kind: 'server', commonName: 'etcd', subjectAltNames: ['127.0.0.1'] }));
    const [clientPort, peerPort] = [await freePort(), await freePort()];
    const child = spawn('etcd', [
      '--name', 'reference', '--data-dir', path.join(member.directory, 'etcd'),
      '--listen-client-urls', `https://127.0.0.1:${clientPort}`, '--advertise-client-urls', `https://127.0.0.1:${clientPort}`,
      '--listen-peer-urls', `http://127.0.0.1:${peerPort}`, '--initial-advertise-peer-urls', `http://127.0.0.1:${peerPort}`,
      '--initial-cluster', `reference=http://127.0.0.1:${peerPort}`, '--log-level', 'error',
      '--cert-file', served.certificateFile, '--key-file', served.keyFile, '--trusted-ca-file', path.join(pki, 'ca.crt'), '--client-cert-auth',
    ], { env: cleanEnvironment(), stdio: 'ignore' });
    etcd = { child, endpoint: `https://127.0.0.1:${clientPort}` };
    const admin = member.adminFlags.map((flag) => flag.replace(`https://127.0.0.1:${member.clientPort}`, etcd.endpoint));
    // The same set-up as Rampart's: a root user (the admin certificate's CN) and auth on.
    for (let attempt = 0; ; attempt++) {
      if ((await run('etcdctl', [...admin, 'user', 'add', 'root', '--no-password'])).code === 0) break;
      if (attempt > 60) throw new Error('etcd did not serve');
      await new Promise((resolve) => setTimeout(resolve, 250));
    }
    expect((await run('etcdctl', [...admin, 'auth', 'enable'])).code).toBe(0);
  }, 90_000);

  afterAll(async () => {
    etcd?.child.kill('SIGKILL');
    await member?.stop();
  }, 120_000);

  it('answers the admin and a stranger as etcd does: no header, no alarm', async () => {
    const stranger = await member.flagsFor('nobody');
    for (const flags of [member.adminFlags, stranger]) {
      const atRampart = await run('etcdctl', [...flags, 'alarm', 'list', '-w', 'json']);
      const atEtcd = await run('etcdctl', [...flags.map((flag) => flag.replace(`https://127.0.0.1:${member.clientPort}`, etcd.endpoint)), 'alarm', 'list', '-w', 'json']);
      expect(atEtcd.code, atEtcd.stderr).toBe(0);
      expect(atEtcd.stdout).toBe('{}\n');
      expect({ code: atRampart.code, stdout: atRampart.stdout }).toEqual({ code: atEtcd.code, stdout: atEtcd.stdout });
    }
  }, 60_000);
});
