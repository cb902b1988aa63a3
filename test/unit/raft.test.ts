/**
 * Scripted scenarios for the Raft core: each one drives nodes by hand, message by message, to a
 * situation random faults rarely reach.
 */
import { describe, expect, it } from 'vitest';
import { RaftNode, defaultRaftConfig, type RaftRestore } from '../../src/raft/raft.js';
import type { Entry, Message, NodeId } from '../../src/raft/types.js';

function node(id: NodeId, voters: NodeId[], restore: Partial<RaftRestore> = {}): RaftNode {
  let state = id.charCodeAt(1);
  return new RaftNode(
    { ...defaultRaftConfig, id, random: () => ((state = (state * 16807) % 2147483647) / 2147483647) },
    { hardState: { term: 0, vote: '', commit: 0 }, snapshot: undefined, entries: [], configuration: { voters, learners: [] }, applied: 0, ...restore },
  );
}

/** Routes messages between in-memory nodes; `drop` decides what the network loses. */
class Network {
  readonly nodes = new Map<NodeId, RaftNode>();
  drop: (message: Message) => boolean = () => false;
  readonly applied = new Map<NodeId, Entry[]>();
  readonly reads = new Map<NodeId, { context: string; index: number }[]>();

  constructor(nodes: RaftNode[]) {
    for (const raft of nodes) {
      this.nodes.set(raft.id, raft);
      this.applied.set(raft.id, []);
      this.reads.set(raft.id, []);
    }
  }

  get(id: NodeId): RaftNode {
    const raft = this.nodes.get(id);
    if (raft === undefined) throw new Error(`no node ${id}`);
    return raft;
  }

  /** Processes Ready batches and delivers messages until nothing moves. */
  settle(): void {
    for (let round = 0; round < 1000; round++) {
      const messages: Message[] = [];
      for (const raft of this.nodes.values()) {
        while (raft.hasReady()) {
          const ready = raft.ready();
          messages.push(...ready.messages);
          this.applied.get(raft.id)?.push(...ready.committedEntries);
          this.reads.get(raft.id)?.push(...ready.readStates);
          raft.advance(ready);
        }
      }
      if (messages.length === 0) return;
      for (const message of messages) {
        if (!this.drop(message)) this.nodes.get(message.to)?.step(message);
      }
    }
    throw new Error('network did not settle');
  }

  tick(id: NodeId, times: number): void {
    for (let count = 0; count < times; count++) {
      this.get(id).tick();
      this.settle();
    }
  }

  elect(id: NodeId): void {
    this.tick(id, defaultRaftConfig.electionTicks * 2);
    expect(this.get(id).role).toBe('leader');
  }
}

const entry = (index: number, term: number, data = ''): Entry => ({ index, term, type: 'normal', data: Buffer.from(data) });

describe('Raft scenarios', () => {
  it('never commits an entry of an earlier term by counting replicas (Figure 8)', () => {
    // n1 holds an uncommitted entry from term 1 and leads term 2.
    const n1 = node('n1', ['n1', 'n2', 'n3'], { hardState: { term: 1, vote: 'n1', commit: 1 }, entries: [entry(1, 1), entry(2, 1, 'old')] });
    const n2 = node('n2', ['n1', 'n2', 'n3'], { hardState: { term: 1, vote: 'n1', commit: 1 }, entries: [entry(1, 1)] });
    const n3 = node('n3', ['n1', 'n2', 'n3'], { hardState: { term: 1, vote: 'n1', commit: 1 }, entries: [entry(1, 1)] });
    const network = new Network([n1, n2, n3]);
    // Appends carrying the new term's entry are lost; only the old entry gets through.
    network.drop = (message) => message.type === 'append' && message.entries.some((carried) => carried.term === 2);
    network.elect('n1');
    expect(n1.term).toBe(2);
    // n1 replicated index 2 (term 1) to n2 and n3 by probing, yet it must not count that as committed.
    n1.step({ type: 'appendResponse', from: 'n2', to: 'n1', term: 2, reject: false, index: 2, rejectHint: 0 });
    network.settle();
    expect(n1.progressOf('n2')?.match).toBe(2);
    expect(n1.commitIndex).toBe(1);
    // Once the term-2 entry reaches a majority, both commit together.
    network.drop = () => false;
    network.tick('n1', 1);
    expect(n1.commitIndex).toBe(3);
    expect(network.applied.get('n1')?.map((applied) => [applied.index, applied.data.toString()])).toEqual([
      [1, ''],
      [2, 'old'],
      [3, ''],
    ]);
  });

  it('pre-vote keeps a rejoining partitioned node from disrupting the leader', () => {
    const ids = ['n1', 'n2', 'n3'];
    const network = new Network(ids.map((id) => node(id, ids)));
    network.elect('n1');
    const term = network.get('n1').term;
    // n3 is cut off and times out many times.
    network.drop = (message) => message.to === 'n3' || message.from === 'n3';
    network.tick('n3', defaultRaftConfig.electionTicks * 10);
    expect(network.get('n3').term).toBe(term);
    network.drop = () => false;
    network.tick('n1', 1);
    expect(network.get('n1').role).toBe('leader');
    expect(network.get('n1').term).toBe(term);
    expect(network.get('n3').leader).toBe('n1');
  });

  it('check-quorum: a leader that hears from no majority steps down', () => {
    const ids = ['n1', 'n2', 'n3'];
    const network = new Network(ids.map((id) => node(id, ids)));
    network.elect('n1');
    network.drop = (message) => message.from !== 'n1';
    network.tick('n1', defaultRaftConfig.electionTicks * 2 + 1);
    expect(network.get('n1').role).toBe('follower');
  });

  it('transfers leadership to a caught-up follower', () => {
    const ids = ['n1', 'n2', 'n3'];
    const network = new Network(ids.map((id) => node(id, ids)));
    network.elect('n1');
    network.get('n1').propose(Buffer.from('x'));
    network.settle();
    const term = network.get('n1').term;
    expect(network.get('n1').transferLeadership('n3')).toBe(true);
    network.settle();
    expect(network.get('n3').role).toBe('leader');
    expect(network.get('n3').term).toBe(term + 1);
    expect(network.get('n1').role).toBe('follower');
    expect(network.get('n1').transferLeadership('n2')).toBe(false);
  });

  it('overwrites a follower\'s conflicting uncommitted suffix', () => {
    const n1 = node('n1', ['n1', 'n2'], { hardState: { term: 3, vote: 'n1', commit: 1 }, entries: [entry(1, 1), entry(2, 3, 'keep')] });
    const n2 = node('n2', ['n1', 'n2'], { hardState: { term: 2, vote: '', commit: 1 }, entries: [entry(1, 1), entry(2, 2, 'stale'), entry(3, 2, 'stale')] });
    const network = new Network([n1, n2]);
    network.elect('n1');
    expect(n2.entries(1, n2.lastIndex)?.map((entry) => [entry.term, entry.data.toString()])).toEqual([
      [1, ''],
      [3, 'keep'],
      [4, ''],
    ]);
    expect(n2.commitIndex).toBe(3);
  });

  it('answers a ReadIndex only after a quorum confirms the leader, and forwards from followers', () => {
    const ids = ['n1', 'n2', 'n3'];
    const network = new Network(ids.map((id) => node(id, ids)));
    network.elect('n1');
    network.drop = (message) => message.type === 'heartbeatResponse';
    network.get('n1').readIndex('blocked');
    network.settle();
    expect(network.reads.get('n1')).toEqual([]);
    network.drop = () => false;
    network.get('n2').readIndex('from-follower');
    network.settle();
    const commit = network.get('n1').commitIndex;
    expect(network.reads.get('n2')).toEqual([{ context: 'from-follower', index: commit }]);
  });

  it('confirms the reads asked in one turn, its own and forwarded ones, with one round of heartbeats, each only after a quorum answered', () => {
    const ids = ['n1', 'n2', 'n3'];
    const network = new Network(ids.map((id) => node(id, ids)));
    network.elect('n1');
    const leader = network.get('n1');
    const commit = leader.commitIndex;
    // Two reads of the leader's own and one a follower forwarded, all before messages are taken.
    leader.readIndex('own-1');
    leader.step({ type: 'readIndex', from: 'n2', to: 'n1', term: 0, context: 'forwarded' });
    leader.readIndex('own-2');
    const sent = leader.takeUrgentMessages();
    const confirmations = sent.filter((message) => message.type === 'heartbeat');
    expect(confirmations.map((message) => [message.to, message.type === 'heartbeat' ? message.context : ''])).toEqual([['n2', 'own-2'], ['n3', 'own-2']]);
    // Nothing is answered before a quorum confirmed the leadership.
    expect(leader.takeReadStates()).toEqual([]);
    expect(sent.some((message) => message.type === 'readIndexResponse')).toBe(false);
    leader.step({ type: 'heartbeatResponse', from: 'n3', to: 'n1', term: leader.term, context: 'own-2' });
    expect(leader.takeReadStates()).toEqual([{ context: 'own-1', index: commit }, { context: 'own-2', index: commit }]);
    expect(leader.takeUrgentMessages().filter((message) => message.type === 'readIndexResponse')).toEqual([
      { type: 'readIndexResponse', from: 'n1', to: 'n2', term: leader.term, context: 'forwarded', index: commit },
    ]);
    // A read asked after that round gets a round of its own.
    leader.readIndex('own-3');
    expect(leader.takeUrgentMessages().filter((message) => message.type === 'heartbeat').map((message) => (message.type === 'heartbeat' ? message.context : ''))).toEqual(['own-3', 'own-3']);
  });

  it('allows one membership change in flight at a time', () => {
    const network = new Network([node('n1', ['n1']), node('n2', ['n1'])]);
    network.elect('n1');
    const leader = network.get('n1');
    expect(leader.proposeConfigurationChange({ type: 'addLearner', nodeId: 'n2', context: '' })).toBe(true);
    expect(leader.proposeConfigurationChange({ type: 'addLearner', nodeId: 'n3', context: '' })).toBe(false);
    network.settle();
    const change = network.applied.get('n1')?.find((applied) => applied.type === 'configurationChange');
    expect(change).toBeDefined();
    leader.applyConfigurationChange(JSON.parse(change?.data.toString() ?? '{}'));
    network.get('n2').applyConfigurationChange(JSON.parse(change?.data.toString() ?? '{}'));
    // The new learner is contacted with the next heartbeat.
    network.tick('n1', 1);
    expect(leader.configuration).toEqual({ voters: ['n1'], learners: ['n2'] });
    expect(network.get('n2').lastIndex).toBe(leader.lastIndex);
    expect(leader.proposeConfigurationChange({ type: 'promoteLearner', nodeId: 'n2', context: '' })).toBe(true);
  });
});
