/**
 * Real processes for e2e tests: Rampart members, a reference etcd, and etcdctl, on 127.0.0.1.
 * Every ETCD_* / ETCDCTL_* variable is removed from their environment: etcd and etcdctl read
 * them as flags.
 */
import { spawn, execFile, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, readFile, readdir, readlink, rm } from 'node:fs/promises';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export const projectRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
export const rampartBin = path.join(projectRoot, 'bin/rampart.js');

export function cleanEnvironment(extra: Record<string, string> = {}): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [name, value] of Object.entries(process.env)) {
    if (!name.startsWith('ETCD') && value !== undefined) env[name] = value;
  }
  return { ...env, ETCDCTL_API: '3', ...extra };
}

/**
 * Ports for the members tests start. The suite runs files in parallel workers that start and
 * restart members on ports chosen here, so a port must not be one that anything else may take
 * meanwhile:
 * - not from the kernel's ephemeral range (32768-60999 here): `listen(0)` servers (in-process
 *   members, fault proxies, audit receivers) and every outgoing connection take theirs there, the
 *   moment a port is free, e.g. while a member restarts on it. A listener of another test then
 *   answers this one's clients (seen in CI: "UNIMPLEMENTED: The server does not implement the method
 *   /etcdserverpb.KV/Put" from a peer port), and a connection's local port makes the member's
 *   listen fail (EADDRINUSE);
 * - not from another worker: each vitest worker (VITEST_POOL_ID, 1..maxWorkers) has a slice of
 *   its own, and hands its ports out in sequence from a random start, never twice.
 * `rampart up` bases (freeBasePort) put members at base, base+10000 and base+20000 (each +0..+2:
 * client, peer, metrics), so bases come from 7700-12699 (the highest, m3's metrics, is 32697) and
 * single ports (freePort) from the gaps between those three bands: 12710-17689 and 22710-27689.
 * (Linux's default ip_local_port_range; a machine whose range reaches below 32768 loses the first
 * guarantee.)
 */
const portSliceCount = 4;
const portSlice = Number(process.env.VITEST_POOL_ID ?? process.pid) % portSliceCount;
const basePortFirst = 7_700;
const basePortSliceSize = 1_250;
/** A base's ports: client, peer and metrics of up to three members. */
const basePortOffsets = [0, 1, 2, 10_000, 10_001, 10_002, 20_000, 20_001, 20_002];
const singlePortSliceSize = 1_245;
const singlePortRanges = [12_710, 22_710].map((first) => first + portSlice * singlePortSliceSize);

/** Ports of this worker's slice, each once, in sequence from a random start; `step` apart. */
function sequence(size: number, step: number): () => number | undefined {
  const count = Math.floor(size / step);
  let next = Math.floor(Math.random() * count);
  let handedOut = 0;
  return () => {
    if (handedOut === count) return undefined;
    handedOut++;
    const index = next;
    next = (next + 1) % count;
    return index * step;
  };
}

const nextSinglePort = sequence(singlePortRanges.length * singlePortSliceSize, 1);

export async function freePort(): Promise<number> {
  for (let offset = nextSinglePort(); offset !== undefined; offset = nextSinglePort()) {
    const port = (singlePortRanges[Math.floor(offset / singlePortSliceSize)] as number) + (offset % singlePortSliceSize);
    if (await portFree(port)) return port;
  }
  throw new Error(`no free port left in this worker's slices (${singlePortRanges.join(', ')}, ${singlePortSliceSize} each)`);
}

export async function temporaryDirectory(name: string): Promise<string> {
  return mkdtemp(path.join(tmpdir(), `rampart-${name}-`));
}

export interface CommandResult {
  readonly code: number;
  readonly stdout: string;
  readonly stderr: string;
}

/**
 * How long a command may run before it is killed. A CLI call that starts Node, reads keys and
 * reaches a member has taken over 20 s on this 2-core machine at load average ~35; killed, it
 * left exit code 1 and an empty stderr, which read like the command's own failure.
 */
export const commandTimeoutMsDefault = 120_000;

export function run(command: string, args: readonly string[], options: { input?: string; timeoutMs?: number; env?: NodeJS.ProcessEnv } = {}): Promise<CommandResult> {
  const timeoutMs = options.timeoutMs ?? commandTimeoutMsDefault;
  return new Promise((resolve) => {
    const child = execFile(command, args, { env: options.env ?? cleanEnvironment(), timeout: timeoutMs, maxBuffer: 64 * 1024 * 1024 }, (error, stdout, stderr) => {
      const code = error === null ? 0 : typeof error.code === 'number' ? error.code : 1;
      // Killed by the timeout (or any signal): say so, so a test failure names the cause.
      const killed = error !== null && typeof error.code !== 'number' && error.signal ? `\n[test helper: ${command} killed by ${error.signal}${error.killed ? ` after its ${timeoutMs} ms timeout` : ''}]` : '';
      resolve({ code, stdout: stdout.toString(), stderr: stderr.toString() + killed });
    });
    if (options.input !== undefined) {
      child.stdin?.end(options.input);
    } else {
      child.stdin?.end();
    }
  });
}

export interface ServerProcess {
  readonly endpoint: string;
  readonly port: number;
  readonly peerPort?: number;
  readonly dataDir: string;
  readonly child: ChildProcess;
  output(): string;
  stop(signal?: NodeJS.Signals): Promise<number | null>;
}

async function waitForPort(port: number, child: ChildProcess, output: () => string, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  const { connect } = await import('node:net');
  for (;;) {
    if (child.exitCode !== null) {
      throw new Error(`process exited with ${child.exitCode} before listening:\n${output()}`);
    }
    const open = await new Promise<boolean>((resolve) => {
      const socket = connect(port, '127.0.0.1');
      socket.once('connect', () => {
        socket.destroy();
        resolve(true);
      });
      socket.once('error', () => resolve(false));
    });
    // Open, but maybe by another process (a port taken between freePort and this bind): not ours
    // then, and the child will fail on its bind and exit with the reason.
    if (open && child.pid !== undefined && (await listensOn(child.pid, port))) return;
    if (Date.now() > deadline) throw new Error(`port ${port} not open${open ? ' by this process (another one listens on it)' : ''} after ${timeoutMs} ms:\n${output()}`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

/**
 * Whether process `pid` holds a socket listening on `port` (Linux: its inode in /proc/net/tcp*
 * among the process's descriptors). True when /proc cannot say (another system).
 */
export async function listensOn(pid: number, port: number): Promise<boolean> {
  const tables = await Promise.all(['/proc/net/tcp', '/proc/net/tcp6'].map((table) => readFile(table, 'utf8').catch(() => undefined)));
  if (tables.every((table) => table === undefined)) return true;
  const portSuffix = `:${port.toString(16).toUpperCase().padStart(4, '0')}`;
  const inodes = new Set<string>();
  for (const line of tables.flatMap((table) => table?.split('\n').slice(1) ?? [])) {
    // sl local_address rem_address st ... inode: st 0A is LISTEN.
    const fields = line.trim().split(/\s+/);
    if (fields[3] === '0A' && fields[1]?.endsWith(portSuffix) === true && fields[9] !== undefined) inodes.add(`socket:[${fields[9]}]`);
  }
  if (inodes.size === 0) return false;
  const descriptors = await readdir(`/proc/${pid}/fd`).catch(() => [] as string[]);
  const targets = await Promise.all(descriptors.map((descriptor) => readlink(`/proc/${pid}/fd/${descriptor}`).catch(() => '')));
  return targets.some((target) => inodes.has(target));
}

function track(child: ChildProcess): () => string {
  let text = '';
  child.stdout?.on('data', (chunk: Buffer) => (text += chunk.toString()));
  child.stderr?.on('data', (chunk: Buffer) => (text += chunk.toString()));
  return () => text;
}

function stopper(child: ChildProcess): (signal?: NodeJS.Signals) => Promise<number | null> {
  return async (signal = 'SIGTERM') => {
    if (child.exitCode !== null || child.signalCode !== null) return child.exitCode;
    const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
    child.kill(signal);
    const timer = setTimeout(() => child.kill('SIGKILL'), 10_000);
    const code = await exited;
    clearTimeout(timer);
    return code;
  };
}

export interface RampartOptions {
  readonly dataDir?: string;
  readonly port?: number;
  readonly peerPort?: number;
  readonly name?: string;
  readonly args?: readonly string[];
  /**
   * How long to wait for the client port (default 60 s); a member needs a leader before it serves.
   * Generous: on the shared 2-core machine at load 30-40 a fresh 3-member cluster took 13 s to
   * serve, a member sometimes printed nothing at all within 15 s, and with four e2e files of
   * clusters running beside other work (load ~28) two members of 33 did not serve within 30 s.
   */
  readonly startTimeoutMs?: number;
  /** Extra environment variables (the soak's fsync shim). */
  readonly env?: Record<string, string>;
  /** TLS on client and peer ports (https:// listen URLs, no --insecure): the caller passes the certificate flags in `args`. */
  readonly secure?: boolean;
}

/** Starts `rampart serve --insecure` (plaintext; TLS has its own tests), or with TLS when `secure`. */
export async function startRampart(options: RampartOptions = {}): Promise<ServerProcess> {
  const port = options.port ?? (await freePort());
  const peerPort = options.peerPort ?? (await freePort());
  const dataDir = options.dataDir ?? (await temporaryDirectory('data'));
  const scheme = options.secure === true ? 'https' : 'http';
  const child = spawn(process.execPath, [
    rampartBin, 'serve', ...(options.secure === true ? [] : ['--insecure']),
    '--name', options.name ?? 'default',
    '--data-dir', dataDir,
    '--listen-client-urls', `${scheme}://127.0.0.1:${port}`,
    '--listen-peer-urls', `${scheme}://127.0.0.1:${peerPort}`,
    '--log-level', process.env.RAMPART_TEST_LOG_LEVEL ?? 'warn',
    ...(options.args ?? []),
  ], {
    env: cleanEnvironment(options.env),
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const output = track(child);
  try {
    await waitForPort(port, child, output, options.startTimeoutMs ?? 60_000);
  } catch (error) {
    // Not left running behind a failed test.
    child.kill('SIGKILL');
    throw error;
  }
  // Per-endpoint etcdctl commands send the whole URL as :authority over plaintext, which HTTP/2
  // servers other than Go's refuse; host:port endpoints avoid that (TLS endpoints are unaffected).
  return { endpoint: `127.0.0.1:${port}`, port, peerPort, dataDir, child, output, stop: stopper(child) };
}

export function etcdAvailable(): boolean {
  return ['/usr/bin/etcd', '/usr/local/bin/etcd'].some((file) => existsSync(file));
}

export async function startEtcd(): Promise<ServerProcess> {
  const port = await freePort();
  const peerPort = await freePort();
  const dataDir = await temporaryDirectory('etcd');
  const child = spawn('etcd', [
    '--name', 'reference',
    '--data-dir', dataDir,
    '--listen-client-urls', `http://127.0.0.1:${port}`,
    '--advertise-client-urls', `http://127.0.0.1:${port}`,
    '--listen-peer-urls', `http://127.0.0.1:${peerPort}`,
    '--initial-advertise-peer-urls', `http://127.0.0.1:${peerPort}`,
    '--initial-cluster', `reference=http://127.0.0.1:${peerPort}`,
    '--log-level', 'error',
  ], { env: cleanEnvironment(), stdio: ['ignore', 'pipe', 'pipe'] });
  const output = track(child);
  await waitForPort(port, child, output, 15_000);
  return { endpoint: `127.0.0.1:${port}`, port, dataDir, child, output, stop: stopper(child) };
}

export function etcdctl(endpoint: string, args: readonly string[], input?: string): Promise<CommandResult> {
  return run('etcdctl', ['--endpoints', endpoint, ...args], input === undefined ? {} : { input });
}

export async function removeDirectory(directory: string): Promise<void> {
  await rm(directory, { recursive: true, force: true });
}

export interface ClusterMember {
  readonly name: string;
  readonly port: number;
  readonly peerPort: number;
  readonly dataDir: string;
  process: ServerProcess | undefined;
}

export interface Cluster {
  readonly members: ClusterMember[];
  /** All client endpoints, comma-separated, for etcdctl --endpoints. */
  readonly endpoints: string;
  readonly initialCluster: string;
  start(member: ClusterMember, extraArgs?: readonly string[]): Promise<ServerProcess>;
  stopAll(): Promise<void>;
  remove(): Promise<void>;
}

/**
 * Starts `size` members on 127.0.0.1 as one new cluster and waits until every one serves clients.
 * `argsOf` adds flags of one member's own (a key file of its own, say).
 */
export async function startCluster(size: number, args: readonly string[] = [], argsOf: (member: ClusterMember) => readonly string[] = () => []): Promise<Cluster> {
  const members: ClusterMember[] = [];
  for (let index = 1; index <= size; index++) {
    members.push({ name: `m${index}`, port: await freePort(), peerPort: await freePort(), dataDir: await temporaryDirectory(`m${index}`), process: undefined });
  }
  const initialCluster = members.map((member) => `${member.name}=http://127.0.0.1:${member.peerPort}`).join(',');
  const start = async (member: ClusterMember, extraArgs: readonly string[] = []): Promise<ServerProcess> => {
    member.process = await startRampart({
      name: member.name,
      port: member.port,
      peerPort: member.peerPort,
      dataDir: member.dataDir,
      args: ['--initial-cluster', initialCluster, ...args, ...argsOf(member), ...extraArgs],
    });
    return member.process;
  };
  await Promise.all(members.map((member) => start(member)));
  return {
    members,
    endpoints: members.map((member) => `127.0.0.1:${member.port}`).join(','),
    initialCluster,
    start,
    stopAll: async () => {
      await Promise.all(members.map((member) => member.process?.stop()));
    },
    remove: async () => {
      await Promise.all(members.map((member) => member.process?.stop()));
      await Promise.all(members.map((member) => removeDirectory(member.dataDir)));
    },
  };
}

async function portFree(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const server = createServer();
    server.once('error', () => resolve(false));
    server.listen(port, '127.0.0.1', () => server.close(() => resolve(true)));
  });
}

const nextBaseOffset = sequence(basePortSliceSize, 3);

/**
 * A base port whose +0/+1/+2, +10000/+10001/+10002 and +20000/+20001/+20002 neighbours (client,
 * peer, metrics of `rampart up`'s three members) are all free, from this worker's slice of bases
 * (see freePort), 3 apart: no two bases of one worker share a port.
 */
export async function freeBasePort(): Promise<number> {
  for (let offset = nextBaseOffset(); offset !== undefined; offset = nextBaseOffset()) {
    const base = basePortFirst + portSlice * basePortSliceSize + offset;
    if ((await Promise.all(basePortOffsets.map((neighbour) => portFree(base + neighbour)))).every(Boolean)) return base;
  }
  throw new Error('no free base port left in this worker\'s slice');
}
