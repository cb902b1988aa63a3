/**
 * The ports e2e tests start members on (test/helpers/processes.ts): below the kernel's ephemeral
 * range, single ports and `rampart up` bases never sharing one, none handed out twice; and a member
 * is taken as started only once it is the process listening on its port, not when anything is.
 */
import { readFile } from 'node:fs/promises';
import { createServer, type Server } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { freeBasePort, freePort, listensOn, startRampart } from '../helpers/processes.js';

const listen = async (port: number): Promise<Server> => {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(port, '127.0.0.1', resolve));
  return server;
};

describe('test ports', () => {
  const servers: Server[] = [];
  afterEach(() => {
    for (const server of servers.splice(0)) server.close();
  });

  it('come from below the ephemeral range, and single ports and bases never share one', async () => {
    const ephemeralFirst = Number((await readFile('/proc/sys/net/ipv4/ip_local_port_range', 'utf8')).trim().split(/\s+/)[0]);
    const singles: number[] = [];
    for (let count = 0; count < 200; count++) singles.push(await freePort());
    const bases: number[] = [];
    for (let count = 0; count < 50; count++) bases.push(await freeBasePort());
    const ofBases = bases.flatMap((base) => [0, 1, 2].flatMap((member) => [0, 1, 2].map((offset) => base + member * 10_000 + offset)));
    const all = [...singles, ...ofBases];
    expect(new Set(all).size).toBe(all.length);
    expect(Math.max(...all)).toBeLessThan(ephemeralFirst);
    expect(Math.min(...all)).toBeGreaterThan(1_024);
  });

  it('tell which process listens on a port', async () => {
    const [held, unheld] = [await freePort(), await freePort()];
    servers.push(await listen(held));
    expect(await listensOn(process.pid, held)).toBe(true);
    expect(await listensOn(process.pid, unheld)).toBe(false);
    expect(await listensOn(process.ppid, held)).toBe(false);
  });

  it('a member whose port another process holds is not taken for started', async () => {
    const port = await freePort();
    servers.push(await listen(port));
    // The squatter accepts connections: only the owner check tells it from the member.
    await expect(startRampart({ port })).rejects.toThrow(/EADDRINUSE/);
  });
});
