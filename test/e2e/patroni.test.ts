/**
 * Patroni (Debian's `patroni`, PostgreSQL HA) on a 3-member `rampart up` cluster, configured as a
 * Patroni user would: its etcd3 backend over the JSON gateway (`/v3/...`) with a client certificate
 * of its own (`rampart cert issue client patroni`) whose user may touch only `/service/`.
 * Two Patroni nodes: pg1 bootstraps and holds the leader key (a key on a lease Patroni keeps alive),
 * pg2 replicates. Then the Rampart member pg1 talks to is made the Raft leader and killed: pg1 must
 * keep its leader key through the surviving members (same key, lease still renewed, never demoted).
 * Last, pg1 itself dies: its lease expires on the 2 surviving members and pg2 takes the leader key.
 *
 * PostgreSQL refuses to run as root: when the tests run as root, the Patroni processes run as the
 * `postgres` user of Debian's postgresql package (otherwise as the user running the tests). scripts/test-dependencies.sh installs patroni and postgresql when missing;
 * without them this test is skipped with a message saying so.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { chown, copyFile, mkdir, readFile, writeFile } from 'node:fs/promises';
import { request } from 'node:http';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { cleanEnvironment, freeBasePort, freePort, rampartBin, removeDirectory, run, temporaryDirectory } from '../helpers/processes.js';

const patroniBin = '/usr/bin/patroni';
const postgresBinDir = '/usr/lib/postgresql/15/bin';
const installed = existsSync(patroniBin) && existsSync(path.join(postgresBinDir, 'postgres'));
if (!installed) console.warn(`patroni e2e skipped: ${patroniBin} or ${postgresBinDir}/postgres missing (scripts/test-dependencies.sh installs patroni and postgresql-15)`);

/** Patroni's DCS timing: a short TTL keeps the test short and makes a lost lease show quickly. */
const leaderTtlSeconds = 10;
const scope = 'rampart-e2e';
const leaderKey = `/service/${scope}/leader`;

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

interface PatroniNode {
  readonly name: string;
  readonly directory: string;
  readonly restPort: number;
  readonly postgresPort: number;
  child: ChildProcess | undefined;
  log: string;
}

/** GET on Patroni's REST API: the status code (200 on /primary when this node is the leader), 0 when it does not answer. */
function restStatus(port: number, route: string): Promise<number> {
  return new Promise((resolve) => {
    const call = request({ host: '127.0.0.1', port, path: route, method: 'GET', timeout: 2_000 }, (response) => {
      response.resume();
      resolve(response.statusCode ?? 0);
    });
    call.on('timeout', () => call.destroy());
    call.on('error', () => resolve(0));
    call.end();
  });
}

async function until(what: string, check: () => Promise<boolean>, timeoutMs: number, context: () => string): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`${what}: not within ${timeoutMs} ms\n${context()}`);
    await sleep(250);
  }
}

describe.skipIf(!installed)('Patroni on a Rampart cluster', () => {
  let home: string;
  let basePort: number;
  let postgresUid: number;
  let postgresGid: number;
  const nodes: PatroniNode[] = [];
  const rampartDir = (): string => path.join(home, 'rampart');
  const pki = (): string => path.join(rampartDir(), 'pki');
  const clientPorts = (): number[] => [basePort, basePort + 10_000, basePort + 20_000];
  const admin = (ports: readonly number[] = clientPorts()): string[] => [
    '--endpoints', ports.map((port) => `https://127.0.0.1:${port}`).join(','),
    '--cacert', path.join(pki(), 'ca.crt'), '--cert', path.join(pki(), 'admin.crt'), '--key', path.join(pki(), 'admin.key'),
  ];
  const etcdctl = (args: readonly string[], ports?: readonly number[]) => run('etcdctl', [...admin(ports), ...args]);
  const logs = (): string => nodes.map((node) => `--- ${node.name}\n${node.log.split('\n').slice(-40).join('\n')}`).join('\n');

  /** The leader key as etcd3 JSON (value decoded), read through the given members. */
  const readLeaderKey = async (ports?: readonly number[]): Promise<{ value: string; createRevision: string; lease: string } | undefined> => {
    const result = await etcdctl(['get', leaderKey, '-w', 'json'], ports);
    if (result.code !== 0) return undefined;
    const parsed = JSON.parse(result.stdout) as { kvs?: { value: string; create_revision: number; lease: number }[] };
    const kv = parsed.kvs?.[0];
    if (kv === undefined) return undefined;
    // etcdctl prints the 64-bit lease ID as a JSON number; its exact digits are beyond a double, so compare the text.
    const lease = /"lease":(\d+)/.exec(result.stdout)?.[1] ?? '';
    return { value: Buffer.from(kv.value, 'base64').toString(), createRevision: String(kv.create_revision), lease };
  };

  const writeConfig = async (node: PatroniNode): Promise<string> => {
    await mkdir(node.directory, { recursive: true });
    for (const file of ['ca.crt', 'patroni.crt', 'patroni.key']) await copyFile(path.join(pki(), file), path.join(node.directory, file));
    const file = path.join(node.directory, 'patroni.yml');
    const tls = (name: string): string => path.join(node.directory, name);
    await writeFile(file, [
      `scope: ${scope}`,
      `name: ${node.name}`,
      'restapi:',
      `  listen: 127.0.0.1:${node.restPort}`,
      `  connect_address: 127.0.0.1:${node.restPort}`,
      'etcd3:',
      `  hosts: ${clientPorts().map((port) => `127.0.0.1:${port}`).join(',')}`,
      '  protocol: https',
      `  cacert: ${tls('ca.crt')}`,
      `  cert: ${tls('patroni.crt')}`,
      `  key: ${tls('patroni.key')}`,
      'bootstrap:',
      '  dcs:',
      `    ttl: ${leaderTtlSeconds}`,
      '    loop_wait: 2',
      '    retry_timeout: 4',
      '  initdb:',
      '    - encoding: UTF8',
      'postgresql:',
      `  listen: 127.0.0.1:${node.postgresPort}`,
      `  connect_address: 127.0.0.1:${node.postgresPort}`,
      `  data_dir: ${path.join(node.directory, 'data')}`,
      `  bin_dir: ${postgresBinDir}`,
      `  pgpass: ${path.join(node.directory, 'pgpass')}`,
      '  authentication:',
      '    superuser: {username: postgres, password: e2e-superuser}',
      '    replication: {username: replicator, password: e2e-replicator}',
      '  parameters:',
      `    unix_socket_directories: ${node.directory}`,
      '    shared_buffers: 16MB',
      '    max_connections: 20',
      '',
    ].join('\n'));
    for (const entry of [node.directory, ...['ca.crt', 'patroni.crt', 'patroni.key', 'patroni.yml'].map((name) => path.join(node.directory, name))]) {
      await chown(entry, postgresUid, postgresGid);
    }
    return file;
  };

  const startPatroni = async (node: PatroniNode): Promise<void> => {
    const config = await writeConfig(node);
    // As the postgres user (PostgreSQL refuses root); spawned directly so its pid is Patroni's own.
    const child = spawn(patroniBin, [config], {
      uid: postgresUid,
      gid: postgresGid,
      cwd: node.directory,
      env: { ...cleanEnvironment({ HOME: node.directory }), PATH: process.env.PATH ?? '/usr/bin:/bin' },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    child.stdout?.on('data', (chunk: Buffer) => (node.log += chunk.toString()));
    child.stderr?.on('data', (chunk: Buffer) => (node.log += chunk.toString()));
    node.child = child;
  };

  /** The PostgreSQL postmaster a Patroni node started (Patroni killed with SIGKILL leaves it behind). */
  const killPostmaster = async (node: PatroniNode): Promise<void> => {
    const pidFile = path.join(node.directory, 'data', 'postmaster.pid');
    if (!existsSync(pidFile)) return;
    const pid = Number((await readFile(pidFile, 'utf8')).split('\n')[0]);
    if (Number.isInteger(pid) && pid > 1) {
      try {
        process.kill(pid, 'SIGQUIT');
      } catch {
        // already gone
      }
    }
  };

  const stopPatroni = async (node: PatroniNode, signal: NodeJS.Signals): Promise<void> => {
    const child = node.child;
    if (child === undefined || child.exitCode !== null || child.signalCode !== null) return;
    const exited = new Promise((resolve) => child.once('exit', resolve));
    child.kill(signal);
    const timer = setTimeout(() => child.kill('SIGKILL'), 20_000);
    await exited;
    clearTimeout(timer);
  };

  beforeAll(async () => {
    home = await temporaryDirectory('patroni');
    if (process.getuid?.() === 0) {
      const ids = await Promise.all(['-u', '-g'].map((flag) => run('id', [flag, 'postgres'])));
      expect(ids.map((id) => id.code), 'no postgres user: install Debian\'s postgresql package').toEqual([0, 0]);
      [postgresUid, postgresGid] = ids.map((id) => Number(id.stdout.trim())) as [number, number];
    } else {
      // Not root: PostgreSQL runs as whoever runs the tests.
      [postgresUid, postgresGid] = [process.getuid?.() ?? 0, process.getgid?.() ?? 0];
    }
    basePort = await freeBasePort();
    const up = await run(process.execPath, [rampartBin, 'up', '--dir', rampartDir(), '--size', '3', '--base-port', String(basePort)], { timeoutMs: 120_000 });
    expect(up.code, up.stderr).toBe(0);
    // Patroni's own identity: a client certificate (CN patroni) whose user may touch /service/ only.
    const issued = await run(process.execPath, [rampartBin, 'cert', 'issue', 'client', 'patroni', '--pki-dir', pki()]);
    expect(issued.code, issued.stderr).toBe(0);
    for (const args of [
      ['role', 'add', 'patroni'],
      ['role', 'grant-permission', 'patroni', 'readwrite', '/service/', '--prefix'],
      ['user', 'add', 'patroni', '--no-password'],
      ['user', 'grant-role', 'patroni', 'patroni'],
    ]) {
      const result = await etcdctl(args);
      expect(result.code, result.stderr).toBe(0);
    }
    for (const name of ['pg1', 'pg2']) {
      nodes.push({ name, directory: path.join(home, name), restPort: await freePort(), postgresPort: await freePort(), child: undefined, log: '' });
    }
    // The temporary directory is root's and private; the postgres user must reach its node directories.
    await chown(home, postgresUid, postgresGid);
  }, 180_000);

  afterAll(async () => {
    await Promise.all(nodes.map((node) => stopPatroni(node, 'SIGTERM')));
    await Promise.all(nodes.map(killPostmaster));
    if (home !== undefined) {
      await run(process.execPath, [rampartBin, 'down', '--dir', rampartDir()], { timeoutMs: 60_000 });
      await removeDirectory(home);
    }
  }, 90_000);

  it('bootstraps, keeps its leader key when its Rampart member (the Raft leader) is killed, and fails over', async () => {
    const [pg1, pg2] = nodes as [PatroniNode, PatroniNode];
    await startPatroni(pg1);
    await until('pg1 primary', async () => (await restStatus(pg1.restPort, '/primary')) === 200, 60_000, logs);
    const held = await readLeaderKey();
    expect(held?.value).toBe('pg1');
    expect(held?.lease).not.toBe('0');
    expect(pg1.log).toContain('initialized a new cluster');

    await startPatroni(pg2);
    await until('pg2 replica', async () => (await restStatus(pg2.restPort, '/replica')) === 200, 60_000, logs);

    // The member pg1 talks to (Patroni logs each choice): make it the Raft leader, then kill it.
    const selected = [...pg1.log.matchAll(/Selected new etcd server https:\/\/127\.0\.0\.1:(\d+)/g)].map((match) => Number(match[1]));
    const usedPort = selected.at(-1);
    expect(clientPorts()).toContain(usedPort);
    const memberIndex = clientPorts().indexOf(usedPort as number);
    const status = await etcdctl(['endpoint', 'status', '-w', 'json'], [usedPort as number]);
    const memberId = BigInt(/"member_id":(\d+)/.exec(status.stdout)?.[1] ?? '0').toString(16);
    const moved = await etcdctl(['move-leader', memberId]);
    expect(moved.stdout + moved.stderr).toMatch(/Leadership transferred|is already leader/);
    const pid = Number(await readFile(path.join(rampartDir(), `m${memberIndex + 1}`, 'pid'), 'utf8'));
    const logLengthAtKill = pg1.log.length;
    process.kill(pid, 'SIGKILL');
    const survivors = clientPorts().filter((port) => port !== usedPort);

    // Longer than the TTL: a lease not renewed through the survivors would have expired by now.
    await sleep((leaderTtlSeconds + 4) * 1000);
    const afterKill = pg1.log.slice(logLengthAtKill);
    expect(afterKill, logs()).toMatch(/Selected new etcd server https:\/\/127\.0\.0\.1:\d+/);
    expect(afterKill).not.toMatch(/demot|Lost lock|failed to update leader lock/i);
    expect(afterKill.split('\n').slice(-5).join('\n'), logs()).toContain('I am (pg1), the leader with the lock');
    const kept = await readLeaderKey(survivors);
    // The same key (not re-created after an expiry), on the same lease, still held.
    expect(kept).toEqual(held);
    const ttl = await etcdctl(['lease', 'timetolive', BigInt(held?.lease ?? '0').toString(16)], survivors);
    expect(ttl.stdout).toMatch(/granted with TTL\(\d+s\), remaining\((\d+)s\)/);
    expect(Number(/remaining\((-?\d+)s\)/.exec(ttl.stdout)?.[1])).toBeGreaterThan(0);
    expect(await restStatus(pg1.restPort, '/primary')).toBe(200);
    expect(await restStatus(pg2.restPort, '/replica')).toBe(200);

    // pg1 dies without a word (Patroni and its PostgreSQL): its lease expires on the surviving
    // members and pg2 takes the leader key and promotes itself.
    await stopPatroni(pg1, 'SIGKILL');
    await killPostmaster(pg1);
    await until('pg2 leader key', async () => (await readLeaderKey(survivors))?.value === 'pg2', (leaderTtlSeconds + 25) * 1000, logs);
    await until('pg2 primary', async () => (await restStatus(pg2.restPort, '/primary')) === 200, 30_000, logs);
  }, 240_000);
});
