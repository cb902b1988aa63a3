/**
 * The applied batches' writer (applied-writes.ts), against a database whose writes the test lands
 * one by one: batches land in apply order, those applied while a write is in flight or waits go
 * out as one write, a snapshot's write is synced and its view taken before any later batch is
 * written, whoever waits for the database gets the write at once, the queue is bounded, and after
 * a failed write nothing more is written.
 */
import { describe, expect, it } from 'vitest';
import { AppliedWrites, appliedBytesQueuedMax, appliedBytesWriteNow } from '../../src/server/applied-writes.js';
import type { BatchOperation } from '../../src/storage/mvcc/store.js';

interface HeldWrite {
  readonly operations: BatchOperation[];
  readonly sync: boolean;
  land(): void;
  fail(error: Error): void;
}

/** A writer over a database the test lands writes of; `delayMs` 0: each write starts as soon as it may. */
function harness(delayMs = 0) {
  const held: HeldWrite[] = [];
  const events: string[] = [];
  const failures: unknown[] = [];
  const writer = new AppliedWrites({
    write: (operations, sync) =>
      new Promise<void>((resolve, reject) => {
        events.push(`write ${names(operations).join(',')}${sync ? ' synced' : ''}`);
        held.push({ operations, sync, land: resolve, fail: reject });
      }),
    landed: (operations, revision) => events.push(`landed ${operations.length} through revision ${revision}`),
    fail: (error) => failures.push(error),
  }, delayMs);
  /** Lands the write in flight and lets the writer's callbacks run. */
  const landNext = async (): Promise<void> => {
    const write = held.shift();
    if (write === undefined) throw new Error('no write in flight');
    write.land();
    await new Promise((resolve) => setImmediate(resolve));
  };
  return { writer, held, events, failures, landNext };
}

const put = (key: string, value = 'v'): BatchOperation => ({ type: 'put', key: Buffer.from(key), value: Buffer.from(value) });
const names = (operations: readonly BatchOperation[]): string[] => operations.map((operation) => operation.key.toString());
/** One applied batch as applyEntries makes it: its records, then its consistent index. */
const batchOf = (index: number, ...keys: string[]): BatchOperation[] => [...keys.map((key) => put(key)), put(`ci${index}`)];

describe('applied batches on their way to the database', () => {
  it('writes the first batch at once and merges the batches applied meanwhile into the next write, in apply order', async () => {
    const { writer, held, events, landNext } = harness();
    writer.add(batchOf(1, 'a'), 11, 0);
    expect(held).toHaveLength(1);
    writer.add(batchOf(2, 'b'), 12, 0);
    writer.add(batchOf(3, 'a', 'c'), 13, 0);
    writer.add(batchOf(4), 14, 0);
    // Still one write in flight; nothing waits for room.
    expect(held).toHaveLength(1);
    expect(writer.hasRoom).toBe(true);
    const drained = writer.drained();
    let drainedYet = false;
    void drained.then(() => (drainedYet = true));
    await landNext();
    // The three batches as one write: every record and consistent index in apply order, the last
    // consistent index last, so the write covers exactly what its index says.
    expect(held).toHaveLength(1);
    expect(names(held[0]?.operations ?? [])).toEqual(['b', 'ci2', 'a', 'c', 'ci3', 'ci4']);
    expect(drainedYet).toBe(false);
    await landNext();
    await drained;
    expect(events).toEqual(['write a,ci1', 'landed 2 through revision 11', 'write b,ci2,a,c,ci3,ci4', 'landed 6 through revision 14']);
    expect(writer.batches).toBe(4);
    expect(writer.writes).toBe(2);
    expect(writer.idle).toBe(true);
  });

  it('syncs the write holding a snapshot\'s batch and takes its view as it lands, before any later batch is written', async () => {
    const { writer, held, events, landNext } = harness();
    writer.add(batchOf(1), 11, 0);
    writer.add(batchOf(2, 'x'), 12, 0);
    writer.add(batchOf(3, 'y'), 13, 0, { onLanded: () => events.push('view at 3') });
    // Applied after the snapshot's batch: not in its write, whatever the timing.
    writer.add(batchOf(4, 'z'), 14, 0);
    await landNext();
    expect(held.map((write) => [names(write.operations), write.sync])).toEqual([[['x', 'ci2', 'y', 'ci3'], true]]);
    await landNext();
    await landNext();
    expect(events).toEqual([
      'write ci1',
      'landed 1 through revision 11',
      'write x,ci2,y,ci3 synced',
      'landed 4 through revision 13',
      'view at 3',
      'write z,ci4',
      'landed 2 through revision 14',
    ]);
  });

  it('lets a batch wait for later ones to share its write, and writes at once what someone waits for, a snapshot\'s batch or a large one', async () => {
    const { writer, held, events, landNext } = harness(60_000);
    writer.add(batchOf(1, 'a'), 11, 0);
    writer.add(batchOf(2, 'b'), 12, 0);
    await new Promise((resolve) => setImmediate(resolve));
    expect(held).toHaveLength(0);
    // Whoever needs the database (close, a snapshot install, a watch's catch-up) asks for the write.
    const drained = writer.drained();
    expect(held.map((write) => names(write.operations))).toEqual([['a', 'ci1', 'b', 'ci2']]);
    await landNext();
    await drained;
    writer.add(batchOf(3, 'c'), 13, 0);
    expect(held).toHaveLength(0);
    writer.add(batchOf(4), 14, 0, { onLanded: () => events.push('view at 4') });
    expect(held.map((write) => [names(write.operations), write.sync])).toEqual([[['c', 'ci3', 'ci4'], true]]);
    await landNext();
    writer.add([{ type: 'put', key: Buffer.from('big'), value: Buffer.alloc(appliedBytesWriteNow) }, put('ci5')], 15, 0);
    expect(held.map((write) => names(write.operations))).toEqual([['big', 'ci5']]);
    await landNext();
    expect(events).toEqual(['write a,ci1,b,ci2', 'landed 4 through revision 12', 'write c,ci3,ci4 synced', 'landed 3 through revision 14', 'view at 4', 'write big,ci5', 'landed 2 through revision 15']);
    expect(writer.idle).toBe(true);
  });

  it('writes a waiting batch once its delay is over', async () => {
    const { writer, held } = harness(20);
    writer.add(batchOf(1, 'a'), 11, 0);
    writer.add(batchOf(2, 'b'), 12, 0);
    expect(held).toHaveLength(0);
    for (let waited = 0; held.length === 0 && waited < 500; waited++) await new Promise((resolve) => setTimeout(resolve, 10));
    expect(held.map((write) => names(write.operations))).toEqual([['a', 'ci1', 'b', 'ci2']]);
  });

  it('holds the next apply once too much is queued behind the write in flight, until that write lands', async () => {
    const { writer, held, landNext } = harness();
    writer.add(batchOf(1), 11, 0);
    const large = Buffer.alloc(appliedBytesQueuedMax);
    writer.add([{ type: 'put', key: Buffer.from('big'), value: large }, put('ci2')], 12, 0);
    expect(writer.hasRoom).toBe(false);
    let roomYet = false;
    const room = writer.room().then(() => (roomYet = true));
    await new Promise((resolve) => setImmediate(resolve));
    expect(roomYet).toBe(false);
    await landNext();
    await room;
    // The queued batch is now the write in flight: the queue is empty again.
    expect(writer.hasRoom).toBe(true);
    expect(held).toHaveLength(1);
  });

  it('after a failed write writes nothing more, reports the failure once and releases every waiter', async () => {
    const { writer, held, events, failures } = harness();
    writer.add(batchOf(1), 11, 0);
    writer.add(batchOf(2), 12, 0);
    const drained = writer.drained();
    held.shift()?.fail(new Error('disk gone'));
    await drained;
    writer.add(batchOf(3), 13, 0);
    await new Promise((resolve) => setImmediate(resolve));
    expect(failures).toEqual([new Error('disk gone')]);
    expect(held).toHaveLength(0);
    expect(events).toEqual(['write ci1']);
    await writer.drained();
  });
});
