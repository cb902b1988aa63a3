/**
 * Watch streams under a low-privilege user or a certificate that is no user (attack review): how
 * many watchers one user holds, and a gateway watch whose client never reads its answers.
 */
import { connect as connectHttp2, type ClientHttp2Stream } from 'node:http2';
import { request } from 'node:https';
import { describe, expect, it } from 'vitest';
import { messageType } from '../../src/api/json-codec.js';
import { attackTarget, credentialsFor, httpsPut, residentBytes } from '../helpers/attack.js';

describe('watch bounds (TLS member)', () => {
  const target = attackTarget('stranger', 'root');

  it('one user holds at most 100,000 watchers over all its streams, and gets them back when a stream ends', async () => {
    // Before: no bound (200,000 watchers on one stream: +200 MiB, ~1 KB each).
    const watchersMax = 100_000;
    const auditor = await credentialsFor(target.member, 'auditor');
    const session = connectHttp2(`https://127.0.0.1:${target.member.clientPort}`, auditor).on('error', () => undefined);
    const watchRequest = messageType('etcdserverpb.WatchRequest');
    const watchResponse = messageType('etcdserverpb.WatchResponse');
    /** One Watch stream sending `count` create requests in one write, as gRPC frames; its answers. */
    const open = (count: number): Promise<{ created: number; refused: string[]; stream: ClientHttp2Stream }> => new Promise((resolve) => {
      const stream = session.request({ ':method': 'POST', ':path': '/etcdserverpb.Watch/Watch', 'content-type': 'application/grpc', te: 'trailers' });
      let created = 0;
      const refused: string[] = [];
      let pending = Buffer.alloc(0);
      stream.on('error', () => undefined);
      stream.on('data', (chunk: Buffer) => {
        pending = Buffer.concat([pending, chunk]);
        while (pending.length >= 5 && pending.length >= 5 + pending.readUInt32BE(1)) {
          const length = pending.readUInt32BE(1);
          const response = watchResponse.toObject(watchResponse.decode(pending.subarray(5, 5 + length))) as { created?: boolean; canceled?: boolean; cancel_reason?: string };
          pending = pending.subarray(5 + length);
          if (response.created === true && response.canceled !== true) created += 1;
          else if (response.canceled === true) refused.push(response.cancel_reason ?? '');
          if (created + refused.length === count) resolve({ created, refused, stream });
        }
      });
      const frames = Array.from({ length: count }, (_, index) => {
        const body = watchRequest.encode(watchRequest.fromObject({ create_request: { key: Buffer.from(`/watched/${index}`) } })).finish();
        const prefix = Buffer.alloc(5);
        prefix.writeUInt32BE(body.length, 1);
        return Buffer.concat([prefix, body]);
      });
      stream.write(Buffer.concat(frames));
    });
    try {
      const first = await open(watchersMax - 5);
      expect(first.created).toBe(watchersMax - 5);
      const second = await open(10);
      expect(second.created).toBe(5);
      expect(second.refused).toHaveLength(5);
      expect(second.refused[0]).toBe('rpc error: code = ResourceExhausted desc = rampart: too many watchers for this user (at most 100000)');
      first.stream.close();
      second.stream.close();
      // The member gives the user's 100,000 watchers back as it ends the two streams: asked again
      // (a fresh stream each time) until it has, instead of after a fixed second that 100,000
      // cancellations can outlast on a loaded machine.
      let third = await open(10);
      for (const deadline = Date.now() + 60_000; third.created < 10 && Date.now() < deadline;) {
        third.stream.close();
        await new Promise((resolve) => setTimeout(resolve, 250));
        third = await open(10);
      }
      expect(third.created).toBe(10);
      third.stream.close();
    } finally {
      session.destroy();
    }
  }, 120_000);

  it('a gateway watch whose client sends requests but never reads its answers stops being read', async () => {
    // Before: every progress request's answer was queued (a million: +560 MiB), without bound.
    const pid = target.member.child.pid ?? 0;
    const rssBefore = await residentBytes(pid);
    const watch = request({ host: '127.0.0.1', port: target.member.clientPort, path: '/v3/watch', method: 'POST', headers: { 'transfer-encoding': 'chunked' }, agent: false, ...target.stranger });
    watch.on('error', () => undefined);
    watch.on('response', (response) => response.pause());
    const batch = '{"progress_request":{}}'.repeat(10_000);
    const deadline = Date.now() + 15_000;
    let sent = 0;
    try {
      while (sent < 400_000 && Date.now() < deadline) {
        if (!watch.write(batch)) await Promise.race([new Promise((resolve) => watch.once('drain', resolve)), new Promise((resolve) => setTimeout(resolve, Math.max(0, deadline - Date.now())))]);
        sent += 10_000;
      }
      await new Promise((resolve) => setTimeout(resolve, 2000));
      const grownBytes = (await residentBytes(pid)) - rssBefore;
      console.log(`unread progress answers: ${sent} requests written, RSS +${(grownBytes / 2 ** 20).toFixed(0)} MiB`);
      expect(grownBytes).toBeLessThan(64 * 1024 * 1024);
    } finally {
      watch.destroy();
    }
    expect(await httpsPut(target.member.clientPort, target.root, '/after-progress', 10)).toMatch(/^200 \{"header"/);
  }, 60_000);
});
