/**
 * The Raft loop's timing: heartbeats and a leader's appends must not wait behind a Ready that is
 * still being persisted or applied (a slow fsync, a delete of many keys), or followers and the
 * leader's quorum check see a dead leader and elect another one under load.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { RaftNode, defaultRaftConfig } from '../../src/raft/raft.js';
import type { Entry, Message, NodeId } from '../../src/raft/types.js';
import { RaftLoop, type RaftLoopHost } from '../../src/server/raft-loop.js';

function node(id: NodeId, voters: NodeId[], learners: NodeId[] = []): RaftNode {
  return new RaftNode(
    { ...defaultRaftConfig, id, random: () => 0.5 },
    { hardState: { term: 0, vote: '', commit: 0 }, snapshot: undefined, entries: [], configuration: { voters, learners }, applied: 0 },
  );
}

/** A host whose persist hangs while `hang` is set: the loop is stuck inside one Ready. */
class StuckHost implements RaftLoopHost {
  readonly sent: Message[] = [];
  hang = false;
  private release: (() => void)[] = [];

  persist(): Promise<void> {
    if (!this.hang) return Promise.resolve();
    return new Promise((resolve) => this.release.push(resolve));
  }

  send(messages: readonly Message[]): void {
    this.sent.push(...messages);
  }

  installSnapshot(): Promise<void> {
    return Promise.resolve();
  }

  /** The data of every entry applied, in order. */
  readonly applied: string[] = [];

  applyEntries(entries: readonly Entry[]): Promise<void> {
    for (const entry of entries) if (entry.data.length > 0) this.applied.push(entry.data.toString());
    return Promise.resolve();
  }

  onSoftState(): void {}

  onFatal(error: unknown): void {
    throw error;
  }

  /** Lets the oldest hanging persist finish; later ones keep hanging while `hang` is set. */
  releaseOne(): void {
    this.release.shift()?.();
  }

  unstick(): void {
    this.hang = false;
    for (const resolve of this.release.splice(0)) resolve();
  }
}

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

describe('raft loop', () => {
  const loops: { loop: RaftLoop; host: StuckHost }[] = [];
  afterEach(async () => {
    for (const { loop, host } of loops.splice(0)) {
      host.unstick();
      await loop.close();
    }
  });

  it('a leader stuck persisting a Ready keeps sending heartbeats and new appends', async () => {
    // A lone voter leads at once; its learner receives what a follower would.
    const raft = node('a', ['a'], ['b']);
    const host = new StuckHost();
    const loop = new RaftLoop(raft, host, 5, 10_000);
    loops.push({ loop, host });
    raft.campaignNow();
    loop.start();
    await loop.settled();
    expect(loop.isLeader).toBe(true);
    // The learner acknowledges the leader's first entry: it is replicated to from now on.
    loop.step({ type: 'appendResponse', from: 'b', to: 'a', term: loop.term, reject: false, index: loop.lastIndex, rejectHint: 0 });
    await loop.settled();

    host.hang = true;
    loop.propose(Buffer.from('first')); // its Ready's persist hangs
    await sleep(20);
    const before = host.sent.length;
    loop.propose(Buffer.from('second'));
    await sleep(100); // ~20 heartbeat ticks
    const during = host.sent.slice(before);
    expect(during.filter((message) => message.type === 'heartbeat').length).toBeGreaterThanOrEqual(5);
    expect(during.some((message) => message.type === 'append' && message.entries.some((entry) => entry.data.toString() === 'second'))).toBe(true);
    host.unstick();
  });

  it('a follower stuck persisting a Ready answers heartbeats at once (but not appends)', async () => {
    const raft = node('b', ['a', 'b']);
    const host = new StuckHost();
    const loop = new RaftLoop(raft, host, 1_000, 10_000);
    loops.push({ loop, host });
    loop.start();
    host.hang = true;
    loop.step({ type: 'append', from: 'a', to: 'b', term: 1, prevIndex: 0, prevTerm: 0, commit: 0, entries: [{ index: 1, term: 1, type: 'normal', data: Buffer.from('x') }] });
    await sleep(20);
    loop.step({ type: 'heartbeat', from: 'a', to: 'b', term: 1, commit: 0, context: 'c1' });
    await sleep(20);
    expect(host.sent.some((message) => message.type === 'heartbeatResponse' && message.context === 'c1')).toBe(true);
    // The append's acknowledgement waits for the entry to be on disk.
    expect(host.sent.some((message) => message.type === 'appendResponse')).toBe(false);
    host.unstick();
    await loop.settled();
    expect(host.sent.some((message) => message.type === 'appendResponse' && !message.reject && message.index === 1)).toBe(true);
  });

  it('applies entries an earlier Ready made durable while the next Ready is persisted, never one before its own persist', async () => {
    const raft = node('a', ['a']);
    const host = new StuckHost();
    const loop = new RaftLoop(raft, host, 1_000, 10_000);
    loops.push({ loop, host });
    raft.campaignNow();
    loop.start();
    await loop.settled();
    expect(loop.isLeader).toBe(true);

    host.hang = true;
    loop.propose(Buffer.from('first')); // its Ready's persist hangs
    await sleep(20);
    loop.propose(Buffer.from('second'));
    await sleep(20);
    expect(host.applied).toEqual([]); // nothing is applied before it is durable here
    // 'first' is persisted and so committed; the next Ready persists 'second' (hanging again)
    // while it applies 'first'.
    host.releaseOne();
    await sleep(20);
    expect(host.applied).toEqual(['first']);
    host.unstick();
    await loop.settled();
    expect(host.applied).toEqual(['first', 'second']);
  });

  it('a follower applies entries learned committed in the same append only after persisting them', async () => {
    const raft = node('b', ['a', 'b']);
    const host = new StuckHost();
    const loop = new RaftLoop(raft, host, 1_000, 10_000);
    loops.push({ loop, host });
    loop.start();
    host.hang = true;
    loop.step({ type: 'append', from: 'a', to: 'b', term: 1, prevIndex: 0, prevTerm: 0, commit: 1, entries: [{ index: 1, term: 1, type: 'normal', data: Buffer.from('x') }] });
    await sleep(20);
    expect(host.applied).toEqual([]);
    host.unstick();
    await loop.settled();
    expect(host.applied).toEqual(['x']);
  });

  it('reads arriving while a ReadIndex request is in flight share the next one: one heartbeat round for many reads', async () => {
    const raft = node('a', ['a', 'b']);
    const host = new StuckHost();
    const loop = new RaftLoop(raft, host, 1_000, 10_000);
    loops.push({ loop, host });
    loop.start();
    // Elected with b's votes; b then holds the leader's first entry, so reads may be served.
    raft.campaignNow();
    loop.step({ type: 'preVoteResponse', from: 'b', to: 'a', term: 1, reject: false });
    loop.step({ type: 'voteResponse', from: 'b', to: 'a', term: 1, reject: false });
    await loop.settled();
    loop.step({ type: 'appendResponse', from: 'b', to: 'a', term: 1, reject: false, index: loop.lastIndex, rejectHint: 0 });
    await loop.settled();
    expect(loop.isLeader).toBe(true);

    let resolved = 0;
    const reads = Array.from({ length: 20 }, () => loop.readBarrier().then(() => (resolved += 1)));
    // b answers every confirmation heartbeat it is sent.
    const answered = new Set<string>();
    for (let round = 0; round < 50 && resolved < reads.length; round++) {
      for (const message of host.sent) {
        if (message.type !== 'heartbeat' || message.context === '' || answered.has(message.context)) continue;
        answered.add(message.context);
        loop.step({ type: 'heartbeatResponse', from: 'b', to: 'a', term: 1, context: message.context });
      }
      await sleep(5);
    }
    await Promise.all(reads);
    expect(resolved).toBe(20);
    // The first read asked at once; the 19 that arrived while it was in flight shared the next request.
    expect(answered.size).toBe(2);
  });
});

/**
 * A ReadIndex request or its confirmation can be lost for good: the leader's confirmation
 * heartbeats, or the request a follower forwarded, dropped while a peer connection was cut (the
 * soak cuts every peer link after a certificate rotation). Nothing in Raft asks again (periodic
 * heartbeats carry no read context), so the loop must: otherwise the reads wait out the request
 * timeout, and a member whose reads keep arriving one at a time answers none of them in time.
 */
describe('raft loop: lost ReadIndex requests', () => {
  const loops: { loop: RaftLoop; host: StuckHost }[] = [];
  afterEach(async () => {
    for (const { loop, host } of loops.splice(0)) {
      host.unstick();
      await loop.close();
    }
  });

  /** A leader of voters a and b whose first entry b holds, so it may serve reads. */
  const leader = async (): Promise<{ loop: RaftLoop; host: StuckHost }> => {
    const raft = node('a', ['a', 'b']);
    const host = new StuckHost();
    const loop = new RaftLoop(raft, host, 1_000, 10_000);
    loops.push({ loop, host });
    loop.start();
    raft.campaignNow();
    loop.step({ type: 'preVoteResponse', from: 'b', to: 'a', term: 1, reject: false });
    loop.step({ type: 'voteResponse', from: 'b', to: 'a', term: 1, reject: false });
    await loop.settled();
    loop.step({ type: 'appendResponse', from: 'b', to: 'a', term: 1, reject: false, index: loop.lastIndex, rejectHint: 0 });
    await loop.settled();
    expect(loop.isLeader).toBe(true);
    return { loop, host };
  };

  const confirmationContexts = (host: StuckHost): string[] =>
    host.sent.flatMap((message) => (message.type === 'heartbeat' && message.context !== '' ? [message.context] : []));

  it('a leader asks again for a read whose confirmation heartbeats were lost, and answers it', async () => {
    const { loop, host } = await leader();
    const startedMs = performance.now();
    let outcome: string | undefined;
    loop.readBarrier().then(
      () => (outcome = 'answered'),
      (error: unknown) => (outcome = String(error)),
    );
    // The first round's heartbeat is lost; b answers every later one.
    const lost = confirmationContexts(host)[0];
    expect(lost).toBeDefined();
    const answered = new Set<string>([lost as string]);
    while (outcome === undefined && performance.now() - startedMs < 12_000) {
      for (const context of confirmationContexts(host)) {
        if (answered.has(context)) continue;
        answered.add(context);
        loop.step({ type: 'heartbeatResponse', from: 'b', to: 'a', term: 1, context });
      }
      await sleep(20);
    }
    expect(outcome).toBe('answered');
    // Well before the 10 s request timeout: the retry (500 ms) asked again.
    expect(performance.now() - startedMs).toBeLessThan(5_000);
  }, 20_000);

  it('a follower forwards a read again whose forwarded request was lost, and answers it', async () => {
    const raft = node('b', ['a', 'b']);
    const host = new StuckHost();
    const loop = new RaftLoop(raft, host, 1_000, 10_000);
    loops.push({ loop, host });
    loop.start();
    loop.step({ type: 'heartbeat', from: 'a', to: 'b', term: 1, commit: 0, context: '' });
    await loop.settled();
    expect(loop.leader).toBe('a');
    const startedMs = performance.now();
    let outcome: string | undefined;
    loop.readBarrier().then(
      () => (outcome = 'answered'),
      (error: unknown) => (outcome = String(error)),
    );
    const forwarded = (): string[] => host.sent.flatMap((message) => (message.type === 'readIndex' ? [message.context] : []));
    // The first forwarded request never reaches the leader; the leader answers every later one.
    const lost = forwarded()[0];
    expect(lost).toBeDefined();
    const answered = new Set<string>([lost as string]);
    while (outcome === undefined && performance.now() - startedMs < 12_000) {
      for (const context of forwarded()) {
        if (answered.has(context)) continue;
        answered.add(context);
        loop.step({ type: 'readIndexResponse', from: 'a', to: 'b', term: 1, context, index: 0 });
      }
      await sleep(20);
    }
    expect(outcome).toBe('answered');
    expect(performance.now() - startedMs).toBeLessThan(5_000);
  }, 20_000);

  it('a confirmation slower than the retry still answers the reads (asking again never abandons the first request)', async () => {
    const { loop, host } = await leader();
    const reads: Promise<unknown>[] = [];
    let resolved = 0;
    // b answers every confirmation heartbeat, each 1.2 s late: every request is retried before its answer comes.
    const answered = new Set<string>();
    const startedMs = performance.now();
    for (let round = 0; round < 6; round++) reads.push(loop.readBarrier().then(() => (resolved += 1)));
    while (resolved < reads.length && performance.now() - startedMs < 12_000) {
      for (const context of confirmationContexts(host)) {
        if (answered.has(context)) continue;
        answered.add(context);
        setTimeout(() => loop.step({ type: 'heartbeatResponse', from: 'b', to: 'a', term: 1, context }), 1_200);
      }
      await sleep(20);
    }
    await Promise.all(reads);
    expect(resolved).toBe(6);
    expect(performance.now() - startedMs).toBeLessThan(5_000);
  }, 20_000);
});

/**
 * Reads time out requestTimeoutMs after each began, with the error the member maps to etcd's
 * timeout, however many wait (one timer serves them all, oldest first); an answered read never fails.
 */
describe('raft loop: read timeouts', () => {
  const loops: { loop: RaftLoop; host: StuckHost }[] = [];
  afterEach(async () => {
    for (const { loop, host } of loops.splice(0)) {
      host.unstick();
      await loop.close();
    }
  });

  it('fails each unconfirmed read once its own time is up, and never one that was answered', async () => {
    const raft = node('a', ['a', 'b']);
    const host = new StuckHost();
    const loop = new RaftLoop(raft, host, 1_000, 1_000);
    loops.push({ loop, host });
    loop.start();
    raft.campaignNow();
    loop.step({ type: 'preVoteResponse', from: 'b', to: 'a', term: 1, reject: false });
    loop.step({ type: 'voteResponse', from: 'b', to: 'a', term: 1, reject: false });
    await loop.settled();
    loop.step({ type: 'appendResponse', from: 'b', to: 'a', term: 1, reject: false, index: loop.lastIndex, rejectHint: 0 });
    await loop.settled();
    expect(loop.isLeader).toBe(true);

    const outcomes: string[] = [];
    const track = (name: string, read: Promise<unknown>): Promise<void> =>
      read.then(
        () => void outcomes.push(`${name} answered`),
        (error: unknown) => void outcomes.push(`${name} ${(error as { code?: string }).code ?? String(error)}`),
      );
    // The first read is confirmed (b answers its round); the others never are.
    const first = track('first', loop.readBarrier());
    const context = host.sent.flatMap((message) => (message.type === 'heartbeat' && message.context !== '' ? [message.context] : []))[0];
    expect(context).toBeDefined();
    loop.step({ type: 'heartbeatResponse', from: 'b', to: 'a', term: 1, context: context as string });
    await first;
    const early = track('early', loop.readBarrier());
    const early2 = track('early2', loop.confirmLeadership());
    await sleep(600);
    const late = track('late', loop.readBarrier());
    await Promise.all([early, early2]);
    // The early reads timed out; the late one, which began 600 ms after them, still waits.
    expect([...outcomes].sort()).toEqual(['early Timeout', 'early2 Timeout', 'first answered']);
    await late;
    expect(outcomes.at(-1)).toBe('late Timeout');
    expect(outcomes).toHaveLength(4);
  }, 10_000);

  it('keeps only reads still waiting in its timeout queue, not every read answered within the timeout', async () => {
    // A lone voter confirms its reads at once: thousands answered well within the 10 s timeout.
    const raft = node('a', ['a']);
    const host = new StuckHost();
    const loop = new RaftLoop(raft, host, 1_000, 10_000);
    loops.push({ loop, host });
    raft.campaignNow();
    loop.start();
    await loop.settled();
    expect(loop.isLeader).toBe(true);
    for (let batch = 0; batch < 20; batch++) await Promise.all(Array.from({ length: 250 }, () => loop.readBarrier()));
    await loop.readBarrier();
    const queue = (loop as unknown as { readDeadlines: unknown[]; readDeadlinesHead: number });
    expect(queue.readDeadlines.length - queue.readDeadlinesHead).toBeLessThanOrEqual(1);
    expect(queue.readDeadlines.length).toBeLessThan(200);
  });
});
