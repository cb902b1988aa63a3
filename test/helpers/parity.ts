/**
 * Side-by-side runs of etcdctl against etcd and Rampart: the same steps, outputs compared after
 * normalizing what legitimately differs (ids, raft term, random lease ids, endpoints, timings).
 */
import { afterAll, beforeAll } from 'vitest';
import { cleanEnvironment, etcdctl, removeDirectory, run, startEtcd, startRampart, type CommandResult, type ServerProcess } from './processes.js';

/** A fresh etcd and a fresh Rampart member for the enclosing describe block; `compare` runs steps on both. */
export function referencePair(): { compare(steps: readonly Step[]): Promise<string> } {
  let etcd: ServerProcess | undefined;
  let rampart: ServerProcess | undefined;
  beforeAll(async () => {
    [etcd, rampart] = await Promise.all([startEtcd(), startRampart()]);
  });
  afterAll(async () => {
    await Promise.all([etcd?.stop(), rampart?.stop()]);
    await Promise.all([etcd && removeDirectory(etcd.dataDir), rampart && removeDirectory(rampart.dataDir)]);
  });
  return {
    compare: (steps) => compareSessions(new Session(etcd?.endpoint ?? ''), new Session(rampart?.endpoint ?? ''), steps),
  };
}

export class Session {
  private lease = '';
  constructor(private readonly endpoint: string, private readonly globalArgs: readonly string[] = []) {}

  async run(step: Step): Promise<CommandResult> {
    const args = step.args.map((arg) => arg.replace('$LEASE', this.lease));
    const result = step.watch
      ? await run('timeout', ['-s', 'INT', '5', 'etcdctl', '--endpoints', this.endpoint, ...this.globalArgs, ...args], { env: cleanEnvironment() })
      : await etcdctl(this.endpoint, [...this.globalArgs, ...args], step.input);
    const granted = /lease ([0-9a-f]{16}) granted/.exec(result.stdout);
    if (granted?.[1] !== undefined) this.lease = granted[1];
    return result;
  }
}

export interface Step {
  readonly args: readonly string[];
  readonly input?: string;
  /** Runs until interrupted: the output is what it printed in its first 5 s. */
  readonly watch?: boolean;
}

export const step = (line: string, input?: string): Step => ({ args: line.split(' '), ...(input === undefined ? {} : { input }) });

export function normalize(text: string): string {
  return text
    .replace(/"ts":"[^"]*"/g, '"ts":TS')
    .replace(/"target":"[^"]*"/g, '"target":TARGET')
    .replace(/"cluster_id":\d+/g, '"cluster_id":ID')
    .replace(/"member_id":\d+/g, '"member_id":ID')
    .replace(/"raft_term":\d+/g, '"raft_term":T')
    .replace(/"ClusterID" : \d+/g, '"ClusterID" : ID')
    .replace(/"MemberID" : \d+/g, '"MemberID" : ID')
    .replace(/"RaftTerm" : \d+/g, '"RaftTerm" : T')
    .replace(/took = [\d.]+[µm]?s/g, 'took = X')
    .replace(/127\.0\.0\.1:\d+/g, 'ENDPOINT')
    .replace(/lease [0-9a-f]{16}/g, 'lease LEASE')
    .replace(/"ID":\d+/g, '"ID":LEASE')
    .replace(/"id":\d+/g, '"id":LEASE')
    .replace(/"lease":\d+/g, '"lease":LEASE')
    .replace(/^[0-9a-f]{16}$/gm, 'LEASE')
    .replace(/remaining\(\d+s\)/g, 'remaining(Ns)')
    .replace(/"ttl":\d+/g, '"ttl":N')
    .replace(/(mylock|myelection)\/[0-9a-f]+/g, '$1/LEASE')
    // etcd lists a lease's keys in Go map order, which varies from run to run.
    .replace(/attached keys\(\[([^\]]*)\]\)/g, (_match, keys: string) => `attached keys([${keys.split(' ').sort().join(' ')}])`);
}

/** Runs every step on both sessions; returns the differences, one paragraph each ('' when none). */
export async function compareSessions(reference: Session, ours: Session, steps: readonly Step[]): Promise<string> {
  const differences: string[] = [];
  for (const current of steps) {
    const [expected, actual] = current.watch
      ? await Promise.all([reference.run(current), ours.run(current)])
      : [await reference.run(current), await ours.run(current)];
    const want = { code: expected.code, stdout: normalize(expected.stdout), stderr: normalize(expected.stderr) };
    const got = { code: actual.code, stdout: normalize(actual.stdout), stderr: normalize(actual.stderr) };
    if (JSON.stringify(want) !== JSON.stringify(got)) {
      differences.push(`etcdctl ${current.args.join(' ')}\n  etcd:    ${JSON.stringify(want)}\n  rampart: ${JSON.stringify(got)}`);
    }
  }
  return differences.join('\n\n');
}
