/**
 * A client that resumes a TLS session without a certificate is not authorized
 * (src/pki/resumed-session.ts), over real TLS 1.3 on 127.0.0.1, on the metrics listener as
 * boundMetricsServer sets it up: its first connection without a certificate gets a session ticket,
 * its second resumes with it. Node reports that second connection as authorized; the listener must
 * not. A client with a certificate stays authorized, resumed or not.
 */
import { once } from 'node:events';
import { createServer, request, type Server } from 'node:https';
import type { TLSSocket } from 'node:tls';
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createAuthority, issueCertificate, type KeyPairPem } from '../../src/pki/authority.js';
import { noCertificateError } from '../../src/pki/resumed-session.js';
import { boundMetricsServer } from '../../src/server/metrics-listener.js';

interface Seen {
  readonly authorized: boolean;
  readonly reused: boolean;
  readonly certificate: boolean;
  readonly error: string;
}

describe('a resumed TLS session', () => {
  let authority: KeyPairPem;
  let client: KeyPairPem;
  let server: Server;
  let port = 0;

  beforeAll(async () => {
    authority = await createAuthority('resumed session test');
    const serving = await issueCertificate(authority, { kind: 'server', commonName: 'member', subjectAltNames: ['127.0.0.1'] });
    client = await issueCertificate(authority, { kind: 'client', commonName: 'prometheus' });
    // As serveMetrics makes it: certificates requested, not required in the handshake.
    server = createServer({ ca: authority.certificatePem, cert: serving.certificatePem, key: serving.keyPem, requestCert: true, rejectUnauthorized: false, minVersion: 'TLSv1.2' }, (incoming, response) => {
      const socket = incoming.socket as TLSSocket;
      const seen: Seen = { authorized: socket.authorized, reused: socket.isSessionReused(), certificate: socket.getPeerCertificate().raw !== undefined, error: String(socket.authorizationError ?? '') };
      response.end(JSON.stringify(seen));
    });
    boundMetricsServer(server, { logger: pino({ level: 'silent' }), tls: true });
    server.listen(0, '127.0.0.1');
    await once(server, 'listening');
    const address = server.address();
    port = typeof address === 'object' && address !== null ? address.port : 0;
  });
  afterAll(() => {
    server.close();
    server.closeAllConnections();
  });

  /** One request on a new connection (no agent), resuming `session` when given; returns what the server saw and the ticket. */
  const call = (withCertificate: boolean, session?: Buffer): Promise<{ seen: Seen; session: Buffer | undefined }> => new Promise((resolve, reject) => {
    let ticket: Buffer | undefined;
    const outgoing = request({
      host: '127.0.0.1', port, path: '/metrics', agent: false, ca: authority.certificatePem, maxVersion: 'TLSv1.3',
      ...(withCertificate ? { cert: client.certificatePem, key: client.keyPem } : {}),
      ...(session === undefined ? {} : { session }),
    }, (response) => {
      let body = '';
      response.on('data', (chunk: Buffer) => (body += chunk.toString()));
      response.on('end', () => resolve({ seen: JSON.parse(body) as Seen, session: ticket }));
    });
    outgoing.on('socket', (socket: TLSSocket) => socket.on('session', (value: Buffer) => (ticket = value)));
    outgoing.on('error', reject);
    outgoing.end();
  });

  it('without a certificate is not authorized', async () => {
    const first = await call(false);
    expect(first.seen).toEqual({ authorized: false, reused: false, certificate: false, error: noCertificateError });
    expect(first.session).toBeDefined();
    const second = await call(false, first.session);
    // Resumed (else this case tests nothing), and still without a certificate: not authorized.
    expect(second.seen).toEqual({ authorized: false, reused: true, certificate: false, error: noCertificateError });
  });

  it('with a certificate is authorized, resumed or not', async () => {
    const first = await call(true);
    expect(first.seen).toEqual({ authorized: true, reused: false, certificate: true, error: '' });
    const second = await call(true, first.session);
    expect(second.seen).toEqual({ authorized: true, reused: true, certificate: true, error: '' });
  });
});
