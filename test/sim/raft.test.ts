/**
 * Seeded simulation runs of the Raft core, with leases kept alive through leader changes on slow
 * and stalled disks, and snapshots taken mid-batch with a catch-up tail. `RAMPART_SIM_SEEDS=5000 npx vitest run test/sim` runs
 * more seeds; `RAMPART_SIM_SEED=1234` replays one exactly.
 */
import { describe, expect, it } from 'vitest';
import { Simulation, type SimulationOptions } from './simulation.js';

const seedCount = Number(process.env.RAMPART_SIM_SEEDS ?? 200);
const onlySeed = process.env.RAMPART_SIM_SEED === undefined ? undefined : Number(process.env.RAMPART_SIM_SEED);

function optionsFor(seed: number, overrides: Partial<SimulationOptions> = {}): SimulationOptions {
  return {
    seed,
    nodes: seed % 2 === 0 ? 3 : 5,
    steps: 1500,
    dropRate: (seed % 7) * 0.02,
    duplicateRate: (seed % 5) * 0.01,
    delayTicksMax: seed % 4,
    crashRate: (seed % 3) * 0.003,
    partitionRate: (seed % 4) * 0.004,
    pauseRate: (seed % 5) * 0.003,
    proposalRate: 0.4,
    readRate: 0.1,
    compactEveryEntries: 40,
    // 0 compacts right up to the snapshot; more keeps a tail, so a follower may apply a batch longer than it.
    catchUpEntries: (seed % 3) * 6,
    membershipChanges: false,
    leaseRate: 0.05,
    slowDiskRate: (seed % 4) * 0.002,
    ...overrides,
  };
}

const seeds = onlySeed === undefined ? Array.from({ length: seedCount }, (_, index) => index + 1) : [onlySeed];
/** The runs are synchronous: the test's time limit grows with the number of seeds asked for. */
const timeoutMs = Math.max(120_000, seeds.length * 1000);

describe('Raft under simulated faults', () => {
  it(`keeps every safety invariant and recovers after healing (${seeds.length} seeds)`, () => {
    let committed = 0;
    let leaders = 0;
    let reads = 0;
    let crashes = 0;
    let snapshots = 0;
    const leases = { granted: 0, keepAlives: 0, expired: 0, leaderChanges: 0, slowDisks: 0, longBatchSnapshots: 0 };
    for (const seed of seeds) {
      const result = new Simulation(optionsFor(seed)).run();
      committed += result.committed;
      leaders += result.leadersElected;
      reads += result.readsServed;
      crashes += result.crashes;
      snapshots += result.snapshotsSent;
      leases.granted += result.leasesGranted;
      leases.keepAlives += result.keepAlivesAcknowledged;
      leases.expired += result.leasesExpired;
      leases.leaderChanges += result.leaderChangesUnderLeases;
      leases.slowDisks += result.slowDisks;
      leases.longBatchSnapshots += result.longBatchSnapshots;
    }
    // The runs must have exercised what they claim to.
    expect(committed).toBeGreaterThan(seeds.length * 50);
    expect(leaders).toBeGreaterThan(seeds.length);
    expect(reads).toBeGreaterThan(seeds.length);
    if (seeds.length >= 20) {
      expect(crashes).toBeGreaterThan(0);
      expect(snapshots).toBeGreaterThan(0);
      // Each fault the lease and catch-up invariants are about was met, many times.
      expect(leases.leaderChanges).toBeGreaterThan(seeds.length);
      expect(leases.keepAlives).toBeGreaterThan(seeds.length * 10);
      expect(leases.expired).toBeGreaterThan(0);
      expect(leases.slowDisks).toBeGreaterThan(seeds.length / 4);
      expect(leases.longBatchSnapshots).toBeGreaterThan(0);
    }
    expect(leases.granted).toBeGreaterThan(seeds.length);
    console.log(`simulation: ${JSON.stringify({ seeds: seeds.length, committed, leaders, reads, crashes, snapshots, ...leases })}`);
  }, timeoutMs);

  it(`stays safe while members are added, promoted and removed (${Math.ceil(seeds.length / 4)} seeds)`, () => {
    let committed = 0;
    for (const seed of seeds.slice(0, Math.ceil(seeds.length / 4))) {
      committed += new Simulation(optionsFor(seed, { nodes: 5, membershipChanges: true })).run().committed;
    }
    expect(committed).toBeGreaterThan(0);
  }, timeoutMs);

  it('replays a seed exactly', () => {
    const first = new Simulation(optionsFor(42)).run();
    const second = new Simulation(optionsFor(42)).run();
    expect(second).toEqual(first);
  });
});
