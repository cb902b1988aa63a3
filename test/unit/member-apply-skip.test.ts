/**
 * Three members in this process, real Raft loops, peer transport and databases: a committed entry
 * whose proposal cannot be decoded (an encoder bug, or a peer forwarding crafted bytes) used to
 * throw out of every member's apply loop on the same entry and stop the whole cluster. Now every
 * member skips it alike: the applied index moves past it, the revision does not, the proposer gets
 * a clear error, it is counted and logged without its bytes, and the cluster keeps serving.
 */
import { rm } from 'node:fs/promises';
import { Writable } from 'node:stream';
import * as grpc from '@grpc/grpc-js';
import pino from 'pino';
import { afterEach, describe, expect, it } from 'vitest';
import { RampartError } from '../../src/errors.js';
import { instruments } from '../../src/instruments.js';
import { Member, type MemberOptions } from '../../src/server/member.js';
import type { RaftLoop } from '../../src/server/raft-loop.js';
import { freePort, temporaryDirectory } from '../helpers/processes.js';

const putOf = (key: string, value: string): Parameters<Member['put']>[0] => ({ key: Buffer.from(key), value: Buffer.from(value), lease: '0', prev_kv: false, ignore_value: false, ignore_lease: false });

async function until(condition: () => boolean, what: string, timeoutMs = 20_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

/** Puts through `member`, asked again while the cluster elects (a loaded machine may hold an election). */
async function putRetrying(member: Member, key: string, value: string): Promise<number> {
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

describe('a committed entry whose proposal cannot be decoded', () => {
  const members: Member[] = [];
  const directories: string[] = [];
  afterEach(async () => {
    // Together: a member closed alone while its peers keep their streams to it open waited on its
    // gRPC server's shutdown for good (seen here; outside this test the process exits).
    await Promise.all(members.splice(0).map((member) => member.close()));
    for (const directory of directories.splice(0)) await rm(directory, { recursive: true, force: true });
    instruments.applySkipped.bind(undefined);
  });

  it('is skipped by every member alike, fails its proposer clearly, and the cluster keeps serving', async () => {
    const logLines: string[] = [];
    const logStream = new Writable({ write(chunk: Buffer, _encoding, done) { logLines.push(chunk.toString()); done(); } });
    let skipped = 0;
    instruments.applySkipped.bind((value) => { skipped += value; });
    const names = ['m1', 'm2', 'm3'];
    const peerUrls = await Promise.all(names.map(async () => `http://127.0.0.1:${await freePort()}`));
    const initialCluster = names.map((name, position) => ({ name, peerUrls: [peerUrls[position] ?? ''] }));
    const opened = await Promise.all(names.map(async (name, position) => {
      const dataDir = await temporaryDirectory(`apply-skip-${name}`);
      directories.push(dataDir);
      const options: MemberOptions = {
        dataDir, name, clientUrls: [`http://127.0.0.1:1${position}`], peerUrls: [peerUrls[position] ?? ''], listenPeerUrls: [peerUrls[position] ?? ''],
        initialCluster, initialClusterState: 'new', initialClusterToken: 'apply-skip',
        quotaBackendBytes: 1 << 30, maxRequestBytes: 1.5 * 1024 * 1024, watchProgressNotifyIntervalMs: 600_000, requestTimeoutMs: 10_000,
        heartbeatMs: 100, electionMs: 1_000, snapshotCount: 10_000, snapshotCatchUpEntries: 100,
        peerServerCredentials: grpc.ServerCredentials.createInsecure(), peerClientCredentials: grpc.credentials.createInsecure(), peerTls: false,
        logger: pino({ level: 'info' }, logStream),
      };
      return Member.open(options);
    }));
    members.push(...opened);
    await Promise.all(members.map((member) => member.whenReady()));
    const [first] = members as [Member, Member, Member];

    const before = await putRetrying(first, 'before', 'v1');
    await until(() => members.every((member) => member.store.currentRevision === before), 'every member at the first put');

    // The next proposal leaves `first` with a byte that is no protobuf (an encoder bug, say): an
    // unknown field of wire type 7 after the request. It commits, as any bytes do.
    const loop = (first as unknown as { loop: RaftLoop }).loop;
    const propose = loop.propose.bind(loop);
    loop.propose = (data: Buffer): void => {
      loop.propose = propose;
      propose(Buffer.concat([data, Buffer.from([0xf7, 0x01, 0x00])]));
    };
    const skippedAt = first.appliedIndex;
    await expect(first.put(putOf('poison', 'secret-value'))).rejects.toMatchObject({ code: 'ProposalUndecodable' });
    expect(loop.propose).toBe(propose);

    // Every member applied past it (none stopped), and none changed its revision for it.
    await until(() => members.every((member) => member.appliedIndex > skippedAt), 'every member past the skipped entry');
    for (const member of members) expect(member.store.currentRevision).toBe(before);
    expect(skipped).toBe(3);
    const skipLines = logLines.filter((line) => line.includes('skipped a committed entry'));
    expect(skipLines).toHaveLength(3);
    for (const line of logLines) expect(line).not.toContain('secret-value');
    expect(JSON.parse(skipLines[0] ?? '{}')).toMatchObject({ level: 50, bytes: expect.any(Number) as unknown, reason: expect.stringMatching(/Error$/) as unknown });

    // The cluster keeps serving, through any member, and agrees.
    const after = await putRetrying(members[2] as Member, 'after', 'v2');
    expect(after).toBe(before + 1);
    await until(() => members.every((member) => member.store.currentRevision === after), 'every member at the put after');
    for (const member of members) {
      const read = await member.range({ key: Buffer.from('after'), range_end: Buffer.alloc(0), limit: '0', revision: '0', sort_order: 0, sort_target: 0, serializable: true, keys_only: false, count_only: false, min_mod_revision: '0', max_mod_revision: '0', min_create_revision: '0', max_create_revision: '0' } as never);
      expect(read.kvs.map((kv) => Buffer.from(kv.value as Buffer).toString())).toEqual(['v2']);
    }
  });
});
