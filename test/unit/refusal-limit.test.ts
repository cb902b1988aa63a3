/** The rate at which refused requests reach the audit trail, and the summary of those left out. */
import { describe, expect, it } from 'vitest';
import { RefusalLimiter, refusalEventsBurst, refusalEventsPerSecond, type UnrecordedRefusals } from '../../src/api/refusal-limit.js';
import type { TransportRefusal } from '../../src/api/refusal-audit.js';

const refusal = (peer: string, code = 'INVALID_ARGUMENT'): TransportRefusal => ({ method: '/etcdserverpb.KV/Put', peer, certificate: undefined, code, details: 'bad', unknownMethod: false });

describe('refusal limit', () => {
  it('records a burst one by one, then summarises the rest at the steady rate, so every refusal is counted', () => {
    let now = 0;
    const recorded: TransportRefusal[] = [];
    const summaries: UnrecordedRefusals[] = [];
    const limiter = new RefusalLimiter<TransportRefusal>({ record: (entry) => recorded.push(entry), recordUnrecorded: (summary) => summaries.push(summary), nowMs: () => now });
    let sent = 0;
    // A flood of 1,000 a second for 10 seconds from two sources.
    for (let second = 0; second < 10; second++) {
      for (let index = 0; index < 1000; index++) {
        now = second * 1000 + index;
        limiter.offer(refusal(index % 2 === 0 ? '10.0.0.1:1' : '10.0.0.2:2', index % 3 === 0 ? 'RESOURCE_EXHAUSTED' : 'INVALID_ARGUMENT'));
        sent++;
      }
      now = (second + 1) * 1000;
      limiter.summarise(); // what the one-second timer does
    }
    const events = recorded.length + summaries.length;
    expect(recorded.length).toBeGreaterThanOrEqual(refusalEventsBurst);
    // The trail grows by the burst plus the rate, not by the flood.
    expect(events).toBeLessThanOrEqual(refusalEventsBurst + 10 * refusalEventsPerSecond + 1);
    expect(summaries.length).toBeGreaterThanOrEqual(9);
    expect(recorded.length + summaries.reduce((total, summary) => total + summary.count, 0)).toBe(sent);
    expect([...(summaries[0]?.codes.keys() ?? [])].sort()).toEqual(['INVALID_ARGUMENT', 'RESOURCE_EXHAUSTED']);
    expect([...(summaries[0]?.sources ?? [])].sort()).toEqual(['10.0.0.1', '10.0.0.2']);
    limiter.close();
  });

  it('records every refusal one by one at a pace below the rate', () => {
    let now = 0;
    let recorded = 0;
    const limiter = new RefusalLimiter({ record: () => recorded++, recordUnrecorded: () => expect.unreachable(), nowMs: () => now });
    for (let index = 0; index < 5000; index++) {
      now += 1000 / refusalEventsPerSecond;
      limiter.offer(refusal('10.0.0.1:1'));
    }
    expect(recorded).toBe(5000);
    limiter.close();
  });

  it('names a second source in the summary however many connections a flooding source opens', () => {
    let now = 0;
    const summaries: UnrecordedRefusals[] = [];
    const limiter = new RefusalLimiter({ record: () => undefined, recordUnrecorded: (summary) => summaries.push(summary), nowMs: () => now });
    for (let port = 1; port <= refusalEventsBurst + 50; port++) limiter.offer(refusal(`10.0.0.1:${port}`));
    limiter.offer(refusal('[2001:db8::7]:4242'));
    now = 1000;
    limiter.summarise(); // what the one-second timer does
    expect(summaries).toHaveLength(1);
    expect(summaries[0]?.sources).toEqual(['10.0.0.1', '[2001:db8::7]']);
    limiter.close();
  });
});
