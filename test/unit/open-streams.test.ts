import { describe, expect, it } from 'vitest';
import { OpenStreamBudget } from '../../src/api/open-streams.js';

describe('OpenStreamBudget', () => {
  it('holds each source to its share and the member to its total, and frees a slot on release', () => {
    const budget = new OpenStreamBudget(5, 2);
    expect([budget.take('a'), budget.take('a'), budget.take('a')]).toEqual([true, true, false]);
    expect([budget.take('b'), budget.take('b'), budget.take('c')]).toEqual([true, true, true]);
    // The member-wide bound: 5 open, another source is refused too.
    expect(budget.take('d')).toBe(false);
    expect(budget.openStreams).toBe(5);
    budget.release('a');
    expect(budget.take('d')).toBe(true);
    expect(budget.take('a')).toBe(false);
    budget.release('b');
    expect(budget.take('a')).toBe(true);
  });

  it('refuses to release a stream it never counted', () => {
    const budget = new OpenStreamBudget();
    expect(() => budget.release('a')).toThrow('assertion failed');
  });
});
