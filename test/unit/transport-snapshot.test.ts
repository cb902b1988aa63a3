/**
 * Snapshot transfer between two real Transports over loopback gRPC: a transfer the sender gives up
 * on midway must never look complete to the receiver. gRPC reports a cancelled client stream's end
 * to the server just like a complete one's (the cancel arrives after), so without the sender's last
 * marker the receiver would stage part of a snapshot as the whole. Seen in the 30-minute soak: a
 * leader took a newer snapshot while sending an older one, cancelled, and the joining member never
 * caught up.
 */
import { afterEach, describe, expect, it } from 'vitest';
import type { Message } from '../../src/raft/types.js';
import { Transport } from '../../src/server/transport.js';
import { freePort } from '../helpers/processes.js';
import { transportOptions } from '../helpers/transport-options.js';

type SnapshotMessage = Extract<Message, { type: 'snapshot' }>;

const snapshotMessage: SnapshotMessage = {
  type: 'snapshot',
  from: 'a1',
  to: 'b2',
  term: 3,
  snapshot: { metadata: { index: 40, term: 3, configuration: { voters: ['a1', 'b2'], learners: [] } }, data: Buffer.alloc(0) },
};

interface Received {
  readonly chunks: string[];
  readonly outcome: 'complete' | string;
}

describe('snapshot transfer between transports', () => {
  const transports: Transport[] = [];
  afterEach(async () => {
    await Promise.all(transports.splice(0).map((transport) => transport.close()));
  });

  /** Sends one snapshot from a1 to b2 whose chunks come from `chunks`; resolves with what b2 saw. */
  const transfer = async (chunks: () => AsyncIterable<Buffer>): Promise<Received> => {
    let settle: (received: Received) => void = () => undefined;
    const done = new Promise<Received>((resolve) => (settle = resolve));
    const receiverPort = await freePort();
    const receiver = new Transport(transportOptions('b2', {
      receiveSnapshot: async (_message, incoming) => {
        const seen: string[] = [];
        try {
          for await (const chunk of incoming) seen.push(chunk.toString());
          settle({ chunks: seen, outcome: 'complete' });
        } catch (error) {
          settle({ chunks: seen, outcome: String(error) });
          throw error;
        }
      },
    }));
    await receiver.listen([`http://127.0.0.1:${receiverPort}`]);
    const sender = new Transport(transportOptions('a1', { snapshotChunks: chunks }));
    await sender.listen([`http://127.0.0.1:${await freePort()}`]);
    transports.push(receiver, sender);
    sender.setPeers([{ id: 'b2', peerUrls: [`http://127.0.0.1:${receiverPort}`] }]);
    sender.send([snapshotMessage]);
    return done;
  };

  it('delivers every chunk of a complete snapshot and completes', async () => {
    const received = await transfer(async function* () {
      for (const part of ['one', 'two', 'three']) yield Buffer.from(part);
    });
    expect(received).toEqual({ chunks: ['one', 'two', 'three'], outcome: 'complete' });
  });

  it('fails the transfer the sender cancels midway instead of completing it with part of the snapshot', async () => {
    const received = await transfer(async function* () {
      yield Buffer.from('one');
      yield Buffer.from('two');
      // The leader's view of the snapshot was released (a newer snapshot replaced it).
      await new Promise((resolve) => setTimeout(resolve, 100));
      throw new Error('snapshot at 40 is no longer held');
    });
    expect(received.outcome).not.toBe('complete');
    // Which the receiver sees first under load, the stream's end or the sender's cancel, varies:
    // either way the transfer fails (the old code completed it).
    expect(received.outcome).toMatch(/ended before its last chunk|cancelled by its sender/);
  });

  /**
   * A receiver that, like a member, takes one snapshot at a time (refusing others while busy) and
   * reports how each transfer it took ended.
   */
  const oneAtATimeReceiver = async (idleTimeoutMs?: number, readAfterMs = 0): Promise<{ url: string; outcomes: string[]; refused: () => number; taken: () => Promise<void>; next: () => Promise<string> }> => {
    const outcomes: string[] = [];
    let refused = 0;
    let takenCount = 0;
    let busy = false;
    let wake: () => void = () => undefined;
    const port = await freePort();
    const receiver = new Transport(transportOptions('b2', {
      ...(idleTimeoutMs === undefined ? {} : { snapshotIdleTimeoutMs: idleTimeoutMs }),
      receiveSnapshot: async (_message, incoming) => {
        if (busy) {
          refused += 1;
          throw new Error('another snapshot is being received');
        }
        busy = true;
        takenCount += 1;
        try {
          // Like stageSnapshot, which first fsyncs and clears the previous staging: the stream is not
          // read for a while (gRPC pauses it meanwhile).
          if (readAfterMs > 0) await new Promise((resolve) => setTimeout(resolve, readAfterMs));
          const seen: string[] = [];
          for await (const chunk of incoming) seen.push(chunk.toString());
          outcomes.push(`complete: ${seen.join(',')}`);
        } catch (error) {
          outcomes.push(String(error));
          throw error;
        } finally {
          busy = false;
          wake();
        }
      },
    }));
    await receiver.listen([`http://127.0.0.1:${port}`]);
    transports.push(receiver);
    const next = (): Promise<string> => {
      const count = outcomes.length;
      return new Promise((resolve) => {
        wake = () => {
          if (outcomes.length > count) resolve(outcomes[count] as string);
        };
      });
    };
    /** Resolves once the receiver has taken a transfer: a cancel that overtakes the header (the call
     * not yet handed to the receiver, as under load) reaches no receiver and gives no outcome. */
    const taken = async (): Promise<void> => {
      while (takenCount === 0) await new Promise((resolve) => setTimeout(resolve, 10));
    };
    return { url: `http://127.0.0.1:${port}`, outcomes, refused: () => refused, taken, next };
  };

  const senderWith = async (chunks: () => AsyncIterable<Buffer>, receiverUrl: string): Promise<Transport> => {
    const sender = new Transport(transportOptions('a1', { snapshotChunks: chunks }));
    await sender.listen([`http://127.0.0.1:${await freePort()}`]);
    transports.push(sender);
    sender.setPeers([{ id: 'b2', peerUrls: [receiverUrl] }]);
    return sender;
  };

  it('releases the receiver when the sender cancels after the header, before any chunk, and takes the next transfer', async () => {
    // The receiver is still busy staging when the cancel arrives. On loopback gRPC reports the end
    // here (this passed before the fix too); the 'cancelled' handling covers a cancel with no end.
    const receiver = await oneAtATimeReceiver(undefined, 600);
    let attempt = 0;
    const sender = await senderWith(async function* () {
      attempt += 1;
      if (attempt === 1) {
        // The header is on its way; the leader then finds it no longer holds the snapshot (soak, issue 10).
        await receiver.taken();
        await new Promise((resolve) => setTimeout(resolve, 200));
        throw new Error('snapshot at 40 is no longer held');
      }
      yield Buffer.from('fresh');
    }, receiver.url);
    const first = receiver.next();
    sender.send([snapshotMessage]);
    expect(await first).not.toMatch(/^complete/);
    const second = receiver.next();
    sender.send([snapshotMessage]);
    expect(await second).toBe('complete: fresh');
    expect(receiver.refused()).toBe(0);
  }, 30_000);

  it('releases the receiver when the sender cancels between chunks while the receiver is behind', async () => {
    const receiver = await oneAtATimeReceiver(undefined, 600);
    let attempt = 0;
    const sender = await senderWith(async function* () {
      attempt += 1;
      if (attempt === 1) {
        for (let chunk = 0; chunk < 64; chunk += 1) yield Buffer.from(`chunk ${chunk}`);
        await receiver.taken();
        await new Promise((resolve) => setTimeout(resolve, 100));
        throw new Error('snapshot at 40 is no longer held');
      }
      yield Buffer.from('fresh');
    }, receiver.url);
    const first = receiver.next();
    sender.send([snapshotMessage]);
    expect(await first).not.toMatch(/^complete/);
    const second = receiver.next();
    sender.send([snapshotMessage]);
    expect(await second).toBe('complete: fresh');
  }, 30_000);

  it('gives up on a transfer whose sender stalls after the header (idle timeout) and takes the next one', async () => {
    const receiver = await oneAtATimeReceiver(500);
    let attempt = 0;
    let release: () => void = () => undefined;
    const stalled = new Promise<void>((resolve) => (release = resolve));
    const sender = await senderWith(async function* () {
      attempt += 1;
      if (attempt === 1) {
        await stalled; // a sender that neither sends nor cancels (a stalled leader or link)
        return;
      }
      yield Buffer.from('fresh');
    }, receiver.url);
    try {
      const first = receiver.next();
      const startedMs = Date.now();
      sender.send([snapshotMessage]);
      expect(await first).toContain('idle');
      expect(Date.now() - startedMs).toBeLessThan(5_000);
      const second = receiver.next();
      sender.send([snapshotMessage]);
      expect(await second).toBe('complete: fresh');
    } finally {
      release();
    }
  }, 30_000);
});

describe('a peer removed while messages to it are queued', () => {
  it('drops them instead of calling its shut-down channel (which threw and stopped the member)', async () => {
    const sender = new Transport(transportOptions('a1', {}));
    await sender.listen([`http://127.0.0.1:${await freePort()}`]);
    const thrown: unknown[] = [];
    const record = (error: unknown): void => void thrown.push(error);
    process.on('uncaughtException', record);
    try {
      sender.setPeers([{ id: 'b2', peerUrls: [`http://127.0.0.1:${await freePort()}`] }]);
      // Queued for the next turn of the event loop, then the peer leaves (a membership change) first.
      sender.send([{ type: 'heartbeat', from: 'a1', to: 'b2', term: 3, commit: 0, context: '' }, snapshotMessage]);
      sender.setPeers([]);
      await new Promise((resolve) => setTimeout(resolve, 50));
      expect(thrown.map(String)).toEqual([]);
    } finally {
      process.off('uncaughtException', record);
      await sender.close();
    }
  });
});
