/**
 * The listeners of a real TLS member against someone who can open TCP connections and holds no
 * certificate: a connection that never finishes its TLS handshake is dropped after etcd's 10 s on
 * the client, peer and metrics ports (Node's default was 120 s), so a flood of them from one
 * address holds that address's slots for 10 s at most and a real client from it is then served;
 * and the metrics listener keeps at most its per-source bound of connections from one address
 * while a scrape from another address still works.
 */
import { once } from 'node:events';
import { readFile } from 'node:fs/promises';
import { get } from 'node:http';
import { connect as connectTcp, type Socket } from 'node:net';
import { connect as connectTls } from 'node:tls';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { connectionsPerSourceMax } from '../../src/pki/connection-limit.js';
import { tlsHandshakeTimeoutMs } from '../../src/pki/handshake-deadline.js';
import { metricsConnectionsPerSourceMax } from '../../src/server/metrics-listener.js';
import { freePort } from '../helpers/processes.js';
import { startTlsMember, type TlsMember } from '../helpers/tls-member.js';

/** Generous for a loaded CI machine; the bound it checks is tlsHandshakeTimeoutMs (10 s), not 120 s. */
const slackMs = 8_000;

describe('listener bounds of a TLS member', () => {
  let member: TlsMember;
  let plainMetricsPort: number;
  let tlsMetricsPort: number;
  let ca: Buffer;
  let admin: { cert: Buffer; key: Buffer };
  const sockets: Socket[] = [];

  beforeAll(async () => {
    [plainMetricsPort, tlsMetricsPort] = [await freePort(), await freePort()];
    member = await startTlsMember(['--listen-metrics-urls', `http://127.0.0.1:${plainMetricsPort},https://127.0.0.1:${tlsMetricsPort}`]);
    const pki = path.join(member.directory, 'pki');
    ca = await readFile(path.join(pki, 'ca.crt'));
    admin = { cert: await readFile(path.join(pki, 'admin.crt')), key: await readFile(path.join(pki, 'admin.key')) };
  }, 90_000);

  afterAll(async () => {
    for (const socket of sockets.splice(0)) socket.destroy();
    await member?.stop();
  }, 120_000);

  /** A TCP connection from `localAddress`; resolves once connected, with a promise of how long until the member closes it. */
  async function openTcp(port: number, localAddress = '127.0.0.1'): Promise<{ socket: Socket; closedAfterMs: Promise<number> }> {
    const socket = connectTcp({ host: '127.0.0.1', port, localAddress });
    sockets.push(socket);
    socket.on('error', () => undefined);
    await once(socket, 'connect');
    const started = Date.now();
    return { socket, closedAfterMs: new Promise((resolve) => socket.once('close', () => resolve(Date.now() - started))) };
  }

  /** Whether a mutual-TLS handshake with the admin certificate from `localAddress` completes. */
  function handshakes(port: number, localAddress: string): Promise<boolean> {
    return new Promise((resolve) => {
      const tcp = connectTcp({ host: '127.0.0.1', port, localAddress });
      tcp.on('error', () => resolve(false));
      const socket = connectTls({ socket: tcp, ca, ...admin, servername: 'localhost', checkServerIdentity: () => undefined }, () => {
        resolve(socket.authorized);
        socket.destroy();
      });
      socket.on('error', () => resolve(false));
      socket.once('close', () => resolve(false));
      socket.setTimeout(10_000, () => socket.destroy());
    });
  }

  /** A scrape of /metrics over plaintext HTTP from `localAddress`: the status, or 0 when the connection was refused. */
  function scrape(port: number, localAddress: string): Promise<{ status: number; body: string }> {
    return new Promise((resolve) => {
      const request = get({ host: '127.0.0.1', port, path: '/metrics', localAddress, agent: false, timeout: 20_000 }, (response) => {
        let body = '';
        response.on('data', (chunk: Buffer) => (body += chunk.toString()));
        response.on('end', () => resolve({ status: response.statusCode ?? 0, body }));
      });
      request.on('error', () => resolve({ status: 0, body: '' }));
      request.on('timeout', () => request.destroy());
    });
  }

  it('drops a stalled TLS handshake within 10 s on the client, peer and metrics ports', async () => {
    const stalled = await Promise.all([member.clientPort, member.peerPort, tlsMetricsPort].map((port) => openTcp(port)));
    const closedAfter = await Promise.all(stalled.map((connection) => connection.closedAfterMs));
    for (const elapsed of closedAfter) {
      expect(elapsed).toBeGreaterThanOrEqual(tlsHandshakeTimeoutMs - 1_000);
      expect(elapsed).toBeLessThan(tlsHandshakeTimeoutMs + slackMs);
    }
  }, 60_000);

  it('a flood of stalled handshakes from one address locks a real client from it out for the deadline only', async () => {
    const flooder = '127.0.0.3';
    const flood: Promise<number>[] = [];
    for (let batch = 0; batch < connectionsPerSourceMax / 100; batch++) {
      const opened = await Promise.all(Array.from({ length: 100 }, () => openTcp(member.clientPort, flooder)));
      flood.push(...opened.map((connection) => connection.closedAfterMs));
    }
    // Every slot of the address is taken: its real client is refused, another address is served.
    expect(await handshakes(member.clientPort, flooder)).toBe(false);
    expect(await handshakes(member.clientPort, '127.0.0.4')).toBe(true);
    const started = Date.now();
    await Promise.all(flood);
    expect(Date.now() - started).toBeLessThan(tlsHandshakeTimeoutMs + slackMs);
    expect(await handshakes(member.clientPort, flooder)).toBe(true);
  }, 90_000);

  it('the metrics listener keeps at most its per-source bound from one address; a scrape from another is served', async () => {
    const source = '127.0.0.5';
    const held = await Promise.all(Array.from({ length: metricsConnectionsPerSourceMax }, () => openTcp(plainMetricsPort, source)));
    const excess = await openTcp(plainMetricsPort, source);
    // Refused as it is accepted: closed at once, long before any timeout.
    expect(await excess.closedAfterMs).toBeLessThan(5_000);
    expect((await scrape(plainMetricsPort, source)).status).toBe(0);
    const elsewhere = await scrape(plainMetricsPort, '127.0.0.6');
    expect(elsewhere.status).toBe(200);
    expect(elsewhere.body).toMatch(/^etcd_server_has_leader 1$/m);
    // The held connections are still open (none was closed to make room).
    expect(held.filter((connection) => connection.socket.destroyed)).toEqual([]);
    for (const connection of held) connection.socket.destroy();
    // Their slots come back.
    for (let attempt = 0; attempt < 40; attempt++) {
      if ((await scrape(plainMetricsPort, source)).status === 200) break;
      await new Promise((resolve) => setTimeout(resolve, 250));
    }
    expect((await scrape(plainMetricsPort, source)).status).toBe(200);
  }, 60_000);
});
