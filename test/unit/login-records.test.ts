/**
 * Failed-login records replicated through the log (issue 8, item 4): the limiter hands out only
 * existing users' changes, in bounded batches; applying them is deterministic, an older version
 * never undoes a newer one, a success clears, and the table stays bounded.
 */
import { describe, expect, it } from 'vitest';
import { LoginLimiter, loginRecordsMax, type LoginRecord } from '../../src/auth/limiter.js';
import { LoginRecords, decodeLoginRecords, encodeLoginRecords, loginRecordsPerEntryMax } from '../../src/server/login-records.js';
import type { BatchOperation } from '../../src/storage/mvcc/store.js';

describe('replicated login records', () => {
  it('a new limiter that merges the replicated records keeps counting where the leader stopped', () => {
    let now = 1_000;
    const leader = new LoginLimiter({ freeFailures: 5, baseLockoutMs: 1_000, maxLockoutMs: 60_000, now: () => now });
    for (let failure = 0; failure < 5; failure++) leader.failed('bob', '10.0.0.1', true);
    for (let failure = 0; failure < 50; failure++) leader.failed(`junk-${failure}`, '10.0.0.1', false);
    const changes = leader.takeChanges(loginRecordsPerEntryMax);
    // One change per record (the latest), none for names that are no user.
    expect(changes).toEqual([{ user: 'bob', source: '10.0.0.1', failures: 5, lockedUntilMs: 2_000, changedMs: 1_000 }]);
    expect(leader.takeChanges(loginRecordsPerEntryMax)).toEqual([]);

    const successor = new LoginLimiter({ freeFailures: 5, baseLockoutMs: 1_000, maxLockoutMs: 60_000, now: () => now });
    const table = new LoginRecords((record) => successor.merge(record));
    const batch: BatchOperation[] = [];
    table.apply(encodeLoginRecords(changes), batch);
    expect(batch.map((operation) => operation.type)).toEqual(['put']);
    expect(batch[0]?.key.includes(Buffer.from('bob'))).toBe(false); // the storage key names no user
    expect(successor.blockedFor('bob', '10.0.0.1')).toBe(1_000);
    now = 2_500;
    successor.failed('bob', '10.0.0.1', true);
    expect(successor.blockedFor('bob', '10.0.0.1')).toBe(2_000); // the sixth failure, not the first
  });

  it('an older version never undoes a newer one; a success clears the record', () => {
    let now = 10_000;
    const limiter = new LoginLimiter({ now: () => now });
    const table = new LoginRecords((record) => limiter.merge(record));
    const record = (failures: number, changedMs: number): LoginRecord => ({ user: 'bob', source: 's', failures, lockedUntilMs: failures >= 5 ? changedMs + 1_000 : 0, changedMs });
    const batch: BatchOperation[] = [];
    table.apply(encodeLoginRecords([record(6, 9_000)]), batch);
    table.apply(encodeLoginRecords([record(2, 8_000)]), batch);
    expect(limiter.blockedFor('bob', 's')).toBe(0);
    now = 9_500;
    expect(limiter.blockedFor('bob', 's')).toBe(500);
    limiter.succeeded('bob', 's');
    const cleared = limiter.takeChanges(10);
    expect(cleared).toEqual([{ user: 'bob', source: 's', failures: 0, lockedUntilMs: 0, changedMs: 9_500 }]);
    table.apply(encodeLoginRecords(cleared), batch);
    expect(batch.at(-1)?.type).toBe('del');
    expect(table.size).toBe(0);
  });

  it('bounds an entry and the table, evicting one record at a time', () => {
    const tooMany = Array.from({ length: loginRecordsPerEntryMax + 1 }, (_, index) => ({ user: `u${index}`, source: 's', failures: 1, lockedUntilMs: 0, changedMs: 1 }));
    expect(typeof decodeLoginRecords(encodeLoginRecords(tooMany))).toBe('string');
    expect(typeof decodeLoginRecords(encodeLoginRecords([{ user: 'x'.repeat(300), source: 's', failures: 1, lockedUntilMs: 0, changedMs: 1 }]))).toBe('string');
    expect(() => new LoginRecords(() => undefined).apply('{"records":[{"user":1}]}', [])).toThrow(/login records/);
    const table = new LoginRecords(() => undefined);
    const batch: BatchOperation[] = [];
    for (let start = 0; start < loginRecordsMax.knownUsers + 10; start += loginRecordsPerEntryMax) {
      const records = Array.from({ length: loginRecordsPerEntryMax }, (_, index) => ({ user: `u${start + index}`, source: 's', failures: 1, lockedUntilMs: 0, changedMs: start + index }));
      table.apply(encodeLoginRecords(records), batch);
    }
    expect(table.size).toBe(loginRecordsMax.knownUsers);
    expect(batch.filter((operation) => operation.type === 'del').length).toBe(Math.ceil((loginRecordsMax.knownUsers + 10) / loginRecordsPerEntryMax) * loginRecordsPerEntryMax - loginRecordsMax.knownUsers);
  });

  it('offers records whose window is over for clearing, oldest first and bounded', () => {
    const table = new LoginRecords(() => undefined);
    table.apply(encodeLoginRecords([
      { user: 'a', source: 's', failures: 7, lockedUntilMs: 1_500, changedMs: 1_000 },
      { user: 'b', source: 's', failures: 2, lockedUntilMs: 0, changedMs: 50_000 },
    ]), []);
    expect(table.expired(30_000, 60_000, 10)).toEqual([]);
    expect(table.expired(62_000, 60_000, 10).map((record) => [record.user, record.failures])).toEqual([['a', 0]]);
  });
});
