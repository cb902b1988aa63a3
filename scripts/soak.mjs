#!/usr/bin/env node
// `npm run soak -- --minutes N`: runs test/soak/soak.test.ts (a nemesis soak against a real
// 3-member cluster) for N minutes (default 1). Needs a build (npm run soak builds first).
import { spawnSync } from 'node:child_process';

const index = process.argv.indexOf('--minutes');
const minutes = index >= 0 ? Number(process.argv[index + 1]) : 1;
if (!Number.isFinite(minutes) || minutes <= 0) {
  console.error('usage: npm run soak -- --minutes N (N > 0)');
  process.exit(2);
}
const result = spawnSync('npx', ['vitest', 'run', 'test/soak/soak.test.ts'], {
  stdio: 'inherit',
  env: { ...process.env, RAMPART_SOAK_MINUTES: String(minutes) },
});
process.exit(result.status ?? 1);
