/**
 * gRPC streams whose client sends requests but never reads the answers (attack review), under a
 * certificate that is no user: progress requests on a Watch stream, keep-alives on a LeaseKeepAlive
 * stream. Each is tiny, each answer is not: before, the member read every request and queued every
 * answer (4 million progress requests, 28 MB sent: +1.1 GB RSS; 4 million keep-alives: +185 MiB).
 */
import { connect as connectHttp2, type ClientHttp2Session } from 'node:http2';
import { describe, expect, it } from 'vitest';
import { attackTarget, residentBytes } from '../helpers/attack.js';

const mebibyte = 1024 * 1024;

describe('streams whose answers are never read (TLS member)', () => {
  const target = attackTarget('stranger');

  /**
   * Sends `count` copies of one request message on a new stream of `path` whose answers are never
   * read, for at most `seconds`; returns how many were taken by the member (written without waiting).
   */
  const flood = async (session: ClientHttp2Session, path: string, message: Buffer, count: number, seconds: number): Promise<number> => {
    const stream = session.request({ ':method': 'POST', ':path': path, 'content-type': 'application/grpc', te: 'trailers' });
    stream.on('error', () => undefined);
    stream.pause(); // never read
    const frame = Buffer.concat([Buffer.from([0, 0, 0, 0, message.length]), message]);
    const perWrite = 10_000;
    const batch = Buffer.concat(Array.from({ length: perWrite }, () => frame));
    const deadline = Date.now() + seconds * 1000;
    let taken = 0;
    while (taken < count && Date.now() < deadline && !stream.closed) {
      const flowing = stream.write(batch);
      taken += perWrite;
      if (!flowing) {
        const drained = await Promise.race([
          new Promise<boolean>((resolve) => stream.once('drain', () => resolve(true))),
          new Promise<boolean>((resolve) => setTimeout(() => resolve(false), Math.max(0, deadline - Date.now()))),
        ]);
        if (!drained) break;
      }
    }
    return taken;
  };

  it('a Watch stream of progress requests and a keep-alive stream, answers unread, stop being read; the member\'s memory stays bounded', async () => {
    const session = connectHttp2(`https://127.0.0.1:${target.member.clientPort}`, { ...target.stranger, settings: { initialWindowSize: 65_535 } }).on('error', () => undefined);
    const pid = target.member.child.pid ?? 0;
    try {
      const before = await residentBytes(pid);
      // WatchRequest { progress_request: {} } and LeaseKeepAliveRequest { ID: 1 }.
      const progressSent = await flood(session, '/etcdserverpb.Watch/Watch', Buffer.from([0x1a, 0x00]), 3_000_000, 15);
      const keepAlivesSent = await flood(session, '/etcdserverpb.Lease/LeaseKeepAlive', Buffer.from([0x08, 0x01]), 3_000_000, 15);
      await new Promise((resolve) => setTimeout(resolve, 2000));
      const grown = (await residentBytes(pid)) - before;
      console.log(`unread answers: ${progressSent} progress requests and ${keepAlivesSent} keep-alives taken, RSS +${Math.round(grown / mebibyte)} MiB`);
      // Before: both floods were read whole (3 million each), and RSS grew by about 1 GB.
      expect(progressSent, 'progress requests taken before the member stopped reading').toBeLessThan(3_000_000);
      expect(keepAlivesSent, 'keep-alives taken before the member stopped reading').toBeLessThan(3_000_000);
      expect(grown, `RSS grew ${Math.round(grown / mebibyte)} MiB`).toBeLessThan(150 * mebibyte);
    } finally {
      session.destroy();
    }
    expect(target.member.child.exitCode).toBeNull();
  }, 180_000);
});
