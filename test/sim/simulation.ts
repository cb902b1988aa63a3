/**
 * A deterministic simulation of a Raft cluster: the real core (`src/raft`) over a simulated network
 * that drops, duplicates, delays, reorders and partitions messages, and simulated disks that keep
 * only what a Ready said to persist when a node crashes. Everything random comes from one seed, so a
 * failing seed replays exactly. Safety invariants are checked after every step.
 */
import { RaftNode, defaultRaftConfig } from '../../src/raft/raft.js';
import type { ConfigurationChange, ConfigurationState, Entry, HardState, Message, NodeId, Ready, Snapshot } from '../../src/raft/types.js';

/** mulberry32: small, fast, and good enough for fault schedules. */
export function seededRandom(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let value = state;
    value = Math.imul(value ^ (value >>> 15), value | 1);
    value ^= value + Math.imul(value ^ (value >>> 7), value | 61);
    return ((value ^ (value >>> 14)) >>> 0) / 4294967296;
  };
}

export interface SimulationOptions {
  readonly seed: number;
  readonly nodes: number;
  readonly steps: number;
  readonly dropRate: number;
  readonly duplicateRate: number;
  readonly delayTicksMax: number;
  readonly crashRate: number;
  readonly partitionRate: number;
  readonly pauseRate: number;
  readonly proposalRate: number;
  readonly readRate: number;
  readonly compactEveryEntries: number;
  readonly membershipChanges: boolean;
}

interface Disk {
  hardState: HardState;
  snapshot: Snapshot | undefined;
  entries: Entry[];
}

interface StateMachine {
  applied: number;
  /** Applied data, in order (index → data), since the beginning of time. */
  values: Map<number, string>;
  configuration: ConfigurationState;
}

interface SimNode {
  readonly id: NodeId;
  /** Probability of a tick per step: clocks drift. */
  readonly tickRate: number;
  /** Paused (as by SIGSTOP) until this step: no ticks, no messages handled. */
  pausedUntil: number;
  /** A leader's Ready whose messages went out while its fsync is still in flight. */
  inFlightReady: { ready: Ready; completeAt: number } | undefined;
  raft: RaftNode | undefined;
  readonly disk: Disk;
  machine: StateMachine;
  readonly pendingReads: Map<string, number>;
}

interface InFlight {
  readonly message: Message;
  readonly deliverAt: number;
}

export class SafetyViolation extends Error {
  constructor(seed: number, step: number, message: string) {
    super(`seed ${seed}, step ${step}: ${message}`);
    this.name = 'SafetyViolation';
  }
}

export interface SimulationResult {
  readonly committed: number;
  readonly leadersElected: number;
  readonly readsServed: number;
  readonly crashes: number;
  readonly snapshotsSent: number;
}

export class Simulation {
  private readonly random: () => number;
  private readonly nodes: SimNode[] = [];
  private network: InFlight[] = [];
  private partition: Set<NodeId> | undefined;
  private now = 0;
  private proposalSequence = 0;
  private readSequence = 0;
  /** Election safety: the leader of each term. */
  private readonly leaderOfTerm = new Map<number, NodeId>();
  /** Log matching: every (index, term) seen, with its data and the term of the entry before it. */
  private readonly entryAt = new Map<string, { data: string; previousTerm: number | undefined }>();
  /** Entries known committed: index → term and data. */
  private readonly committedAt = new Map<number, { term: number; data: string }>();
  /** State machine safety: index → data applied anywhere. */
  private readonly appliedAt = new Map<number, string>();
  /** Where each proposed value was applied (the same index everywhere, by state machine safety). */
  private readonly indexOfValue = new Map<string, number>();
  private highestCommitted = 0;
  private readonly stats = { leadersElected: 0, readsServed: 0, crashes: 0, snapshotsSent: 0 };

  constructor(private readonly options: SimulationOptions) {
    this.random = seededRandom(options.seed);
    const ids = Array.from({ length: options.nodes }, (_, index) => `n${index + 1}`);
    const configuration: ConfigurationState = { voters: options.membershipChanges ? ids.slice(0, 3) : ids, learners: [] };
    for (const id of ids) {
      const node: SimNode = {
        id,
        tickRate: 0.5 + this.random() * 0.5,
        pausedUntil: 0,
        inFlightReady: undefined,
        raft: undefined,
        disk: { hardState: { term: 0, vote: '', commit: 0 }, snapshot: undefined, entries: [] },
        machine: { applied: 0, values: new Map(), configuration },
        pendingReads: new Map(),
      };
      this.nodes.push(node);
      this.start(node);
    }
  }

  private start(node: SimNode): void {
    const snapshotIndex = node.disk.snapshot?.metadata.index ?? 0;
    // The state machine is durable with its applied index (as the member's store is); it never runs
    // behind the snapshot the disk holds.
    if (node.machine.applied < snapshotIndex) throw this.violation(`${node.id} state machine behind its snapshot`);
    node.raft = new RaftNode(
      { ...defaultRaftConfig, id: node.id, random: this.random, entriesPerAppendMax: 16, inflightMessagesMax: 8 },
      {
        hardState: node.disk.hardState,
        snapshot: node.disk.snapshot,
        entries: node.disk.entries,
        configuration: node.machine.configuration,
        applied: node.machine.applied,
      },
    );
    node.pendingReads.clear();
    node.inFlightReady = undefined;
  }

  private chance(probability: number): boolean {
    return this.random() < probability;
  }

  private pick<T>(items: readonly T[]): T | undefined {
    return items[Math.floor(this.random() * items.length)];
  }

  private violation(message: string): SafetyViolation {
    return new SafetyViolation(this.options.seed, this.now, message);
  }

  private live(): SimNode[] {
    return this.nodes.filter((node) => node.raft !== undefined);
  }

  private connected(from: NodeId, to: NodeId): boolean {
    if (this.partition === undefined) return true;
    return this.partition.has(from) === this.partition.has(to);
  }

  run(): SimulationResult {
    for (this.now = 0; this.now < this.options.steps; this.now++) {
      this.injectFaults();
      this.step();
    }
    // Heal everything and require progress: a leader, and every node caught up.
    this.partition = undefined;
    for (const node of this.nodes) {
      if (node.raft === undefined) this.start(node);
      node.pausedUntil = 0;
    }
    const healed = { ...this.options, dropRate: 0, duplicateRate: 0, crashRate: 0 };
    // Like a client, retry the probe write until it is applied: an uncommitted entry may be lost
    // to a leader change, which Raft allows.
    let probe: string | undefined;
    let proposedAt = -Infinity;
    for (let extra = 0; extra < 3000; extra++, this.now++) {
      this.step(healed);
      const leader = this.live().find((node) => node.raft?.role === 'leader');
      const probeIndex = probe === undefined ? undefined : this.indexOfValue.get(probe);
      const appliedSomewhere = probeIndex !== undefined;
      if (leader !== undefined && !appliedSomewhere && this.now - proposedAt > 100) {
        const candidate = `p${this.proposalSequence + 1}`;
        if (leader.raft?.propose(Buffer.from(candidate))) {
          this.proposalSequence += 1;
          probe = candidate;
          proposedAt = this.now;
        }
      }
      const members = this.nodes.filter((node) => this.isMember(node));
      if (probeIndex !== undefined && members.every((node) => node.machine.applied >= probeIndex) && new Set(members.map((node) => node.machine.applied)).size === 1) {
        return { committed: this.highestCommitted, ...this.stats };
      }
    }
    throw this.violation(`no progress after healing: applied ${this.nodes.map((node) => `${node.id}=${node.machine.applied}/${node.raft?.role}/${node.raft?.term}`).join(' ')}`);
  }

  private isMember(node: SimNode): boolean {
    const configuration = this.nodes.map((candidate) => candidate.raft?.configuration).find((value) => value !== undefined);
    const leader = this.live().find((candidate) => candidate.raft?.role === 'leader');
    const current = leader?.raft?.configuration ?? configuration;
    return current === undefined || current.voters.includes(node.id) || current.learners.includes(node.id);
  }

  private injectFaults(): void {
    if (this.chance(this.options.crashRate)) {
      const victim = this.pick(this.live());
      if (victim !== undefined) {
        // Crash: all memory is gone; the disk keeps what was persisted.
        victim.raft = undefined;
        this.network = this.network.filter((flight) => flight.message.to !== victim.id);
        this.stats.crashes += 1;
      }
    }
    for (const node of this.nodes) {
      if (node.raft === undefined && this.chance(0.05)) this.start(node);
    }
    if (this.chance(this.options.pauseRate)) {
      const victim = this.pick(this.live());
      if (victim !== undefined) victim.pausedUntil = this.now + 10 + Math.floor(this.random() * 50);
    }
    if (this.chance(this.options.partitionRate)) {
      if (this.partition === undefined) {
        const side = new Set(this.nodes.filter(() => this.chance(0.5)).map((node) => node.id));
        this.partition = side;
      } else {
        this.partition = undefined;
      }
    }
  }

  private step(options: SimulationOptions = this.options): void {
    const running = (id: NodeId): boolean => (this.nodes.find((node) => node.id === id)?.pausedUntil ?? 0) <= this.now;
    for (const node of this.live()) {
      if (running(node.id) && this.chance(node.tickRate)) node.raft?.tick();
    }
    // Deliver due messages in random order; a paused node's messages wait for it.
    const due = this.network.filter((flight) => flight.deliverAt <= this.now && running(flight.message.to));
    this.network = this.network.filter((flight) => flight.deliverAt > this.now || !running(flight.message.to));
    for (let index = due.length - 1; index > 0; index--) {
      const swap = Math.floor(this.random() * (index + 1));
      [due[index], due[swap]] = [due[swap] as InFlight, due[index] as InFlight];
    }
    for (const { message } of due) {
      const target = this.nodes.find((node) => node.id === message.to);
      if (target?.raft === undefined || !this.connected(message.from, message.to)) continue;
      if (message.type === 'snapshot') this.stats.snapshotsSent += 1;
      target.raft.step(message);
    }
    // Client traffic (a paused node takes none).
    if (this.chance(options.proposalRate)) {
      const node = this.pick(this.live().filter((candidate) => running(candidate.id)));
      if (node?.raft?.propose(Buffer.from(`p${this.proposalSequence + 1}`))) this.proposalSequence += 1;
    }
    if (this.chance(options.readRate)) {
      const node = this.pick(this.live().filter((candidate) => running(candidate.id)));
      const context = `r${++this.readSequence}`;
      // Every write committed before the read is asked must be visible at its read index.
      if (node?.raft?.readIndex(context)) node.pendingReads.set(context, this.highestCommitted);
    }
    if (options.membershipChanges && this.chance(0.01)) this.changeMembership();
    for (const node of this.live()) if (running(node.id)) this.handleReady(node, options);
    this.checkInvariants();
  }

  private changeMembership(): void {
    const leader = this.live().find((node) => node.raft?.role === 'leader');
    const raft = leader?.raft;
    if (raft === undefined) return;
    const { voters, learners } = raft.configuration;
    const outside = this.nodes.map((node) => node.id).filter((id) => !voters.includes(id) && !learners.includes(id));
    const options: ConfigurationChange[] = [
      ...outside.map((id): ConfigurationChange => ({ type: 'addLearner', nodeId: id, context: '' })),
      ...learners.map((id): ConfigurationChange => ({ type: 'promoteLearner', nodeId: id, context: '' })),
      ...(voters.length > 3 ? voters.map((id): ConfigurationChange => ({ type: 'removeNode', nodeId: id, context: '' })) : []),
    ];
    const change = this.pick(options);
    if (change !== undefined) raft.proposeConfigurationChange(change);
  }

  private handleReady(node: SimNode, options: SimulationOptions): void {
    const raft = node.raft;
    if (raft === undefined) return;
    for (;;) {
      let ready: Ready;
      if (node.inFlightReady !== undefined) {
        // The leader's fsync finishes some steps after its messages left; messages keep arriving meanwhile.
        if (node.inFlightReady.completeAt > this.now) return;
        ready = node.inFlightReady.ready;
        node.inFlightReady = undefined;
        this.persist(node, ready);
      } else {
        if (!raft.hasReady()) return;
        ready = raft.ready();
        if (ready.softState.role === 'leader' && ready.entries.length > 0) {
          for (const message of ready.messages) this.sendMessage(message, options);
          node.inFlightReady = { ready, completeAt: this.now + Math.floor(this.random() * 3) };
          continue;
        }
        if (ready.softState.role === 'leader') {
          for (const message of ready.messages) this.sendMessage(message, options);
          this.persist(node, ready);
        } else {
          this.persist(node, ready);
          for (const message of ready.messages) this.sendMessage(message, options);
        }
      }
      this.apply(node, ready);
      raft.advance(ready);
      for (const read of ready.readStates) {
        const required = node.pendingReads.get(read.context);
        if (required === undefined) continue;
        node.pendingReads.delete(read.context);
        if (read.index < required) throw this.violation(`${node.id} read ${read.context} got index ${read.index} below committed ${required}`);
        this.stats.readsServed += 1;
      }
      // The node's current role: a Ready that was in flight may describe a term it has since left.
      if (raft.role === 'leader' && this.leaderOfTerm.get(raft.term) !== node.id) {
        this.onLeader(node);
      }
      this.maybeCompact(node);
    }
  }

  private persist(node: SimNode, ready: Ready): void {
    if (ready.snapshot !== undefined) {
      node.disk.snapshot = ready.snapshot;
      node.disk.entries = [];
    }
    if (ready.entries.length > 0) {
      const first = ready.entries[0]?.index ?? 0;
      node.disk.entries = node.disk.entries.filter((entry) => entry.index < first).concat(ready.entries);
    }
    if (ready.hardState !== undefined) node.disk.hardState = ready.hardState;
  }

  private sendMessage(message: Message, options: SimulationOptions): void {
    if (this.chance(options.dropRate)) return;
    const copies = this.chance(options.duplicateRate) ? 2 : 1;
    for (let copy = 0; copy < copies; copy++) {
      this.network.push({ message, deliverAt: this.now + Math.floor(this.random() * (options.delayTicksMax + 1)) });
    }
  }

  private apply(node: SimNode, ready: Ready): void {
    const raft = node.raft;
    if (raft === undefined) return;
    if (ready.snapshot !== undefined) {
      const restored = JSON.parse(ready.snapshot.data.toString()) as { values: [number, string][]; configuration: ConfigurationState };
      node.machine = { applied: ready.snapshot.metadata.index, values: new Map(restored.values), configuration: restored.configuration };
    }
    for (const entry of ready.committedEntries) {
      if (entry.index !== node.machine.applied + 1) throw this.violation(`${node.id} applies ${entry.index} after ${node.machine.applied}`);
      const data = entry.type === 'configurationChange' ? `cc:${entry.data.toString()}` : entry.data.toString();
      const before = this.appliedAt.get(entry.index);
      if (before !== undefined && before !== data) throw this.violation(`state machine safety: index ${entry.index} applied as ${before} and ${data}`);
      this.appliedAt.set(entry.index, data);
      this.indexOfValue.set(data, entry.index);
      node.machine.values.set(entry.index, data);
      node.machine.applied = entry.index;
      if (entry.type === 'configurationChange') {
        node.machine.configuration = raft.applyConfigurationChange(JSON.parse(entry.data.toString()) as ConfigurationChange);
      }
    }
  }

  private maybeCompact(node: SimNode): void {
    const raft = node.raft;
    if (raft === undefined) return;
    const applied = node.machine.applied;
    if (applied - raft.firstIndex + 1 < this.options.compactEveryEntries) return;
    const term = raft.entryTerm(applied);
    if (term === undefined) return;
    const snapshot: Snapshot = {
      metadata: { index: applied, term, configuration: node.machine.configuration },
      data: Buffer.from(JSON.stringify({ values: [...node.machine.values], configuration: node.machine.configuration })),
    };
    raft.compact(snapshot);
    node.disk.snapshot = snapshot;
    node.disk.entries = node.disk.entries.filter((entry) => entry.index > applied);
  }

  private onLeader(node: SimNode): void {
    const raft = node.raft;
    if (raft === undefined) return;
    const existing = this.leaderOfTerm.get(raft.term);
    if (existing !== undefined && existing !== node.id) throw this.violation(`election safety: ${existing} and ${node.id} both lead term ${raft.term}`);
    this.leaderOfTerm.set(raft.term, node.id);
    this.stats.leadersElected += 1;
    // Leader completeness: a new leader holds every committed entry.
    for (const [index, committed] of this.committedAt) {
      if (index < raft.firstIndex) continue;
      const term = raft.entryTerm(index);
      if (term !== committed.term) throw this.violation(`leader completeness: leader ${node.id} of term ${raft.term} has term ${term} at committed index ${index} (committed term ${committed.term})`);
    }
  }

  private checkInvariants(): void {
    for (const node of this.live()) {
      const raft = node.raft;
      if (raft === undefined) continue;
      if (raft.role === 'leader') {
        const existing = this.leaderOfTerm.get(raft.term);
        if (existing !== undefined && existing !== node.id) throw this.violation(`election safety: ${existing} and ${node.id} both lead term ${raft.term}`);
      }
      const entries = raft.entries(raft.firstIndex, raft.lastIndex) ?? [];
      for (const entry of entries) {
        const key = `${entry.index}:${entry.term}`;
        const data = entry.data.toString('hex');
        const previousTerm = raft.entryTerm(entry.index - 1);
        const seen = this.entryAt.get(key);
        if (seen === undefined) {
          this.entryAt.set(key, { data, previousTerm });
        } else if (seen.data !== data || (previousTerm !== undefined && seen.previousTerm !== undefined && seen.previousTerm !== previousTerm)) {
          throw this.violation(`log matching: ${node.id} disagrees at index ${entry.index} term ${entry.term}`);
        }
      }
      for (let index = Math.max(raft.firstIndex, this.highestCommitted - 64); index <= raft.commitIndex; index++) {
        const term = raft.entryTerm(index);
        if (term === undefined) continue;
        const data = raft.entries(index, index)?.[0]?.data.toString('hex') ?? '';
        const committed = this.committedAt.get(index);
        if (committed !== undefined && (committed.term !== term || committed.data !== data)) {
          throw this.violation(`committed entry ${index} differs on ${node.id}: term ${term} vs ${committed.term}`);
        }
        this.committedAt.set(index, { term, data });
      }
      this.highestCommitted = Math.max(this.highestCommitted, raft.commitIndex);
    }
  }
}
