/**
 * Issue 8, availability: one request or one client holding a valid certificate (no user) must not
 * take a TLS member down. Each attack runs against a real member while its event-loop delay
 * (prom-client's nodejs_eventloop_lag_max_seconds: the largest delay since the previous scrape)
 * is measured, and a cheap request from another client samples what a legitimate user sees.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { call, type RawClient } from '../helpers/client.js';
import { startTlsMember, type TlsMember } from '../helpers/tls-member.js';

/** README, Security: one request never blocks a member's event loop more than this. */
const eventLoopBlockMaxMs = 100;
/** What the test tolerates on a shared 2-core machine (GC, other processes) above that bound. */
const schedulingAllowanceMs = 150;

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
    const errors: string[] = [];
    const attacks = Promise.all(Array.from({ length: 8 }, (_, index) => call(attacker.kv, 'Txn', index === 0 ? withinBounds : attack)
      .then(() => errors.push('accepted'), (error: { details: string }) => errors.push(error.details))));
    const slowestMs = await sampleLatency(bystander, attacks);
    const lagMs = (await member.metric('nodejs_eventloop_lag_max_seconds')) * 1000;
    console.log(`txn attack: event loop max delay ${lagMs.toFixed(0)} ms, slowest Status ${slowestMs.toFixed(0)} ms`);
    expect(errors.filter((error) => error === 'etcdserver: too many operations in txn request')).toHaveLength(7);
    expect(errors).toContain('etcdserver: permission denied');
    expect(lagMs).toBeLessThan(eventLoopBlockMaxMs + schedulingAllowanceMs);
    expect(member.child.exitCode).toBeNull();
  }, 120_000);
});
