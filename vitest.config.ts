import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    // Above the helpers' own waits: startRampart gives a member 60 s to serve (at load 30-40 a
    // start alone has taken 13-30 s), so a test or hook that starts one and then runs CLI commands
    // (each up to seconds at that load) timed out at 60 s (api's snapshot restore: 60.3 s at load
    // ~17) instead of failing on what it checks. A test that waits for a condition bounds its wait.
    testTimeout: 120_000,
    hookTimeout: 120_000,
    // e2e tests start real server processes; two cores, so keep files sequential-ish.
    fileParallelism: true,
    maxWorkers: 2,
    reporters: ['default', './test/summary-reporter.ts'],
  },
});
