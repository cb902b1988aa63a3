/**
 * Real processes for e2e tests: Rampart members, a reference etcd, and etcdctl, on 127.0.0.1.
 * Every ETCD_* / ETCDCTL_* variable is removed from their environment: etcd and etcdctl read
 * them as flags.
 */
import { spawn, execFile, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
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
 * The slice of ports this test process hands out. The suite runs files in parallel workers that
 * start and restart members on ports chosen here; a port from the kernel's ephemeral range
 * (`listen(0)`) may be handed to another worker the moment it is free again — while a member
 * restarts on it — and that worker's member then answers this one's clients (seen in CI:
 * "UNIMPLEMENTED: The server does not implement the method /etcdserverpb.KV/Put" from a peer
 * port). So each vitest worker (VITEST_POOL_ID) takes ports from its own slice of 10000-19999,
 * below the ephemeral range (32768+, where outgoing connections take theirs) and apart from
 * `freeBasePort`'s 20000+, in sequence from a random start, never handing one out twice.
 */
const portSliceSize = 2_500;
const portSliceCount = 4;
const portSlice = (Number(process.env.VITEST_POOL_ID ?? process.pid) % portSliceCount);
let nextPortOffset = Math.floor(Math.random() * portSliceSize);
let portsHandedOut = 0;

export async function freePort(): Promise<number> {
  while (portsHandedOut < portSliceSize) {
    const port = 10_000 + portSlice * portSliceSize + nextPortOffset;
    nextPortOffset = (nextPortOffset + 1) % portSliceSize;
    portsHandedOut++;
    if (await portFree(port)) return port;
  }
  throw new Error(`no free port left in this worker's slice (${portSliceSize} handed out)`);
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
    if (open) return;
    if (Date.now() > deadline) throw new Error(`port ${port} not open after ${timeoutMs} ms:\n${output()}`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
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

/** A base port whose +0/+1/+2, +10000/+10001/+10002 and +20000/+20001/+20002 neighbours (client, peer, metrics) are all free. */
export async function freeBasePort(): Promise<number> {
  for (let attempt = 0; attempt < 200; attempt++) {
    // Each worker's bases from its own slice (see freePort), so two workers never race for one.
    const base = 20_000 + portSlice * 2_250 + Math.floor(Math.random() * 2_250);
    const ports = [0, 1, 2, 10_000, 10_001, 10_002, 20_000, 20_001, 20_002].map((offset) => base + offset);
    if ((await Promise.all(ports.map(portFree))).every(Boolean)) return base;
  }
  throw new Error('no free base port');
}
