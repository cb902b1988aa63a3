/**
 * Peer message bytes held before a message is whole, under one peer certificate (attack review):
 * gRPC holds a message until its last byte, so before the bound each stream opened on the peer
 * port could hold up to the 72 MiB peer message limit (8 streams of 60 MiB: +440 MiB RSS, none reset), however many
 * streams the holder of one peer certificate opened.
 *
 * Calls held open on the peer port (a follower's forwarded lease keep-alives waiting on a slow
 * leader) and Raft's streams are bounded apart: with one budget, ~4,096 held calls from a follower's
 * address refused that follower's Messages stream when it reconnected.
 */
import { readFile } from 'node:fs/promises';
import { connect as connectHttp2, constants as http2Constants, type ClientHttp2Session } from 'node:http2';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { peerOpenStreamsPerSourceMax, peerRequestBytesPerSourceMax } from '../../src/server/transport.js';
import { cleanEnvironment, run } from '../helpers/processes.js';
import { startTlsMember, type TlsMember } from '../helpers/tls-member.js';

const mebibyte = 1024 * 1024;

describe('peer stream bounds (TLS member)', () => {
  let member: TlsMember;
  beforeAll(async () => {
    member = await startTlsMember();
  }, 60_000);
  afterAll(async () => {
    await member?.stop();
  });

  /** An HTTP/2 session to the member's peer port under peer certificate `a`. */
  const peerSession = async (options: { maxSessionMemory?: number } = {}): Promise<ClientHttp2Session> =>
    connectHttp2(`https://127.0.0.1:${member.peerPort}`, {
      ca: await readFile(path.join(member.directory, 'pki', 'ca.crt')),
      cert: await readFile(path.join(member.directory, 'a', 'peer.crt')),
      key: await readFile(path.join(member.directory, 'a', 'peer.key')),
      servername: 'localhost',
      checkServerIdentity: () => undefined,
      ...options,
    }).on('error', () => undefined);

  /** The member still serves a client: etcdctl puts `key`. */
  const expectServesPut = async (key: string): Promise<void> => {
    const put = await run('etcdctl', [...member.adminFlags, 'put', key, 'yes'], { env: cleanEnvironment() });
    expect(put.stdout).toContain('OK');
  };

  it('streams of almost whole peer messages hold at most the per-source bound; the rest are reset and the member serves on', async () => {
    const streamsCount = 8;
    const messageBytes = 60 * mebibyte;
    const session = await peerSession();
    const chunk = Buffer.alloc(mebibyte, 1);
    let reset = 0;
    let sent = 0;
    const sending = Array.from({ length: streamsCount }, async () => {
      const stream = session.request({ ':method': 'POST', ':path': '/rampart.Peer/Messages', 'content-type': 'application/grpc', te: 'trailers' });
      stream.on('error', () => undefined);
      stream.on('data', () => undefined);
      const closed = new Promise<void>((resolve) => stream.once('close', () => {
        if (stream.rstCode === http2Constants.NGHTTP2_ENHANCE_YOUR_CALM) reset += 1;
        resolve();
      }));
      // One message announced a byte longer than is sent: never whole, held by gRPC.
      const prefix = Buffer.alloc(5);
      prefix.writeUInt32BE(messageBytes + 1, 1);
      stream.write(prefix);
      for (let written = 0; written < messageBytes && !stream.closed; written += chunk.length) {
        if (!stream.write(chunk)) await Promise.race([new Promise((resolve) => stream.once('drain', resolve)), closed]);
        sent += chunk.length;
      }
      return stream;
    });
    try {
      await Promise.all(sending);
      // At most two streams hold their 60 MiB (144 MiB per source); the other six are reset. (RSS is
      // no measure here: the reset streams' chunks are garbage the member has not collected yet.)
      // The bytes sent have arrived once the member holds them or has reset their stream: waited
      // for (up to 60 s), not a fixed 3 s that a loaded member can take to read ~200 MiB.
      const resetsExpected = streamsCount - Math.floor(peerRequestBytesPerSourceMax / messageBytes);
      const logged = (): boolean => member.output().includes('reset a peer stream: too many request bytes in flight');
      for (const deadline = Date.now() + 60_000; (reset < resetsExpected || !logged()) && Date.now() < deadline;) await new Promise((resolve) => setTimeout(resolve, 100));
      expect(reset, `${Math.round(sent / mebibyte)} MiB sent`).toBeGreaterThanOrEqual(streamsCount - Math.floor(peerRequestBytesPerSourceMax / messageBytes));
      expect(member.output()).toContain('reset a peer stream: too many request bytes in flight');
    } finally {
      session.destroy();
    }
    await expectServesPut('/after-peer-attack');
  }, 180_000);

  it('an address holding its 4,096 open peer calls is refused a 4,097th, but its Raft Messages stream is served', async () => {
    const session = await peerSession({ maxSessionMemory: 1000 });
    /** A peer call: its grpc-status once answered, or the reset code once the stream was reset. */
    const call = (method: string): { stream: ReturnType<typeof session.request>; outcome: Promise<{ status?: string; resetCode?: number }> } => {
      const stream = session.request({ ':method': 'POST', ':path': `/rampart.Peer/${method}`, 'content-type': 'application/grpc', te: 'trailers' });
      stream.on('error', () => undefined);
      stream.on('data', () => undefined);
      let status: string | undefined;
      stream.on('response', (headers) => {
        if (headers['grpc-status'] !== undefined) status = String(headers['grpc-status']);
      });
      stream.on('trailers', (trailers) => {
        status = String(trailers['grpc-status']);
      });
      const outcome = new Promise<{ status?: string; resetCode?: number }>((resolve) => stream.once('close', () => resolve(status !== undefined ? { status } : { resetCode: stream.rstCode })));
      return { stream, outcome };
    };
    try {
      // LeaseRenew calls whose request never arrives: held open, as keep-alives a slow leader has
      // not answered are. The source's share of calls, and 100 past it.
      const attempted = peerOpenStreamsPerSourceMax + 100;
      let refused = 0;
      let otherwiseClosed = 0;
      for (let index = 0; index < attempted; index++) {
        void call('LeaseRenew').outcome.then((outcome) => {
          if (outcome.resetCode === http2Constants.NGHTTP2_ENHANCE_YOUR_CALM) refused += 1;
          else otherwiseClosed += 1;
        });
        if (index % 500 === 499) await new Promise((resolve) => setTimeout(resolve, 20));
      }
      const deadline = Date.now() + 90_000;
      while (refused < attempted - peerOpenStreamsPerSourceMax && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 200));
      await new Promise((resolve) => setTimeout(resolve, 1000));
      expect({ refused, otherwiseClosed }).toEqual({ refused: attempted - peerOpenStreamsPerSourceMax, otherwiseClosed: 0 });
      // One more call is refused; a Raft Messages stream from the same address is served (an
      // empty stream, ended: the member acknowledges it). Before, it was reset as the calls were.
      const another = call('LeaseRenew');
      another.stream.end(Buffer.from([0, 0, 0, 0, 2, 0x08, 0x07]));
      expect(await another.outcome).toEqual({ resetCode: http2Constants.NGHTTP2_ENHANCE_YOUR_CALM });
      const messages = call('Messages');
      messages.stream.end();
      expect(await messages.outcome).toEqual({ status: '0' });
      expect(member.output()).toContain('reset a peer stream: too many open streams');
    } finally {
      session.destroy();
    }
    await expectServesPut('/after-held-calls');
  }, 180_000);
});
