/**
 * The etcd v3 API over raw gRPC against a real `rampart serve` process: the details etcdctl does not
 * reach (watch ids, fragments, progress, slow watchers) and bad input of every kind.
 */
import * as grpc from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { call, callError, connect, WatchRecorder, type RawClient } from '../helpers/client.js';
import { etcdctl, removeDirectory, startRampart, type ServerProcess } from '../helpers/processes.js';

const bytes = (text: string): Buffer => Buffer.from(text);
const text = (value: unknown): string => (value as Buffer).toString();

describe('API over gRPC', () => {
  let server: ServerProcess;
  let client: RawClient;

  beforeAll(async () => {
    server = await startRampart({ args: ['--max-request-bytes', String(64 * 1024), '--watch-progress-notify-interval-ms', '300'] });
    client = connect(server.endpoint);
  });

  afterAll(async () => {
    client?.close();
    await server?.stop();
    if (server) await removeDirectory(server.dataDir);
  });

  const put = (key: string, value: string | Buffer, extra: object = {}): Promise<Record<string, unknown>> =>
    call(client.kv, 'Put', { key: bytes(key), value: typeof value === 'string' ? bytes(value) : value, ...extra });

  it('serves many watchers on one stream, with client-chosen ids, filters and prev_kv', async () => {
    const recorder = new WatchRecorder(client.watch.Watch());
    recorder.stream.write({ create_request: { key: bytes('w/'), range_end: bytes('w0'), prev_kv: true } });
    recorder.stream.write({ create_request: { key: bytes('w/a'), watch_id: 42, filters: [1] } });
    recorder.stream.write({ create_request: { key: bytes('w/a'), watch_id: 42 } });
    await recorder.until(() => recorder.responses.filter((response) => response.created === true).length === 3);
    const created = recorder.responses.filter((response) => response.created === true);
    expect(created.map((response) => response.watch_id)).toEqual(['0', '42', '-1']);
    expect(created[2]).toMatchObject({ canceled: true, cancel_reason: 'mvcc: duplicate watch ID provided on the WatchStream' });

    await put('w/a', '1');
    await put('w/a', '2');
    await call(client.kv, 'DeleteRange', { key: bytes('w/a') });
    await recorder.until(() => recorder.events().length === 5);
    const byWatcher = (id: string): Record<string, unknown>[] =>
      recorder.responses.filter((response) => response.watch_id === id).flatMap((response) => response.events as Record<string, unknown>[]);
    const prefixEvents = byWatcher('0');
    expect(prefixEvents.map((event) => event.type)).toEqual([0, 0, 1]);
    expect(text((prefixEvents[1]?.prev_kv as Record<string, unknown>).value)).toBe('1');
    expect(text((prefixEvents[2]?.prev_kv as Record<string, unknown>).value)).toBe('2');
    // NODELETE filter: the delete is not delivered to watcher 42.
    expect(byWatcher('42').map((event) => event.type)).toEqual([0, 0]);

    recorder.stream.write({ cancel_request: { watch_id: 42 } });
    await recorder.until(() => recorder.responses.some((response) => response.watch_id === '42' && response.canceled === true));
    recorder.stream.end();
  });

  it('replays from a start revision, answers progress requests, and cancels compacted starts', async () => {
    const first = await put('h/1', 'a');
    await put('h/1', 'b');
    const startRevision = Number((first.header as Record<string, string>).revision);
    const recorder = new WatchRecorder(client.watch.Watch());
    recorder.stream.write({ create_request: { key: bytes('h/'), range_end: bytes('h0'), start_revision: startRevision } });
    await recorder.until(() => recorder.events().length === 2);
    expect(recorder.events().map((event) => text((event.kv as Record<string, unknown>).value))).toEqual(['a', 'b']);

    recorder.stream.write({ progress_request: {} });
    await recorder.until(() => recorder.responses.some((response) => response.watch_id === '-1'));
    const progress = recorder.responses.find((response) => response.watch_id === '-1');
    const status = await call(client.maintenance, 'Status', {});
    expect((progress?.header as Record<string, string>).revision).toBe((status.header as Record<string, string>).revision);

    await call(client.kv, 'Compact', { revision: startRevision + 1, physical: true });
    recorder.stream.write({ create_request: { key: bytes('h/'), range_end: bytes('h0'), start_revision: startRevision, watch_id: 7 } });
    await recorder.until(() => recorder.responses.some((response) => response.watch_id === '7' && response.canceled === true));
    const canceled = recorder.responses.find((response) => response.watch_id === '7' && response.canceled === true);
    expect(canceled?.compact_revision).toBe(String(startRevision + 1));
    recorder.stream.end();
  });

  it('splits a large revision into fragments when asked', async () => {
    const value = Buffer.alloc(10 * 1024, 'x');
    for (let index = 0; index < 12; index++) {
      await put(`frag/${String(index).padStart(2, '0')}`, value);
    }
    const recorder = new WatchRecorder(client.watch.Watch());
    recorder.stream.write({ create_request: { key: bytes('frag/'), range_end: bytes('frag0'), prev_kv: true, fragment: true } });
    await recorder.until(() => recorder.responses.length === 1);
    const deleted = await call(client.kv, 'DeleteRange', { key: bytes('frag/'), range_end: bytes('frag0') });
    expect(deleted.deleted).toBe('12');
    await recorder.until(() => recorder.events().length === 12);
    const eventResponses = recorder.responses.filter((response) => (response.events as unknown[]).length > 0);
    expect(eventResponses.length).toBeGreaterThan(1);
    expect(eventResponses.slice(0, -1).every((response) => response.fragment === true)).toBe(true);
    expect(eventResponses[eventResponses.length - 1]?.fragment).toBe(false);
    recorder.stream.end();
  });

  it('keeps a slow watcher bounded and complete: it catches up from history once it reads again', async () => {
    const slow = connect(server.endpoint, { 'grpc.http2.initial_window_size': 65535 } as grpc.ChannelOptions);
    const stream = slow.watch.Watch();
    const recorder = new WatchRecorder(stream);
    stream.write({ create_request: { key: bytes('slow/'), range_end: bytes('slow0') } });
    await recorder.until(() => recorder.responses.length === 1);
    stream.pause();
    const value = Buffer.alloc(30 * 1024, 'v');
    const writes = 300;
    for (let index = 0; index < writes; index++) {
      await put(`slow/${index}`, value);
    }
    // The server keeps serving others while this watcher is stalled.
    const other = await call(client.kv, 'Range', { key: bytes('slow/0') });
    expect(other.count).toBe('1');
    stream.resume();
    await recorder.until(() => recorder.events().length === writes, 30_000);
    const revisions = recorder.events().map((event) => Number((event.kv as Record<string, string>).mod_revision));
    for (let index = 1; index < revisions.length; index++) {
      expect(revisions[index]).toBe((revisions[index - 1] ?? 0) + 1);
    }
    stream.end();
    slow.close();
  });

  it('refuses bad input with etcd errors and keeps serving', async () => {
    expect(await callError(client.kv, 'Put', { key: Buffer.alloc(0), value: bytes('v') })).toEqual({ code: grpc.status.INVALID_ARGUMENT, details: 'etcdserver: key is not provided' });
    expect(await callError(client.kv, 'Range', { key: bytes('a'), sort_order: 9 })).toEqual({ code: grpc.status.INVALID_ARGUMENT, details: 'etcdserver: invalid sort option' });
    expect(await callError(client.kv, 'Put', { key: bytes('big'), value: Buffer.alloc(100 * 1024) })).toEqual({ code: grpc.status.INVALID_ARGUMENT, details: 'etcdserver: request is too large' });
    const tooBig = await callError(client.kv, 'Put', { key: bytes('huge'), value: Buffer.alloc(3 * 1024 * 1024) });
    expect(tooBig.code).toBe(grpc.status.RESOURCE_EXHAUSTED);
    const ops = Array.from({ length: 129 }, (_, index) => ({ request_put: { key: bytes(`t${index}`), value: bytes('v') } }));
    expect(await callError(client.kv, 'Txn', { success: ops })).toEqual({ code: grpc.status.INVALID_ARGUMENT, details: 'etcdserver: too many operations in txn request' });
    expect(await callError(client.kv, 'Txn', { success: [{ request_put: { key: bytes('d'), value: bytes('1') } }, { request_delete_range: { key: bytes('a'), range_end: bytes('z') } }] })).toEqual({
      code: grpc.status.INVALID_ARGUMENT,
      details: 'etcdserver: duplicate key given in txn request',
    });
    expect(await callError(client.kv, 'Range', { key: bytes('a'), revision: 1_000_000 })).toEqual({ code: grpc.status.OUT_OF_RANGE, details: 'etcdserver: mvcc: required revision is a future revision' });
    expect(await callError(client.kv, 'Put', { key: bytes('a'), value: bytes('v'), lease: 777 })).toEqual({ code: grpc.status.NOT_FOUND, details: 'etcdserver: requested lease not found' });
    expect(await callError(client.lease, 'LeaseRevoke', { ID: 777 })).toEqual({ code: grpc.status.NOT_FOUND, details: 'etcdserver: requested lease not found' });

    // A txn that fails its check changes nothing, not even the ops before the failing one.
    const before = await call(client.kv, 'Range', { key: bytes('atomic') });
    expect(await callError(client.kv, 'Txn', { success: [{ request_put: { key: bytes('atomic'), value: bytes('1') } }, { request_put: { key: bytes('x'), value: bytes('1'), lease: 99 } }] })).toEqual({
      code: grpc.status.NOT_FOUND,
      details: 'etcdserver: requested lease not found',
    });
    const after = await call(client.kv, 'Range', { key: bytes('atomic') });
    expect(after.count).toBe(before.count);
    expect((after.header as Record<string, string>).revision).toBe((before.header as Record<string, string>).revision);

    // Malformed protobuf: the call fails, the server does not.
    const raw = new grpc.Client(server.endpoint, grpc.credentials.createInsecure());
    const malformed = await new Promise<grpc.ServiceError | null>((resolve) =>
      raw.makeUnaryRequest('/etcdserverpb.KV/Put', (value: Buffer) => value, (value: Buffer) => value, Buffer.from([0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f]), (error) => resolve(error)),
    );
    expect(malformed?.code).toBe(grpc.status.INTERNAL);
    raw.close();

    // A client that vanishes mid-stream: its watchers go away and the server keeps serving.
    const vanishing = connect(server.endpoint);
    const vanishingStream = vanishing.watch.Watch();
    vanishingStream.on('error', () => undefined);
    vanishingStream.write({ create_request: { key: bytes('gone') } });
    await new Promise((resolve) => vanishingStream.once('data', resolve));
    vanishing.close();
    vanishingStream.cancel();
    const ok = await put('still', 'serving');
    expect(ok.header).toBeDefined();
  });

  it('grants leases with client-chosen ids and refuses a taken one', async () => {
    const chosen = '9223372036854775000';
    const granted = await call(client.lease, 'LeaseGrant', { TTL: 60, ID: chosen });
    expect(granted).toMatchObject({ ID: chosen, TTL: '60' });
    expect(await callError(client.lease, 'LeaseGrant', { TTL: 60, ID: chosen })).toEqual({ code: grpc.status.FAILED_PRECONDITION, details: 'etcdserver: lease already exists' });
    const listed = await call(client.lease, 'LeaseLeases', {});
    expect((listed.leases as Record<string, string>[]).map((lease) => lease.ID)).toContain(chosen);
    await call(client.lease, 'LeaseRevoke', { ID: chosen });
  });

  it('sends periodic progress notifications to watchers that ask for them', async () => {
    const recorder = new WatchRecorder(client.watch.Watch());
    recorder.stream.write({ create_request: { key: bytes('quiet/'), progress_notify: true, watch_id: 5 } });
    recorder.stream.write({ create_request: { key: bytes('quiet2/'), watch_id: 6 } });
    await recorder.until(() => recorder.responses.filter((response) => response.watch_id === '5' && response.created !== true).length >= 2, 5000);
    const notifications = recorder.responses.filter((response) => response.watch_id === '5' && response.created !== true);
    expect(notifications.every((response) => (response.events as unknown[]).length === 0)).toBe(true);
    expect(recorder.responses.filter((response) => response.watch_id === '6' && response.created !== true)).toEqual([]);
    recorder.stream.end();
  });

  it('answers endpoint status, hashkv and defrag from etcdctl', async () => {
    await put('status/key', 'v');
    const status = await etcdctl(server.endpoint, ['endpoint', 'status', '-w', 'json']);
    const parsed = JSON.parse(status.stdout) as { Endpoint: string; Status: { header: { revision: number }; version: string; dbSize: number; leader: number; raftIndex: number; raftAppliedIndex: number } }[];
    expect(parsed[0]?.Endpoint).toBe(server.endpoint);
    expect(parsed[0]?.Status.version).toBe('3.5.17');
    expect(parsed[0]?.Status.dbSize).toBeGreaterThan(0);
    expect(parsed[0]?.Status.raftAppliedIndex).toBe(parsed[0]?.Status.raftIndex);
    const first = await etcdctl(server.endpoint, ['endpoint', 'hashkv', '-w', 'json']);
    const second = await etcdctl(server.endpoint, ['endpoint', 'hashkv', '-w', 'json']);
    const hashOf = (output: string): number => (JSON.parse(output) as { HashKV: { hash: number } }[])[0]?.HashKV.hash ?? 0;
    expect(hashOf(first.stdout)).not.toBe(0);
    expect(hashOf(second.stdout)).toBe(hashOf(first.stdout));
    await put('status/key', 'changed');
    expect(hashOf((await etcdctl(server.endpoint, ['endpoint', 'hashkv', '-w', 'json'])).stdout)).not.toBe(hashOf(first.stdout));
    const defrag = await etcdctl(server.endpoint, ['defrag']);
    expect(defrag.stdout).toBe(`Finished defragmenting etcd member[${server.endpoint}]\n`);
  });

  it('expires leases, and keep-alives hold them', async () => {
    const kept = await call(client.lease, 'LeaseGrant', { TTL: 2 });
    const dropped = await call(client.lease, 'LeaseGrant', { TTL: 2 });
    expect(kept.TTL).toBe('2');
    await put('lease/kept', 'v', { lease: kept.ID });
    await put('lease/dropped', 'v', { lease: dropped.ID });
    const keepAlive = client.lease.LeaseKeepAlive();
    const replies: Record<string, unknown>[] = [];
    keepAlive.on('data', (reply: Record<string, unknown>) => replies.push(reply));
    // A keep-alive at once, then every 500 ms: the grants and puts above can take a good part of
    // the 2 s TTL on a loaded machine.
    keepAlive.write({ ID: kept.ID });
    const timer = setInterval(() => keepAlive.write({ ID: kept.ID }), 500);
    const leaseKeys = async (): Promise<string[]> => ((await call(client.kv, 'Range', { key: bytes('lease/'), range_end: bytes('lease0') })).kvs as Record<string, unknown>[]).map((kv) => text(kv.key));
    await new Promise((resolve) => setTimeout(resolve, 4000));
    // The dropped lease is past its TTL: its revocation (the leader's expiry check, then a commit)
    // is waited for while the keep-alives go on, not assumed done within the 4 s.
    let remaining = await leaseKeys();
    for (const deadline = Date.now() + 30_000; remaining.includes('lease/dropped') && Date.now() < deadline;) {
      await new Promise((resolve) => setTimeout(resolve, 200));
      remaining = await leaseKeys();
    }
    clearInterval(timer);
    keepAlive.end();
    expect(replies.length).toBeGreaterThan(3);
    expect(replies.every((reply) => reply.TTL === '2' && reply.ID === kept.ID)).toBe(true);
    expect(remaining).toEqual(['lease/kept']);
    const gone = await call(client.lease, 'LeaseTimeToLive', { ID: dropped.ID });
    expect(gone.TTL).toBe('-1');
  });

  it('saves a snapshot with etcdctl that `rampart snapshot restore` turns into a working member', async () => {
    await put('snap/key', 'snap-value');
    const directory = await (await import('../helpers/processes.js')).temporaryDirectory('snap');
    const file = `${directory}/backup.db`;
    const saved = await etcdctl(server.endpoint, ['snapshot', 'save', file]);
    expect(saved.stdout).toContain('Snapshot saved at');
    const { run, rampartBin } = await import('../helpers/processes.js');
    const restored = await run(process.execPath, [rampartBin, 'snapshot', 'restore', file, '--data-dir', `${directory}/restored`]);
    expect(restored.code).toBe(0);
    const member = await startRampart({ dataDir: `${directory}/restored` });
    try {
      const got = await etcdctl(member.endpoint, ['get', 'snap/key', '--print-value-only']);
      expect(got.stdout).toBe('snap-value\n');
      const write = await etcdctl(member.endpoint, ['put', 'after/restore', 'ok']);
      expect(write.stdout).toBe('OK\n');
    } finally {
      await member.stop();
      await removeDirectory(directory);
    }
    // A damaged snapshot is refused whole.
    const damagedDirectory = await (await import('../helpers/processes.js')).temporaryDirectory('snap-bad');
    const { writeFile } = await import('node:fs/promises');
    await writeFile(`${damagedDirectory}/bad.db`, Buffer.concat([Buffer.from('RAMPART-SNAPSHOT 1\n'), Buffer.alloc(40, 1)]));
    const refused = await run(process.execPath, [rampartBin, 'snapshot', 'restore', `${damagedDirectory}/bad.db`, '--data-dir', `${damagedDirectory}/out`]);
    expect(refused.code).toBe(1);
    expect(refused.stderr).toContain('SHA-256 mismatch');
    await removeDirectory(damagedDirectory);
  });
});

describe('storage quota', () => {
  it('raises NOSPACE, refuses writes with etcd text, still allows reads and deletes', async () => {
    const server = await startRampart({ args: ['--quota-backend-bytes', String(256 * 1024)] });
    try {
      let refused: { code: number; stderr: string } | undefined;
      for (let index = 0; index < 200 && refused === undefined; index++) {
        const result = await etcdctl(server.endpoint, ['put', `fill/${index}`, 'x'.repeat(8 * 1024)]);
        if (result.code !== 0) refused = result;
        // The member measures its size once a second.
        if (index % 20 === 19) await new Promise((resolve) => setTimeout(resolve, 1100));
      }
      expect(refused?.stderr).toContain('Error: etcdserver: mvcc: database space exceeded');
      const alarms = await etcdctl(server.endpoint, ['alarm', 'list']);
      expect(alarms.stdout).toMatch(/^memberID:\d+ alarm:NOSPACE \n$/);
      const read = await etcdctl(server.endpoint, ['get', 'fill/0', '--print-value-only']);
      expect(read.stdout).toBe(`${'x'.repeat(8 * 1024)}\n`);
      const deleted = await etcdctl(server.endpoint, ['del', 'fill/0']);
      expect(deleted.stdout).toBe('1\n');
      const disarmed = await etcdctl(server.endpoint, ['alarm', 'disarm']);
      expect(disarmed.stdout).toMatch(/^memberID:\d+ alarm:NOSPACE \n$/);
      expect((await etcdctl(server.endpoint, ['alarm', 'list'])).stdout).toBe('');
    } finally {
      await server.stop();
      await removeDirectory(server.dataDir);
    }
  });
});

describe('Lock and Election services', () => {
  let server: ServerProcess;
  let client: RawClient;
  beforeAll(async () => {
    server = await startRampart();
    client = connect(server.endpoint);
  });
  afterAll(async () => {
    client?.close();
    await server?.stop();
    if (server) await removeDirectory(server.dataDir);
  });
  const lease = async (): Promise<string> => String((await call(client.lease, 'LeaseGrant', { TTL: 60 })).ID);
  const settled = async <T>(promise: Promise<T>, ms: number): Promise<boolean> => Promise.race([promise.then(() => true, () => true), new Promise<boolean>((resolve) => setTimeout(() => resolve(false), ms))]);
  const keysUnder = async (prefix: string): Promise<string[]> => ((await call(client.kv, 'Range', { key: Buffer.from(prefix), range_end: Buffer.from(prefix.slice(0, -1) + String.fromCharCode(prefix.charCodeAt(prefix.length - 1) + 1)) })).kvs as { key: Buffer }[]).map((kv) => kv.key.toString());

  it('grants a lock to one holder at a time, in order; a waiter that gives up leaves no key', async () => {
    const [first, second, third] = [await lease(), await lease(), await lease()];
    const held = await call(client.lock, 'Lock', { name: Buffer.from('jobs'), lease: first });
    expect((held.key as Buffer).toString()).toBe(`jobs/${BigInt(first).toString(16)}`);
    const waiting = call(client.lock, 'Lock', { name: Buffer.from('jobs'), lease: second });
    expect(await settled(waiting, 400)).toBe(false);

    // A third caller gives up (deadline): its key is removed, the queue is unchanged.
    const impatient = await new Promise<grpc.ServiceError | null>((resolve) =>
      (client.lock.Lock as unknown as (request: object, options: grpc.CallOptions, callback: (error: grpc.ServiceError | null) => void) => void).call(client.lock, { name: Buffer.from('jobs'), lease: third }, { deadline: Date.now() + 300 }, resolve));
    expect(impatient?.code).toBe(grpc.status.DEADLINE_EXCEEDED);
    // Its key goes once the member has seen the cancel and committed the delete: waited for (a
    // fixed 200 ms is less than a commit takes at load ~30), then the queue must be exactly these two.
    const queue = [`jobs/${BigInt(first).toString(16)}`, `jobs/${BigInt(second).toString(16)}`].sort();
    let keys = await keysUnder('jobs/');
    for (const deadline = Date.now() + 30_000; JSON.stringify(keys) !== JSON.stringify(queue) && Date.now() < deadline;) {
      await new Promise((resolve) => setTimeout(resolve, 100));
      keys = await keysUnder('jobs/');
    }
    expect(keys).toEqual(queue);

    await call(client.lock, 'Unlock', { key: held.key });
    expect(((await waiting).key as Buffer).toString()).toBe(`jobs/${BigInt(second).toString(16)}`);
    // Revoking the holder's lease releases the lock too.
    const next = call(client.lock, 'Lock', { name: Buffer.from('jobs'), lease: first });
    expect(await settled(next, 300)).toBe(false);
    await call(client.lease, 'LeaseRevoke', { ID: second });
    expect(((await next).key as Buffer).toString()).toBe(`jobs/${BigInt(first).toString(16)}`);
  });

  it('elects in order, proclaims, resigns, and streams leader changes to observers', async () => {
    const [a, b] = [await lease(), await lease()];
    expect(await callError(client.election, 'Leader', { name: Buffer.from('ballot') })).toEqual({ code: grpc.status.UNKNOWN, details: 'election: no leader' });
    const first = await call(client.election, 'Campaign', { name: Buffer.from('ballot'), lease: a, value: Buffer.from('alpha') });
    const leader = first.leader as { name: Buffer; key: Buffer; rev: string; lease: string };
    expect(leader.key.toString()).toBe(`ballot/${BigInt(a).toString(16)}`);

    const observed: string[] = [];
    const observer = client.election.Observe({ name: Buffer.from('ballot') });
    observer.on('data', (response: { kv: { value: Buffer } }) => observed.push(response.kv.value.toString()));
    observer.on('error', () => undefined);
    const waitObserved = async (count: number): Promise<void> => {
      for (let attempt = 0; attempt < 100 && observed.length < count; attempt++) await new Promise((resolve) => setTimeout(resolve, 20));
    };
    await waitObserved(1);

    const challenger = call(client.election, 'Campaign', { name: Buffer.from('ballot'), lease: b, value: Buffer.from('beta') });
    expect(await settled(challenger, 300)).toBe(false);
    await call(client.election, 'Proclaim', { leader, value: Buffer.from('alpha-2') });
    await waitObserved(2);
    expect((((await call(client.election, 'Leader', { name: Buffer.from('ballot') })).kv) as { value: Buffer }).value.toString()).toBe('alpha-2');
    expect(await callError(client.election, 'Proclaim', { leader: { ...leader, rev: String(Number(leader.rev) + 1000) }, value: Buffer.from('x') })).toEqual({ code: grpc.status.UNKNOWN, details: 'election: not leader' });

    await call(client.election, 'Resign', { leader });
    const second = await challenger;
    expect((second.leader as { key: Buffer }).key.toString()).toBe(`ballot/${BigInt(b).toString(16)}`);
    await waitObserved(3);
    observer.cancel();
    expect(observed).toEqual(['alpha', 'alpha-2', 'beta']);
  });
});
