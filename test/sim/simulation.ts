/**
 * A deterministic simulation of a Raft cluster: the real core (`src/raft`) over a simulated network
 * that drops, duplicates, delays, reorders and partitions messages, and simulated disks that keep
 * only what a Ready said to persist when a node crashes, and that turn slow or stall for a while
 * (a follower then falls far behind; a leader's role flips long before its fsync returns).
 * Everything random comes from one seed, so a failing seed replays exactly. Safety invariants are
 * checked after every step.
 *
 * The state machine holds leases too, with the member's real `Lessor` on each node: clients grant
 * leases, keep them alive at whichever node leads, and the primary lessor proposes revokes when
 * deadlines pass. The lease invariant: no lease is revoked while a keep-alive acknowledged within
 * its TTL still covers it, and a primary never answers "not found" for a live lease. Snapshots are
 * taken while a batch is being applied and keep `catchUpEntries` behind them, as the member does.
 */
import { RampartError } from '../../src/errors.js';
import { RaftNode, defaultRaftConfig } from '../../src/raft/raft.js';
import { Lessor } from '../../src/server/lessor.js';
import { UnappliedLeaseChanges } from '../../src/server/lease-confirmation.js';
import type { ConfigurationChange, ConfigurationState, Entry, HardState, Message, NodeId, ReadState, Ready, Snapshot } from '../../src/raft/types.js';

/** The lease a simulated entry grants (`g:id:ttl`) or revokes (`v:id:…`). */
function simLeaseChangedBy(payload: Buffer): bigint | undefined {
  const [kind, id] = payload.toString().split(':');
  return (kind === 'g' || kind === 'v') && id !== undefined ? BigInt(id) : undefined;
}

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
  /** Entries a snapshot keeps in the log behind it (the member's --snapshot-catch-up-entries). */
  readonly catchUpEntries: number;
  readonly membershipChanges: boolean;
  /** Per step: a client grants a lease (at most `leasesMax` live). */
  readonly leaseRate: number;
  /** Per step: one node's disk turns slow (every write takes many steps) for a while. */
  readonly slowDiskRate: number;
}

/** One tick is 100 ms of a node's clock: an election timeout of 10 ticks is the member's 1 s. */
const tickMs = 100;
const leasesMax = 6;
const leaseTtlSeconds = 2;
/** A lease's TTL in steps; a node's clock runs at most one tick per step, never faster. */
const leaseTtlSteps = (leaseTtlSeconds * 1000) / tickMs;

interface Disk {
  hardState: HardState;
  snapshot: Snapshot | undefined;
  /** Index and term just before `entries` (a snapshot may keep a tail of entries behind it). */
  logStart: { index: number; term: number };
  entries: Entry[];
}

interface StateMachine {
  applied: number;
  /** Applied data, in order (index → data), since the beginning of time. */
  values: Map<number, string>;
  configuration: ConfigurationState;
  /** Live leases: id → TTL in seconds (replicated like the member's lease records). */
  leases: Map<string, number>;
  /** Index of the latest snapshot taken. */
  snapshotIndex: number;
}

/** What the clients know of one lease. */
interface ClientLease {
  /** The last step a keep-alive (or the grant) was acknowledged. */
  lastAck: number;
  /** Who acknowledged it (a grant: the first node to apply it). */
  lastAckBy: string;
  nextKeepAlive: number;
  gone: boolean;
}

interface SimNode {
  readonly id: NodeId;
  /** Probability of a tick per step: clocks drift. */
  readonly tickRate: number;
  /** Paused (as by SIGSTOP) until this step: no ticks, no messages handled. */
  pausedUntil: number;
  /** A Ready whose fsync is still in flight (a leader's messages already went out). */
  inFlightReady: { ready: Ready; completeAt: number; sent: boolean } | undefined;
  /** While the disk is slow, each write takes up to `slowWriteStepsMax` steps. */
  diskSlowUntil: number;
  slowWriteStepsMax: number;
  /** The node's clock (it runs while paused, as a process's clock does under SIGSTOP). */
  readonly clockRate: number;
  lessor: Lessor;
  /** Revokes this node proposed: lease id → step, so a lease is not proposed every step. */
  readonly revoking: Map<string, number>;
  raft: RaftNode | undefined;
  readonly disk: Disk;
  machine: StateMachine;
  readonly pendingReads: Map<string, number>;
  /** Keep-alives waiting for the quorum to confirm this node still leads: context → lease and step asked. */
  readonly pendingKeepAlives: Map<string, { lease: string; askedAt: number }>;
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
  readonly leasesGranted: number;
  readonly keepAlivesAcknowledged: number;
  readonly leasesExpired: number;
  readonly slowDisks: number;
  /** Elections won while clients kept leases alive. */
  readonly leaderChangesUnderLeases: number;
  /** Snapshots taken while applying a batch longer than the catch-up tail (what crashed bug 2). */
  readonly longBatchSnapshots: number;
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
  private readonly stats = { leadersElected: 0, readsServed: 0, crashes: 0, snapshotsSent: 0, leasesGranted: 0, keepAlivesAcknowledged: 0, leasesExpired: 0, slowDisks: 0, leaderChangesUnderLeases: 0, longBatchSnapshots: 0 };
  private leaseSequence = 0;
  private readonly clientLeases = new Map<string, ClientLease>();
  private readonly revokedLeases = new Set<string>();

  constructor(private readonly options: SimulationOptions) {
    this.random = seededRandom(options.seed);
    const ids = Array.from({ length: options.nodes }, (_, index) => `n${index + 1}`);
    const configuration: ConfigurationState = { voters: options.membershipChanges ? ids.slice(0, 3) : ids, learners: [] };
    for (const id of ids) {
      const tickRate = 0.5 + this.random() * 0.5;
      const node: SimNode = {
        id,
        tickRate,
        pausedUntil: 0,
        inFlightReady: undefined,
        diskSlowUntil: 0,
        slowWriteStepsMax: 0,
        clockRate: tickRate,
        lessor: new Lessor(() => 0),
        revoking: new Map(),
        raft: undefined,
        disk: { hardState: { term: 0, vote: '', commit: 0 }, snapshot: undefined, logStart: { index: 0, term: 0 }, entries: [] },
        machine: { applied: 0, values: new Map(), configuration, leases: new Map(), snapshotIndex: 0 },
        pendingReads: new Map(),
        pendingKeepAlives: new Map(),
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
        logStart: node.disk.logStart,
        entries: node.disk.entries,
        configuration: node.machine.configuration,
        applied: node.machine.applied,
      },
    );
    node.pendingReads.clear();
    node.pendingKeepAlives.clear();
    node.inFlightReady = undefined;
    node.revoking.clear();
    node.lessor = this.lessorFor(node);
  }

  /** A fresh process's lessor, loaded from the state machine (as the member loads its leases). */
  private lessorFor(node: SimNode): Lessor {
    const lessor = new Lessor(() => this.now * node.clockRate * tickMs);
    for (const [id, ttl] of node.machine.leases) lessor.grant(BigInt(id), ttl);
    return lessor;
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
      node.diskSlowUntil = 0;
    }
    const healed = { ...this.options, dropRate: 0, duplicateRate: 0, crashRate: 0, slowDiskRate: 0, leaseRate: 0 };
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
        this.settleQuiet(healed);
        return { committed: this.highestCommitted, ...this.stats };
      }
    }
    throw this.violation(`no progress after healing: applied ${this.nodes.map((node) => `${node.id}=${node.machine.applied}/${node.raft?.role}/${node.raft?.term}`).join(' ')}`);
  }

  /**
   * With nothing more proposed, every member must still reach the leader's whole log: committed
   * and applied through its last index. The healed phase above keeps proposing, and a new
   * proposal's append can carry a tail a follower was stuck behind; this one cannot hide a stall
   * (a lost append, answer or commit-only message that nothing repairs without new writes).
   * Messages are still lost and duplicated at the run's rates: heartbeats alone must repair that.
   */
  private settleQuiet(healed: SimulationOptions): void {
    const quiet = { ...healed, dropRate: this.options.dropRate, duplicateRate: this.options.duplicateRate, proposalRate: 0, readRate: 0 };
    const limit = 1000;
    for (let extra = 0; extra < limit; extra++, this.now++) {
      this.step(quiet);
      const leader = this.live().find((node) => node.raft?.role === 'leader');
      if (leader?.raft === undefined) continue;
      const last = leader.raft.lastIndex;
      const members = this.nodes.filter((node) => this.isMember(node));
      if (members.every((node) => node.raft !== undefined && node.raft.lastIndex === last && node.raft.commitIndex === last && node.machine.applied === last)) return;
    }
    throw this.violation(`members did not converge on the leader's log with nothing proposed for ${limit} ticks: ${this.nodes.map((node) => `${node.id}=${node.machine.applied}/${node.raft?.commitIndex}/${node.raft?.lastIndex}/${node.raft?.role}`).join(' ')}`);
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
    if (this.chance(this.options.slowDiskRate)) {
      const victim = this.pick(this.nodes);
      if (victim !== undefined) {
        // Mostly slow (an fsync of tens of steps: a few seconds), sometimes stalled for much longer.
        victim.diskSlowUntil = this.now + 50 + Math.floor(this.random() * 250);
        victim.slowWriteStepsMax = this.chance(0.2) ? 150 : 5 + Math.floor(this.random() * 30);
        this.stats.slowDisks += 1;
      }
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
    this.leaseTraffic(running, options);
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
    // As the Raft loop: heartbeats, their answers, a leader's appends and read requests go out at
    // once, and a confirmed read index is taken at once, not behind the Ready in flight.
    for (const message of raft.takeUrgentMessages()) this.sendMessage(message, options);
    this.answerReads(node, raft.takeReadStates());
    for (;;) {
      let ready: Ready;
      if (node.inFlightReady !== undefined) {
        // The fsync finishes some steps later; messages keep arriving (and the role may flip) meanwhile.
        if (node.inFlightReady.completeAt > this.now) return;
        ready = node.inFlightReady.ready;
        const sent = node.inFlightReady.sent;
        node.inFlightReady = undefined;
        this.persist(node, ready);
        if (!sent) for (const message of ready.messages) this.sendMessage(message, options);
      } else {
        if (!raft.hasReady()) return;
        ready = raft.ready();
        const leading = ready.softState.role === 'leader';
        // A leader's messages go out before its own fsync; anyone else's only after it.
        if (leading) for (const message of ready.messages) this.sendMessage(message, options);
        const writeSteps = this.writeSteps(node, ready);
        if (writeSteps > 0) {
          node.inFlightReady = { ready, completeAt: this.now + writeSteps, sent: leading };
          continue;
        }
        this.persist(node, ready);
        if (!leading) for (const message of ready.messages) this.sendMessage(message, options);
      }
      this.apply(node, ready);
      raft.advance(ready);
      this.answerReads(node, [...ready.readStates, ...raft.takeReadStates()]);
      // The node's current role: a Ready that was in flight may describe a term it has since left.
      if (raft.role === 'leader' && this.leaderOfTerm.get(raft.term) !== node.id) {
        this.onLeader(node);
      }
    }
  }

  /** Steps a Ready's fsync takes: a leader's log write a few; anything while the disk is slow, many. */
  private writeSteps(node: SimNode, ready: Ready): number {
    let steps = ready.softState.role === 'leader' && ready.entries.length > 0 ? Math.floor(this.random() * 3) : 0;
    const writes = ready.entries.length > 0 || ready.hardState !== undefined || ready.snapshot !== undefined;
    if (writes && node.diskSlowUntil > this.now) steps += 1 + Math.floor(this.random() * node.slowWriteStepsMax);
    return steps;
  }

  private persist(node: SimNode, ready: Ready): void {
    if (ready.snapshot !== undefined) {
      node.disk.snapshot = ready.snapshot;
      node.disk.logStart = { index: ready.snapshot.metadata.index, term: ready.snapshot.metadata.term };
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
      const restored = JSON.parse(ready.snapshot.data.toString()) as { values: [number, string][]; configuration: ConfigurationState; leases: [string, number][] };
      const index = ready.snapshot.metadata.index;
      node.machine = { applied: index, values: new Map(restored.values), configuration: restored.configuration, leases: new Map(restored.leases), snapshotIndex: index };
      // As the member reloads its state machine: the same lessor, its leases replaced.
      node.lessor.clear();
      for (const [id, ttl] of node.machine.leases) node.lessor.grant(BigInt(id), ttl);
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
      } else {
        this.applyLeaseEntry(node, data);
      }
    }
    // As the member: a snapshot is taken while the batch is applied, before Raft hears of it.
    if (ready.committedEntries.length > 0 && node.machine.applied - node.machine.snapshotIndex >= this.options.compactEveryEntries) {
      if (this.options.catchUpEntries > 0 && ready.committedEntries.length > this.options.catchUpEntries) this.stats.longBatchSnapshots += 1;
      this.takeSnapshot(node);
    }
  }

  private applyLeaseEntry(node: SimNode, data: string): void {
    const [kind, id = '', argument = '', proposer = ''] = data.split(':');
    if (kind === 'g') {
      // A forwarded proposal duplicated by the network commits twice; the applier refuses the second.
      if (node.machine.leases.has(id) || this.revokedLeases.has(id)) return;
      const ttl = Number(argument);
      node.machine.leases.set(id, ttl);
      node.lessor.grant(BigInt(id), ttl);
      if (!this.clientLeases.has(id)) {
        // The client's TTL starts at the first answer to its grant.
        this.clientLeases.set(id, { lastAck: this.now, lastAckBy: node.id, nextKeepAlive: this.now + 1, gone: false });
        this.stats.leasesGranted += 1;
      }
    } else if (kind === 'v') {
      if (node.machine.leases.delete(id)) node.lessor.revoke(BigInt(id));
      this.revokedLeases.add(id);
      const client = this.clientLeases.get(id);
      if (client !== undefined && !client.gone) {
        const proposedAt = Number(argument);
        if (client.lastAck + leaseTtlSteps > proposedAt) {
          throw this.violation(`lease ${id} revoked (proposed at step ${proposedAt} by ${proposer}, applied by ${node.id} at term ${node.raft?.term}) though a keep-alive at step ${client.lastAck} by ${client.lastAckBy} covers it for ${leaseTtlSteps} steps`);
        }
        client.gone = true;
        this.stats.leasesExpired += 1;
      }
    }
  }

  private takeSnapshot(node: SimNode): void {
    const raft = node.raft;
    if (raft === undefined) return;
    const applied = node.machine.applied;
    const term = raft.entryTerm(applied);
    if (term === undefined) return;
    const snapshot: Snapshot = {
      metadata: { index: applied, term, configuration: node.machine.configuration },
      data: Buffer.from(JSON.stringify({ values: [...node.machine.values], configuration: node.machine.configuration, leases: [...node.machine.leases] })),
    };
    raft.compact(snapshot, Math.max(0, applied - this.options.catchUpEntries));
    node.machine.snapshotIndex = applied;
    node.disk.snapshot = snapshot;
    node.disk.logStart = raft.logStart;
    node.disk.entries = node.disk.entries.filter((entry) => entry.index > node.disk.logStart.index);
  }

  /** The member's rule (`Member.followLeadership`): primary once leading and caught up with its own term. */
  private followLeadership(node: SimNode): void {
    const raft = node.raft;
    if (raft === undefined) return;
    const leaderTerm = raft.role === 'leader' ? raft.term : undefined;
    const appliedOwnTerm = leaderTerm !== undefined && raft.entryTerm(node.machine.applied) === leaderTerm;
    node.lessor.followLeadership({ leaderTerm, appliedOwnTerm }, defaultRaftConfig.electionTicks * tickMs);
  }

  private answerReads(node: SimNode, reads: readonly ReadState[]): void {
    for (const read of reads) {
      const keepAlive = node.pendingKeepAlives.get(read.context);
      if (keepAlive !== undefined) {
        node.pendingKeepAlives.delete(read.context);
        this.answerKeepAlive(node, keepAlive.lease, keepAlive.askedAt, read.index);
        continue;
      }
      const required = node.pendingReads.get(read.context);
      if (required === undefined) continue;
      node.pendingReads.delete(read.context);
      if (read.index < required) throw this.violation(`${node.id} read ${read.context} got index ${read.index} below committed ${required}`);
      this.stats.readsServed += 1;
    }
  }

  /**
   * `Member.answerLease` once the quorum confirmed the leadership (`readIndex` was committed when
   * the keep-alive was asked), by the member's rule (lease-confirmation.ts): the node need not
   * have applied `readIndex`, unless a grant or revoke of this lease lies before it.
   */
  private answerKeepAlive(node: SimNode, id: string, askedAt: number, readIndex: number): void {
    const raft = node.raft;
    const lease = this.clientLeases.get(id);
    if (raft === undefined || lease === undefined || lease.gone) return;
    this.followLeadership(node);
    // Confirmed leadership covers an answer only for a while (the member's leaseConfirmationAgeMax).
    const confirmedAgeMs = (this.now - askedAt) * node.clockRate * tickMs;
    if (!node.lessor.isPrimary || confirmedAgeMs > (defaultRaftConfig.electionTicks * tickMs) / 2) return;
    const changes = new UnappliedLeaseChanges({ appliedIndex: () => node.machine.applied, entries: (from, to) => raft.entries(from, to), leaseChangedBy: simLeaseChangedBy });
    if (changes.pending(BigInt(id), readIndex)) return;
    if (!node.lessor.has(BigInt(id))) {
      throw this.violation(`primary ${node.id} (term ${raft.term}, applied ${node.machine.applied}) does not know live lease ${id}`);
    }
    try {
      node.lessor.renew(BigInt(id));
      lease.lastAck = this.now;
      lease.lastAckBy = `${node.id} (term ${raft.term})`;
      lease.nextKeepAlive = this.now + Math.floor(leaseTtlSteps / 4);
      this.stats.keepAlivesAcknowledged += 1;
    } catch (error) {
      if (!(error instanceof RampartError && error.code === 'LeaseNotFound')) throw error;
      lease.gone = true;
    }
  }

  /** Clients grant leases and keep them alive at the leader; primaries revoke what expired. */
  private leaseTraffic(running: (id: NodeId) => boolean, options: SimulationOptions): void {
    const runningNodes = this.live().filter((node) => running(node.id));
    const liveLeases = [...this.clientLeases.values()].filter((lease) => !lease.gone).length;
    if (liveLeases < leasesMax && this.chance(options.leaseRate)) {
      const node = this.pick(runningNodes);
      if (node?.raft?.propose(Buffer.from(`g:${this.leaseSequence + 1}:${leaseTtlSeconds}`))) this.leaseSequence += 1;
    }
    for (const [id, lease] of this.clientLeases) {
      if (lease.gone || lease.nextKeepAlive > this.now) continue;
      // Retried every few steps until acknowledged.
      lease.nextKeepAlive = this.now + 3;
      // A follower forwards a keep-alive to the node it believes leads.
      const leader = this.pick(runningNodes.filter((node) => node.raft?.role === 'leader'));
      if (leader === undefined || leader.raft === undefined) continue;
      this.followLeadership(leader);
      if (!leader.lessor.isPrimary) continue;
      // As the member (and etcd's LeaseRenew): the quorum first confirms this node still leads.
      const context = `k${++this.readSequence}`;
      if (leader.raft.readIndex(context)) leader.pendingKeepAlives.set(context, { lease: id, askedAt: this.now });
    }
    for (const node of runningNodes) {
      this.followLeadership(node);
      for (const id of node.lessor.expired()) {
        const key = id.toString();
        const proposed = node.revoking.get(key);
        if (proposed !== undefined && this.now - proposed < 20) continue;
        if (node.raft?.propose(Buffer.from(`v:${key}:${this.now}:${node.id}`))) node.revoking.set(key, this.now);
      }
    }
  }

  private onLeader(node: SimNode): void {
    const raft = node.raft;
    if (raft === undefined) return;
    const existing = this.leaderOfTerm.get(raft.term);
    if (existing !== undefined && existing !== node.id) throw this.violation(`election safety: ${existing} and ${node.id} both lead term ${raft.term}`);
    this.leaderOfTerm.set(raft.term, node.id);
    this.stats.leadersElected += 1;
    if ([...this.clientLeases.values()].some((lease) => !lease.gone)) this.stats.leaderChangesUnderLeases += 1;
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
