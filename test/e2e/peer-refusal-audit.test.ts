/**
 * What the peer port refuses is in the audit trail, not only in the log: a TLS handshake without a
 * certificate, one with another CA's certificate, and a call made with a client certificate of the
 * cluster's own CA (which may not act as a member) are each recorded as a denial with the source
 * and the reason, the last with the certificate's subject and fingerprint. A flood from one
 * address is recorded as its first refusal and one event counting the rest, not one event each.
 */
import { createHash, X509Certificate } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { connect as connectTcp, type Socket } from 'node:net';
import { connect as connectTls } from 'node:tls';
import * as grpc from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { peerRefusalWindowMs } from '../../src/audit/peer-refusals.js';
import type { AuditEvent } from '../../src/audit/event.js';
import { createAuthority, issueCertificate, readKeyPair } from '../../src/pki/authority.js';
import { run } from '../helpers/processes.js';
import { startTlsMember, type TlsMember } from '../helpers/tls-member.js';
import { trailWhen, verifyTrail } from '../helpers/tls-member-trail.js';

/** One TLS connection attempt without a certificate from 127.0.0.4, to its end: whether the member answered anything (it must not). */
function handshake(port: number, ca: Buffer): Promise<{ answered: boolean; localPort: number }> {
  return new Promise((resolve) => {
    let answered = false;
    let localPort = 0;
    const socket = connectTls({ socket: tcpFrom('127.0.0.4', port), ca, ALPNProtocols: ['h2'], checkServerIdentity: () => undefined }, () => {
      localPort = socket.localPort ?? 0;
      // TLS 1.3: the client is done before the server has checked its certificate; wait for the verdict.
      socket.write('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n');
    });
    socket.on('data', () => (answered = true));
    socket.on('error', () => undefined);
    socket.on('close', () => resolve({ answered, localPort: localPort || (socket.localPort ?? 0) }));
    socket.setTimeout(5000, () => socket.destroy());
  });
}

/** A TCP connection from `localAddress` (a loopback address of its own: one source per test step). */
function tcpFrom(localAddress: string, port: number): Socket {
  const socket = connectTcp({ host: '127.0.0.1', port, localAddress });
  socket.on('error', () => undefined);
  return socket;
}

describe('refusals of the peer port in the audit trail', () => {
  let member: TlsMember;
  let ca: Buffer;
  const eventually = (done: (all: AuditEvent[]) => boolean, timeoutMs?: number): Promise<AuditEvent[]> => trailWhen(member, done, timeoutMs);
  const peerEvents = (all: readonly AuditEvent[]): AuditEvent[] => all.filter((event) => event.action.startsWith('peer.refused'));

  beforeAll(async () => {
    member = await startTlsMember();
    ca = await readFile(path.join(member.directory, 'pki', 'ca.crt'));
  }, 90_000);

  afterAll(async () => {
    await member?.stop();
  }, 120_000);

  it('records a handshake without a certificate, another CA\'s certificate, and a client certificate acting as a member', async () => {
    const none = await handshake(member.peerPort, ca);
    expect(none.answered).toBe(false);
    // Each from its own address: the first refusal of an address in a window is recorded in full.
    const foreign = await issueCertificate(await createAuthority('another cluster root CA'), { kind: 'peer', commonName: 'a', subjectAltNames: ['127.0.0.1'] });
    const other = await new Promise<{ answered: boolean }>((resolve) => {
      const socket = connectTls({ socket: tcpFrom('127.0.0.2', member.peerPort), ca, ALPNProtocols: ['h2'], checkServerIdentity: () => undefined, cert: foreign.certificatePem, key: foreign.keyPem }, () => {
        socket.write('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n');
      });
      let answered = false;
      socket.on('data', () => (answered = true));
      socket.on('error', () => undefined);
      socket.on('close', () => resolve({ answered }));
    });
    expect(other.answered).toBe(false);
    // A client certificate of this cluster's CA, from 127.0.0.1 (no refusal from it yet in this
    // window): TLS lets it in, the peer service refuses it as a member.
    const pki = path.join(member.directory, 'pki');
    const clientPair = await issueCertificate(await readKeyPair(path.join(pki, 'ca'), 'ca'), { kind: 'client', commonName: 'mallory' });
    const fingerprint = new X509Certificate(clientPair.certificatePem).fingerprint256;
    const client = new grpc.Client(`127.0.0.1:${member.peerPort}`, grpc.credentials.createSsl(ca, Buffer.from(clientPair.keyPem), Buffer.from(clientPair.certificatePem)), {});
    const refusedCall = await new Promise<grpc.ServiceError | null>((resolve) => {
      client.makeUnaryRequest('/rampart.Peer/Cluster', (value: Buffer) => value, (value: Buffer) => value, Buffer.alloc(0), (error) => resolve(error));
    });
    client.close();
    expect(refusedCall?.code).toBe(grpc.status.PERMISSION_DENIED);

    const all = peerEvents(await eventually((found) => peerEvents(found).length >= 3));
    expect(all.find((event) => event.source === `127.0.0.4:${none.localPort}`)).toMatchObject({
      action: 'peer.refused', user: '', via: 'none', outcome: 'denied', code: 'UNAUTHENTICATED', detail: 'TLS handshake refused: ERR_SSL_PEER_DID_NOT_RETURN_A_CERTIFICATE',
    });
    const foreignEvent = all.find((event) => event.source?.startsWith('127.0.0.2:') === true);
    expect(foreignEvent).toMatchObject({ action: 'peer.refused', outcome: 'denied', code: 'UNAUTHENTICATED' });
    expect(foreignEvent?.detail).toMatch(/^TLS handshake refused: (UNABLE_TO_VERIFY_LEAF_SIGNATURE|UNABLE_TO_GET_ISSUER_CERT_LOCALLY|SELF_SIGNED_CERT_IN_CHAIN)$/);
    const clientEvent = all.find((event) => event.via === 'certificate');
    expect(clientEvent).toMatchObject({ action: 'peer.refused', via: 'certificate', outcome: 'denied', code: 'PERMISSION_DENIED' });
    expect(clientEvent?.detail).toContain('peer certificate refused: certificate "mallory" is not a peer certificate');
    expect(clientEvent?.detail).toContain('CN=mallory');
    expect(clientEvent?.detail).toContain(`sha256 ${fingerprint}`);
    expect(createHash('sha256').update(new X509Certificate(clientPair.certificatePem).raw).digest('hex').toUpperCase()).toBe(fingerprint.replaceAll(':', ''));
  }, 90_000);

  it('records a flood from one address as its first refusal and one event counting the rest', async () => {
    const flooder = '127.0.0.9';
    const attempts = 200;
    const one = (): Promise<boolean> => new Promise((resolve) => {
      const socket = connectTls({ socket: tcpFrom(flooder, member.peerPort), ca, ALPNProtocols: ['h2'], checkServerIdentity: () => undefined }, () => socket.write('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n'));
      let answered = false;
      socket.on('data', () => (answered = true));
      socket.on('error', () => undefined);
      socket.on('close', () => resolve(!answered));
      socket.setTimeout(5000, () => socket.destroy());
    });
    let refused = 0;
    for (let batch = 0; batch < attempts / 20; batch++) refused += (await Promise.all(Array.from({ length: 20 }, one))).filter(Boolean).length;
    expect(refused).toBe(attempts);
    const fromFlooder = (all: readonly AuditEvent[]): AuditEvent[] => peerEvents(all).filter((event) => event.source?.startsWith(flooder) === true);
    const counted = (all: readonly AuditEvent[]): number => fromFlooder(all)
      .reduce((sum, event) => sum + (event.action === 'peer.refused' ? 1 : Number(/^(\d+) more/.exec(event.detail ?? '')?.[1] ?? 0)), 0);
    // Counted refusals are written at the end of their window (10 s).
    const all = await eventually((found) => counted(found) >= attempts, peerRefusalWindowMs * 3);
    expect(counted(all)).toBe(attempts);
    // Every refusal accounted for, in a handful of events: one per window at most, plus each window's count.
    expect(fromFlooder(all).length).toBeLessThanOrEqual(6);
    expect(fromFlooder(all).find((event) => event.action === 'peer.refused.more')?.detail).toMatch(/^\d+ more peer connections refused from 127\.0\.0\.9 in 10 s: ERR_SSL_PEER_DID_NOT_RETURN_A_CERTIFICATE=\d+$/);
    // The trail still verifies, and the member still serves.
    const verified = await verifyTrail(member);
    expect(verified.stdout, verified.stderr).toMatch(/^audit trail intact: /);
    expect((await run('etcdctl', [...member.adminFlags, 'put', 'after', 'flood'])).stdout).toBe('OK\n');
  }, 120_000);
});
