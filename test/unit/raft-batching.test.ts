/**
 * How the Raft core batches replication traffic: the proposals and acknowledgements between two
 * takes of its messages share one append per follower, one acknowledgement per leader and one
 * forward of proposals; appends stay within `appendBytesMax`.
 */
import { describe, expect, it } from 'vitest';
import { RaftNode, defaultRaftConfig, type RaftConfig } from '../../src/raft/raft.js';
import type { Message, NodeId } from '../../src/raft/types.js';

const ids = ['n1', 'n2', 'n3'];

function node(id: NodeId, config: Partial<RaftConfig> = {}): RaftNode {
  let state = id.charCodeAt(1);
  return new RaftNode(
    { ...defaultRaftConfig, id, random: () => ((state = (state * 16807) % 2147483647) / 2147483647), ...config },
    { hardState: { term: 0, vote: '', commit: 0 }, snapshot: undefined, entries: [], configuration: { voters: ids, learners: [] }, applied: 0 },
  );
}

/** Takes every message a node has (urgent ones and its Ready's), advancing it as persisted. */
function drain(raft: RaftNode): Message[] {
  const messages = raft.takeUrgentMessages();
  while (raft.hasReady()) {
    const ready = raft.ready();
    messages.push(...ready.messages);
    raft.advance(ready);
  }
  return messages;
}

/** Delivers messages until none move; n1 is elected first. */
function cluster(config: Partial<RaftConfig> = {}): Map<NodeId, RaftNode> {
  const nodes = new Map(ids.map((id) => [id, node(id, config)]));
  for (let tick = 0; tick < defaultRaftConfig.electionTicks * 2 && nodes.get('n1')?.role !== 'leader'; tick++) {
    nodes.get('n1')?.tick();
    settle(nodes);
  }
  expect(nodes.get('n1')?.role).toBe('leader');
  return nodes;
}

function settle(nodes: Map<NodeId, RaftNode>): void {
  for (let round = 0; round < 100; round++) {
    const messages = [...nodes.values()].flatMap(drain);
    if (messages.length === 0) return;
    for (const message of messages) nodes.get(message.to)?.step(message);
  }
  throw new Error('did not settle');
}

const appendsTo = (messages: readonly Message[], to: NodeId): Extract<Message, { type: 'append' }>[] =>
  messages.filter((message): message is Extract<Message, { type: 'append' }> => message.type === 'append' && message.to === to);

describe('Raft replication batching', () => {
  it('sends the proposals made between two takes as one append per follower', () => {
    const nodes = cluster();
    const leader = nodes.get('n1') as RaftNode;
    for (let count = 0; count < 10; count++) expect(leader.propose(Buffer.from(`p${count}`))).toBe(true);
    const urgent = leader.takeUrgentMessages();
    for (const follower of ['n2', 'n3']) {
      const appends = appendsTo(urgent, follower);
      expect(appends).toHaveLength(1);
      expect(appends[0]?.entries.map((entry) => entry.data.toString())).toEqual(Array.from({ length: 10 }, (_, count) => `p${count}`));
    }
    for (const message of urgent) nodes.get(message.to)?.step(message);
    settle(nodes);
    for (const raft of nodes.values()) expect(raft.commitIndex).toBe(leader.lastIndex);
  });

  it('acknowledges the appends taken in one Ready with one answer', () => {
    const nodes = cluster();
    const leader = nodes.get('n1') as RaftNode;
    const follower = nodes.get('n2') as RaftNode;
    for (let count = 0; count < 3; count++) {
      leader.propose(Buffer.from(`p${count}`));
      for (const append of appendsTo(leader.takeUrgentMessages(), 'n2')) follower.step(append);
    }
    const answers = drain(follower).filter((message) => message.type === 'appendResponse');
    expect(answers).toEqual([expect.objectContaining({ to: 'n1', reject: false, index: leader.lastIndex })]);
  });

  it('forwards a follower\'s proposals to the leader in one message, in order', () => {
    const nodes = cluster();
    const follower = nodes.get('n3') as RaftNode;
    for (let count = 0; count < 5; count++) expect(follower.propose(Buffer.from(`f${count}`))).toBe(true);
    const forwards = follower.takeUrgentMessages().filter((message) => message.type === 'propose');
    expect(forwards).toHaveLength(1);
    expect(forwards[0]?.type === 'propose' && forwards[0].entries.map((entry) => entry.data.toString())).toEqual(['f0', 'f1', 'f2', 'f3', 'f4']);
    for (const message of forwards) nodes.get(message.to)?.step(message);
    settle(nodes);
    const leader = nodes.get('n1') as RaftNode;
    expect(leader.entries(1, leader.lastIndex)?.map((entry) => entry.data.toString()).filter(Boolean)).toEqual(['f0', 'f1', 'f2', 'f3', 'f4']);
  });

  it('keeps appends and forwards within appendBytesMax, an oversized entry alone', () => {
    const nodes = cluster({ appendBytesMax: 1000 });
    const leader = nodes.get('n1') as RaftNode;
    for (const bytes of [400, 400, 400, 1500, 100]) leader.propose(Buffer.alloc(bytes));
    const sizes: number[][] = [];
    for (let round = 0; round < 10 && leader.progressOf('n2')?.match !== leader.lastIndex; round++) {
      const messages = drain(leader);
      sizes.push(...appendsTo(messages, 'n2').filter((append) => append.entries.length > 0).map((append) => append.entries.map((entry) => entry.data.length)));
      for (const message of messages) nodes.get(message.to)?.step(message);
      for (const raft of [nodes.get('n2'), nodes.get('n3')]) for (const message of drain(raft as RaftNode)) leader.step(message);
    }
    expect(sizes).toEqual([[400, 400], [400], [1500], [100]]);
    const follower = nodes.get('n3') as RaftNode;
    for (const bytes of [600, 600]) follower.propose(Buffer.alloc(bytes));
    expect(follower.takeUrgentMessages().filter((message) => message.type === 'propose')).toHaveLength(2);
  });

  it('counts the leader\'s own copy once persisted, before the Ready is advanced, and tells the followers the new commit at once', () => {
    const nodes = cluster();
    const leader = nodes.get('n1') as RaftNode;
    const committed = leader.commitIndex;
    leader.propose(Buffer.from('p'));
    const index = leader.lastIndex;
    // n2 holds and acknowledges the entry; n3 hears nothing.
    for (const append of appendsTo(leader.takeUrgentMessages(), 'n2')) nodes.get('n2')?.step(append);
    for (const message of drain(nodes.get('n2') as RaftNode)) leader.step(message);
    const ready = leader.ready();
    expect(ready.entries.map((entry) => entry.index)).toEqual([index]);
    // One follower's copy is not a majority while the leader's own is not yet durable.
    expect(leader.commitIndex).toBe(committed);
    expect(appendsTo(leader.takeUrgentMessages(), 'n2').filter((append) => append.commit >= index)).toEqual([]);
    leader.persisted(ready);
    expect(leader.commitIndex).toBe(index);
    expect(leader.appliedIndex).toBeLessThan(index);
    expect(appendsTo(leader.takeUrgentMessages(), 'n2').map((append) => append.commit)).toEqual([index]);
    leader.advance(ready);
    expect(leader.commitIndex).toBe(index);
  });
  it('tells a follower that acknowledged the entries their commit with an append it does not answer', () => {
    const nodes = cluster();
    const leader = nodes.get('n1') as RaftNode;
    leader.propose(Buffer.from('p'));
    const index = leader.lastIndex;
    // Both followers hold and acknowledge the entry; the leader's own copy is durable.
    for (const append of leader.takeUrgentMessages()) nodes.get(append.to)?.step(append);
    const ready = leader.ready();
    leader.persisted(ready);
    for (const id of ['n2', 'n3']) for (const message of drain(nodes.get(id) as RaftNode)) leader.step(message);
    expect(leader.commitIndex).toBe(index);
    const updates = leader.takeUrgentMessages().filter((message) => message.type === 'append');
    expect(updates).toHaveLength(2);
    for (const update of updates) {
      expect(update).toMatchObject({ entries: [], prevIndex: index, commit: index, commitOnly: true });
      const follower = nodes.get(update.to) as RaftNode;
      follower.step(update);
      expect(follower.commitIndex).toBe(index);
      // The follower applies up to the new commit and sends nothing back.
      expect(drain(follower).filter((message) => message.type === 'appendResponse')).toEqual([]);
      expect(follower.appliedIndex).toBe(index);
    }
    leader.advance(ready);
  });

  it('answers a commit-only append it cannot take: entries it missed, a stale term', () => {
    const nodes = cluster();
    const leader = nodes.get('n1') as RaftNode;
    leader.propose(Buffer.from('p'));
    const index = leader.lastIndex;
    // n2 acknowledges; n3's append is lost, so its progress holds the entry in flight.
    for (const append of appendsTo(leader.takeUrgentMessages(), 'n2')) nodes.get('n2')?.step(append);
    const ready = leader.ready();
    leader.persisted(ready);
    for (const message of drain(nodes.get('n2') as RaftNode)) leader.step(message);
    expect(leader.commitIndex).toBe(index);
    const toN3 = appendsTo(leader.takeUrgentMessages(), 'n3');
    expect(toN3).toEqual([expect.objectContaining({ entries: [], prevIndex: index, commitOnly: true })]);
    // n3 misses the entry: it rejects the append, and a rejection is always answered.
    const n3 = nodes.get('n3') as RaftNode;
    for (const append of toN3) n3.step(append);
    expect(drain(n3).filter((message) => message.type === 'appendResponse')).toEqual([expect.objectContaining({ reject: true, index })]);
    // A member in a later term answers a stale leader's commit-only append with its term.
    const n2 = nodes.get('n2') as RaftNode;
    n2.step({ type: 'append', from: 'n1', to: 'n2', term: n2.term - 1, prevIndex: index, prevTerm: n2.term - 1, entries: [], commit: index, commitOnly: true });
    expect(drain(n2).filter((message) => message.type === 'appendResponse')).toEqual([expect.objectContaining({ term: n2.term })]);
    leader.advance(ready);
  });

  /** An entry both followers took, n3's acknowledgement lost; `exchange` delivers what the leader has for n3, n3's answers back, and returns what the leader sends n3 then. */
  function entryUnacknowledgedByN3(): { leader: RaftNode; n3: RaftNode; index: number; exchange: () => Message[] } {
    const nodes = cluster();
    const leader = nodes.get('n1') as RaftNode;
    const n3 = nodes.get('n3') as RaftNode;
    leader.propose(Buffer.from('p'));
    const index = leader.lastIndex;
    for (const append of leader.takeUrgentMessages()) nodes.get(append.to)?.step(append);
    for (const message of drain(nodes.get('n2') as RaftNode)) leader.step(message);
    drain(n3);
    settle(nodes);
    expect(leader.progressOf('n3')?.match).toBeLessThan(index);
    const exchange = (): Message[] => {
      const toN3 = drain(leader).filter((message) => message.to === 'n3');
      for (const message of toN3) n3.step(message);
      for (const message of drain(n3)) leader.step(message);
      return drain(leader).filter((message) => message.to === 'n3');
    };
    return { leader, n3, index, exchange };
  }

  it('probes a follower whose acknowledgement was lost once its match point stalls between two heartbeat answers', () => {
    const { leader, n3, index, exchange } = entryUnacknowledgedByN3();
    const heartbeatRound = (): Message[] => {
      leader.tick();
      return exchange();
    };
    // The first heartbeat answer after the entry was sent: its acknowledgement may be on its way.
    expect(appendsTo(heartbeatRound(), 'n3')).toEqual([]);
    // The match point stood still since: an empty append asking for an answer, which brings it.
    const probes = appendsTo(heartbeatRound(), 'n3');
    expect(probes).toEqual([expect.objectContaining({ entries: [], prevIndex: index })]);
    expect(probes[0]?.commitOnly).toBeUndefined();
    for (const probe of probes) n3.step(probe);
    for (const message of drain(n3)) leader.step(message);
    expect(leader.progressOf('n3')?.match).toBe(index);
  });

  it('does not count answers to a read\'s confirmation heartbeats toward a stalled match point', () => {
    const { leader, n3, index, exchange } = entryUnacknowledgedByN3();
    // Reads in quick succession: each is confirmed by a heartbeat round carrying its context.
    for (const context of ['r1', 'r2', 'r3']) {
      expect(leader.readIndex(context)).toBe(true);
      const heartbeats = leader.takeUrgentMessages().filter((message) => message.to === 'n3');
      expect(heartbeats).toEqual([expect.objectContaining({ type: 'heartbeat', context })]);
      for (const message of heartbeats) n3.step(message);
      for (const message of drain(n3)) leader.step(message);
      expect(appendsTo(exchange(), 'n3')).toEqual([]);
    }
    // Periodic heartbeats still decide: the first answer waits, the second (match still) probes.
    const heartbeatRound = (): Message[] => {
      leader.tick();
      return exchange();
    };
    expect(appendsTo(heartbeatRound(), 'n3')).toEqual([]);
    expect(appendsTo(heartbeatRound(), 'n3')).toEqual([expect.objectContaining({ entries: [], prevIndex: index })]);
  });
});
