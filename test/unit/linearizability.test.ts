import { describe, expect, it } from 'vitest';
import { checkHistory, type Operation } from '../helpers/linearizability.js';

const put = (value: string, callMs: number, returnMs: number): Operation => ({ key: 'k', kind: 'put', value, callMs, returnMs });
const get = (value: string | null, callMs: number, returnMs: number): Operation => ({ key: 'k', kind: 'get', value, callMs, returnMs });

describe('linearizability checker', () => {
  it('accepts sequential and concurrent histories that have a linearization', () => {
    expect(checkHistory([put('a', 0, 1), get('a', 2, 3)]).ok).toBe(true);
    // Concurrent put and get: the get may see either value.
    expect(checkHistory([put('a', 0, 10), get(null, 1, 2)]).ok).toBe(true);
    expect(checkHistory([put('a', 0, 10), get('a', 1, 2)]).ok).toBe(true);
    expect(checkHistory([put('a', 0, 5), put('b', 1, 6), get('b', 7, 8), get('b', 9, 10)]).ok).toBe(true);
  });

  it('rejects a stale read after a completed write', () => {
    expect(checkHistory([put('a', 0, 1), put('b', 2, 3), get('a', 4, 5)])).toMatchObject({ ok: false, failedKey: 'k' });
    expect(checkHistory([get('x', 0, 1)]).ok).toBe(false);
  });

  it('rejects reads that go back in time', () => {
    expect(checkHistory([put('a', 0, 10), put('b', 0, 10), get('a', 11, 12), get('b', 13, 14), get('a', 15, 16)]).ok).toBe(false);
  });

  it('lets a write with an unknown outcome happen later or never, but not before its call', () => {
    expect(checkHistory([put('a', 0, Infinity), get(null, 1, 2), get('a', 3, 4)]).ok).toBe(true);
    expect(checkHistory([put('a', 0, Infinity), get(null, 1, 2)]).ok).toBe(true);
    expect(checkHistory([get('a', 0, 1), put('a', 2, Infinity)]).ok).toBe(false);
    // Once seen, an unknown write cannot be un-seen.
    expect(checkHistory([put('a', 0, Infinity), get('a', 1, 2), get(null, 3, 4)]).ok).toBe(false);
  });

  it('checks keys independently', () => {
    const other = (value: string, callMs: number, returnMs: number): Operation => ({ key: 'other', kind: 'put', value, callMs, returnMs });
    expect(checkHistory([put('a', 0, 1), other('z', 0, 1), get('a', 2, 3)])).toMatchObject({ ok: true, keys: 2 });
  });
});
