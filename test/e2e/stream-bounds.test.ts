/**
 * Open gRPC streams under a certificate that is no user (attack review): HTTP/2 lets one
 * connection open as many streams as the server allows, each holding grpc-js and HTTP/2 state.
 * Before the bound, 80,000 idle LeaseKeepAlive streams on one connection took a member from 426 to
 * 1,271 MiB and its puts timed out meanwhile.
 */
import { connect as connectHttp2, constants as http2Constants, type ClientHttp2Session } from 'node:http2';
import { connect as connectTcp } from 'node:net';
import { connect as connectTls } from 'node:tls';
import { describe, expect, it } from 'vitest';
import { openStreamsPerSourceMax } from '../../src/api/open-streams.js';
import { attackTarget } from '../helpers/attack.js';

describe('open stream bounds (TLS member)', () => {
  const target = attackTarget('stranger');

  /** One HTTP/2 connection to the client port from `localAddress`. */
  const session = (localAddress: string): ClientHttp2Session =>
    connectHttp2(`https://127.0.0.1:${target.member.clientPort}`, {
      maxSessionMemory: 1000,
      createConnection: () => connectTls({ host: '127.0.0.1', socket: connectTcp({ host: '127.0.0.1', port: target.member.clientPort, localAddress }), ALPNProtocols: ['h2'], ...target.stranger }),
    }).on('error', () => undefined);

  /** A Range call (an empty request): its grpc-status when answered, or the reset code when the stream was reset. */
  const range = (client: ClientHttp2Session): Promise<{ status?: string; resetCode?: number }> => new Promise((resolve) => {
    const stream = client.request({ ':method': 'POST', ':path': '/etcdserverpb.KV/Range', 'content-type': 'application/grpc', te: 'trailers' });
    let status: string | undefined;
    stream.on('response', (headers) => {
      if (headers['grpc-status'] !== undefined) status = String(headers['grpc-status']);
    });
    stream.on('trailers', (trailers) => {
      status = String(trailers['grpc-status']);
    });
    stream.on('error', () => undefined);
    stream.on('data', () => undefined);
    stream.on('close', () => resolve(status !== undefined ? { status } : { resetCode: stream.rstCode }));
    stream.end(Buffer.alloc(5)); // one empty message
  });

  it('one address keeps at most 4,096 streams open; past it a stream is reset (ENHANCE_YOUR_CALM), another address is served, and freed streams are usable again', async () => {
    const attempted = openStreamsPerSourceMax + 1000;
    const attacker = session('127.0.0.1');
    let refused = 0;
    let otherwiseClosed = 0;
    for (let index = 0; index < attempted; index++) {
      const stream = attacker.request({ ':method': 'POST', ':path': '/etcdserverpb.Lease/LeaseKeepAlive', 'content-type': 'application/grpc', te: 'trailers' });
      stream.on('error', () => undefined);
      stream.on('close', () => {
        if (stream.rstCode === http2Constants.NGHTTP2_ENHANCE_YOUR_CALM) refused += 1;
        else otherwiseClosed += 1;
      });
      if (index % 500 === 499) await new Promise((resolve) => setTimeout(resolve, 20));
    }
    try {
      const deadline = Date.now() + 90_000;
      while (refused < attempted - openStreamsPerSourceMax && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 200));
      // Nothing more is refused once the rest are open (they stay open: a keep-alive stream waits for requests).
      await new Promise((resolve) => setTimeout(resolve, 2000));
      expect({ refused, otherwiseClosed }).toEqual({ refused: attempted - openStreamsPerSourceMax, otherwiseClosed: 0 });
      // A new call from the same address is refused too; one from another address is answered.
      const sameAddress = session('127.0.0.1');
      expect(await range(sameAddress)).toEqual({ resetCode: http2Constants.NGHTTP2_ENHANCE_YOUR_CALM });
      sameAddress.destroy();
      const otherAddress = session('127.0.0.2');
      const answered = await range(otherAddress);
      otherAddress.destroy();
      expect(answered.status).toBeDefined();
      expect(answered.status).not.toBe('8');
    } finally {
      attacker.destroy();
    }
    // The attacker's streams are released with its connection.
    const deadline = Date.now() + 30_000;
    let after: { status?: string; resetCode?: number } = {};
    do {
      const again = session('127.0.0.1');
      after = await range(again);
      again.destroy();
      if (after.status === undefined) await new Promise((resolve) => setTimeout(resolve, 500));
    } while (after.status === undefined && Date.now() < deadline);
    expect(after.status).toBeDefined();
    expect(target.member.child.exitCode).toBeNull();
  }, 180_000);
});
