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

  it('decides quickly with dozens of writes of unknown outcome on one key (a soak fault window)', () => {
    // The 8-minute soak hung here: 37 unknown puts on one key made the search exponential.
    const history: Operation[] = [];
    for (let index = 0; index < 40; index++) history.push(put(`lost${index}`, index, Infinity));
    history.push(put('seen', 50, Infinity));
    history.push(get('seen', 60, 70));
    for (let index = 0; index < 100; index++) {
      history.push(put(`v${index}`, 100 + index * 10, 103 + index * 10));
      history.push(get(`v${index}`, 104 + index * 10, 106 + index * 10));
    }
    let started = performance.now();
    expect(checkHistory(history).ok).toBe(true);
    expect(performance.now() - started).toBeLessThan(2000);
    // The same with a stale read at the end: every order must be ruled out.
    started = performance.now();
    expect(checkHistory([...history, get('v50', 5000, 5001)]).ok).toBe(false);
    expect(performance.now() - started).toBeLessThan(2000);
  });

  it('keeps a write of unknown outcome that a read returned: it cannot be undone later', () => {
    expect(checkHistory([put('a', 0, 1), put('b', 2, Infinity), get('b', 3, 4), get('a', 5, 6)]).ok).toBe(false);
    expect(checkHistory([put('a', 0, 1), put('b', 2, Infinity), put('lost', 2, Infinity), get('a', 3, 4), get('b', 5, 6), get('b', 7, 8)]).ok).toBe(true);
  });

  it('reports a search that runs out of steps as undecided, never as a pass', () => {
    const history = [put('a', 0, 10), put('b', 0, 10), put('c', 0, 10), get('c', 11, 12), get('b', 13, 14)];
    expect(checkHistory(history, 3)).toMatchObject({ ok: false, undecidedKey: 'k' });
  });
});
