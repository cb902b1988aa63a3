/**
 * Members in the test's own process (real Raft loops, peer transport over loopback without TLS,
 * databases in temporary directories): for tests that reach into a member (stall its apply, alter
 * what it proposes) where a separate process would not let them.
 */
import { rm } from 'node:fs/promises';
import { Writable } from 'node:stream';
import * as grpc from '@grpc/grpc-js';
import pino from 'pino';
import { RampartError } from '../../src/errors.js';
import { Member, type MemberOptions } from '../../src/server/member.js';
import type { RaftLoop } from '../../src/server/raft-loop.js';
import { freePort, temporaryDirectory } from './processes.js';

export interface InProcessCluster {
  readonly members: Member[];
  /** Closes every member (together: see `close`) and removes their directories. */
  close(): Promise<void>;
}

export async function openInProcessCluster(size: number, logStream: Writable, options: Partial<MemberOptions> = {}): Promise<InProcessCluster> {
  const names = Array.from({ length: size }, (_, position) => `m${position + 1}`);
  const peerUrls = await Promise.all(names.map(async () => `http://127.0.0.1:${await freePort()}`));
  const initialCluster = names.map((name, position) => ({ name, peerUrls: [peerUrls[position] ?? ''] }));
  const directories: string[] = [];
  const members = await Promise.all(names.map(async (name, position) => {
    const dataDir = await temporaryDirectory(`in-process-${name}`);
    directories.push(dataDir);
    return Member.open({
      ...commonOptions(logStream),
      dataDir, name, clientUrls: [`http://127.0.0.1:${position + 1}`], peerUrls: [peerUrls[position] ?? ''], listenPeerUrls: [peerUrls[position] ?? ''],
      initialCluster, initialClusterState: 'new', initialClusterToken: 'in-process',
      ...options,
    });
  }));
  await Promise.all(members.map((member) => member.whenReady()));
  return {
    members,
    close: async () => {
      // Together: a member closed alone, while its peers keep their streams to it open, waited on
      // its gRPC server's shutdown for good (seen here; a member's own process exits anyway).
      await Promise.all(members.map((member) => member.close()));
      for (const directory of directories) await rm(directory, { recursive: true, force: true });
    },
  };
}

/** The member's Raft loop (private to it), for tests that alter what it proposes. */
/** What every in-process member shares: plaintext peers, small timers, its log to `logStream`. */
function commonOptions(logStream: Writable): Omit<MemberOptions, 'dataDir' | 'name' | 'clientUrls' | 'peerUrls' | 'listenPeerUrls' | 'initialCluster' | 'initialClusterState' | 'initialClusterToken'> {
  return {
    quotaBackendBytes: 1 << 30, maxRequestBytes: 1.5 * 1024 * 1024, watchProgressNotifyIntervalMs: 600_000, requestTimeoutMs: 10_000,
    heartbeatMs: 100, electionMs: 1_000, snapshotCount: 100_000, snapshotCatchUpEntries: 100,
    peerServerCredentials: grpc.ServerCredentials.createInsecure(), peerClientCredentials: grpc.credentials.createInsecure(), peerTls: false,
    logger: pino({ level: 'info' }, logStream),
  };
}

/**
 * One member alone in `dataDir` (the caller removes it), opened (not yet ready): for tests that
 * make its writes fail and then watch it stop, which a cluster's close would not survive. A member
 * reopened on the same data passes the `peerUrl` it had.
 */
export async function openOneMember(dataDir: string, logStream: Writable, options: Partial<MemberOptions> = {}, peerUrl?: string): Promise<Member> {
  peerUrl ??= `http://127.0.0.1:${await freePort()}`;
  return Member.open({
    ...commonOptions(logStream),
    dataDir, name: 'm1', clientUrls: ['http://127.0.0.1:1'], peerUrls: [peerUrl], listenPeerUrls: [peerUrl],
    initialCluster: [{ name: 'm1', peerUrls: [peerUrl] }], initialClusterState: 'new', initialClusterToken: 'one-member',
    ...options,
  });
}

/** A log stream that keeps each line, and the records of it with message `msg`. */
export interface LogRecord {
  readonly msg: string;
  readonly err?: string;
  readonly code?: string;
  readonly stack?: string;
}

export function recordedLog(): { stream: Writable; records(msg: string): LogRecord[] } {
  const lines: string[] = [];
  const stream = new Writable({
    write(chunk: Buffer, _encoding, done) {
      lines.push(chunk.toString('utf8'));
      done();
    },
  });
  return { stream, records: (msg) => lines.map((line) => JSON.parse(line) as LogRecord).filter((line) => line.msg === msg) };
}

export function loopOf(member: Member): RaftLoop {
  return (member as unknown as { loop: RaftLoop }).loop;
}

export const putOf = (key: string, value: string): Parameters<Member['put']>[0] => ({ key: Buffer.from(key), value: Buffer.from(value), lease: '0', prev_kv: false, ignore_value: false, ignore_lease: false });

/** Puts through `member`, asked again while the cluster elects (a loaded machine may hold an election). */
export async function putRetrying(member: Member, key: string, value: string): Promise<number> {
  for (let attempt = 0; ; attempt++) {
    try {
      return (await member.put(putOf(key, value))).revision;
    } catch (error) {
      const retryable = error instanceof RampartError && ['NoLeader', 'LeaderChanged', 'Timeout'].includes(error.code);
      if (!retryable || attempt >= 20) throw error;
      await new Promise((resolve) => setTimeout(resolve, 200));
    }
  }
}

export async function until(condition: () => boolean, what: string, timeoutMs = 30_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}
