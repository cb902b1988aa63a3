/**
 * Secure members the bench starts and stops itself, so it can add flags (`--no-audit`), read a
 * member's memory and restart one member, which `rampart up` does not offer.
 *
 * Rampart: `rampart up` creates the certificates and starts the cluster once; each member's exact
 * command line is read back from /proc, the cluster is stopped, and the members are started again
 * with that command line plus the extra flags. So they run exactly as `rampart up` ships them
 * (mutual TLS on client and peer ports, auth bootstrapped, audit, encryption at rest) without this
 * file repeating, and drifting from, up's flag list.
 *
 * etcd: the same size, the same certificates, client and peer certificate auth, auth enabled with a
 * certificate-only root (the admin certificate's common name).
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { openSync, closeSync } from 'node:fs';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { request } from 'node:https';
import { connect as netConnect, createServer } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import * as grpc from '@grpc/grpc-js';
import { packageDefinition } from '../src/api/proto.js';

export type KvClient = grpc.Client & Record<string, (request: object, options: grpc.CallOptions, callback: (error: grpc.ServiceError | null, response?: Record<string, unknown>) => void) => void>;

/** One member process: its pid, and a restart that keeps its data. */
export interface BenchMember {
  pid(): number;
  /** Stop the member (SIGTERM, as an operator would), start it again; resolves once it is started (not yet serving). */
  restart(): Promise<void>;
  /** The two halves of `restart`, for timing them apart. */
  stop(): Promise<void>;
  /** Resolves once the client port is open (default: within 120 s). */
  start(timeoutMs?: number): Promise<void>;
  /** SIGKILL (a crash: nothing the process would do at a stop is done); resolves once it has exited. */
  kill(): Promise<void>;
  /** The file the member's stdout and stderr go to (appended across restarts), when kept. */
  readonly output: string | undefined;
}

/** How the bench runs each member. */
export interface BenchMemberOptions {
  /** `--log-level` (default `error`: the put phases measure the write path, not its logging). */
  readonly logLevel?: string;
  /** Keep each member's stdout and stderr in <outputDir>/<client port>.log (default: BENCH_MEMBER_OUTPUT_DIR, else not kept). */
  readonly outputDir?: string;
}

export interface SecureCluster {
  readonly endpoints: string[];
  readonly credentials: grpc.ChannelCredentials;
  readonly etcdctlFlags: string[];
  readonly members: BenchMember[];
  stop(): Promise<void>;
}

const projectRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const rampartBin = path.join(projectRoot, 'bin/rampart.js');
const memberStopWaitMs = 60_000;

export function environment(): NodeJS.ProcessEnv {
  return Object.fromEntries(Object.entries(process.env).filter(([name]) => !name.startsWith('ETCD')));
}

export function execute(file: string, args: readonly string[], timeoutMs: number): Promise<{ code: number; output: string }> {
  return new Promise((resolve) => {
    execFile(file, args, { env: environment(), timeout: timeoutMs, maxBuffer: 16 * 1024 * 1024 }, (error, stdout, stderr) => {
      const code = error === null ? 0 : typeof error.code === 'number' ? error.code : 1;
      resolve({ code, output: `${stdout}${stderr}` });
    });
  });
}

/**
 * Ports come from below Linux's ephemeral range (32768-60999): a port in it can be taken by any
 * outgoing connection's local end while a member restarts (or a connect to it can meet itself), and
 * the bench then talks to nothing or to the wrong process. Single ports from 12710-17689; bases below.
 */
export async function freePort(): Promise<number> {
  for (let attempt = 0; attempt < 200; attempt++) {
    const port = 12_710 + Math.floor(Math.random() * 4_980);
    if (await portIsFree(port)) return port;
  }
  throw new Error('no free port in 12710-17689');
}

async function portIsFree(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const server = createServer();
    server.once('error', () => resolve(false));
    server.listen(port, '127.0.0.1', () => server.close(() => resolve(true)));
  });
}

/**
 * A base port whose member ports (`rampart up`: base, +10000, ..., each with peer +1 and metrics +2)
 * are all free: bases from 7700-12692, so a third member's metrics port stays below 32768.
 */
async function freeBasePort(size: number): Promise<number> {
  for (let attempt = 0; attempt < 50; attempt++) {
    const base = 7_700 + Math.floor(Math.random() * 1_665) * 3;
    const all = Array.from({ length: size }, (_, index) => index * 10_000).flatMap((offset) => [base + offset, base + offset + 1, base + offset + 2]);
    if ((await Promise.all(all.map(portIsFree))).every(Boolean)) return base;
  }
  throw new Error('no free base port for rampart up');
}

export async function waitForPort(port: number, child: ChildProcess, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (child.exitCode !== null || child.signalCode !== null) throw new Error(`member exited during start (${child.exitCode ?? child.signalCode})`);
    const open = await new Promise<boolean>((resolve) => {
      const socket = netConnect(port, '127.0.0.1');
      socket.once('connect', () => {
        socket.destroy();
        resolve(true);
      });
      socket.once('error', () => resolve(false));
    });
    if (open) return;
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
  throw new Error(`port ${port} did not open`);
}

/** A member's /metrics text from its metrics listener (TLS, the given certificate). */
export function scrape(port: number, tls: { ca: Buffer; cert: Buffer; key: Buffer }): Promise<string> {
  return new Promise((resolve, reject) => {
    const call = request({ host: '127.0.0.1', port, path: '/metrics', ...tls, servername: 'localhost', checkServerIdentity: () => undefined }, (response) => {
      let body = '';
      response.setEncoding('utf8');
      response.on('data', (chunk: string) => (body += chunk));
      response.on('end', () => resolve(body));
    });
    call.on('error', reject);
    call.end();
  });
}

/** The value on the first line of `text` that starts with `name`. */
export function metric(text: string, name: string): number {
  const line = text.split('\n').find((candidate) => candidate.startsWith(name));
  return Number(line?.slice(line.lastIndexOf(' ') + 1) ?? Number.NaN);
}

export function kvClients(endpoints: readonly string[], credentials: grpc.ChannelCredentials, count: number): KvClient[] {
  const loaded = grpc.loadPackageDefinition(packageDefinition) as unknown as { etcdserverpb: { KV: grpc.ServiceClientConstructor } };
  // A local subchannel pool per client gives each its own TCP connection.
  return Array.from({ length: count }, (_, index) => new loaded.etcdserverpb.KV(endpoints[index % endpoints.length] as string, credentials, { 'grpc.use_local_subchannel_pool': 1, 'grpc.max_receive_message_length': 64 * 1024 * 1024 }) as unknown as KvClient);
}

export function unary(client: KvClient, method: 'Put' | 'Range' | 'Txn', request: object, timeoutMs = 30_000): Promise<Record<string, unknown>> {
  return new Promise((resolve, reject) => {
    const handler = client[method];
    if (handler === undefined) {
      reject(new Error(`no method ${method}`));
      return;
    }
    handler.call(client, request, { deadline: Date.now() + timeoutMs }, (error, response) => (error === null && response !== undefined ? resolve(response) : reject(error ?? new Error('no response'))));
  });
}

/** The administrator's TLS material in a `pki` directory (ours and the etcd side's alike). */
export async function adminTls(pki: string): Promise<{ ca: Buffer; cert: Buffer; key: Buffer }> {
  const [ca, cert, key] = await Promise.all(['ca.crt', 'admin.crt', 'admin.key'].map((name) => readFile(path.join(pki, name))));
  return { ca: ca as Buffer, cert: cert as Buffer, key: key as Buffer };
}

export async function adminCredentials(pki: string): Promise<grpc.ChannelCredentials> {
  const { ca, cert, key } = await adminTls(pki);
  return grpc.credentials.createSsl(ca, key, cert);
}

function exited(child: ChildProcess): Promise<void> {
  return new Promise((resolve) => (child.exitCode !== null || child.signalCode !== null ? resolve() : child.once('exit', () => resolve())));
}

async function stopChild(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  child.kill('SIGTERM');
  const timer = setTimeout(() => child.kill('SIGKILL'), memberStopWaitMs);
  await exited(child);
  clearTimeout(timer);
}

/** A member run from a fixed command line; restart runs the same line again. */
function processMember(file: string, args: readonly string[], clientPort: number, outputDir: string | undefined): { member: BenchMember; start(timeoutMs?: number): Promise<void>; stop(): Promise<void> } {
  let child: ChildProcess | undefined;
  // BENCH_MEMBER_OUTPUT_DIR keeps each member's stdout and stderr (e.g. with BENCH_NODE_ARGS=--trace-gc) in <dir>/<client port>.log.
  const outputFile = outputDir === undefined ? undefined : path.join(outputDir, `${clientPort}.log`);
  const start = async (timeoutMs = 120_000): Promise<void> => {
    const output = outputFile === undefined ? undefined : openSync(outputFile, 'a');
    child = spawn(file, args, { env: environment(), stdio: output === undefined ? 'ignore' : ['ignore', output, output] });
    if (output !== undefined) closeSync(output);
    await waitForPort(clientPort, child, timeoutMs);
  };
  const stop = async (): Promise<void> => {
    if (child !== undefined) await stopChild(child);
  };
  const kill = async (): Promise<void> => {
    if (child === undefined || child.exitCode !== null || child.signalCode !== null) return;
    child.kill('SIGKILL');
    await exited(child);
  };
  return {
    member: {
      pid: () => child?.pid ?? 0,
      restart: async () => {
        await stop();
        await start();
      },
      stop,
      start,
      kill,
      output: outputFile,
    },
    start,
    stop,
  };
}

/** The NUL-separated command line of a running process. */
async function commandLine(pid: number): Promise<string[]> {
  const raw = await readFile(`/proc/${pid}/cmdline`, 'utf8');
  return raw.split('\0').filter((part, index, parts) => part !== '' || index < parts.length - 1);
}

/**
 * A secure Rampart cluster of `size` members as `rampart up` starts it, plus `extraArgs` on every
 * member. `directory` receives the certificates (pki/admin.crt, mN/server.crt, ...), which
 * startEtcdSecure can reuse.
 */
export async function startRampartSecure(directory: string, size: number, extraArgs: readonly string[] = [], upArgs: readonly string[] = [], options: BenchMemberOptions = {}): Promise<SecureCluster> {
  const base = await freeBasePort(size);
  const result = await execute(process.execPath, [rampartBin, 'up', '--dir', directory, '--size', String(size), '--base-port', String(base), ...upArgs], 120_000);
  if (result.code !== 0) throw new Error(`rampart up failed:\n${result.output}`);
  const names = Array.from({ length: size }, (_, index) => `m${index + 1}`);
  const lines: string[][] = [];
  try {
    for (const name of names) lines.push(await commandLine(Number((await readFile(path.join(directory, name, 'pid'), 'utf8')).trim())));
  } finally {
    await execute(process.execPath, [rampartBin, 'down', '--dir', directory], 120_000);
  }
  const clientPorts = names.map((_, index) => base + index * 10_000);
  // BENCH_NODE_ARGS (e.g. `--cpu-prof --cpu-prof-dir=DIR`) go before the script, as for plaintext members.
  const nodeArgs = (process.env.BENCH_NODE_ARGS ?? '').split(' ').filter(Boolean);
  const outputDir = options.outputDir ?? process.env.BENCH_MEMBER_OUTPUT_DIR;
  const members = lines.map((line, index) => processMember(line[0] as string, [...nodeArgs, ...line.slice(1), ...extraArgs, '--log-level', options.logLevel ?? 'error'], clientPorts[index] as number, outputDir));
  const stop = async (): Promise<void> => {
    await Promise.all(members.map((member) => member.stop()));
  };
  try {
    await Promise.all(members.map((member) => member.start()));
  } catch (error) {
    await stop();
    throw error;
  }
  const pki = path.join(directory, 'pki');
  const endpoints = clientPorts.map((port) => `127.0.0.1:${port}`);
  return {
    endpoints,
    credentials: await adminCredentials(pki),
    etcdctlFlags: [`--endpoints=${endpoints.map((endpoint) => `https://${endpoint}`).join(',')}`, `--cacert=${path.join(pki, 'ca.crt')}`, `--cert=${path.join(pki, 'admin.crt')}`, `--key=${path.join(pki, 'admin.key')}`],
    members: members.map((member) => member.member),
    stop,
  };
}

/** etcd with `size` members on the certificates of a `rampart up` directory (startRampartSecure made them). */
export async function startEtcdSecure(directory: string, size: number, options: BenchMemberOptions = {}): Promise<SecureCluster> {
  const names = Array.from({ length: size }, (_, index) => `m${index + 1}`);
  const assigned: { client: number; peer: number }[] = [];
  for (let index = 0; index < size; index++) assigned.push({ client: await freePort(), peer: await freePort() });
  const initialCluster = assigned.map((port, index) => `${names[index]}=https://127.0.0.1:${port.peer}`).join(',');
  const dataDirs = await Promise.all(assigned.map(() => mkdtemp(path.join(tmpdir(), 'bench-etcd-'))));
  const members = assigned.map((port, index) => {
    const home = path.join(directory, names[index] as string);
    return processMember('etcd', [
      '--name', names[index] as string, '--data-dir', dataDirs[index] as string,
      '--listen-client-urls', `https://127.0.0.1:${port.client}`, '--advertise-client-urls', `https://127.0.0.1:${port.client}`,
      '--listen-peer-urls', `https://127.0.0.1:${port.peer}`, '--initial-advertise-peer-urls', `https://127.0.0.1:${port.peer}`,
      '--initial-cluster', initialCluster, '--initial-cluster-token', 'bench-secure', '--log-level', options.logLevel ?? 'error',
      '--cert-file', path.join(home, 'server.crt'), '--key-file', path.join(home, 'server.key'), '--client-cert-auth', '--trusted-ca-file', path.join(home, 'ca.crt'),
      '--peer-cert-file', path.join(home, 'peer.crt'), '--peer-key-file', path.join(home, 'peer.key'), '--peer-client-cert-auth', '--peer-trusted-ca-file', path.join(home, 'ca.crt'),
    ], port.client, options.outputDir ?? process.env.BENCH_MEMBER_OUTPUT_DIR);
  });
  const stop = async (): Promise<void> => {
    await Promise.all(members.map((member) => member.stop()));
    await Promise.all(dataDirs.map((dataDir) => rm(dataDir, { recursive: true, force: true })));
  };
  try {
    await Promise.all(members.map((member) => member.start()));
    const pki = path.join(directory, 'pki');
    const endpoints = assigned.map((port) => `127.0.0.1:${port.client}`);
    const etcdctlFlags = [`--endpoints=${endpoints.map((endpoint) => `https://${endpoint}`).join(',')}`, `--cacert=${path.join(pki, 'ca.crt')}`, `--cert=${path.join(pki, 'admin.crt')}`, `--key=${path.join(pki, 'admin.key')}`];
    for (const args of [['user', 'add', 'root', '--no-password'], ['role', 'add', 'root'], ['user', 'grant-role', 'root', 'root'], ['auth', 'enable']]) {
      const result = await executeRetrying('etcdctl', [...etcdctlFlags, ...args]);
      if (result.code !== 0 && !/already exists|already granted/.test(result.output)) throw new Error(`etcdctl ${args.join(' ')}: ${result.output}`);
    }
    return { endpoints, credentials: await adminCredentials(pki), etcdctlFlags, members: members.map((member) => member.member), stop };
  } catch (error) {
    await stop();
    throw error;
  }
}

async function executeRetrying(file: string, args: readonly string[]): Promise<{ code: number; output: string }> {
  let result = await execute(file, args, 20_000);
  for (let attempt = 0; attempt < 20 && result.code !== 0 && /no leader|unavailable|deadline|connection refused/i.test(result.output); attempt++) {
    await new Promise((resolve) => setTimeout(resolve, 500));
    result = await execute(file, args, 20_000);
  }
  return result;
}
