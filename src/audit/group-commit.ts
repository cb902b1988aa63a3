/**
 * Group commit for the audit trail: events recorded while earlier ones are being made durable go
 * out together in one write and one fdatasync, and each caller's promise resolves once its event
 * is durable, in the order the events were chained.
 *
 * Pipelined: a batch is written (into the page cache) as soon as the event loop gets to it, and
 * its fdatasync starts at once, even while the previous batch's sync is still running — up to
 * `auditSyncsInFlightMax` syncs at a time. A batch is reported durable only after its own sync
 * and every earlier batch's have succeeded: its bytes come after theirs in the file, and an
 * fdatasync covers every byte written before it started; and once the sync running beside its own
 * (started before its own ended) has ended well too, since the kernel reports a failed writeback to one of the two only. Under load the wait for a busy member's
 * event loop, not the disk, is most of an audit event's latency (README, Benchmarks): one batch at
 * a time, write then sync, cost an event up to four turns of the loop; now the write and its sync
 * start at the end of the callback that added the event (no turn of the loop), and a batch that
 * waited for a sync to end goes out as soon as one does.
 *
 * A failed write or sync fails that batch and every later one (the file is cut back to the failed
 * batch's start), and the trail takes no more events: `onFailed` stops the member.
 *
 * Owns: the queue of batches, the writer of the current file, the order of durability. Never: the
 * chain itself (log.ts builds the lines), which file comes next or what happens to closed ones.
 */
import type { WriteMark } from './records.js';

/** What the group commit needs of a file writer (records.ts's RecordWriter). */
export interface TrailWriter {
  /** Writes records after the earlier ones, not yet durable; throws (file cut back) on failure. */
  write(records: readonly string[]): WriteMark;
  /** Makes everything written so far durable; on failure cuts the file back to `mark` and throws. */
  sync(mark: WriteMark): Promise<void>;
  close(): Promise<void>;
}

/** fdatasyncs of the trail in flight at once (each holds a libuv thread, shared with LevelDB's work). */
export const auditSyncsInFlightMax = 2;

export interface CommitBatch<Head> {
  /** The file the batch goes to. */
  readonly file: string;
  readonly lines: string[];
  /** What the chain looks like after the batch's last event (reported once it is durable). */
  head: Head | undefined;
  readonly done: Promise<void>;
  resolve(): void;
  reject(error: unknown): void;
}

function newBatch<Head>(file: string): CommitBatch<Head> {
  let resolve!: () => void;
  let reject!: (error: unknown) => void;
  const done = new Promise<void>((yes, no) => {
    resolve = yes;
    reject = no;
  });
  done.catch(() => undefined); // the failure is reported through onFailed; callers may ignore it
  return { file, lines: [], head: undefined, done, resolve, reject };
}

export interface GroupCommitHooks<Head> {
  /** The writer of the next file (events moved on to `file`, rotation); the old one is closed after. */
  readonly openFile: (file: string) => Promise<TrailWriter>;
  /** `file` was closed: every batch written to it is durable. */
  readonly fileClosed: (file: string) => void;
  /** A batch is durable (called in order). */
  readonly durable: (batch: CommitBatch<Head>) => void;
  /** The first failure: the trail takes no more events. */
  readonly failed: (error: unknown) => void;
}

export class GroupCommit<Head> {
  /** Batches not yet written, in order; only the last one takes new events. */
  private readonly queue: CommitBatch<Head>[] = [];
  /** Batches written whose durability has not been reported yet. */
  private syncing = 0;
  /** Settles once every batch written so far has been reported (durable or failed), in order. */
  private reported: Promise<void> = Promise.resolve();
  private scheduled = false;
  private switching = false;
  private failure: { readonly error: unknown } | undefined;
  /** Syncs started and not yet ended, and the first one that failed (see `writeQueued`). */
  private readonly syncsRunning = new Set<Promise<void>>();
  private syncFailure: { readonly error: unknown } | undefined;

  constructor(private writer: TrailWriter, private writerFile: string, private readonly hooks: GroupCommitHooks<Head>) {}

  /** Events added and not yet written (the metrics' audit queue). */
  get queuedEvents(): number {
    return this.queue.reduce((sum, batch) => sum + batch.lines.length, 0);
  }

  /** The first failure, once there was one. */
  get failed(): { readonly error: unknown } | undefined {
    return this.failure;
  }

  /** Adds a line to `file`; resolves once it is durable. `head`: the chain after it. */
  add(file: string, line: string, head: Head): Promise<void> {
    if (this.failure !== undefined) return Promise.reject(this.failure.error);
    let batch = this.queue[this.queue.length - 1];
    if (batch === undefined || batch.file !== file) {
      batch = newBatch<Head>(file);
      this.queue.push(batch);
    }
    batch.lines.push(line);
    batch.head = head;
    this.schedule();
    return batch.done;
  }

  /**
   * Events added by one callback of the event loop share the write: it runs once that callback's
   * promise reactions have all run (a tick, which Node runs after the microtask queue drains), not a
   * turn of the loop later. The events of an applied batch are added from the promise reactions of
   * the callback that applied it, so they go out together; under load, events added while the
   * syncs in flight are at their bound wait in one batch.
   */
  private schedule(): void {
    if (this.scheduled) return;
    this.scheduled = true;
    process.nextTick(() => {
      this.scheduled = false;
      this.writeQueued();
    });
  }

  private writeQueued(): void {
    while (this.failure === undefined && !this.switching && this.syncing < auditSyncsInFlightMax) {
      const batch = this.queue[0];
      if (batch === undefined) return;
      if (batch.file !== this.writerFile) {
        // The old file is closed only once everything written to it is durable; the last sync calls back here.
        if (this.syncing === 0) this.switchTo(batch.file);
        return;
      }
      this.queue.shift();
      let mark: WriteMark;
      try {
        mark = this.writer.write(batch.lines);
      } catch (error) {
        this.fail(error, batch);
        return;
      }
      this.syncing += 1;
      const synced = this.writer.sync(mark);
      this.syncsRunning.add(synced);
      synced.then(
        () => this.syncsRunning.delete(synced),
        (error: unknown) => {
          this.syncsRunning.delete(synced);
          this.syncFailure ??= { error };
        },
      );
      // The syncs still running when this one ended (taken then: the reaction above has removed it).
      const beside = synced.then(() => [...this.syncsRunning], () => []);
      this.reported = this.reported.then(async () => {
        try {
          await synced;
          // Linux reports a failed writeback to one fdatasync of the file only: when two run at once,
          // the later one may take the error of this batch's pages and this one succeed. So this
          // batch is durable only once the syncs running beside it (at most one more) ended well
          // too. A sync started after this one ended cannot have taken its error (this batch's pages
          // were written back, and any error recorded, before this sync returned): not waited for.
          await Promise.allSettled(await beside);
          if (this.syncFailure !== undefined) throw this.syncFailure.error;
          if (this.failure !== undefined) throw this.failure.error; // an earlier batch failed: this one's bytes were cut off
        } catch (error) {
          this.syncing -= 1;
          this.fail(error, batch);
          return;
        }
        this.syncing -= 1;
        this.hooks.durable(batch);
        batch.resolve();
        // Events that waited for a sync to end go out now, not a turn of the loop later.
        this.writeQueued();
      });
    }
  }

  private switchTo(file: string): void {
    this.switching = true;
    const closing = this.writer;
    const closed = this.writerFile;
    void (async () => {
      try {
        this.writer = await this.hooks.openFile(file);
        this.writerFile = file;
        await closing.close();
      } catch (error) {
        this.switching = false;
        const batch = this.queue.shift();
        if (batch !== undefined) this.fail(error, batch);
        return;
      }
      this.switching = false;
      this.hooks.fileClosed(closed);
      this.writeQueued();
    })();
  }

  /** Fails `batch` and everything queued; the first failure stops the trail. */
  private fail(error: unknown, batch: CommitBatch<Head>): void {
    const first = this.failure === undefined;
    if (first) this.failure = { error };
    batch.reject(this.failure?.error ?? error);
    for (const queued of this.queue.splice(0)) queued.reject(this.failure?.error ?? error); // added while the write was failing
    if (first) this.hooks.failed(error);
  }

  /** Resolves once every event added so far is durable (rejects if one could not be made so). */
  async flush(): Promise<void> {
    while (this.queue.length > 0 || this.syncing > 0 || this.switching) {
      const last = this.queue[this.queue.length - 1];
      if (last !== undefined) await last.done;
      else if (this.switching) await new Promise((resolve) => setImmediate(resolve));
      else await this.reported;
    }
  }

  /** Closes the current file; call after `flush`. */
  close(): Promise<void> {
    return this.writer.close();
  }
}
