/**
 * Issue 8, availability: one request or one client holding a valid certificate (no user) must not
 * take a TLS member down. Each attack runs against a real member while its event-loop delay
 * (prom-client's nodejs_eventloop_lag_max_seconds: the largest delay since the previous scrape)
 * is measured, and a cheap request from another client samples what a legitimate user sees.
 */
import { readFile } from 'node:fs/promises';
import type * as grpc from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { cpuMilliseconds, residentBytes } from '../helpers/attack.js';
import { call, type RawClient } from '../helpers/client.js';
import { startTlsMember, type TlsMember } from '../helpers/tls-member.js';

/** README, Security: one request never blocks a member's event loop more than this. */
const eventLoopBlockMaxMs = 100;

/** Samples a cheap call every 20 ms while `during` runs; the slowest answer. */
async function sampleLatency(client: RawClient, during: Promise<unknown>): Promise<number> {
  let done = false;
  let slowestMs = 0;
  void during.finally(() => (done = true));
  while (!done) {
    const started = performance.now();
    await call(client.maintenance, 'Status', {}).catch(() => undefined);
    slowestMs = Math.max(slowestMs, performance.now() - started);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
  return slowestMs;
}

/** README, Security: the member's default --watch-queued-bytes-max. */
const watchQueuedBytesMax = 64 * 1024 * 1024;
/**
 * README, Security: RSS grows by at most twice the budget (grpc-js copies each encoded message once
 * more when framing it; the first copy is garbage) plus this (history reads, GC slack).
 */
const watchRssAllowanceBytes = 128 * 1024 * 1024;

describe('availability under attack (TLS member, a certificate that is no user)', () => {
  let member: TlsMember;
  let attacker: RawClient;
  let bystander: RawClient;
  beforeAll(async () => {
    member = await startTlsMember();
    attacker = await member.client('stranger');
    bystander = await member.client('root');
  }, 60_000);
  afterAll(async () => {
    attacker?.close();
    bystander?.close();
    await member?.stop();
  });

  it('a Txn of many nested puts and deletes is refused without blocking the member', async () => {
    const op = (level: number, index: number): object => (index % 2 === 0
      ? { request_put: { key: Buffer.from(`/a/${level}/p${index}`), value: Buffer.from('v') } }
      : { request_delete_range: { key: Buffer.from(`/a/${level}/d${index}`), range_end: Buffer.from(`/a/${level}/d${index}z`) } });
    const level = (count: number, perLevel: number): object[] => Array.from({ length: count }, (_, outer) => ({ request_txn: { success: Array.from({ length: perLevel }, (_, inner) => op(outer, inner)) } }));
    // 128 nested Txns of 128 distinct puts and deletes (~400 KB, the reported attack), and one
    // within the bounds (7 × 128 nested ops), which is authorized and refused for lack of permission.
    const attack = { success: level(128, 128) };
    const withinBounds = { success: level(7, 128) };
    await member.metric('nodejs_eventloop_lag_max_seconds'); // resets the maximum
    const pid = member.child.pid as number;
    const cpuBeforeMs = await cpuMilliseconds(pid);
    const errors: string[] = [];
    const attacks = Promise.all(Array.from({ length: 8 }, (_, index) => call(attacker.kv, 'Txn', index === 0 ? withinBounds : attack)
      .then(() => errors.push('accepted'), (error: { details: string }) => errors.push(error.details))));
    const slowestMs = await sampleLatency(bystander, attacks);
    const cpuMs = (await cpuMilliseconds(pid)) - cpuBeforeMs;
    const lagMs = (await member.metric('nodejs_eventloop_lag_max_seconds')) * 1000;
    console.log(`txn attack: member CPU ${cpuMs.toFixed(0)} ms, event loop max delay ${lagMs.toFixed(0)} ms, slowest Status ${slowestMs.toFixed(0)} ms`);
    expect(errors.filter((error) => error === 'etcdserver: too many operations in txn request')).toHaveLength(7);
    expect(errors).toContain('etcdserver: permission denied');
    // The work of all 8 requests (and of the bystander's Status calls) within what one request may
    // block: CPU time, which waiting for a core on a loaded machine does not inflate (the event-loop
    // delay, asserted before, reached 370 ms at load average 30). Before the bounds, decoding alone
    // took ~0.5 s a request and the member froze for minutes.
    expect(cpuMs).toBeLessThan(8 * eventLoopBlockMaxMs);
    expect(member.child.exitCode).toBeNull();
  }, 120_000);

  it('2,000 watchers of one key that never read, and large writes, stay within the watch memory bound', async () => {
    const watcherClient = await member.client('auditor');
    // The stream that later resumes reading has a connection of its own: unread data of the other
    // streams holds their shared HTTP/2 connection window on the client side.
    const resumingClient = await member.client('auditor', { 'grpc.primary_user_agent': 'resuming' });
    // One watcher per stream: each stream queues its own encoded copy of an event (as reported).
    const streamsCount = 2000;
    const watchersPerStream = 1;
    const valueBytes = 300 * 1024;
    const streams: grpc.ClientDuplexStream<object, Record<string, unknown>>[] = [];
    try {
      for (let index = 0; index < streamsCount; index++) {
        const stream = (index === 0 ? resumingClient : watcherClient).watch.Watch();
        stream.on('error', () => undefined);
        for (let watcher = 0; watcher < watchersPerStream; watcher++) stream.write({ create_request: { key: Buffer.from('/fan/out') } });
        streams.push(stream);
      }
      // Let every create land (the streams are not read: created answers stay queued on the client side).
      const pid = member.child.pid ?? 0;
      // Waits on the count, up to a minute: a metrics request may fail while the member works
      // through 2,000 creates on a loaded machine (seen: 'fetch failed'), which is no failure of the bound.
      let watchers = 0;
      let metricsError: unknown;
      const createsDeadline = Date.now() + 60_000;
      while (watchers < streamsCount * watchersPerStream && Date.now() < createsDeadline) {
        watchers = await member.metric('etcd_debugging_mvcc_watcher_total').catch((error: unknown) => {
          metricsError = error;
          return 0;
        });
        if (watchers < streamsCount * watchersPerStream) await new Promise((resolve) => setTimeout(resolve, 100));
      }
      expect(watchers, `watchers (last metrics error: ${String(metricsError)}); member exit ${String(member.child.exitCode)} ${String(member.child.signalCode)} output:\n${member.output().slice(-2000)}`)
        .toBeGreaterThanOrEqual(streamsCount * watchersPerStream);
      // A legitimate watcher on a stream that reads.
      const reader = bystander.watch.Watch();
      reader.on('error', () => undefined);
      const seen: number[] = [];
      let readerCreated = false;
      reader.on('data', (response: { created?: boolean; events?: { kv: { value: Buffer } }[] }) => {
        if (response.created === true) readerCreated = true;
        for (const event of response.events ?? []) seen.push(event.kv.value.length);
      });
      reader.write({ create_request: { key: Buffer.from('/fan/out') } });
      // The puts below must come after the watcher exists (a fixed 300 ms was not always enough at load ~30).
      for (const createdBy = Date.now() + 30_000; !readerCreated && Date.now() < createdBy;) await new Promise((resolve) => setTimeout(resolve, 50));
      expect(readerCreated, 'the reading watcher was created').toBe(true);
      const before = await residentBytes(pid);
      let peak = before;
      let sampling = true;
      const sampler = (async () => {
        while (sampling) {
          peak = Math.max(peak, await residentBytes(pid).catch(() => 0));
          await new Promise((resolve) => setTimeout(resolve, 25));
        }
      })();
      for (const fill of ['a', 'b']) await call(bystander.kv, 'Put', { key: Buffer.from('/fan/out'), value: Buffer.alloc(valueBytes, fill) });
      const deadline = Date.now() + 15_000;
      while (seen.length < 2 && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 50));
      await new Promise((resolve) => setTimeout(resolve, 2_000));
      sampling = false;
      await sampler;
      const growth = peak - before;
      console.log(`watch fan-out: RSS ${(before / 2 ** 20).toFixed(0)} MiB before, peak ${(peak / 2 ** 20).toFixed(0)} MiB (+${(growth / 2 ** 20).toFixed(0)} MiB)`);
      // The reading watcher got both values, in order, while the others were held back.
      expect(seen).toEqual([valueBytes, valueBytes]);
      expect(growth).toBeLessThan(2 * watchQueuedBytesMax + watchRssAllowanceBytes);
      expect(member.child.exitCode).toBeNull();

      // A held-back stream that starts reading catches up from history: every watcher gets both
      // values (its user's other streams, which hold that user's share of the budget, end first).
      for (const stream of streams.slice(1)) stream.cancel();
      const resumed = streams[0];
      const perWatcher = new Map<string, number>();
      resumed?.on('data', (response: { watch_id?: string | number; events?: unknown[] }) => {
        const id = String(response.watch_id);
        perWatcher.set(id, (perWatcher.get(id) ?? 0) + (response.events?.length ?? 0));
      });
      const caughtUp = (): boolean => perWatcher.size >= watchersPerStream && [...perWatcher.values()].every((count) => count === 2);
      const catchUpDeadline = Date.now() + 30_000;
      while (!caughtUp() && Date.now() < catchUpDeadline) await new Promise((resolve) => setTimeout(resolve, 100));
      expect([...perWatcher.values()].filter((count) => count === 2)).toHaveLength(watchersPerStream);
      reader.cancel();
    } finally {
      for (const stream of streams) stream.cancel();
      watcherClient.close();
      resumingClient.close();
    }
  }, 120_000);

  it('a JSON gateway watch keeps flowing past its user\'s share of the watch budget (its bytes are released as they flush)', async () => {
    const flags = await member.flagsFor('auditor');
    const file = (flag: string): string => flags[flags.indexOf(flag) + 1] ?? '';
    const { request } = await import('node:https');
    const valueBytes = 1_400_000;
    const writes = 14; // ~19 MiB in all: past the 16 MiB a user may hold queued
    let received = 0;
    let created = false;
    const watch = request({ host: '127.0.0.1', port: member.clientPort, path: '/v3/watch', method: 'POST', ca: await readFile(file('--cacert')), cert: await readFile(file('--cert')), key: await readFile(file('--key')) });
    let buffered = '';
    watch.on('response', (response) => {
      response.setEncoding('utf8');
      response.on('data', (chunk: string) => {
        buffered += chunk;
        let newline = buffered.indexOf('\n');
        while (newline >= 0) {
          const line = JSON.parse(buffered.slice(0, newline)) as { result?: { created?: boolean; events?: unknown[] } };
          if (line.result?.created === true) created = true;
          received += line.result?.events?.length ?? 0;
          buffered = buffered.slice(newline + 1);
          newline = buffered.indexOf('\n');
        }
      });
    });
    watch.on('error', () => undefined);
    watch.write(JSON.stringify({ create_request: { key: Buffer.from('/gateway/watched').toString('base64') } }));
    try {
      // The puts must come after the watcher exists: wait for its created answer (not a fixed 500 ms).
      for (const createdBy = Date.now() + 30_000; !created && Date.now() < createdBy;) await new Promise((resolve) => setTimeout(resolve, 50));
      expect(created, 'the gateway watcher was created').toBe(true);
      for (let index = 0; index < writes; index++) await call(bystander.kv, 'Put', { key: Buffer.from('/gateway/watched'), value: Buffer.alloc(valueBytes, index) });
      const deadline = Date.now() + 30_000;
      while (received < writes && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 100));
      expect(received).toBe(writes);
    } finally {
      watch.destroy();
    }
  }, 90_000);
});
