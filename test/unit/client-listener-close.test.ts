/**
 * Closing the client port (`rampart serve` on SIGTERM) while clients are connected, over real TLS on
 * loopback. A connection still in its TLS handshake when the port closed was neither ended nor
 * refused afterwards: the port tracked a connection only once its handshake had finished, so one
 * that finished later was handed to gRPC or the JSON gateway and served while the member stopped.
 * Open streams (a Watch, a LeaseKeepAlive) are given a short grace and then ended.
 */
import { mkdir, rm, writeFile } from 'node:fs/promises';
import { connect as connectHttp2 } from 'node:http2';
import net from 'node:net';
import path from 'node:path';
import tls from 'node:tls';
import * as grpc from '@grpc/grpc-js';
import pino from 'pino';
import { afterEach, describe, expect, it } from 'vitest';
import { listenClients, type ClientListener } from '../../src/api/client-listener.js';
import { createAuthority, issueCertificate, writeKeyPair, type KeyPairPem } from '../../src/pki/authority.js';
import { tlsHandshakeTimeoutMs } from '../../src/pki/handshake-deadline.js';
import { ReloadingCertificateProvider } from '../../src/pki/reloading-provider.js';
import { freePort, temporaryDirectory } from '../helpers/processes.js';
import { sleep, within } from '../helpers/retry.js';

/** Well below the TLS handshake deadline (which ends a stalled handshake by itself) and far above close's grace. */
const closeBoundMs = tlsHandshakeTimeoutMs / 2;

interface Port {
  readonly port: number;
  readonly listener: ClientListener;
  readonly client: KeyPairPem;
  readonly ca: string;
  /** Requests the gateway answered. */
  readonly served: string[];
}

describe('closing the client port', () => {
  const cleanups: (() => Promise<void> | void)[] = [];
  afterEach(async () => {
    for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
  });

  const open = async (grpcServer = new grpc.Server()): Promise<Port> => {
    const directory = await temporaryDirectory('client-listener-close');
    cleanups.push(() => rm(directory, { recursive: true, force: true }));
    const authority = await createAuthority('client listener close test');
    await mkdir(directory, { recursive: true });
    const caFile = path.join(directory, 'ca.crt');
    await writeFile(caFile, authority.certificatePem);
    const files = await writeKeyPair(directory, 'server', await issueCertificate(authority, { kind: 'server', commonName: 'm1', subjectAltNames: ['127.0.0.1'] }));
    const logger = pino({ level: 'silent' });
    const provider = await ReloadingCertificateProvider.open({ ...files, caFile }, logger, 'client port', 60_000);
    cleanups.push(() => provider.close());
    const served: string[] = [];
    const port = await freePort();
    const listener = await listenClients('127.0.0.1', port, {
      grpcServer,
      http: (request, response) => {
        served.push(request.url ?? '');
        response.end('served\n');
      },
      tls: { provider, requireClientCertificate: true, refuseCertificate: () => undefined, sweepIntervalMs: 60_000 },
      logger,
    });
    cleanups.push(() => void listener.close());
    return { port, listener, client: await issueCertificate(authority, { kind: 'client', commonName: 'root' }), ca: authority.certificatePem, served };
  };

  /** A TCP connection to the port that has not started its TLS handshake (its first byte not sent). */
  const rawConnection = async (port: number): Promise<net.Socket> => {
    const socket = net.connect(port, '127.0.0.1');
    socket.on('error', () => undefined);
    cleanups.push(() => void socket.destroy());
    await new Promise<void>((resolve, reject) => {
      socket.once('connect', resolve);
      socket.once('error', reject);
    });
    return socket;
  };

  /** Finishes the TLS handshake on `raw` (a connection opened before the close) and makes one request over `protocol`; what it was answered. */
  const lateRequest = (raw: net.Socket, client: KeyPairPem, ca: string, protocol: 'http/1.1' | 'h2'): Promise<string> => new Promise((resolve) => {
    const secure = tls.connect({ socket: raw, ca, key: client.keyPem, cert: client.certificatePem, ALPNProtocols: [protocol], checkServerIdentity: () => undefined });
    secure.on('error', () => undefined);
    if (protocol === 'http/1.1') {
      let text = '';
      secure.on('secureConnect', () => secure.write('GET /v3/late HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n'));
      secure.on('data', (chunk: Buffer) => (text += chunk.toString()));
      secure.on('close', () => resolve(text === '' ? 'closed unanswered' : text));
      return;
    }
    const session = connectHttp2('https://127.0.0.1', { createConnection: () => secure });
    session.on('error', () => undefined);
    const stream = session.request({ ':method': 'POST', ':path': '/test.Test/Slow', 'content-type': 'application/grpc', te: 'trailers' });
    stream.on('error', () => undefined);
    stream.resume();
    stream.end(Buffer.from([0, 0, 0, 0, 0]));
    let answer = 'closed unanswered';
    stream.on('response', (headers) => (answer = `answered ${String(headers[':status'])} grpc-status ${String(headers['grpc-status'] ?? '')}`));
    stream.on('trailers', (trailers) => (answer += ` trailers grpc-status ${String(trailers['grpc-status'])}`));
    stream.on('close', () => {
      session.destroy();
      resolve(answer);
    });
  });

  it('serves no connection whose TLS handshake finishes after the close, and ends one still in it', async () => {
    const grpcServer = testServer();
    const { port, listener, client, ca, served } = await open(grpcServer.server);
    const viaHttp = await rawConnection(port);
    const viaGrpc = await rawConnection(port);
    const stalled = await rawConnection(port);
    const stalledClosed = new Promise((resolve) => stalled.once('close', resolve));
    await sleep(100); // accepted by the port
    const closed = listener.close();
    expect(await lateRequest(viaHttp, client, ca, 'http/1.1')).toBe('closed unanswered');
    expect(await lateRequest(viaGrpc, client, ca, 'h2')).toBe('closed unanswered');
    expect(served).toEqual([]);
    expect(grpcServer.calls).toEqual([]);
    // A connection that never goes on with its handshake is ended by the close, not left to the handshake deadline.
    expect(await within(stalledClosed, closeBoundMs)).toBe(true);
    expect(await within(closed, closeBoundMs)).toBe(true);
  });

  it('answers a call in flight, then ends open streams and stalled handshakes, and finishes', async () => {
    const grpcServer = testServer();
    const { port, listener, client, ca } = await open(grpcServer.server);
    const stalled = await rawConnection(port);
    const stalledClosed = new Promise((resolve) => stalled.once('close', resolve));
    const Client = grpc.makeGenericClientConstructor(testService, 'Test');
    const grpcClient = new Client(`127.0.0.1:${port}`, grpc.credentials.createSsl(Buffer.from(ca), Buffer.from(client.keyPem), Buffer.from(client.certificatePem))) as unknown as grpc.Client & {
      Forever(request: Buffer): grpc.ClientReadableStream<Buffer>;
      Slow(request: Buffer, callback: (error: grpc.ServiceError | null, response?: Buffer) => void): void;
    };
    cleanups.push(() => grpcClient.close());
    // A stream the server never ends (as a Watch or a LeaseKeepAlive), open with its first answer.
    const stream = grpcClient.Forever(Buffer.from('x'));
    const streamEnded = new Promise<string>((resolve) => {
      stream.on('error', (error: grpc.ServiceError) => resolve(`error ${error.code}`));
      stream.on('end', () => resolve('end'));
    });
    await new Promise((resolve) => stream.once('data', resolve));
    // A call the server answers 200 ms later, in flight at the close.
    const slow = new Promise<string>((resolve) => grpcClient.Slow(Buffer.from('x'), (error, response) => resolve(error === null ? String(response) : `error ${error.code} ${error.details}`)));
    await until(() => grpcServer.calls.includes('Slow'));
    const closed = listener.close();
    expect(await slow).toBe('answered');
    expect(await within(streamEnded, closeBoundMs)).toBe(true);
    expect(await within(stalledClosed, closeBoundMs)).toBe(true);
    expect(await within(closed, closeBoundMs)).toBe(true);
    // Closing again is the same close.
    expect(await within(listener.close(), 100)).toBe(true);
  });
});

async function until(condition: () => boolean): Promise<void> {
  for (const deadline = Date.now() + 10_000; !condition();) {
    if (Date.now() > deadline) throw new Error('condition not met in 10 s');
    await sleep(10);
  }
}

const identity = (value: Buffer): Buffer => value;
const testService: grpc.ServiceDefinition = {
  Slow: { path: '/test.Test/Slow', requestStream: false, responseStream: false, requestSerialize: identity, requestDeserialize: identity, responseSerialize: identity, responseDeserialize: identity },
  Forever: { path: '/test.Test/Forever', requestStream: false, responseStream: true, requestSerialize: identity, requestDeserialize: identity, responseSerialize: identity, responseDeserialize: identity },
};

/** A gRPC server with a unary call answered after 200 ms and a stream it never ends; `calls` names each call it received. */
function testServer(): { server: grpc.Server; calls: string[] } {
  const server = new grpc.Server({ 'grpc.enable_channelz': 0 });
  const calls: string[] = [];
  server.addService(testService, {
    Slow: (_call: grpc.ServerUnaryCall<Buffer, Buffer>, callback: grpc.sendUnaryData<Buffer>) => {
      calls.push('Slow');
      setTimeout(() => callback(null, Buffer.from('answered')), 200);
    },
    Forever: (call: grpc.ServerWritableStream<Buffer, Buffer>) => {
      calls.push('Forever');
      call.write(Buffer.from('first'));
    },
  });
  return { server, calls };
}
