#!/usr/bin/env node
// `npm run soak -- --minutes N [--plaintext] [--faults a,b]`: runs test/soak/soak.test.ts (a nemesis
// soak against a real 3-member cluster) for N minutes (default 1). The cluster is secure as
// `rampart up` ships it; --plaintext runs it without TLS, auth or encryption. --faults narrows the
// nemesis (RAMPART_SOAK_FAULTS; `double` alone: only overlapping faults). Needs a build (npm run
// soak builds first).
import { spawnSync } from 'node:child_process';

const valueOf = (flag) => {
  const index = process.argv.indexOf(flag);
  return index >= 0 ? process.argv[index + 1] : undefined;
};
const minutes = Number(valueOf('--minutes') ?? 1);
const faults = valueOf('--faults');
if (!Number.isFinite(minutes) || minutes <= 0 || (process.argv.includes('--faults') && (faults === undefined || faults.startsWith('--')))) {
  console.error('usage: npm run soak -- --minutes N (N > 0) [--plaintext] [--faults kill,partition,double,...]');
  process.exit(2);
}
const result = spawnSync('npx', ['vitest', 'run', 'test/soak/soak.test.ts'], {
  stdio: 'inherit',
  env: {
    ...process.env,
    RAMPART_SOAK_MINUTES: String(minutes),
    ...(process.argv.includes('--plaintext') ? { RAMPART_SOAK_PLAINTEXT: '1' } : {}),
    ...(faults === undefined ? {} : { RAMPART_SOAK_FAULTS: faults }),
  },
});
process.exit(result.status ?? 1);
