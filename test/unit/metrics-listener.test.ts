/**
 * The metrics listener's idle bound: a connection that sends nothing, or goes quiet after a scrape,
 * is closed after the idle timeout (Node's HTTP server keeps a silent connection forever), and a
 * scrape on a fresh connection is still served. Its connection caps are checked end to end in
 * test/e2e/listener-bounds.test.ts.
 */
import { once } from 'node:events';
import { createServer, get } from 'node:http';
import { connect } from 'node:net';
import pino from 'pino';
import { describe, expect, it } from 'vitest';
import { boundMetricsServer, metricsIdleTimeoutMs } from '../../src/server/metrics-listener.js';
import { localServers } from '../helpers/local-servers.js';

const idleTimeoutMs = 500;

describe('boundMetricsServer', () => {
  const { sockets, listen } = localServers();

  it('closes a silent connection after the idle timeout and still serves scrapes', async () => {
    expect(metricsIdleTimeoutMs).toBe(30_000);
    const server = createServer((_request, response) => response.end('ok\n'));
    boundMetricsServer(server, { logger: pino({ level: 'silent' }), tls: false, idleTimeoutMs });
    const port = await listen(server);
    const silent = connect({ host: '127.0.0.1', port });
    sockets.push(silent);
    silent.on('error', () => undefined);
    await once(silent, 'connect');
    const started = Date.now();
    await once(silent, 'close');
    expect(Date.now() - started).toBeGreaterThanOrEqual(idleTimeoutMs - 100);
    expect(Date.now() - started).toBeLessThan(idleTimeoutMs + 3_000);
    const body = await new Promise<string>((resolve, reject) => {
      get({ host: '127.0.0.1', port, path: '/metrics', agent: false }, (response) => {
        let text = '';
        response.on('data', (chunk: Buffer) => (text += chunk.toString()));
        response.on('end', () => resolve(text));
      }).on('error', reject);
    });
    expect(body).toBe('ok\n');
  });
});
