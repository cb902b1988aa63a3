/**
 * The audit trail's pipelined group commit (src/audit/group-commit.ts): batches are written while
 * earlier syncs run, at most `auditSyncsInFlightMax` syncs at once, and reported durable only in
 * order and only once every earlier batch is. A disk whose fdatasync fails on demand cannot be had
 * here, so the writer below is a stand-in that records what it was asked and lets the test decide
 * when each sync ends and how.
 */
import { describe, expect, it } from 'vitest';
import { GroupCommit, auditSyncsInFlightMax, type TrailWriter } from '../../src/audit/group-commit.js';
import type { WriteMark } from '../../src/audit/records.js';

interface PendingSync {
  readonly mark: WriteMark;
  readonly written: readonly string[];
  finish(error?: Error): void;
}

class ScriptedWriter implements TrailWriter {
  /** Lines in the "file", in order (cut back on failure as RecordWriter does). */
  readonly lines: string[] = [];
  readonly syncs: PendingSync[] = [];
  closed = false;
  failWrite: Error | undefined;

  write(records: readonly string[]): WriteMark {
    if (this.failWrite !== undefined) throw this.failWrite;
    const mark = { bytes: this.lines.length, frames: 0 };
    this.lines.push(...records);
    return mark;
  }

  sync(mark: WriteMark): Promise<void> {
    return new Promise((resolve, reject) => {
      this.syncs.push({
        mark,
        written: [...this.lines],
        finish: (error) => {
          if (error === undefined) return resolve();
          if (mark.bytes < this.lines.length) this.lines.length = mark.bytes;
          reject(error);
        },
      });
    });
  }

  close(): Promise<void> {
    this.closed = true;
    return Promise.resolve();
  }
}

const turn = (): Promise<void> => new Promise((resolve) => setImmediate(resolve));

function setUp(): { writer: ScriptedWriter; commits: GroupCommit<number>; durable: number[]; failures: unknown[]; opened: ScriptedWriter[] } {
  const writer = new ScriptedWriter();
  const durable: number[] = [];
  const failures: unknown[] = [];
  const opened: ScriptedWriter[] = [];
  const commits = new GroupCommit<number>(writer, 'a', {
    openFile: () => {
      const next = new ScriptedWriter();
      opened.push(next);
      return Promise.resolve(next);
    },
    fileClosed: () => undefined,
    durable: (batch) => durable.push(batch.head ?? -1),
    failed: (error) => failures.push(error),
  });
  return { writer, commits, durable, failures, opened };
}

describe('audit group commit', () => {
  it('writes the next batch while the previous one syncs, and reports them durable in order', async () => {
    const { writer, commits, durable } = setUp();
    const settled: string[] = [];
    const first = commits.add('a', 'e1', 1).then(() => settled.push('e1'));
    await turn();
    expect(writer.syncs).toHaveLength(1);
    const second = commits.add('a', 'e2', 2).then(() => settled.push('e2'));
    const third = commits.add('a', 'e3', 3).then(() => settled.push('e3'));
    await turn();
    // e2 and e3 share a batch, written and syncing while e1's sync is still running.
    expect(writer.syncs).toHaveLength(2);
    expect(writer.syncs[1]?.written).toEqual(['e1', 'e2', 'e3']);
    commits.add('a', 'e4', 4).catch(() => undefined);
    await turn();
    expect(writer.syncs).toHaveLength(auditSyncsInFlightMax); // e4 waits for a sync to end
    expect(commits.queuedEvents).toBe(1);
    // The later sync ends first: nothing is reported until the earlier one has.
    writer.syncs[1]?.finish();
    await turn();
    expect(settled).toEqual([]);
    writer.syncs[0]?.finish();
    await Promise.all([first, second, third]);
    expect(settled).toEqual(['e1', 'e2', 'e3']);
    expect(durable).toEqual([1, 3]);
    await turn();
    expect(writer.syncs).toHaveLength(3); // e4 went out once a sync ended
    writer.syncs[2]?.finish();
    await commits.flush();
    expect(durable).toEqual([1, 3, 4]);
  });

  it('fails a batch whose own sync succeeded when an earlier one failed, and takes no more events', async () => {
    const { writer, commits, durable, failures } = setUp();
    const first = commits.add('a', 'e1', 1);
    await turn();
    const second = commits.add('a', 'e2', 2);
    await turn();
    expect(writer.syncs).toHaveLength(2);
    writer.syncs[1]?.finish();
    writer.syncs[0]?.finish(Object.assign(new Error('I/O error'), { code: 'EIO' }));
    await expect(first).rejects.toThrow('I/O error');
    await expect(second).rejects.toThrow('I/O error');
    expect(durable).toEqual([]);
    expect(failures).toHaveLength(1);
    expect(writer.lines).toEqual([]); // cut back to the failed batch's start: e2's bytes went too
    await expect(commits.add('a', 'e3', 3)).rejects.toThrow('I/O error');
    await commits.flush();
  });

  it('fails a batch whose own sync succeeded when the sync running beside it failed (the kernel reports a writeback error to one of them)', async () => {
    const { writer, commits, durable, failures } = setUp();
    const settled: string[] = [];
    const first = commits.add('a', 'e1', 1).then(
      () => settled.push('e1 durable'),
      () => settled.push('e1 failed'),
    );
    await turn();
    const second = commits.add('a', 'e2', 2).catch(() => settled.push('e2 failed'));
    await turn();
    expect(writer.syncs).toHaveLength(2);
    // e1's sync ends well while e2's still runs: e1 may not be reported yet, e2's sync may carry e1's error.
    writer.syncs[0]?.finish();
    await turn();
    expect(settled).toEqual([]);
    writer.syncs[1]?.finish(Object.assign(new Error('I/O error'), { code: 'EIO' }));
    await Promise.all([first, second]);
    expect(settled).toEqual(['e1 failed', 'e2 failed']);
    expect(durable).toEqual([]);
    expect(failures).toHaveLength(1);
  });

  it('fails a batch whose write fails, and everything queued behind it', async () => {
    const { writer, commits, failures } = setUp();
    writer.failWrite = Object.assign(new Error('no space left on device'), { code: 'ENOSPC' });
    const first = commits.add('a', 'e1', 1);
    await expect(first).rejects.toThrow('no space');
    expect(failures).toHaveLength(1);
    await expect(commits.add('a', 'e2', 2)).rejects.toThrow('no space');
  });

  it('writes the events added by one callback together, before the next turn of the event loop', async () => {
    const { writer, commits } = setUp();
    commits.add('a', 'e1', 1).catch(() => undefined);
    await Promise.resolve();
    commits.add('a', 'e2', 2).catch(() => undefined); // added by a promise reaction of the same callback
    await new Promise((resolve) => process.nextTick(resolve));
    expect(writer.syncs).toHaveLength(1);
    expect(writer.syncs[0]?.written).toEqual(['e1', 'e2']);
  });

  it('writes a waiting batch as soon as a sync ends, and reports a batch without waiting for a sync started after its own ended', async () => {
    const { writer, commits } = setUp();
    const settled: string[] = [];
    const first = commits.add('a', 'e1', 1).then(() => settled.push('e1'));
    await turn();
    const second = commits.add('a', 'e2', 2).then(() => settled.push('e2'));
    await turn();
    const third = commits.add('a', 'e3', 3).then(() => settled.push('e3'));
    await turn();
    expect(writer.syncs).toHaveLength(2); // e3 waits
    writer.syncs[1]?.finish(); // e2's sync ends first, while e1's runs beside it
    writer.syncs[0]?.finish();
    await first;
    // e3 went out when e1 was reported, before any further turn of the loop.
    expect(writer.syncs).toHaveLength(3);
    expect(writer.syncs[2]?.written).toEqual(['e1', 'e2', 'e3']);
    // e2's sync ended before e3's started: e2 is durable while e3's sync still runs.
    await second;
    expect(settled).toEqual(['e1', 'e2']);
    writer.syncs[2]?.finish();
    await third;
    expect(settled).toEqual(['e1', 'e2', 'e3']);
  });

  it('moves to the next file only once every batch of the old one is durable', async () => {
    const { writer, commits, durable, opened } = setUp();
    const first = commits.add('a', 'e1', 1);
    await turn();
    const second = commits.add('b', 'e2', 2);
    await turn();
    expect(opened).toHaveLength(0); // e1 still syncing in file a
    writer.syncs[0]?.finish();
    await first;
    await turn();
    await turn();
    expect(writer.closed).toBe(true);
    expect(opened).toHaveLength(1);
    expect(opened[0]?.lines).toEqual(['e2']);
    opened[0]?.syncs[0]?.finish();
    await second;
    expect(durable).toEqual([1, 2]);
  });
});
