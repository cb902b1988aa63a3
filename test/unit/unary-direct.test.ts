/**
 * KV Put, Range and Txn are served on their HTTP/2 stream (unary-direct.ts), other unary calls by
 * grpc-js. The same handler is registered as Put (direct) and DeleteRange (grpc-js): for each
 * request — well formed, refused by the handler, too large, malformed, none, two, past its
 * deadline, cancelled, with a token — both must answer the same headers, bytes and trailers, report
 * the same transport refusals to the audit, and hand the handler the same call context.
 */
import { connect, type ClientHttp2Session, type IncomingHttpHeaders } from 'node:http2';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import pino from 'pino';
import { listenClients, type ClientListener } from '../../src/api/client-listener.js';
import { createGrpcServer, directMethodsOf } from '../../src/api/grpc-server.js';
import { oversizedTxn, txnOpsTotalMax } from '../../src/server/validate.js';
import { RampartError } from '../../src/errors.js';
import type { TransportRefusal } from '../../src/api/refusal-audit.js';
import type { CallContext, UnaryRpc } from '../../src/api/rpc.js';
import { freePort } from '../helpers/processes.js';

const header = { cluster_id: '14841639068965178418', member_id: '10276657743932975437', revision: 7, raft_term: 2 };
/** PutRequest / DeleteRangeRequest { key: "k" }: field 1, bytes. */
const keyRequest = Buffer.from([0x0a, 0x01, 0x6b]);

function framed(message: Buffer, size = message.length): Buffer {
  const prefix = Buffer.alloc(5);
  prefix.writeUInt32BE(size, 1);
  return Buffer.concat([prefix, message]);
}

interface Answer {
  readonly headers: Record<string, unknown>;
  readonly body: string;
  readonly trailers: Record<string, unknown>;
  readonly rstCode: number;
}

const contexts: { path: string; context: CallContext; aborted: Promise<boolean> }[] = [];
const refusals: TransportRefusal[] = [];
/** How the handler answers, by the key's first byte. */
const handler: UnaryRpc = {
  kind: 'unary',
  handle: async (request, call) => {
    const key = String((request as { key?: Buffer }).key ?? '');
    contexts.push({ path: '', context: call, aborted: new Promise((resolve) => (call.signal.aborted ? resolve(true) : call.signal.addEventListener('abort', () => resolve(true)))) });
    if (key === 'refuse') throw new RampartError('PermissionDenied');
    if (key === 'hang') return new Promise(() => undefined);
    return { header };
  },
};

let listener: ClientListener;
let session: ClientHttp2Session;
let port: number;

function ask(method: 'Put' | 'DeleteRange', body: Buffer | undefined, extra: Record<string, string> = {}, cancelAfterMs?: number, on: ClientHttp2Session = session): Promise<Answer> {
  return new Promise((resolve) => {
    const stream = on.request({ ':method': 'POST', ':path': `/etcdserverpb.KV/${method}`, 'content-type': 'application/grpc', te: 'trailers', ...extra });
    let headers: IncomingHttpHeaders = {};
    let trailers: IncomingHttpHeaders = {};
    const chunks: Buffer[] = [];
    stream.on('error', () => undefined);
    stream.on('response', (received) => (headers = received));
    stream.on('trailers', (received) => (trailers = received));
    stream.on('data', (chunk: Buffer) => chunks.push(chunk));
    stream.on('close', () => {
      const clean = (from: IncomingHttpHeaders): Record<string, unknown> => {
        const { date: _date, ...rest } = from;
        return JSON.parse(JSON.stringify(rest).replaceAll('DeleteRange', 'Put')) as Record<string, unknown>;
      };
      resolve({ headers: clean(headers), body: Buffer.concat(chunks).toString('hex'), trailers: clean(trailers), rstCode: stream.rstCode ?? 0 });
    });
    if (cancelAfterMs !== undefined) {
      stream.write(body ?? Buffer.alloc(0));
      setTimeout(() => stream.close(8), cancelAfterMs);
    } else if (body === undefined) stream.end();
    else stream.end(body);
  });
}

/** Asks both ways; returns the two answers and what each made the audit and the handler see. */
async function both(body: Buffer | undefined, extra: Record<string, string> = {}, cancelAfterMs?: number, stallAnswerMs?: number) {
  const results = [];
  for (const method of ['Put', 'DeleteRange'] as const) {
    refusals.length = 0;
    contexts.length = 0;
    // stallAnswerMs: asked on a connection that grants no flow-control window for that long.
    const stalled = stallAnswerMs === undefined ? undefined : connect(`http://127.0.0.1:${port}`, { settings: { initialWindowSize: 0 } });
    if (stalled !== undefined) setTimeout(() => stalled.settings({ initialWindowSize: 65_535 }), stallAnswerMs);
    const answer = await ask(method, body, extra, cancelAfterMs, stalled);
    stalled?.close();
    await new Promise((resolve) => setTimeout(resolve, 20));
    const seen = await Promise.all(contexts.map(async ({ context, aborted }) => ({
      token: context.token,
      peer: context.peer.replace(/:\d+$/, ''),
      deadline: Number.isFinite(context.deadlineMs),
      certificate: context.certificate,
      aborted: await Promise.race([aborted, new Promise((resolve) => setTimeout(() => resolve(false), 50))]),
    })));
    const refused = refusals.map((refusal) => ({ ...refusal, method: refusal.method.replace('DeleteRange', 'Put'), details: refusal.details.replace('DeleteRange', 'Put'), peer: refusal.peer.replace(/:\d+$/, '') }));
    results.push({ answer, refused, seen });
  }
  return results as [typeof results[0], typeof results[0]];
}

describe('unary calls served on their HTTP/2 stream', () => {
  beforeAll(async () => {
    const services = new Map([['etcdserverpb.KV', { Put: handler, DeleteRange: handler }]]);
    const grpcServer = createGrpcServer({ services, maxRequestBytes: 64, onRefusal: (refusal) => refusals.push(refusal) });
    port = await freePort();
    listener = await listenClients('127.0.0.1', port, { grpcServer, http: (_request, response) => response.end(), tls: undefined, logger: pino({ level: 'silent' }), onRefusal: (refusal) => refusals.push(refusal) });
    session = connect(`http://127.0.0.1:${port}`);
  });
  afterAll(async () => {
    session.close();
    await listener.close();
  });

  const cases: [string, Buffer | undefined, Record<string, string>?, number?][] = [
    ['a well-formed call', framed(keyRequest)],
    ['a call the handler refuses', framed(Buffer.from([0x0a, 0x06, ...Buffer.from('refuse')]))],
    ['a message past the receive limit', framed(keyRequest, 64 + 512 * 1024 + 1)],
    ['a message that does not decode', framed(Buffer.from([0x0a, 0x7f, 0x01]))],
    ['no message', undefined],
    ['an empty message', framed(Buffer.alloc(0))],
    ['two messages', Buffer.concat([framed(keyRequest), framed(keyRequest)])],
    ['a message in pieces (a partial second one ignored)', Buffer.concat([framed(keyRequest), Buffer.from([0, 0])])],
    ['a token (the first of repeated values)', framed(keyRequest), { token: 'abc, def' }],
    ['an authorization header', framed(keyRequest), { authorization: 'xyz' }],
    ['a token that is not a legal metadata value', framed(keyRequest), { token: 'caf\u00e9', authorization: 'xyz' }],
    ['a deadline', framed(keyRequest), { 'grpc-timeout': '5S' }],
    ['a call past its deadline', framed(Buffer.from([0x0a, 0x04, ...Buffer.from('hang')])), { 'grpc-timeout': '30m' }],
    ['a deadline before the request is whole', Buffer.from([0, 0, 0]), { 'grpc-timeout': '30m' }, 200],
    ['a call its client cancels', framed(Buffer.from([0x0a, 0x04, ...Buffer.from('hang')])), {}, 50],
    ['a message that does not decode, before the client half-closes', framed(Buffer.from([0x0a, 0x7f, 0x01])), {}, 200],
    ['a second message that does not decode', Buffer.concat([framed(keyRequest), framed(Buffer.from([0x0a, 0x7f, 0x01]))])],
    ['a compressed call (grpc-js serves it)', framed(keyRequest), { 'grpc-encoding': 'gzip' }],
    ['an unreadable timeout (grpc-js serves it)', framed(keyRequest), { 'grpc-timeout': 'soon' }],
  ];
  for (const [name, body, extra, cancelAfterMs] of cases) {
    it(`answers ${name} as grpc-js does`, async () => {
      const [direct, viaGrpc] = await both(body, extra, cancelAfterMs);
      expect(direct).toEqual(viaGrpc);
    });
  }

  it('answers a deadline that passes while the answer waits on flow control as grpc-js does', async () => {
    // The response headers are out, the message is not: the status goes in the trailers (a second
    // respond() threw from the deadline timer, uncaught, and ended the process).
    const [direct, viaGrpc] = await both(framed(keyRequest), { 'grpc-timeout': '100m' }, undefined, 400);
    expect(direct).toEqual(viaGrpc);
    expect(direct.answer.trailers['grpc-status']).toBe(String(4));
    expect(direct.answer.body.length).toBeGreaterThan(10);
  });

  it('answers a well-formed Put with the handler\'s response and status 0', async () => {
    const [direct] = await both(framed(keyRequest));
    expect(direct.answer.trailers['grpc-status']).toBe('0');
    expect(direct.answer.body.length).toBeGreaterThan(10);
    expect(direct.seen).toHaveLength(1);
  });

  it('reports refusals before a handler, with the status grpc-js sends', async () => {
    const [direct] = await both(framed(keyRequest, 64 + 512 * 1024 + 1));
    expect(direct.answer.headers['grpc-status']).toBe('8');
    expect(direct.refused).toEqual([expect.objectContaining({ method: '/etcdserverpb.KV/Put', code: 'RESOURCE_EXHAUSTED', unknownMethod: false })]);
    const [hung] = await both(Buffer.from([0, 0, 0]), { 'grpc-timeout': '30m' }, 200);
    expect(hung.answer.headers['grpc-status']).toBe('4');
    expect(hung.refused).toEqual([expect.objectContaining({ code: 'DEADLINE_EXCEEDED' })]);
  });

  it('does not report a call whose whole request arrived as a refusal when its deadline passes before the client half-closes', async () => {
    // grpc-js's refusal audit counts a call as reaching its handler once its message is decoded.
    // (grpc-js then still runs the handler when the client's reset ends the stream, a call already
    // over: the direct path does not, so what the handler saw is not compared here.)
    const [direct, viaGrpc] = await both(framed(keyRequest), { 'grpc-timeout': '30m' }, 200);
    expect(direct.answer).toEqual(viaGrpc.answer);
    expect(direct.answer.headers['grpc-status']).toBe('4');
    expect(direct.refused).toEqual(viaGrpc.refused);
    expect(direct.refused).toEqual([]);
  });

  it('aborts the handler\'s signal when the client cancels or the deadline passes, not after an answer', async () => {
    const [cancelled] = await both(framed(Buffer.from([0x0a, 0x04, ...Buffer.from('hang')])), {}, 50);
    expect(cancelled.seen.map((seen) => seen.aborted)).toEqual([true]);
    const [late] = await both(framed(Buffer.from([0x0a, 0x04, ...Buffer.from('hang')])), { 'grpc-timeout': '30m' });
    expect(late.seen.map((seen) => seen.aborted)).toEqual([true]);
    const [answered] = await both(framed(keyRequest));
    expect(answered.seen.map((seen) => seen.aborted)).toEqual([false]);
  });

  it('serves exactly KV Put, Range and Txn directly, Txn with the size guard grpc-js would run', () => {
    const services = new Map([['etcdserverpb.KV', { Put: handler, Range: handler, Txn: handler, DeleteRange: handler, Compact: handler }]]);
    const table = directMethodsOf(createGrpcServer({ services, maxRequestBytes: 64 }));
    expect([...(table?.methods.keys() ?? [])].sort()).toEqual(['/etcdserverpb.KV/Put', '/etcdserverpb.KV/Range', '/etcdserverpb.KV/Txn']);
    // A Txn past the total operations limit is refused before it is decoded: the guard's sentinel.
    const op = Buffer.from([0x12, 0x00]); // RequestOp { request_put: {} }: field 2, empty
    const success = Buffer.concat(Array.from({ length: txnOpsTotalMax + 1 }, () => Buffer.concat([Buffer.from([0x12, op.length]), op])));
    expect(table?.methods.get('/etcdserverpb.KV/Txn')?.deserialize(success)).toBe(oversizedTxn);
  });
});
