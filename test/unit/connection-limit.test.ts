import { connect, createServer, type Socket } from 'node:net';
import { once } from 'node:events';
import pino from 'pino';
import { describe, expect, it } from 'vitest';
import { connectionsMaxFor, limitConnections, openFilesLimit } from '../../src/pki/connection-limit.js';
import { localServers } from '../helpers/local-servers.js';

/**
 * Opens a connection from `localAddress`; resolves whether the server kept it past a short wait
 * (500 ms: the server and this client share one event loop, and a refused connection closed while
 * the process waits for a core can have its close handled after a short timer, and count as kept).
 */
async function kept(port: number, localAddress: string, sockets: Socket[]): Promise<boolean> {
  const socket = connect({ host: '127.0.0.1', port, localAddress });
  sockets.push(socket);
  socket.on('error', () => undefined);
  await once(socket, 'connect');
  const closed = new Promise<boolean>((resolve) => socket.once('close', () => resolve(false)));
  return Promise.race([closed, new Promise<boolean>((resolve) => setTimeout(() => resolve(true), 500))]);
}

describe('limitConnections', () => {
  const { sockets, listen } = localServers();

  it('keeps at most perSourceMax from one address and connectionsMax in all, and frees a slot when one closes', async () => {
    const accepted: Socket[] = [];
    const server = createServer((socket) => accepted.push(socket));
    limitConnections(server, { logger: pino({ level: 'silent' }), port: 'test', connectionsMax: 5, perSourceMax: 3 });
    const port = await listen(server);
    const fromOne = [];
    for (let index = 0; index < 4; index++) fromOne.push(await kept(port, '127.0.0.1', sockets));
    expect(fromOne).toEqual([true, true, true, false]);
    // Another address is served until the port's bound.
    expect(await kept(port, '127.0.0.2', sockets)).toBe(true);
    expect(await kept(port, '127.0.0.2', sockets)).toBe(true);
    expect(await kept(port, '127.0.0.3', sockets)).toBe(false);
    // A closed connection gives its address a slot back.
    // (Once the member's side has seen it close, not after a fixed 100 ms: a loaded machine is slower.)
    const firstAccepted = accepted[0];
    const firstClosed = firstAccepted === undefined || firstAccepted.closed ? Promise.resolve() : once(firstAccepted, 'close');
    sockets[0]?.destroy();
    await firstClosed;
    expect(await kept(port, '127.0.0.1', sockets)).toBe(true);
    expect(accepted.filter((socket) => !socket.destroyed).length).toBe(5);
  });

  it('a port keeps at most half the open files the process may have, and 10,000', () => {
    expect(openFilesLimit('Limit                     Soft Limit           Hard Limit           Units\nMax open files            1024                 4096                 files\n')).toBe(1024);
    expect(connectionsMaxFor(1024)).toBe(512);
    expect(connectionsMaxFor(1_048_576)).toBe(10_000);
    expect(connectionsMaxFor(undefined)).toBe(10_000);
  });
});
