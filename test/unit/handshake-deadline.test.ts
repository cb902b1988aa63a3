/**
 * A TLS listener drops a connection that has not finished its handshake within the deadline, which
 * gives its address's connection slot back: a flood of stalled handshakes holds the slots of its
 * address for the deadline only, not Node's 120 s. A finished handshake is never dropped by it.
 */
import { once } from 'node:events';
import { connect as connectTcp, type Socket } from 'node:net';
import { connect as connectTls, createServer as createTlsServer, type Server as TlsServer, type TLSSocket } from 'node:tls';
import pino from 'pino';
import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import { createAuthority, issueCertificate, type KeyPairPem } from '../../src/pki/authority.js';
import { limitConnections } from '../../src/pki/connection-limit.js';
import { limitHandshakeTime, tlsHandshakeTimeoutMs } from '../../src/pki/handshake-deadline.js';

const deadlineMs = 400;

describe('limitHandshakeTime', () => {
  let authority: KeyPairPem;
  let serverPair: KeyPairPem;
  let clientPair: KeyPairPem;
  const sockets: Socket[] = [];
  let server: TlsServer | undefined;

  beforeAll(async () => {
    authority = await createAuthority('handshake deadline test CA');
    serverPair = await issueCertificate(authority, { kind: 'server', commonName: 'server', subjectAltNames: ['127.0.0.1'] });
    clientPair = await issueCertificate(authority, { kind: 'client', commonName: 'client' });
  });

  afterEach(() => {
    for (const socket of sockets.splice(0)) socket.destroy();
    server?.close();
  });

  /** A mutual-TLS server with both bounds, as the client and peer ports have them (smaller). */
  async function listen(onTimeout?: (remote: string) => void): Promise<number> {
    server = createTlsServer({ ca: authority.certificatePem, cert: serverPair.certificatePem, key: serverPair.keyPem, requestCert: true, rejectUnauthorized: true, minVersion: 'TLSv1.2' }, (socket) => {
      socket.on('error', () => undefined);
    });
    server.on('tlsClientError', () => undefined);
    limitHandshakeTime(server, { logger: pino({ level: 'silent' }), port: 'test', timeoutMs: deadlineMs, ...(onTimeout === undefined ? {} : { onTimeout }) });
    limitConnections(server, { logger: pino({ level: 'silent' }), port: 'test', connectionsMax: 100, perSourceMax: 3 });
    server.listen(0, '127.0.0.1');
    await once(server, 'listening');
    return (server.address() as { port: number }).port;
  }

  /** TCP only, never a byte of TLS: resolves when the server closes it, with the time it took. */
  async function stalled(port: number): Promise<{ connected: Socket; closedAfterMs: Promise<number> }> {
    const socket = connectTcp({ host: '127.0.0.1', port });
    sockets.push(socket);
    socket.on('error', () => undefined);
    await once(socket, 'connect');
    const started = Date.now();
    return { connected: socket, closedAfterMs: new Promise((resolve) => socket.once('close', () => resolve(Date.now() - started))) };
  }

  /** A full mutual-TLS handshake; resolves the open socket, or undefined when the server closed it first. */
  function handshake(port: number): Promise<TLSSocket | undefined> {
    return new Promise((resolve) => {
      const socket = connectTls({ host: '127.0.0.1', port, ca: authority.certificatePem, cert: clientPair.certificatePem, key: clientPair.keyPem }, () => resolve(socket));
      sockets.push(socket);
      socket.on('error', () => undefined);
      socket.once('close', () => resolve(undefined));
    });
  }

  it('is etcd\'s 10 s by default', () => {
    expect(tlsHandshakeTimeoutMs).toBe(10_000);
  });

  it('drops stalled handshakes within the deadline and so gives their address\'s slots back', async () => {
    const timedOut: string[] = [];
    const port = await listen((remote) => timedOut.push(remote));
    const flood = await Promise.all([stalled(port), stalled(port), stalled(port)]);
    // Every slot of the address is held: a real client from it is refused.
    expect(await handshake(port)).toBeUndefined();
    const closedAfter = await Promise.all(flood.map((connection) => connection.closedAfterMs));
    for (const elapsed of closedAfter) expect(elapsed).toBeLessThan(deadlineMs + 2_000);
    expect(timedOut).toHaveLength(3);
    expect(timedOut[0]).toMatch(/^127\.0\.0\.1:\d+$/);
    // The slots are free again.
    const served = await handshake(port);
    expect(served?.authorized).toBe(true);
  });

  it('never drops a connection whose handshake finished', async () => {
    const timedOut: string[] = [];
    const port = await listen((remote) => timedOut.push(remote));
    const served = await handshake(port);
    expect(served).toBeDefined();
    let closed = false;
    served?.once('close', () => (closed = true));
    await new Promise((resolve) => setTimeout(resolve, deadlineMs * 3));
    expect(closed).toBe(false);
    expect(timedOut).toEqual([]);
  });

  it('drops a handshake stalled half way (a ClientHello and nothing after)', async () => {
    const port = await listen();
    const { connected, closedAfterMs } = await stalled(port);
    // A TLS record header announcing more bytes than ever come.
    connected.write(Buffer.from([0x16, 0x03, 0x01, 0x02, 0x00, 0x01]));
    expect(await closedAfterMs).toBeLessThan(deadlineMs + 2_000);
  });
});
