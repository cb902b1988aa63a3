/**
 * `rampart up` / `rampart down`: a secure local cluster in one command. `up` creates the CA (once),
 * certificates for each member (server and peer) and for an admin client, starts the members on
 * 127.0.0.1 with mutual TLS on client and peer ports, waits until the cluster has a leader and every
 * member serves, and prints the etcdctl line to use. Running it again reuses what exists.
 */
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { copyFile, mkdir, open, readFile, rename, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import * as grpc from '@grpc/grpc-js';
import { packageDefinition } from '../api/proto.js';
import { PolicyConnection } from './policy.js';
import { checkedAuditSinks } from './audit-sinks.js';
import { FileKekProvider } from '../encryption/kek-file.js';
import { crlFileName, freshRevocationList } from '../pki/revocation.js';
import { type CertificateKind, caValidityDays, createAuthority, initAuthority, issueCertificate, readKeyPair, renewCertificate, writeFileAtomic, writeKeyPair, type KeyPairPem } from '../pki/authority.js';

export interface UpOptions {
  readonly directory: string;
  readonly size: number;
  readonly baseClientPort: number;
  readonly timeoutMs: number;
  /** Apply the default policies and enable auth on a new cluster (the default). */
  readonly auth: boolean;
  /** Seal each member's data at rest under its own key file (the default). */
  readonly encryption: boolean;
  /** `--audit-sink` values given to every member this run starts (and `--audit-fail-closed`). */
  readonly auditSinks?: readonly string[];
  readonly auditFailClosed?: boolean;
  /** `serve --audit-max-file-bytes` for every member (small values show rotation at once). */
  readonly auditMaxFileBytes?: number;
}

interface ClusterFile {
  readonly token: string;
  readonly members: { name: string; clientPort: number; peerPort: number }[];
}

const binary = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../../bin/rampart.js');
const localNames = ['127.0.0.1', 'localhost'];

function portsFor(base: number, index: number): { clientPort: number; peerPort: number } {
  // Local members: base, base+10000, base+20000, ... (2379, 12379, 22379 by default); peer port +1.
  const clientPort = index === 0 ? base : base + index * 10_000;
  return { clientPort, peerPort: clientPort + 1 };
}

/**
 * Why `--base-port` cannot place `size` local members, or undefined when it can: every member's
 * client, peer and metrics ports (client +0, +1, +2) must be real TCP ports, checked before
 * anything is created so a bad value leaves no half-made cluster directory behind.
 */
export function localPortsProblem(base: number, size: number): string | undefined {
  const lastMetricsPort = portsFor(base, size - 1).clientPort + 2;
  if (base >= 1 && lastMetricsPort <= 65_535) return undefined;
  const highestBase = 65_535 - 2 - (size - 1) * 10_000;
  return `--base-port ${base} cannot hold ${size} member${size === 1 ? '' : 's'} (client ports base, base+10000, …; peer +1, metrics +2): `
    + `give a port from 1 to ${highestBase}`;
}

/** Metrics and health of a local member: client port + 2 (2381 for the first, as etcd's usual port), over TLS. */
export function metricsUrl(clientPort: number): string {
  return `https://127.0.0.1:${clientPort + 2}`;
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

async function readPid(file: string): Promise<number | undefined> {
  try {
    const pid = Number((await readFile(file, 'utf8')).trim());
    return Number.isSafeInteger(pid) && pid > 0 && alive(pid) ? pid : undefined;
  } catch {
    return undefined;
  }
}

async function issueOnce(authority: KeyPairPem, directory: string, name: string, kind: CertificateKind, commonName: string): Promise<void> {
  try {
    await readKeyPair(directory, name);
  } catch {
    // An audit signing certificate must stay checkable for as long as the trail is kept (members
    // do not reload it): it lives as long as the CA.
    await writeKeyPair(directory, name, await issueCertificate(authority, {
      kind, commonName, subjectAltNames: kind === 'client' || kind === 'audit' ? [] : localNames, ...(kind === 'audit' ? { validityDays: caValidityDays } : {}),
    }));
  }
}

export function etcdctlLine(directory: string, endpoints: readonly string[]): string {
  const pki = path.join(directory, 'pki');
  return `ETCDCTL_API=3 etcdctl --endpoints ${endpoints.join(',')} --cacert ${path.join(pki, 'ca.crt')} --cert ${path.join(pki, 'admin.crt')} --key ${path.join(pki, 'admin.key')} endpoint status --cluster -w table`;
}

export async function up(options: UpOptions, print: (line: string) => void): Promise<string[]> {
  const portsProblem = localPortsProblem(options.baseClientPort, options.size);
  if (portsProblem !== undefined) throw new Error(portsProblem);
  // What every member would refuse, refused here with the member's own words: nothing made or started yet.
  await checkedAuditSinks(options.auditSinks ?? [], options.auditFailClosed === true, true);
  const directory = path.resolve(options.directory);
  await mkdir(directory, { recursive: true, mode: 0o700 });
  const clusterFile = path.join(directory, 'cluster.json');
  let cluster: ClusterFile;
  let newCluster = false;
  try {
    cluster = JSON.parse(await readFile(clusterFile, 'utf8')) as ClusterFile;
    if (cluster.members.length !== options.size) print(`reusing the existing ${cluster.members.length}-member cluster in ${directory} (--size applies to a new one)`);
    else if (cluster.members[0]?.clientPort !== options.baseClientPort) print(`reusing the existing cluster in ${directory} on its ports (--base-port applies to a new one)`);
  } catch {
    newCluster = true;
    cluster = {
      token: `rampart-${randomBytes(6).toString('hex')}`,
      members: Array.from({ length: options.size }, (_, index) => ({ name: `m${index + 1}`, ...portsFor(options.baseClientPort, index) })),
    };
    await writeFile(clusterFile, JSON.stringify(cluster, null, 2) + '\n', { mode: 0o600 });
  }
  const pki = path.join(directory, 'pki');
  const { created, authority } = await initAuthority(pki, cluster.token);
  print(created ? `created a cluster CA in ${path.join(pki, 'ca')} (keep that directory offline in production)` : `using the cluster CA in ${path.join(pki, 'ca')}`);
  await issueOnce(authority, pki, 'admin', 'client', 'root');
  // The CA's CRL (number 1 on a new cluster, as `init` bundles ship it), handed to every member below.
  const crl = await freshRevocationList(pki);
  const initialCluster = cluster.members.map((member) => `${member.name}=https://127.0.0.1:${member.peerPort}`).join(',');
  const endpoints = cluster.members.map((member) => `https://127.0.0.1:${member.clientPort}`);
  // Members started by this run: one that exits while the cluster forms (a port in use, a bad data
  // directory) fails `up` at once with the end of its log, instead of a wait for the timeout.
  const started: StartedMember[] = [];
  for (const member of cluster.members) {
    const home = path.join(directory, member.name);
    await mkdir(home, { recursive: true, mode: 0o700 });
    await issueOnce(authority, home, 'server', 'server', member.name);
    await issueOnce(authority, home, 'peer', 'peer', member.name);
    // The key each member signs its audit checkpoints with (issue 12): the CA vouches for it offline.
    await issueOnce(authority, home, 'audit', 'audit', member.name);
    await writeFile(path.join(home, 'ca.crt'), authority.certificatePem);
    const memberCrl = path.join(home, crlFileName);
    if (crl.written || !existsSync(memberCrl)) {
      // Replaced whole (a running member reloads it): never a half-written CRL to read.
      await copyFile(crl.file, `${memberCrl}.tmp`);
      await rename(`${memberCrl}.tmp`, memberCrl);
    }
    // Each member's key-encryption key sits beside its data directory, not in it.
    const keyFile = path.join(home, 'encryption.key');
    if (options.encryption) await FileKekProvider.ensure(keyFile);
    const pidFile = path.join(home, 'pid');
    if ((await readPid(pidFile)) !== undefined) {
      print(`${member.name} is already running`);
      continue;
    }
    const log = await open(path.join(home, 'log'), 'a', 0o600);
    const child = spawn(process.execPath, [
      binary, 'serve',
      '--name', member.name,
      '--data-dir', path.join(home, 'data'),
      '--listen-client-urls', `https://127.0.0.1:${member.clientPort}`,
      '--listen-peer-urls', `https://127.0.0.1:${member.peerPort}`,
      '--initial-cluster', initialCluster,
      '--initial-cluster-token', cluster.token,
      '--cert-file', path.join(home, 'server.crt'), '--key-file', path.join(home, 'server.key'), '--trusted-ca-file', path.join(home, 'ca.crt'),
      '--peer-cert-file', path.join(home, 'peer.crt'), '--peer-key-file', path.join(home, 'peer.key'), '--peer-trusted-ca-file', path.join(home, 'ca.crt'),
      '--crl-file', path.join(home, 'crl.pem'),
      '--listen-metrics-urls', metricsUrl(member.clientPort),
      '--audit-signing-cert-file', path.join(home, 'audit.crt'), '--audit-signing-key-file', path.join(home, 'audit.key'),
      ...(options.auth ? [] : ['--no-bootstrap-auth']),
      ...(options.encryption ? ['--encryption-key-file', keyFile] : ['--no-encryption']),
      ...(options.auditSinks ?? []).flatMap((sink) => ['--audit-sink', sink]),
      ...(options.auditFailClosed === true ? ['--audit-fail-closed'] : []),
      ...(options.auditMaxFileBytes === undefined ? [] : ['--audit-max-file-bytes', String(options.auditMaxFileBytes)]),
    ], { detached: true, stdio: ['ignore', log.fd, log.fd], env: Object.fromEntries(Object.entries(process.env).filter(([name]) => !name.startsWith('ETCD'))) });
    const startedMember: StartedMember = { name: member.name, pid: child.pid ?? 0, pidFile, logFile: path.join(home, 'log') };
    child.once('exit', (code, signal) => {
      startedMember.exit = signal === null ? `exited with status ${code}` : `was killed by ${signal}`;
    });
    started.push(startedMember);
    child.unref();
    await log.close();
    await writeFile(pidFile, `${child.pid}\n`);
    print(`started ${member.name} (pid ${child.pid}): client https://127.0.0.1:${member.clientPort}, peer https://127.0.0.1:${member.peerPort}, metrics ${metricsUrl(member.clientPort)}/metrics, log ${path.join(home, 'log')}`);
  }
  try {
    await waitHealthy(directory, endpoints, options.timeoutMs, () => checkStarted(started));
  } catch (error) {
    // Leave nothing half-started behind: the members this run started are stopped again.
    for (const member of started) {
      if (member.exit === undefined && alive(member.pid)) process.kill(member.pid, 'SIGTERM');
      await rm(member.pidFile, { force: true });
    }
    throw error;
  }
  if (options.auth) await secureByDefault(directory, options.timeoutMs, newCluster, print);
  print(`cluster is healthy; use it with:\n\n  ${etcdctlLine(directory, endpoints)}\n`);
  return endpoints;
}

interface StartedMember {
  readonly name: string;
  readonly pid: number;
  readonly pidFile: string;
  readonly logFile: string;
  /** How it ended, once it has. */
  exit?: string;
}

/** Throws, naming the member and quoting the end of its log, when a member started by `up` has exited. */
async function checkStarted(started: readonly StartedMember[]): Promise<void> {
  const ended = started.find((member) => member.exit !== undefined);
  if (ended === undefined) return;
  const log = await readFile(ended.logFile, 'utf8').catch(() => '');
  const tail = log.trimEnd().split('\n').slice(-logTailLines).map((line) => `  ${line}`).join('\n');
  throw new Error(`${ended.name} ${ended.exit} while the cluster was starting; the end of ${ended.logFile}:\n${tail}`);
}

/** Lines of a failed member's log quoted by `up`. */
const logTailLines = 5;

/** Members of a new cluster enable auth with the default policies themselves: wait for it, and say so. */
async function secureByDefault(directory: string, timeoutMs: number, created: boolean, print: (line: string) => void): Promise<void> {
  await PolicyConnection.using({ dir: directory }, async (client) => {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const live = await client.export();
      if (live.enabled) {
        print(`auth is enabled; users: ${live.state.users.map((user) => user.name).sort().join(', ')}; the admin certificate acts as root`);
        return;
      }
      if (live.revision > 1) {
        // A cluster this command just created must come up secure: anything else is an attack or a bug.
        if (created) throw new Error(`auth is DISABLED on the new cluster (auth revision ${live.revision}): it was changed before it could be secured; see the member logs under ${directory}`);
        print(`auth is disabled on this cluster (it has been changed since it was created); enable it with etcdctl auth enable`);
        return;
      }
      if (Date.now() > deadline) throw new Error(`auth was not enabled within ${timeoutMs} ms; see the member logs under ${directory}`);
      await new Promise((resolve) => setTimeout(resolve, 200));
    }
  });
}

async function waitHealthy(directory: string, endpoints: readonly string[], timeoutMs: number, check: () => Promise<void>): Promise<void> {
  const pki = path.join(directory, 'pki');
  const [ca, cert, key] = await Promise.all(['ca.crt', 'admin.crt', 'admin.key'].map((name) => readFile(path.join(pki, name))));
  const credentials = grpc.credentials.createSsl(ca as Buffer, key as Buffer, cert as Buffer);
  const loaded = grpc.loadPackageDefinition(packageDefinition) as unknown as { etcdserverpb: { Maintenance: grpc.ServiceClientConstructor } };
  const deadline = Date.now() + timeoutMs;
  for (const endpoint of endpoints) {
    const client = new loaded.etcdserverpb.Maintenance(new URL(endpoint).host, credentials) as unknown as grpc.Client & { Status(request: object, options: grpc.CallOptions, callback: (error: grpc.ServiceError | null, response: { leader: string }) => void): void };
    try {
      for (;;) {
        const leader = await new Promise<string | undefined>((resolve) => client.Status({}, { deadline: Date.now() + 1000 }, (error, response) => resolve(error === null ? response.leader : undefined)));
        if (leader !== undefined && leader !== '0') break;
        await check();
        if (Date.now() > deadline) throw new Error(`${endpoint} did not become healthy within ${timeoutMs} ms; see the member logs under ${directory}`);
        await new Promise((resolve) => setTimeout(resolve, 200));
      }
    } finally {
      client.close();
    }
  }
}

export async function down(directoryOption: string, print: (line: string) => void): Promise<void> {
  const directory = path.resolve(directoryOption);
  let cluster: ClusterFile;
  try {
    cluster = JSON.parse(await readFile(path.join(directory, 'cluster.json'), 'utf8')) as ClusterFile;
  } catch {
    print(`no cluster in ${directory}`);
    return;
  }
  // Every member is asked to stop at once and given the same 10 s (a clean stop writes its key
  // index checkpoint, which takes seconds at scale): one after another, three members could take
  // 30 s, past the patience of a caller (a test's hook, a systemd unit) that then leaves one running.
  const stopping = await Promise.all(cluster.members.map(async (member) => {
    const pidFile = path.join(directory, member.name, 'pid');
    const pid = await readPid(pidFile);
    if (pid !== undefined) {
      try {
        process.kill(pid, 'SIGTERM');
      } catch {
        // Gone between reading its pid and now: nothing to stop.
      }
    }
    return { name: member.name, pidFile, pid };
  }));
  const deadline = Date.now() + 10_000;
  for (const { name, pidFile, pid } of stopping) {
    if (pid === undefined) {
      print(`${name} is not running`);
      continue;
    }
    while (alive(pid) && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 100));
    if (alive(pid)) process.kill(pid, 'SIGKILL');
    await rm(pidFile, { force: true });
    print(`stopped ${name}`);
  }
}

/**
 * `rampart rotate`: renews every certificate of a `rampart up` cluster while it serves. With a new
 * CA it goes in three phases, each waiting for members to reload: trust the old and the new CA,
 * re-issue everything from the new one, then stop trusting the old one.
 */
export async function rotate(directoryOption: string, newAuthority: boolean, reloadWaitMs: number, print: (line: string) => void): Promise<void> {
  const directory = path.resolve(directoryOption);
  const cluster = JSON.parse(await readFile(path.join(directory, 'cluster.json'), 'utf8')) as ClusterFile;
  const pki = path.join(directory, 'pki');
  const caDirectory = path.join(pki, 'ca');
  const bundleFiles = [path.join(pki, 'ca.crt'), ...cluster.members.map((member) => path.join(directory, member.name, 'ca.crt'))];
  const writeBundles = async (bundle: string): Promise<void> => {
    for (const file of bundleFiles) await writeFileAtomic(file, bundle, 0o644);
  };
  const settle = (): Promise<void> => new Promise((resolve) => setTimeout(resolve, reloadWaitMs));
  let authority = await readKeyPair(caDirectory, 'ca');
  if (newAuthority) {
    const previous = authority;
    authority = await createAuthority(`${cluster.token} root CA ${new Date().toISOString().slice(0, 10)}`);
    await writeKeyPair(caDirectory, 'previous', previous);
    await writeKeyPair(caDirectory, 'ca', authority);
    await writeBundles(authority.certificatePem + previous.certificatePem);
    print('phase 1/3: members and clients trust the old and the new CA');
    await settle();
  }
  for (const member of cluster.members) {
    const home = path.join(directory, member.name);
    await renewCertificate(authority, home, 'server');
    await renewCertificate(authority, home, 'peer');
  }
  await renewCertificate(authority, pki, 'admin');
  print(`${newAuthority ? 'phase 2/3: ' : ''}renewed the server and peer certificates of ${cluster.members.map((member) => member.name).join(', ')} and the admin certificate`);
  await settle();
  if (newAuthority) {
    await writeBundles(authority.certificatePem);
    print('phase 3/3: the old CA is no longer trusted (kept in pki/ca/previous.*)');
    await settle();
  }
}
