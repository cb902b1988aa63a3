/**
 * A `rampart up` cluster in a temporary directory for an e2e test: started on free ports, reached
 * with the admin certificate (etcdctl or the rampart CLI), stopped and removed by `down()`.
 */
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { cleanEnvironment, freeBasePort, rampartBin, removeDirectory, run, temporaryDirectory, type CommandResult } from './processes.js';

export interface UpCluster {
  /** The cluster directory (`rampart up --dir`). */
  readonly home: string;
  /** Its PKI directory (CA, admin certificate). */
  readonly pki: string;
  /** The first member's client port; member N's is base + N * 10,000. */
  readonly base: number;
  /** Every member's client port, in member order. */
  readonly ports: readonly number[];
  /** Runs `rampart ARGS` (60 s at most). */
  rampart(args: readonly string[]): Promise<CommandResult>;
  /** Runs etcdctl as root (the admin certificate) against member `member` (0-based). */
  etcdctl(args: readonly string[], member?: number, input?: string): Promise<CommandResult>;
  /** `rampart down`, then removes the directory. */
  down(): Promise<void>;
}

/** The CLI, as tests run it: the built bin, 60 s at most. */
export function rampartCli(args: readonly string[]): Promise<CommandResult> {
  return run(process.execPath, [rampartBin, ...args], { timeoutMs: 60_000 });
}

/** Starts `rampart up --size SIZE` with `upArgs`; throws with its stderr when it fails. */
export async function startUpCluster(name: string, size: number, upArgs: readonly string[] = []): Promise<UpCluster> {
  const home = path.join(await temporaryDirectory(name), 'cluster');
  const base = await freeBasePort();
  const pki = path.join(home, 'pki');
  const down = async (): Promise<void> => {
    await rampartCli(['down', '--dir', home]);
    await removeDirectory(path.dirname(home));
  };
  const started = await rampartCli(['up', '--dir', home, '--size', String(size), '--base-port', String(base), ...upArgs]);
  if (started.code !== 0) {
    await down();
    throw new Error(`rampart up failed: ${started.stderr}`);
  }
  const ports = (JSON.parse(await readFile(path.join(home, 'cluster.json'), 'utf8')) as { members: { clientPort: number }[] }).members.map((member) => member.clientPort);
  return {
    home, pki, base, ports, down,
    rampart: rampartCli,
    etcdctl: (args, member = 0, input) => run('etcdctl', [
      '--endpoints', `https://127.0.0.1:${ports[member] ?? base}`, '--cacert', path.join(pki, 'ca.crt'), '--cert', path.join(pki, 'admin.crt'), '--key', path.join(pki, 'admin.key'),
      '--command-timeout=10s', ...args,
    ], { env: cleanEnvironment(), ...(input === undefined ? {} : { input }) }),
  };
}
