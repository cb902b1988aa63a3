/**
 * Issue 8, item 12 (parts): UserChangePassword tells no caller without permission whether a user
 * exists; user and role names with control characters or over 256 bytes are refused; a TLS
 * refusal of a certificate from another CA is logged with its reason and the peer's address.
 */
import { connect } from 'node:tls';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { cleanEnvironment, run } from '../helpers/processes.js';
import { startTlsMember, type TlsMember } from '../helpers/tls-member.js';

describe('small leaks (TLS member)', () => {
  let member: TlsMember;
  const etcdctl = (flags: readonly string[], args: string[], input?: string) => run('etcdctl', [...flags, ...args], { env: cleanEnvironment(), ...(input === undefined ? {} : { input }) });
  /** etcdctl's error line (it may log a retry warning before it). */
  const errorLine = (stderr: string): string => stderr.trim().split('\n').pop() ?? '';
  beforeAll(async () => {
    member = await startTlsMember();
  }, 60_000);
  afterAll(async () => {
    await member?.stop();
  });

  it('UserChangePassword: permission denied before whether the user exists', async () => {
    // A user without root (auditor) and a certificate that is no user (etcd answers that the caller is not found).
    for (const [commonName, expected] of [['auditor', 'Error: etcdserver: permission denied'], ['stranger', 'Error: etcdserver: user name not found']] as const) {
      const flags = await member.flagsFor(commonName);
      for (const name of ['kube-apiserver', 'no-such-user']) {
        const result = await etcdctl(flags, ['user', 'passwd', name, '--interactive=false'], 'new-password\n');
        expect(errorLine(result.stderr), `${commonName} changing ${name}`).toBe(expected);
      }
    }
    // root still learns it, as in etcd.
    expect(errorLine((await etcdctl(member.adminFlags, ['user', 'passwd', 'no-such-user', '--interactive=false'], 'new-password\n')).stderr)).toBe('Error: etcdserver: user name not found');
  }, 120_000);

  it('refuses user and role names with control characters or over 256 bytes, clearly', async () => {
    // etcdctl prints errors it does not know with their gRPC code.
    const refusal = 'Error: rpc error: code = InvalidArgument desc = rampart: user and role names are at most 256 bytes and contain no control characters';
    for (const args of [['user', 'add', 'tab\there', '--new-user-password=pw'], ['user', 'add', 'x'.repeat(257), '--new-user-password=pw'], ['role', 'add', 'bell\u0007'], ['role', 'add', 'escape\u001b[31m']]) {
      const result = await etcdctl(member.adminFlags, args);
      expect(errorLine(result.stderr), args.join(' ')).toBe(refusal);
    }
    expect((await etcdctl(member.adminFlags, ['user', 'add', 'x'.repeat(256), '--new-user-password=pw'])).code).toBe(0);
    expect((await etcdctl(member.adminFlags, ['role', 'add', 'ünïcode-role'])).stdout).toBe('Role ünïcode-role created\n');
    expect((await etcdctl(member.adminFlags, ['user', 'list'])).stdout).not.toMatch(/tab|bell|escape/);
  }, 120_000);

  it('logs a certificate from another CA with the reason and the peer address', async () => {
    const { createAuthority, issueCertificate } = await import('../../src/pki/authority.js');
    const foreign = await issueCertificate(await createAuthority('another-ca'), { kind: 'client', commonName: 'root' });
    await new Promise<void>((resolve) => {
      const socket = connect({ host: '127.0.0.1', port: member.clientPort, key: foreign.keyPem, cert: foreign.certificatePem, rejectUnauthorized: false, ALPNProtocols: ['h2'] }, () => socket.write('x'));
      socket.on('error', () => resolve());
      socket.on('close', () => resolve());
    });
    // Waited for up to 30 s (was 5 s): the member logs the refusal when it gets to it.
    const deadline = Date.now() + 30_000;
    const line = (): string | undefined => member.output().split('\n').find((entry) => entry.includes('refused a TLS connection'));
    while (line() === undefined && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 100));
    const logged = JSON.parse(line() ?? '{}') as { remote?: string; reason?: string };
    expect(logged.reason).toBe('UNABLE_TO_VERIFY_LEAF_SIGNATURE');
    expect(logged.remote).toMatch(/^127\.0\.0\.1:\d+$/);
  }, 60_000);
});
