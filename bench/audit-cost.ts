/**
 * What the default audit trail costs (issue 12): the secure 3-member cluster as `rampart up` ships
 * it, once with its default audit trail and once with `--no-audit` on every member, the same
 * closed-loop put and range load, one run, ratio on / off. Both are started the same way
 * (bench/secure-members.ts), so the flag is the only difference.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { startRampartSecure, type SecureCluster } from './secure-members.js';

interface Measured {
  readonly perSecond: number;
  readonly p99Ms: number;
}

export async function auditCost<Result extends Measured>(
  measure: (cluster: SecureCluster) => Promise<{ put: Result; range: Result }>,
  row: (name: string, result: Result) => string,
  print: (text: string) => void,
): Promise<void> {
  print(`\naudit trail, secure 3 members: default audit vs --no-audit\n`);
  const measured = new Map<string, { put: Result; range: Result }>();
  for (const [name, extraArgs] of [['audit on', []], ['audit off', ['--no-audit']]] as const) {
    const directory = await mkdtemp(path.join(tmpdir(), 'bench-audit-'));
    try {
      const cluster = await startRampartSecure(directory, 3, extraArgs);
      try {
        const result = await measure(cluster);
        measured.set(name, result);
        print(`${row(`rampart ${name} put`, result.put)}\n${row(`rampart ${name} range`, result.range)}\n`);
      } finally {
        await cluster.stop();
      }
    } finally {
      await rm(directory, { recursive: true, force: true });
    }
  }
  const on = measured.get('audit on');
  const off = measured.get('audit off');
  if (on === undefined || off === undefined) return;
  const ratio = (ours: number, theirs: number): string => (ours / theirs).toFixed(2);
  print(`ratio (audit on / off): put throughput ${ratio(on.put.perSecond, off.put.perSecond)}, p99 ${ratio(on.put.p99Ms, off.put.p99Ms)}; range throughput ${ratio(on.range.perSecond, off.range.perSecond)}, p99 ${ratio(on.range.p99Ms, off.range.p99Ms)}\n`);
}
