/**
 * A bounded nemesis soak against a real 3-member cluster (`npm run soak -- --minutes N`; skipped
 * unless RAMPART_SOAK_MINUTES is set). The cluster is secure as `rampart up` ships it (mutual TLS
 * on client and peer ports, auth enabled by the members with the shipped policies, audit trail,
 * encryption at rest; secure-cluster.ts) unless RAMPART_SOAK_PLAINTEXT=1. One fault every few
 * seconds, healed before the next:
 * - kill: SIGKILL of a member (or of the leader), restarted 0.5-3 s later;
 * - pause: SIGSTOP/SIGCONT of a member (or of the leader) for 1-4 s;
 * - partition: one member (or the leader) cut off from the others by the fault proxies between
 *   members, for 2-5 s (over TLS the proxies know the sender by its source address,
 *   source-addresses.ts);
 * - restart-all: SIGKILL of every member, then all restarted;
 * - slow-disk: every fsync of one member (or of the leader) delayed by 200-500 ms for 4-8 s, by a
 *   test-only LD_PRELOAD shim (disk-faults.ts);
 * - disk-full: one member's data directory (its own small tmpfs) filled until the kernel answers
 *   ENOSPC, for 3-6 s; a member that stops on it is restarted once space is back.
 * - replace: a membership change: a member removed, its data wiped, added back under a new peer URL
 *   and id, joining the running cluster (it catches up by snapshot);
 * - double: two of kill, pause, partition, slow-disk, disk-full at once on two members (the leader
 *   half the time), the second starting 0-1.5 s after the first: quorum may be gone for seconds,
 *   never for good;
 * - auth (secure only): a permission revoked and granted back and a password changed while a
 *   member fault hits (auth-check.ts);
 * - rotate-certs (secure only): every member's server and peer certificate renewed while a member
 *   fault hits, then every peer link cut so members reconnect with them (cert-rotation.ts).
 * The workload: KV puts and gets on rotating keys, leases kept alive, the Lock service, the Election
 * service (Campaign/Proclaim/Resign), an auth probe, and a compaction every few seconds. Checked:
 * - the KV history is linearizable (which also means no acknowledged write is lost);
 * - the KV workers' user is never refused (its permissions never change);
 * - leases: no lease whose keep-alive was acknowledged is gone (its key absent, or a keep-alive
 *   answered "not found") before the acknowledged TTL, counted from when that keep-alive was sent;
 * - locks and elections: two holders never overlap while the earlier holder's lease is covered
 *   (holds.ts; an answer that arrives after its own lease's coverage ended is no hold);
 * - watch: a watcher resuming across failures gets every acknowledged put once, in order; the
 *   compactor never passes what it has received, so no revision may be skipped as compacted;
 * - auth: granted access never refused, revoked access refused once the revoke is acknowledged, an
 *   old password refused and the new one accepted once the change is acknowledged;
 * - certificates: renewed ones served within 20 s, every member serving again after its peer links
 *   were cut;
 * - no member exits unless the nemesis killed it or filled its disk;
 * - at the end, every member has the same HashKV at the same revision (replicas identical).
 * Anomalies are printed with history excerpts and the faults just before them. Not covered here:
 * power loss (fsync lies, torn writes: SIGKILL keeps the page cache), corrupted files, clock jumps,
 * a CA rotation, more than three members.
 */
import { createWriteStream } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { memberIdFor } from '../../src/server/membership.js';
import { call, connect, type RawClient } from '../helpers/client.js';
import { FaultProxy, PeerNetwork } from '../helpers/fault-proxy.js';
import { checkHistory, type Operation } from '../helpers/linearizability.js';
import { freePort, removeDirectory, startRampart, temporaryDirectory, type ServerProcess } from '../helpers/processes.js';
import * as grpc from '@grpc/grpc-js';
import { AuthProbe, awaitAuthEnabled, ensureUser, probeUser } from './auth-check.js';
import { awaitReload, servingTimeoutMs } from './cert-rotation.js';
import { drainDisk, fillDisk, mountSmallDisk, prepareSlowDisk, setFsyncDelay, unmountSmallDisk, type SlowDisk } from './disk-faults.js';
import { SoakPki, strangerAuthority, type AuthClient } from './secure-cluster.js';
import { prepareSourceAddresses, type SourceAddresses } from './source-addresses.js';
import { emptyHolds, overlappingHolds, type Hold } from './holds.js';
import { KeptLease } from './kept-lease.js';
import { SoakWatcher, type AcknowledgedPut } from './watch-check.js';

const minutes = Number(process.env.RAMPART_SOAK_MINUTES ?? 0);
/** The cluster as `rampart up` ships it (mutual TLS, auth, audit, encryption at rest) unless RAMPART_SOAK_PLAINTEXT=1. */
const secure = process.env.RAMPART_SOAK_PLAINTEXT !== '1';
/**
 * RAMPART_SOAK_SELF_TEST (comma-separated) breaks the soak's own actions so a run shows its checks
 * can fail: skip-restore or skip-revoke (auth-check.ts), stranger-certs or no-reconnect
 * (cert-rotation.ts).
 */
const selfTests = new Set(process.env.RAMPART_SOAK_SELF_TEST?.split(',') ?? []);
/** The user the KV workers and the watcher act as on a secure cluster: readwrite on their keys [e, f), nothing else. */
const kvUser = 'soak-kv';
const keysPerEpoch = 6;
/**
 * Workers move to fresh keys every epoch: a put whose outcome is unknown stays concurrent with
 * everything after it on its key; per-epoch keys keep each key's history short however long the
 * soak runs.
 */
const epochMs = 20_000;
const requestDeadlineMs = 3000;
const leaseTtlSeconds = 3;
/** Each member's tmpfs: room for its data with a margin, small enough to fill in a moment. */
const smallDiskMiB = 384;
const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));
const now = (): number => performance.now();

interface SoakMember {
  readonly name: string;
  /** Changes when the member is replaced (removed, then added back with an empty data directory). */
  id: string;
  readonly port: number;
  readonly peerPort: number;
  proxyPort: number;
  /** Set for a replacement's first start: it joins the running cluster. */
  joining: boolean;
  /** The directory the disk-full fault fills: a tmpfs mount when mounts are allowed. */
  readonly diskDir: string;
  readonly dataDir: string;
  readonly delayFile: string;
  process: ServerProcess | undefined;
  /** When its current process began serving (now()). */
  upSince: number;
  paused: boolean;
  /** The nemesis is about to stop it (kill, restart-all) or may make it stop (disk-full). */
  exitExpected: boolean;
}

function withDeadline<T>(promise: Promise<T>, ms = requestDeadlineMs): Promise<T> {
  return Promise.race([promise, sleep(ms).then(() => Promise.reject(new Error('client deadline')))]);
}

describe.skipIf(!(minutes > 0))('soak', () => {
  it(`keeps KV linearizable, leases, locks and elections safe, and replicas equal under a nemesis for ${minutes} min`, async () => {
    const startedAt = now();
    const at = (ms: number): string => `${((ms - startedAt) / 1000).toFixed(1)}s`;
    const stamp = (): string => at(now());
    const logDir = await temporaryDirectory('soak-logs');
    const diskRoot = await temporaryDirectory('soak-disks');
    console.log(`soak member logs: ${logDir}`);
    const phase = (text: string): void => console.log(`soak ${stamp()}: ${text}`);

    const slowDisk: SlowDisk | string = await prepareSlowDisk(diskRoot);
    // Over TLS the fault proxies tell members apart by source address (one each, source-address.c).
    const sources: SourceAddresses | string = secure ? await prepareSourceAddresses(diskRoot) : 'not needed';
    const partitionAvailable = !secure || typeof sources !== 'string';
    const scheme = secure ? 'https' : 'http';
    const pki = secure ? await SoakPki.create(path.join(diskRoot, 'pki'), ['s1', 's2', 's3']) : undefined;
    const network = new PeerNetwork();
    const members: SoakMember[] = [];
    const mountProblems: string[] = [];
    for (let index = 1; index <= 3; index++) {
      const proxyPort = await freePort();
      const diskDir = path.join(diskRoot, `s${index}`);
      const problem = await mountSmallDisk(diskDir, smallDiskMiB);
      if (problem !== undefined) mountProblems.push(problem);
      members.push({
        name: `s${index}`,
        id: memberIdFor([`${scheme}://127.0.0.1:${proxyPort}`], 'rampart-cluster'),
        port: await freePort(),
        peerPort: await freePort(),
        proxyPort,
        diskDir,
        dataDir: path.join(diskDir, 'data'),
        delayFile: path.join(diskRoot, `s${index}.fsync-delay`),
        process: undefined,
        paused: false,
        upSince: 0,
        joining: false,
        exitExpected: false,
      });
    }
    const diskFullAvailable = mountProblems.length === 0;
    const unavailable = [
      ...(typeof slowDisk === 'string' ? [`slow-disk (${slowDisk})`] : []),
      ...(diskFullAvailable ? [] : [`disk-full (${mountProblems[0] ?? ''})`]),
      ...(partitionAvailable ? [] : [`partition (${String(sources)})`]),
    ];
    if (unavailable.length > 0) phase(`faults not available on this machine: ${unavailable.join('; ')}`);

    const events: { ms: number; text: string }[] = [];
    const event = (text: string): void => {
      events.push({ ms: now(), text });
    };
    /** `ms`: when it happened (the faults before it are shown), which a check at the end finds later. */
    const anomalies: { ms: number; detectedMs: number; text: string }[] = [];
    const anomaly = (text: string, happenedMs: number = now()): void => {
      anomalies.push({ ms: happenedMs, detectedMs: now(), text });
      phase(`ANOMALY ${text.split('\n')[0] ?? ''}`);
    };

    const ids = members.map((member) => member.id);
    /** Which member a peer connection comes from, by its source address (TLS hides the bytes). */
    const senderOf = typeof sources === 'string' ? undefined : (address: string | undefined): string | undefined => members.find((_, index) => sources.address(index) === address)?.id;
    for (const member of members) {
      const proxy = new FaultProxy(member.id, member.peerPort, ids, network.rule, senderOf);
      await proxy.listen(member.proxyPort);
      network.proxies.push(proxy);
    }
    const initialCluster = (): string => members.map((member) => `${member.name}=${scheme}://127.0.0.1:${member.proxyPort}`).join(',');
    const start = async (member: SoakMember): Promise<void> => {
      await setFsyncDelay(member.delayFile, 0);
      const started = await startRampart({
        name: member.name,
        port: member.port,
        peerPort: member.peerPort,
        dataDir: member.dataDir,
        startTimeoutMs: 90_000,
        secure,
        env: {
          ...(typeof slowDisk === 'string' ? {} : slowDisk.env(member.delayFile)),
          ...(typeof sources === 'string' ? {} : sources.env(members.indexOf(member))),
          // Both shims when both apply.
          LD_PRELOAD: [typeof slowDisk === 'string' ? '' : slowDisk.library, typeof sources === 'string' ? '' : sources.library].filter((file) => file !== '').join(':'),
        },
        args: [
          ...(pki === undefined ? [] : await pki.memberArgs(member.name)),
          '--log-level', 'info', '--initial-advertise-peer-urls', `${scheme}://127.0.0.1:${member.proxyPort}`, '--initial-cluster', initialCluster(),
          ...(member.joining ? ['--initial-cluster-state', 'existing'] : []),
          '--snapshot-count', '2000', '--snapshot-catch-up-entries', '500',
        ],
      });
      member.process = started;
      member.upSince = now();
      member.exitExpected = false;
      const log = createWriteStream(path.join(logDir, `${member.name}.log`), { flags: 'a' });
      // What it printed before it served (a joining member's snapshot install) is in memory only.
      log.write(`--- ${stamp()} started pid ${started.child.pid}\n${started.output()}`);
      started.child.stdout?.pipe(log, { end: false });
      started.child.stderr?.pipe(log, { end: false });
      started.child.once('exit', (code, signal) => {
        if (member.process === started) member.process = undefined;
        if (!member.exitExpected) {
          const tail = started.output().trim().split('\n').slice(-8).join('\n  ');
          anomaly(`member ${member.name} exited on its own (code ${code}, signal ${signal}); its last lines:\n  ${tail}`);
        }
      });
    };

    /** What each worker is doing right now, to show where a stall is. */
    const inFlight = new Map<string, { what: string; since: number }>();
    const track = async <T>(who: string, what: string, promise: Promise<T>): Promise<T> => {
      inFlight.set(who, { what, since: now() });
      try {
        return await promise;
      } finally {
        inFlight.delete(who);
      }
    };
    const watchdog = setInterval(() => {
      // A fault takes seconds (its own sleeps and restarts); a client call is bounded by its deadline.
      const stuck = [...inFlight.entries()].filter(([who, entry]) => now() - entry.since > (who === 'nemesis' ? 120_000 : 10_000));
      if (stuck.length > 0) phase(`in flight too long: ${stuck.map(([who, entry]) => `${who} ${entry.what} ${Math.round((now() - entry.since) / 1000)}s`).join('; ')}`);
    }, 5000);

    const history: Operation[] = [];
    const acknowledged: AcknowledgedPut[] = [];
    let watcher: SoakWatcher | undefined;
    const counts = { acknowledgedPuts: 0, leases: 0, keepAlives: 0, locks: 0, elections: 0, proclaims: 0, compactions: 0, diskFullExits: 0, replacements: 0, rotations: 0 };
    const faults: Record<string, number> = {};
    let running = true;
    const channelOptions = { 'grpc.initial_reconnect_backoff_ms': 100, 'grpc.max_reconnect_backoff_ms': 500 } as object;
    // Root (the admin certificate) for leases, locks, elections, compaction and maintenance; the KV
    // workers and the watcher as a user with readwrite on their own keys only.
    const rootCredentials = pki === undefined ? grpc.credentials.createInsecure() : await pki.credentials('root');
    const kvCredentials = pki === undefined ? rootCredentials : await pki.credentials(kvUser);
    const clients: RawClient[] = members.map((member) => connect(`127.0.0.1:${member.port}`, channelOptions, rootCredentials));
    const kvClients: RawClient[] = pki === undefined ? clients : members.map((member) => connect(`127.0.0.1:${member.port}`, channelOptions, kvCredentials));
    const probeClients: RawClient[] = pki === undefined ? [] : await Promise.all(members.map(async (member) => connect(`127.0.0.1:${member.port}`, channelOptions, await pki.credentials(probeUser))));
    const admins: AuthClient[] = pki === undefined ? [] : await Promise.all(members.map((member) => pki.authClient(member.port)));
    const anyAdmin = (): AuthClient => admins[rotation++ % admins.length] as AuthClient;
    const probe = pki === undefined ? undefined : new AuthProbe(anyAdmin, () => {
      const index = rotation++ % probeClients.length;
      return { client: probeClients[index] as RawClient, name: members[index]?.name ?? '?' };
    }, selfTests.has('skip-restore') ? 'skip-restore' : selfTests.has('skip-revoke') ? 'skip-revoke' : undefined);
    /** The highest revision a compaction was asked for: a watch canceled as compacted past it lost events. */
    let compactionAsked = 0;
    let rotation = 0;
    const anyClient = (): RawClient => clients[rotation++ % clients.length] as RawClient;
    /** The next client in the rotation and the member it talks to (for the holds' report). */
    const anyMember = (): { client: RawClient; name: string } => {
      const index = rotation++ % clients.length;
      return { client: clients[index] as RawClient, name: members[index]?.name ?? '?' };
    };

    const kvWorker = async (workerIndex: number): Promise<void> => {
      let memberIndex = workerIndex % members.length;
      let sequence = 0;
      while (running) {
        const client = kvClients[memberIndex] as RawClient;
        const key = `e${Math.floor((now() - startedAt) / epochMs)}/k${Math.floor(Math.random() * keysPerEpoch)}`;
        const isPut = Math.random() < 0.5;
        const value = `w${workerIndex}-${sequence++}`;
        const callMs = now();
        try {
          const response = await track(`kv${workerIndex}`, `${isPut ? 'put' : 'get'} ${key} via s${memberIndex + 1}`, withDeadline(isPut ? call(client.kv, 'Put', { key: Buffer.from(key), value: Buffer.from(value) }) : call(client.kv, 'Range', { key: Buffer.from(key) })));
          const returnMs = now();
          if (isPut) {
            counts.acknowledgedPuts += 1;
            history.push({ key, kind: 'put', value, callMs, returnMs });
            acknowledged.push({ key, value, revision: Number((response.header as { revision: string }).revision) });
          } else {
            const kv = (response.kvs as { value: Buffer }[])[0];
            history.push({ key, kind: 'get', value: kv === undefined ? null : kv.value.toString(), callMs, returnMs });
          }
        } catch (error) {
          // The KV user's permission never changes: a refusal is a server fault (auth applied wrongly).
          const code = (error as grpc.ServiceError).code;
          if (code === grpc.status.PERMISSION_DENIED || code === grpc.status.UNAUTHENTICATED) anomaly(`kv worker ${workerIndex}: ${isPut ? 'put' : 'get'} ${key} via s${memberIndex + 1} refused (${(error as grpc.ServiceError).details}) though ${kvUser} may read and write it`, callMs);
          history.push({ key, kind: isPut ? 'put' : 'get', value: isPut ? value : null, callMs, returnMs: Infinity });
          memberIndex = (memberIndex + 1) % members.length;
          await sleep(50);
        }
      }
    };

    /** Grants a lease (retrying), attaches `key` to it and keeps it alive. */
    const grantKept = async (key: string): Promise<KeptLease | undefined> => {
      while (running) {
        const client = anyClient();
        try {
          const grantCall = now();
          const granted = await track(key, 'grant', withDeadline(call(client.lease, 'LeaseGrant', { TTL: leaseTtlSeconds })));
          const lease = new KeptLease(String(granted.ID), grantCall, leaseTtlSeconds, anyClient, anomaly);
          counts.leases += 1;
          try {
            await track(key, 'put with lease', withDeadline(call(client.kv, 'Put', { key: Buffer.from(key), value: Buffer.from(lease.id), lease: lease.id })));
            return lease;
          } catch {
            lease.stop();
          }
        } catch {
          await sleep(200);
        }
      }
      return undefined;
    };

    const leaseWorker = async (workerIndex: number): Promise<void> => {
      const key = `lease/${workerIndex}`;
      while (running) {
        const lease = await grantKept(key);
        if (lease === undefined) return;
        while (running && !lease.gone) {
          await sleep(400);
          try {
            const response = await track(key, 'lease key read', withDeadline(call(anyClient().kv, 'Range', { key: Buffer.from(key) })));
            const returnMs = now();
            const kv = (response.kvs as { value: Buffer }[])[0];
            if (kv === undefined || kv.value.toString() !== lease.id) {
              if (returnMs < lease.coveredUntil) anomaly(`lease ${lease.id}: key ${key} gone at ${at(returnMs)} though keep-alives cover it until ${at(lease.coveredUntil)} (${lease.acknowledged} keep-alives acknowledged)`, returnMs);
              lease.stop();
            }
          } catch {
            // unknown: try again
          }
        }
        counts.keepAlives += lease.acknowledged;
        lease.stop();
      }
    };

    /** Lock and Election share one shape: acquire with a kept lease, hold a moment, release. */
    const lockHolds: Hold[] = [];
    const electionHolds: Hold[] = [];
    const mutexWorker = async (kind: 'lock' | 'election', workerIndex: number): Promise<void> => {
      while (running) {
        const lease = await grantKept(`${kind}-owner/${workerIndex}`);
        if (lease === undefined) return;
        const who = `${kind}${workerIndex}`;
        try {
          const via = anyMember();
          const asked = now();
          // What a report needs to tell a server fault from a late answer: the lease and its coverage, the key, who answered.
          const detail = (key: string, end: number): string => `lease ${lease.id} covered until ${at(lease.coveredUntil)}, key ${key}, asked ${at(asked)} via ${via.name}, ended ${at(end)}`;
          if (kind === 'lock') {
            const locked = await track(who, 'lock', withDeadline(call(via.client.lock, 'Lock', { name: Buffer.from('soak-lock'), lease: lease.id }), 8000));
            const acquired = now();
            counts.locks += 1;
            await sleep(100 + Math.random() * 300);
            // Held until the unlock was asked, or until the lease was no longer guaranteed.
            const end = Math.min(now(), lease.coveredUntil);
            lockHolds.push({ worker: workerIndex, acquired, end, detail: detail(Buffer.from(locked.key as Buffer).toString(), end) });
            await track(who, 'unlock', withDeadline(call(anyClient().lock, 'Unlock', { key: locked.key }))).catch(() => undefined);
          } else {
            const campaigned = await track(who, 'campaign', withDeadline(call(via.client.election, 'Campaign', { name: Buffer.from('soak-election'), lease: lease.id, value: Buffer.from(`w${workerIndex}`) }), 8000));
            const acquired = now();
            counts.elections += 1;
            await sleep(50 + Math.random() * 150);
            const proclaimed = await track(who, 'proclaim', withDeadline(call(anyClient().election, 'Proclaim', { leader: campaigned.leader, value: Buffer.from(`w${workerIndex}-proclaimed`) }))).then(() => true, () => false);
            if (proclaimed) counts.proclaims += 1;
            await sleep(50 + Math.random() * 150);
            const end = Math.min(now(), lease.coveredUntil);
            const leader = campaigned.leader as { key: Buffer; rev: string };
            electionHolds.push({ worker: workerIndex, acquired, end, detail: detail(`${Buffer.from(leader.key).toString()} (created at ${leader.rev})`, end) });
            await track(who, 'resign', withDeadline(call(anyClient().election, 'Resign', { leader: campaigned.leader }))).catch(() => undefined);
          }
        } catch {
          await sleep(100);
        } finally {
          counts.keepAlives += lease.acknowledged;
          lease.stop();
        }
      }
    };

    /** Compacts to a little behind the head (and the watcher) every few seconds: compaction under every fault. */
    const compactor = async (): Promise<void> => {
      while (running) {
        await sleep(4000 + Math.random() * 2000);
        try {
          const response = await track('compactor', 'range', withDeadline(call(anyClient().kv, 'Range', { key: Buffer.from('e0/k0') })));
          // Never past what the watcher has received: a compaction overtaking it would excuse the
          // events it skipped (a watch canceled as compacted), so with this bound any gap is an anomaly.
          const revision = Math.min(Number((response.header as { revision: string }).revision) - 300, (watcher?.next ?? 1) - 1);
          if (revision <= 1) continue;
          compactionAsked = Math.max(compactionAsked, revision);
          await track('compactor', `compact ${revision}`, withDeadline(call(anyClient().kv, 'Compact', { revision })));
          counts.compactions += 1;
        } catch {
          // a compaction refused or lost is retried at the next one
        }
      }
    };

    const leaderOf = async (): Promise<SoakMember | undefined> => {
      for (const member of members) {
        if (member.process === undefined || member.paused) continue;
        try {
          const status = await withDeadline(call((clients[members.indexOf(member)] as RawClient).maintenance, 'Status', {}), 500);
          if (BigInt(status.leader as string).toString(16) === member.id) return member;
        } catch {
          // not answering
        }
      }
      return undefined;
    };
    const pick = <T>(items: readonly T[]): T => items[Math.floor(Math.random() * items.length)] as T;
    const stopMember = async (member: SoakMember): Promise<void> => {
      member.exitExpected = true;
      await member.process?.stop('SIGKILL');
      member.process = undefined;
    };
    /** Brings back whatever a fault left down (a member that stopped on a full disk, one that failed to start). */
    const restartDown = async (): Promise<void> => {
      for (const member of members) {
        if (member.process === undefined) await start(member);
      }
    };

    /** Faults of one member, which can hit two members at once or come with an auth change or a rotation. */
    const memberFaults = [
      'kill', 'pause', ...(partitionAvailable ? ['partition'] : []),
      ...(typeof slowDisk === 'string' ? [] : ['slow-disk']),
      ...(diskFullAvailable ? ['disk-full'] : []),
    ];
    const available = [
      'kill', 'kill-leader', 'pause', 'pause-leader', ...(partitionAvailable ? ['partition', 'partition-leader'] : []), 'restart-all',
      ...(typeof slowDisk === 'string' ? [] : ['slow-disk', 'slow-disk-leader']),
      ...(diskFullAvailable ? ['disk-full'] : []),
      'replace',
      // Two member faults overlapping on two members (availability may drop; quorum comes back).
      'double',
      ...(secure ? ['auth', 'rotate-certs'] : []),
    ];
    // RAMPART_SOAK_FAULTS=disk-full,kill-leader narrows the nemesis to those faults (to chase one).
    const only = process.env.RAMPART_SOAK_FAULTS?.split(',').filter((name) => name !== '');
    const actions = only === undefined ? available : available.filter((name) => only.includes(name));
    if (actions.length === 0) throw new Error(`RAMPART_SOAK_FAULTS names no available fault (available: ${available.join(', ')})`);
    /** Which two faults overlapped, or came with an auth change or a rotation, and how often. */
    const combinations: Record<string, number> = {};
    /** One fault of one member, healed before it returns. */
    const hit = async (action: string, victim: SoakMember, leader: SoakMember | undefined): Promise<void> => {
      event(`${action} ${victim.name}${leader === victim ? ' (leader)' : ''}`);
      if (action.startsWith('kill')) {
        await stopMember(victim);
        await sleep(500 + Math.random() * 2500);
        await start(victim);
      } else if (action.startsWith('pause')) {
        victim.paused = true;
        victim.process?.child.kill('SIGSTOP');
        await sleep(1000 + Math.random() * 3000);
        victim.process?.child.kill('SIGCONT');
        victim.paused = false;
      } else if (action.startsWith('partition')) {
        network.isolate(victim.id, ids);
        await sleep(2000 + Math.random() * 3000);
        network.heal();
      } else if (action.startsWith('slow-disk')) {
        const delayMs = 200 + Math.floor(Math.random() * 300);
        await setFsyncDelay(victim.delayFile, delayMs);
        await sleep(4000 + Math.random() * 4000);
        await setFsyncDelay(victim.delayFile, 0);
      } else if (action === 'disk-full') {
        victim.exitExpected = true;
        const filled = await fillDisk(victim.diskDir);
        await sleep(3000 + Math.random() * 3000);
        await drainDisk(victim.diskDir);
        if (victim.process === undefined) {
          counts.diskFullExits += 1;
          event(`disk-full ${victim.name}: stopped on ENOSPC (${Math.round(filled / 1048576)} MiB ballast); restarting`);
          await start(victim);
        } else {
          victim.exitExpected = false;
        }
      } else if (action === 'replace') {
        await replace(victim);
      } else {
        await Promise.all(members.map((member) => stopMember(member)));
        await sleep(500);
        await Promise.all(members.map((member) => start(member)));
      }
      event(`healed ${action} ${victim.name}`);
    };
    /** A member fault for an overlap: on the leader half the time (when there is one), else anyone. */
    const memberFault = (leader: SoakMember | undefined, exclude: { action?: string; victim?: SoakMember } = {}): { action: string; victim: SoakMember } => {
      // One partition at a time: the network holds one set of groups.
      const action = pick(memberFaults.filter((name) => !(name === 'partition' && exclude.action === 'partition')));
      const candidates = members.filter((member) => member !== exclude.victim);
      const victim = leader !== undefined && leader !== exclude.victim && Math.random() < 0.5 ? leader : pick(candidates);
      return { action, victim };
    };
    const fault = async (): Promise<void> => {
      await sleep(3000 + Math.random() * 4000);
      if (!running) return;
      await restartDown();
      const action = pick(actions);
      const leader = await leaderOf();
      faults[action] = (faults[action] ?? 0) + 1;
      let victimName = '';
      if (action === 'double') {
        const first = memberFault(leader);
        const second = memberFault(leader, first);
        combinations[`${first.action}+${second.action}`] = (combinations[`${first.action}+${second.action}`] ?? 0) + 1;
        victimName = `${first.victim.name}+${second.victim.name}`;
        await Promise.all([hit(first.action, first.victim, leader), sleep(Math.random() * 1500).then(() => hit(second.action, second.victim, leader))]);
      } else if (action === 'auth' && probe !== undefined) {
        const with_ = memberFault(leader);
        combinations[`auth+${with_.action}`] = (combinations[`auth+${with_.action}`] ?? 0) + 1;
        victimName = with_.victim.name;
        await Promise.all([probe.revokeAndRestore(1000 + Math.random() * 2000, event), sleep(Math.random() * 1000).then(() => hit(with_.action, with_.victim, leader))]);
      } else if (action === 'rotate-certs' && pki !== undefined) {
        const with_ = memberFault(leader);
        combinations[`rotate-certs+${with_.action}`] = (combinations[`rotate-certs+${with_.action}`] ?? 0) + 1;
        victimName = with_.victim.name;
        await Promise.all([rotateCertificates(), sleep(Math.random() * 1000).then(() => hit(with_.action, with_.victim, leader))]);
        await peersReconnect();
      } else {
        const victim = action.endsWith('-leader') && leader !== undefined ? leader : pick(members);
        victimName = victim.name;
        await hit(action, victim, leader);
      }
      // Progress as it goes: a run that stalls shows where.
      phase(`${action} ${victimName} done; ${JSON.stringify({ ...counts, operations: history.length })}`);
    };
    /** Renews every member's certificates while they serve (as `rampart rotate`); they must reload them. */
    const rotateCertificates = async (): Promise<void> => {
      if (pki === undefined) return;
      const issuer = selfTests.has('stranger-certs') ? await strangerAuthority() : undefined;
      const serials = await pki.renewMembers(members.map((member) => member.name), issuer);
      event(`rotate-certs: renewed the server and peer certificates of ${members.map((member) => member.name).join(', ')}${issuer === undefined ? '' : ' (self-test: from a CA nobody trusts)'}`);
      counts.rotations += 1;
      const problems = await awaitReload(pki, serials, members.map((member) => ({ name: member.name, port: member.port, peerPort: member.peerPort, up: () => member.process !== undefined && !member.paused, upSince: () => member.upSince })));
      for (const problem of problems) anomaly(problem);
      if (problems.length === 0) event('rotate-certs: every member that is up serves its renewed certificates');
    };
    /** After a rotation: every peer link is cut and must come back with the new certificates; every member must serve a linearizable read. */
    const peersReconnect = async (): Promise<void> => {
      await restartDown();
      // Self-test of this check: one member stays cut off, so it cannot serve.
      const cutOff = selfTests.has('no-reconnect') ? members[0] : undefined;
      if (cutOff !== undefined) network.isolate(cutOff.id, ids);
      for (const proxy of network.proxies) proxy.cutAll();
      const cutAt = now();
      event(`rotate-certs: cut every peer connection${cutOff === undefined ? '' : ` (self-test: ${cutOff.name} kept cut off)`}`);
      // Every member in parallel, each until the deadline: one slow member must not use up another's time.
      const served = await Promise.all(members.map(async (member, index) => {
        const errors = new Map<string, number>();
        for (let attempt = 0; attempt === 0 || now() - cutAt < servingTimeoutMs; attempt++) {
          try {
            await withDeadline(call((clients[index] as RawClient).kv, 'Range', { key: Buffer.from('e0/k0') }));
            return true;
          } catch (error) {
            const message = (error as Error).message;
            errors.set(message, (errors.get(message) ?? 0) + 1);
            await sleep(300);
          }
        }
        const seen = [...errors.entries()].map(([message, times]) => `${times}× ${message}`).join('; ');
        anomaly(`cert rotation: ${member.name} did not answer a linearizable read within ${servingTimeoutMs / 1000} s of its peer links being cut after the rotation (errors: ${seen})`, cutAt);
        return false;
      }));
      const allServed = served.every(Boolean);
      if (cutOff !== undefined) network.heal();
      if (allServed) event(`rotate-certs: every member served a linearizable read ${Math.round(now() - cutAt)} ms after the cut`);
    };
    /**
     * A membership change under the workload: the member is removed (MemberRemove through another
     * member), its data wiped, and added back as a new member (MemberAdd: a new peer URL, hence a
     * new id and a new fault proxy) that joins with --initial-cluster-state existing and catches up
     * by snapshot. The other faults keep hitting it afterwards under its new id.
     */
    const replace = async (victim: SoakMember): Promise<void> => {
      const others = members.filter((member) => member !== victim);
      const via = (): RawClient => clients[members.indexOf(pick(others))] as RawClient;
      const retry = async (what: string, attempt: () => Promise<Record<string, unknown>>): Promise<Record<string, unknown>> => {
        for (let tries = 0; ; tries++) {
          try {
            return await attempt();
          } catch (error) {
            if (tries >= 30) throw new Error(`replace ${victim.name}: ${what} kept failing: ${String(error)}`);
            await sleep(500);
          }
        }
      };
      await retry('MemberRemove', () => withDeadline(call(via().cluster, 'MemberRemove', { ID: BigInt(`0x${victim.id}`).toString() }), 5000));
      await stopMember(victim);
      await removeDirectory(victim.dataDir);
      await pki?.forgetKey(victim.name);
      const proxyPort = await freePort();
      const added = await retry('MemberAdd', () => withDeadline(call(via().cluster, 'MemberAdd', { peerURLs: [`${scheme}://127.0.0.1:${proxyPort}`], isLearner: false }), 5000));
      const newId = BigInt((added.member as { ID: string }).ID).toString(16);
      const oldProxy = network.proxies.find((proxy) => proxy.memberId === victim.id);
      ids.splice(ids.indexOf(victim.id), 1, newId);
      const proxy = new FaultProxy(newId, victim.peerPort, ids, network.rule, senderOf);
      await proxy.listen(proxyPort);
      network.proxies.splice(network.proxies.indexOf(oldProxy as FaultProxy), 1, proxy);
      await oldProxy?.close();
      event(`replace ${victim.name}: ${victim.id} removed, ${newId} added at port ${proxyPort}`);
      victim.id = newId;
      victim.proxyPort = proxyPort;
      victim.joining = true;
      try {
        await start(victim);
      } finally {
        victim.joining = false;
      }
      counts.replacements += 1;
    };
    const nemesis = async (): Promise<void> => {
      while (running) {
        try {
          await track('nemesis', 'fault', fault());
        } catch (error) {
          // A member that did not come back is a finding too; it is restarted at the next fault.
          // A start that timed out carries the member's output: its last lines say why.
          const lines = String(error).split('\n');
          anomaly(`nemesis: ${lines[0] ?? ''}${lines.length > 1 ? `\n  ${lines.slice(-12).join('\n  ')}` : ''}`);
        }
      }
    };

    const overlaps = (kind: string, holds: Hold[]): void => {
      for (const { current, previous } of overlappingHolds(holds)) {
        anomaly(`${kind}: worker ${current.worker} acquired at ${at(current.acquired)} while worker ${previous.worker} held it (acquired ${at(previous.acquired)}, held until ${at(previous.end)})\n  worker ${current.worker}: ${current.detail}\n  worker ${previous.worker}: ${previous.detail}`, current.acquired);
      }
      // Not a hold: the answer came after the lease's coverage ended (a successor may be elected meanwhile).
      const late = emptyHolds(holds);
      if (late.length > 0) phase(`${kind}: ${late.length} answers arrived after their lease's coverage ended (no hold): ${late.slice(0, 5).map((hold) => `worker ${hold.worker} at ${at(hold.acquired)} (${hold.detail})`).join('; ')}`);
    };

    try {
      await Promise.all(members.map((member) => start(member)));
      while ((await leaderOf()) === undefined) await sleep(200);
      if (probe !== undefined) {
        // As on a new `rampart up` cluster, the members enable auth themselves; then the soak's users.
        await awaitAuthEnabled(anyAdmin, 60_000);
        await ensureUser(anyAdmin, kvUser, kvUser, 'e', 'f');
        await probe.setup();
        phase(`secure cluster: mutual TLS, auth on (KV workers as ${kvUser}, the auth probe as ${probeUser}), audit trail, encryption at rest`);
      }
      // The KV workers' keys are e0/..., e1/...: the watcher sees all of them from the start.
      const anyKvClient = (): RawClient => kvClients[rotation++ % kvClients.length] as RawClient;
      watcher = new SoakWatcher(anyKvClient, anomaly, 'e', 'f', 1, () => compactionAsked);
      const work = [
        ...(probe === undefined ? [] : [probe.run(() => running)]),
        ...Array.from({ length: 4 }, (_, index) => kvWorker(index)),
        ...Array.from({ length: 2 }, (_, index) => leaseWorker(index)),
        ...Array.from({ length: 2 }, (_, index) => mutexWorker('lock', index)),
        ...Array.from({ length: 2 }, (_, index) => mutexWorker('election', index)),
        compactor(),
      ];
      const chaos = nemesis();
      await sleep(minutes * 60_000);
      running = false;
      phase('stopping');
      await chaos;
      await restartDown();
      phase('nemesis stopped; every member up');
      await Promise.all(work);
      phase('workers stopped');

      // Final linearizable reads through every member, of every key ever written: one range over the
      // workers' keys (all start with "e") per member, which reads every key at one point in time, as
      // a get of each would. (A get per key took minutes for a 30-minute run on a loaded machine.)
      const keys = [...new Set(history.map((operation) => operation.key))];
      let finalReadFailures = 0;
      for (const [index, member] of members.entries()) {
        let lastError = '';
        let read = false;
        for (let attempt = 0; attempt < 50 && !read; attempt++) {
          const callMs = now();
          try {
            const response = await track('final', `range of every key via ${member.name} attempt ${attempt}`, withDeadline(call((clients[index] as RawClient).kv, 'Range', { key: Buffer.from('e'), range_end: Buffer.from('f') }), 10_000));
            const returnMs = now();
            const values = new Map((response.kvs as { key: Buffer; value: Buffer }[]).map((kv) => [kv.key.toString(), kv.value.toString()]));
            for (const key of keys) history.push({ key, kind: 'get', value: values.get(key) ?? null, callMs, returnMs });
            read = true;
          } catch (error) {
            lastError = (error as Error).message;
            await sleep(200);
          }
        }
        if (!read) {
          finalReadFailures += 1;
          anomaly(`final read: ${member.name} answered no linearizable range in 50 attempts (last error: ${lastError})`);
        }
      }
      phase(`final reads done (${keys.length} keys, ${members.length - finalReadFailures} of ${members.length} members)`);

      // Replicas identical: the same HashKV at one revision every member has applied.
      const barrier = await withDeadline(call(anyClient().kv, 'Put', { key: Buffer.from('soak/barrier'), value: Buffer.from('end') }), 30_000);
      const barrierRevision = Number((barrier.header as { revision: string }).revision);
      const hashes: string[] = [];
      for (const [index, member] of members.entries()) {
        for (let attempt = 0; attempt < 100; attempt++) {
          try {
            const hashed = await withDeadline(call((clients[index] as RawClient).maintenance, 'HashKV', { revision: barrierRevision }));
            hashes.push(`${member.name}: hash ${String(hashed.hash)} compacted at ${String(hashed.compact_revision)}`);
            break;
          } catch {
            await sleep(300);
          }
        }
      }
      if (hashes.length !== members.length || new Set(hashes.map((line) => line.split(': ')[1])).size !== 1) {
        anomaly(`replicas differ at revision ${barrierRevision}:\n  ${hashes.join('\n  ')}`);
      }
      phase(`HashKV at revision ${barrierRevision}: ${hashes.join('; ')}`);

      // Every acknowledged put reached the watcher, in order, once.
      const lastPut = acknowledged.reduce((highest, put) => Math.max(highest, put.revision), 0);
      for (let waited = 0; watcher.next <= lastPut && waited < 120; waited++) await sleep(500);
      if (watcher.next <= lastPut) anomaly(`watch: stuck at revision ${watcher.next}, the last acknowledged put is at ${lastPut}`);
      for (const problem of watcher.check(acknowledged).slice(0, 20)) anomaly(problem);
      watcher.stop();
      phase(`watch checked: ${watcher.events} events, ${watcher.resumes} resumes, ${watcher.gaps.length} compaction gaps${watcher.gapDetails.length > 0 ? `: ${watcher.gapDetails.slice(0, 5).join('; ')}` : ''}`);

      const result = checkHistory(history);
      phase('history checked');
      if (result.undecidedKey !== undefined) anomaly(`KV history of key ${result.undecidedKey} undecided: the checker ran out of search steps`);
      if (!result.ok && result.failedKey !== undefined) {
        const excerpt = history.filter((operation) => operation.key === result.failedKey).sort((a, b) => a.callMs - b.callMs).slice(-30);
        anomaly(`KV history not linearizable on key ${result.failedKey}; last operations:\n${excerpt.map((operation) => `  ${operation.kind} ${operation.value} [${at(operation.callMs)}, ${Number.isFinite(operation.returnMs) ? at(operation.returnMs) : '?'}]`).join('\n')}`);
      }
      overlaps('lock', lockHolds);
      overlaps('election', electionHolds);
      if (probe !== undefined) {
        const problems = probe.check(at);
        for (const problem of problems.slice(0, 20)) anomaly(problem.text, problem.ms);
        if (problems.length > 20) phase(`auth: ${problems.length - 20} more auth anomalies not shown`);
        phase(`auth checked: ${JSON.stringify(probe.counts)}`);
      }

      const completed = history.filter((operation) => Number.isFinite(operation.returnMs)).length;
      const summary = {
        minutes, cluster: secure ? 'secure' : 'plaintext', operations: history.length, completed, ...counts, watchEvents: watcher.events, watchResumes: watcher.resumes, watchGaps: watcher.gaps.length,
        faults, combinations, ...(probe === undefined ? {} : { auth: probe.counts }), unavailable, linearizable: result.ok, anomalies: anomalies.length,
      };
      console.log(`soak summary: ${JSON.stringify(summary)}`);
      if (anomalies.length > 0) {
        await writeFile(path.join(logDir, 'history.json'), JSON.stringify(history.map((operation) => ({ ...operation, returnMs: Number.isFinite(operation.returnMs) ? operation.returnMs : null }))));
        const report = anomalies.map((found) => {
          // Around when it happened, not when a check at the end found it.
          const before = events.filter((entry) => entry.ms <= found.ms && entry.ms > found.ms - 15_000).map((entry) => `    ${at(entry.ms)} ${entry.text}`);
          const foundLater = found.detectedMs - found.ms > 1000 ? ` (found at ${at(found.detectedMs)})` : '';
          return `${at(found.ms)}${foundLater} ${found.text}\n  faults in the 15 s before ${at(found.ms)}:\n${before.join('\n') || '    none'}`;
        });
        console.log(`anomalies:\n${report.join('\n')}\nmember logs and history.json kept in ${logDir}`);
      } else {
        await removeDirectory(logDir);
      }
      expect(anomalies.map((found) => found.text)).toEqual([]);
      expect(counts.acknowledgedPuts).toBeGreaterThan(minutes * 100);
      expect(counts.locks).toBeGreaterThan(0);
      expect(counts.elections).toBeGreaterThan(0);
      expect(counts.keepAlives).toBeGreaterThan(0);
    } finally {
      running = false;
      clearInterval(watchdog);
      watcher?.stop();
      clients.forEach((client) => client.close());
      if (kvClients !== clients) kvClients.forEach((client) => client.close());
      probeClients.forEach((client) => client.close());
      admins.forEach((client) => client.close());
      for (const member of members) {
        member.exitExpected = true;
        member.process?.child.kill('SIGCONT');
      }
      await Promise.all(members.map((member) => member.process?.stop()));
      await network.close();
      for (const member of members) {
        await drainDisk(member.diskDir).catch(() => undefined);
        if (diskFullAvailable) await unmountSmallDisk(member.diskDir);
      }
      await removeDirectory(diskRoot);
    }
    // The final checks (reads through every member, HashKV, the watcher, the history) take minutes on a
    // loaded machine after a long run.
  }, (minutes + 10) * 60_000);
});
