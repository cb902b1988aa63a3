/**
 * Servers and client sockets a unit test opens on 127.0.0.1 (a listener's bounds, say), closed
 * after each test of the `describe` that asks for them.
 */
import { once } from 'node:events';
import type { AddressInfo, Server, Socket } from 'node:net';
import { afterEach } from 'vitest';

export interface LocalServers {
  /** Client sockets the test opened: destroyed after each test. */
  readonly sockets: Socket[];
  /** Listens on a free port of 127.0.0.1 (closed after the test) and resolves with the port. */
  listen(server: Server): Promise<number>;
}

/** Call inside a `describe`: registers the clean-up with its `afterEach`. */
export function localServers(): LocalServers {
  const sockets: Socket[] = [];
  const servers: Server[] = [];
  afterEach(() => {
    for (const socket of sockets.splice(0)) socket.destroy();
    for (const server of servers.splice(0)) server.close();
  });
  return {
    sockets,
    listen: async (server) => {
      servers.push(server);
      server.listen(0, '127.0.0.1');
      await once(server, 'listening');
      return (server.address() as AddressInfo).port;
    },
  };
}
