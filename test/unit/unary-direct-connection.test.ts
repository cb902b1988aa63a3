/**
 * A call served on its HTTP/2 stream (unary-direct.ts) reads its connection's peer address and
 * certificate once per connection: `session.socket` is a proxy whose every read costs, and neither
 * changes while the connection lives. A connection whose socket is already gone is not remembered.
 */
import type { ServerHttp2Stream } from 'node:http2';
import { describe, expect, it } from 'vitest';
import { connectionOf } from '../../src/api/unary-direct.js';

function fakeStream(session: object): ServerHttp2Stream {
  return { session } as unknown as ServerHttp2Stream;
}

function fakeSession(socket: Record<string, unknown>): { session: object; reads: () => number } {
  let reads = 0;
  const counted = new Proxy(socket, {
    get(target, name) {
      reads += 1;
      return target[name as string];
    },
  });
  return { session: { socket: counted }, reads: () => reads };
}

describe('the connection of a call served directly', () => {
  it('reads the peer and certificate once per connection', () => {
    const certificate = Object.freeze({ raw: Buffer.from('der'), subject: { CN: 'alice' } });
    const { session, reads } = fakeSession({ remoteAddress: '127.0.0.1', remotePort: 40_000, authorized: true, getPeerCertificate: () => certificate });
    const first = connectionOf(fakeStream(session));
    const readsOnFirstCall = reads();
    expect(first).toEqual({ peer: '127.0.0.1:40000', certificate });
    expect(readsOnFirstCall).toBeGreaterThan(0);
    const second = connectionOf(fakeStream(session));
    expect(second.peer).toBe('127.0.0.1:40000');
    expect(second.certificate).toBe(certificate);
    expect(reads()).toBe(readsOnFirstCall);
  });

  it('keeps each connection apart', () => {
    const a = fakeSession({ remoteAddress: '127.0.0.1', remotePort: 1, authorized: false });
    const b = fakeSession({ remoteAddress: '127.0.0.2', remotePort: 2, authorized: false });
    expect(connectionOf(fakeStream(a.session))).toEqual({ peer: '127.0.0.1:1', certificate: undefined });
    expect(connectionOf(fakeStream(b.session))).toEqual({ peer: '127.0.0.2:2', certificate: undefined });
    expect(connectionOf(fakeStream(a.session)).peer).toBe('127.0.0.1:1');
  });

  it('does not remember a connection whose socket is gone', () => {
    const socket: Record<string, unknown> = { remoteAddress: undefined };
    const { session } = fakeSession(socket);
    expect(connectionOf(fakeStream(session)).peer).toBe('unknown');
    socket.remoteAddress = '127.0.0.1';
    socket.remotePort = 3;
    expect(connectionOf(fakeStream(session)).peer).toBe('127.0.0.1:3');
  });
});
