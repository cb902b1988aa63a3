/**
 * Seeded simulation runs of the Raft core. `RAMPART_SIM_SEEDS=5000 npx vitest run test/sim` runs
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
    membershipChanges: false,
    ...overrides,
  };
}

const seeds = onlySeed === undefined ? Array.from({ length: seedCount }, (_, index) => index + 1) : [onlySeed];
/** The runs are synchronous: the test's time limit grows with the number of seeds asked for. */
const timeoutMs = Math.max(60_000, seeds.length * 400);

describe('Raft under simulated faults', () => {
  it(`keeps every safety invariant and recovers after healing (${seeds.length} seeds)`, () => {
    let committed = 0;
    let leaders = 0;
    let reads = 0;
    let crashes = 0;
    let snapshots = 0;
    for (const seed of seeds) {
      const result = new Simulation(optionsFor(seed)).run();
      committed += result.committed;
      leaders += result.leadersElected;
      reads += result.readsServed;
      crashes += result.crashes;
      snapshots += result.snapshotsSent;
    }
    // The runs must have exercised what they claim to.
    expect(committed).toBeGreaterThan(seeds.length * 50);
    expect(leaders).toBeGreaterThan(seeds.length);
    expect(reads).toBeGreaterThan(seeds.length);
    if (seeds.length >= 20) {
      expect(crashes).toBeGreaterThan(0);
      expect(snapshots).toBeGreaterThan(0);
    }
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
