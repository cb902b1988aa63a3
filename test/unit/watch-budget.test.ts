import { describe, expect, it } from 'vitest';
import { WatchQueueBudget } from '../../src/server/watch-budget.js';

describe('watch queue budget', () => {
  it('bounds the bytes queued member-wide and per owner, and always lets one batch through when idle', async () => {
    const budget = new WatchQueueBudget(1000);
    expect(budget.ownerBytesMax).toBe(250);
    expect(budget.tryTake(200, 'user:a')).toBe(true);
    expect(budget.tryTake(100, 'user:a')).toBe(false); // past a's share
    expect(budget.hasRoom('user:a')).toBe(true);
    expect(budget.tryTake(50, 'user:a')).toBe(true);
    expect(budget.hasRoom('user:a')).toBe(false);
    for (const owner of ['user:b', 'user:c', 'user:d']) expect(budget.tryTake(250, owner)).toBe(true);
    expect(budget.used).toBe(1000);
    expect(budget.tryTake(1, 'user:e')).toBe(false); // member-wide bound
    let released = false;
    void budget.released().then(() => (released = true));
    budget.give(250, 'user:b');
    await Promise.resolve();
    expect(released).toBe(true);
    expect(budget.tryTake(200, 'user:e')).toBe(true);
    for (const owner of ['user:a', 'user:c', 'user:d', 'user:e']) budget.give(owner === 'user:e' ? 200 : 250, owner);
    expect(budget.used).toBe(0);
    expect(budget.tryTake(5000, 'user:a')).toBe(true); // larger than the budget, alone
    expect(budget.tryTake(1, 'user:b')).toBe(false);
  });
});
