/**
 * A client connection reads its certificate once (src/api/connection-certificate.ts), over real TLS
 * on 127.0.0.1: each connection answers with its own certificate, never another's, and a client
 * cannot swap certificates on an open connection (renegotiation ends it).
 */
import { once } from 'node:events';
import { connect, createServer, type PeerCertificate, type Server, type TLSSocket } from 'node:tls';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { rememberPeerCertificate } from '../../src/api/connection-certificate.js';
import { createAuthority, issueCertificate, type KeyPairPem } from '../../src/pki/authority.js';

describe('a client connection\'s certificate', () => {
  let authority: KeyPairPem;
  let alice: KeyPairPem;
  let bob: KeyPairPem;
  let server: Server;
  let port = 0;
  const accepted: TLSSocket[] = [];

  beforeAll(async () => {
    authority = await createAuthority('connection certificate test');
    const serving = await issueCertificate(authority, { kind: 'server', commonName: 'member', subjectAltNames: ['127.0.0.1'] });
    alice = await issueCertificate(authority, { kind: 'client', commonName: 'alice' });
    bob = await issueCertificate(authority, { kind: 'client', commonName: 'bob' });
    server = createServer({ ca: authority.certificatePem, cert: serving.certificatePem, key: serving.keyPem, requestCert: true, rejectUnauthorized: true, minVersion: 'TLSv1.2' });
    server.on('secureConnection', (socket: TLSSocket) => {
      socket.on('error', () => undefined);
      rememberPeerCertificate(socket);
      accepted.push(socket);
    });
    server.listen(0, '127.0.0.1');
    await once(server, 'listening');
    const address = server.address();
    port = typeof address === 'object' && address !== null ? address.port : 0;
  });
  afterAll(() => {
    for (const socket of accepted) socket.destroy();
    server.close();
  });

  const open = async (as: KeyPairPem, maxVersion: 'TLSv1.2' | 'TLSv1.3' = 'TLSv1.3'): Promise<{ client: TLSSocket; served: TLSSocket }> => {
    const before = accepted.length;
    const client = connect({ host: '127.0.0.1', port, ca: authority.certificatePem, cert: as.certificatePem, key: as.keyPem, maxVersion });
    client.on('error', () => undefined);
    await once(client, 'secureConnect');
    for (let attempt = 0; attempt < 100 && accepted.length === before; attempt++) await new Promise((resolve) => setTimeout(resolve, 10));
    const served = accepted[before];
    if (served === undefined) throw new Error('the server did not accept the connection');
    return { client, served };
  };

  it('is read once per connection, and each connection answers with its own', async () => {
    const first = await open(alice);
    const second = await open(bob);
    const a1: PeerCertificate = first.served.getPeerCertificate();
    expect(a1.subject.CN).toBe('alice');
    expect(first.served.getPeerCertificate()).toBe(a1); // the same object: not read again
    expect(Object.isFrozen(a1)).toBe(true);
    expect(second.served.getPeerCertificate().subject.CN).toBe('bob');
    expect(first.served.getPeerCertificate().subject.CN).toBe('alice');
    // The detailed form (with the issuer chain) is still read from the connection.
    expect(first.served.getPeerCertificate(true).issuerCertificate.subject.CN).toBe('connection certificate test');
    first.client.destroy();
    second.client.destroy();
  });

  it('ends a connection whose client tries to renegotiate (to present another certificate)', async () => {
    const { client, served } = await open(alice, 'TLSv1.2');
    expect(served.getPeerCertificate().subject.CN).toBe('alice');
    const closed = new Promise((resolve) => served.once('close', resolve));
    client.renegotiate({ rejectUnauthorized: true }, () => undefined);
    await closed;
    expect(served.destroyed).toBe(true);
    // Nothing more is read from it, so no request goes out under a certificate read before.
    let received = false;
    served.on('data', () => (received = true));
    client.write('after');
    await new Promise((resolve) => setTimeout(resolve, 100));
    expect(received).toBe(false);
  });
});
