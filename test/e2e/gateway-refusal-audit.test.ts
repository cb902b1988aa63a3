/**
 * Requests the JSON gateway refuses before any handler has them — unknown paths, wrong HTTP
 * methods, bad JSON or base64, oversized bodies, a stream whose first message is bad, HTTP too
 * malformed to parse — are in the
 * audit trail, as gRPC's own refusals are; authentication failures (which reach the handler) are
 * too. A flood of them is recorded one by one only up to a burst and then at a steady rate, the
 * rest counted in summary events: every refusal is accounted for, the trail does not grow with the
 * flood, and the member keeps serving.
 */
import { readdir, readFile } from 'node:fs/promises';
import { Agent, request as httpRequest } from 'node:http';
import { connect } from 'node:net';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { refusalEventsBurst, refusalEventsPerSecond } from '../../src/api/refusal-limit.js';
import type { AuditEvent } from '../../src/audit/event.js';
import { httpCall } from '../helpers/http-gateway.js';
import { etcdctl, startRampart, type ServerProcess } from '../helpers/processes.js';

async function trailEvents(directory: string): Promise<AuditEvent[]> {
  const events: AuditEvent[] = [];
  for (const name of (await readdir(directory)).sort()) {
    for (const line of (await readFile(path.join(directory, name), 'utf8')).split('\n')) if (line !== '') events.push(JSON.parse(line) as AuditEvent);
  }
  return events;
}

const base64 = (text: string): string => Buffer.from(text).toString('base64');
const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

/** Bytes written as they are on a raw connection: the status line of the answer. */
function rawRequest(port: number, bytes: string): Promise<string> {
  return new Promise((resolve) => {
    const socket = connect(port, '127.0.0.1');
    let answer = '';
    socket.on('data', (chunk: Buffer) => (answer += chunk.toString()));
    socket.on('close', () => resolve(answer.split('\r\n')[0] ?? ''));
    socket.on('error', () => undefined);
    socket.end(bytes);
  });
}

/**
 * POSTs `body` to `urlPath` `count` times over 8 kept-alive connections; the HTTP statuses, in
 * answer order, and how long it took.
 */
async function flood(port: number, urlPath: string, body: string, count: number): Promise<{ statuses: number[]; elapsedSeconds: number }> {
  const agent = new Agent({ keepAlive: true, maxSockets: 8 });
  const send = (): Promise<number> => new Promise((resolve) => {
    const request = httpRequest({ host: '127.0.0.1', port, path: urlPath, method: 'POST', agent, headers: { 'content-type': 'application/json' } }, (response) => {
      response.resume();
      response.on('end', () => resolve(response.statusCode ?? 0));
    });
    request.on('error', () => resolve(0));
    request.end(body);
  });
  const startedMs = Date.now();
  const statuses: number[] = [];
  let next = 0;
  await Promise.all(Array.from({ length: 8 }, async () => {
    while (next++ < count) statuses.push(await send());
  }));
  const elapsedSeconds = (Date.now() - startedMs) / 1000;
  agent.destroy();
  return { statuses, elapsedSeconds };
}

describe('gateway refusals in the audit trail', () => {
  let server: ServerProcess;
  const trail = (): Promise<AuditEvent[]> => trailEvents(path.join(server.dataDir, 'audit'));

  beforeAll(async () => {
    server = await startRampart({ args: ['--max-request-bytes', '4096'] });
  }, 120_000);

  afterAll(async () => {
    await server?.stop();
  });

  it('records each refusal before a handler, and authentication failures', async () => {
    const target = { port: server.port };
    const answers = [
      await httpCall(target, '/v3/kv/put', { body: '{"key": ' }),
      await httpCall(target, '/v3/kv/put', { body: JSON.stringify({ key: 'not base64!', value: base64('v') }) }),
      await httpCall(target, '/v3/kv/steal', { body: '{}' }),
      await httpCall(target, '/admin/secrets', { method: 'GET' }),
      await httpCall(target, '/v3/kv/range', { method: 'GET' }),
      // Past the body limit (2 x (4096 + 512 KiB)): refused before it is all read.
      await httpCall(target, '/v3/kv/range', { body: JSON.stringify({ key: base64('k'), range_end: 'A'.repeat(1_200_000) }) }).catch(() => ({ status: 429, body: '' })),
      await httpCall(target, '/v3/watch', { body: '{"create_request": {"key": 5}}', lines: 1, timeoutMs: 3000 }),
    ];
    expect(answers.map((answer) => answer.status)).toEqual([400, 400, 404, 404, 405, 429, 500]);
    // Too malformed for the gateway to see a request at all.
    expect(await rawRequest(server.port, 'BREW /v3/kv/range HTCPCP/1.0\r\n\r\n')).toBe('HTTP/1.1 400 Bad Request');
    expect(await rawRequest(server.port, `POST /v3/kv/range HTTP/1.1\r\nHost: x\r\nX-Padding: ${'p'.repeat(20_000)}\r\n\r\n`)).toBe('HTTP/1.1 431 Request Header Fields Too Large');
    await sleep(300); // refusals are audited without holding their answer
    const refused = (await trail()).filter((event) => event.outcome === 'failed').map((event) => [event.action, event.code, event.detail]);
    expect(refused).toEqual([
      ['Put', 'INVALID_ARGUMENT', 'unexpected EOF'],
      ['Put', 'INVALID_ARGUMENT', 'illegal base64 data at input byte 3'],
      ['/v3/kv/steal', 'UNIMPLEMENTED', 'HTTP 404 Not Found: POST /v3/kv/steal'],
      ['/admin/secrets', 'UNIMPLEMENTED', 'HTTP 404 404 page not found: GET /admin/secrets'],
      ['Range', 'UNIMPLEMENTED', 'HTTP 405 Method Not Allowed: GET /v3/kv/range'],
      ['Range', 'RESOURCE_EXHAUSTED', expect.stringMatching(/^grpc: received message larger than max/)],
      ['Watch', 'UNKNOWN', expect.stringMatching(/cannot unmarshal number/)],
      ['HTTP', 'INVALID_ARGUMENT', 'HTTP 400 Bad Request: HPE_INVALID_METHOD'],
      ['HTTP', 'INVALID_ARGUMENT', 'HTTP 431 Request Header Fields Too Large: HPE_HEADER_OVERFLOW'],
    ]);
    for (const event of (await trail()).filter((entry) => entry.outcome === 'failed')) expect(event.source).toMatch(/^127\.0\.0\.1:\d+$/);

    // Authentication failures reach the handler and are recorded there, over HTTP as over gRPC.
    expect((await etcdctl(server.endpoint, ['user', 'add', 'root:root-password'])).code).toBe(0);
    expect((await etcdctl(server.endpoint, ['auth', 'enable'])).code).toBe(0);
    const badToken = await httpCall(target, '/v3/kv/range', { body: JSON.stringify({ key: base64('k') }), headers: { authorization: 'forged.token.value' } });
    expect(badToken.status).toBe(401);
    const badPassword = await httpCall(target, '/v3/auth/authenticate', { body: JSON.stringify({ name: 'root', password: 'guess' }) });
    expect(badPassword.status).toBe(400);
    await sleep(300);
    const events = await trail();
    expect(events.find((event) => event.action === 'Range' && event.code === 'UNAUTHENTICATED')?.outcome).toBe('denied');
    expect(events.find((event) => event.action === 'Authenticate' && event.user === 'root')?.outcome).toBe('denied');
    expect(JSON.stringify(events)).not.toContain('guess');
  }, 60_000);

  it('records a flood of refusals at a bounded rate, counting every one, and keeps serving', async () => {
    const before = (await trail()).length;
    const sent = 1500;
    const { statuses, elapsedSeconds } = await flood(server.port, '/v3/kv/put', '{not json', sent);
    expect(statuses.filter((status) => status === 400)).toHaveLength(sent);
    await sleep(2500); // the summary of those left out follows within a second or two
    const added = (await trail()).slice(before);
    const oneByOne = added.filter((event) => event.action === 'Put' && event.code === 'INVALID_ARGUMENT');
    const summaries = added.filter((event) => event.action === 'refusals.unrecorded');
    const summarised = summaries.map((event) => Number(/^(\d+) refused requests/.exec(event.detail ?? '')?.[1]));
    console.log(`refusal flood: ${JSON.stringify({ flood: sent, seconds: Math.round(elapsedSeconds * 10) / 10, oneByOne: oneByOne.length, summaries: summarised })}`);
    expect(summaries.length).toBeGreaterThan(0);
    expect(summaries[0]?.detail).toMatch(/INVALID_ARGUMENT=\d+; sources 127\.0\.0\.1(?![:\d])/);
    expect(oneByOne.length + summarised.reduce((total, count) => total + count, 0)).toBe(sent);
    expect(oneByOne.length + summaries.length).toBeLessThanOrEqual(refusalEventsBurst + Math.ceil((elapsedSeconds + 3) * refusalEventsPerSecond));
    // Still serving: a put over the gateway (auth is on since the test before: as root).
    const login = await httpCall({ port: server.port }, '/v3/auth/authenticate', { body: JSON.stringify({ name: 'root', password: 'root-password' }) });
    const token = (JSON.parse(login.body) as { token: string }).token;
    const put = await httpCall({ port: server.port }, '/v3/kv/put', { body: JSON.stringify({ key: base64('after'), value: base64('flood') }), headers: { authorization: token } });
    expect(put.status).toBe(200);
  }, 60_000);

  it('records a flood of denials to a caller that is no user at the same bounded rate, counting every one', async () => {
    const before = (await trail()).length;
    const sent = 1500;
    const { statuses, elapsedSeconds } = await flood(server.port, '/v3/kv/range', JSON.stringify({ key: base64('/registry/secrets/x') }), sent); // no token: auth is on, so denied
    expect(statuses).toHaveLength(sent);
    expect(statuses.filter((status) => status === 200)).toHaveLength(0);
    await sleep(2500);
    const added = (await trail()).slice(before);
    const oneByOne = added.filter((event) => event.action === 'Range' && event.outcome !== 'allowed');
    const summaries = added.filter((event) => event.action === 'denials.unrecorded');
    const summarised = summaries.map((event) => Number(/^(\d+) requests denied to callers that are no user/.exec(event.detail ?? '')?.[1]));
    console.log(`denial flood: ${JSON.stringify({ flood: sent, seconds: Math.round(elapsedSeconds * 10) / 10, oneByOne: oneByOne.length, summaries: summarised })}`);
    expect(summaries.length).toBeGreaterThan(0);
    expect(oneByOne.length + summarised.reduce((total, count) => total + count, 0)).toBe(sent);
    expect(oneByOne.length + summaries.length).toBeLessThanOrEqual(refusalEventsBurst + Math.ceil((elapsedSeconds + 3) * refusalEventsPerSecond));
  }, 60_000);
});
