/**
 * The audit trail writer: every client request and its decision as one event, hash-chained so that
 * changing, removing or reordering any event is detectable (`rampart audit verify`).
 *
 * Each member writes its own files under the audit directory, one per process start
 * (`audit-<start time>.jsonl`, mode 0600). Every event carries the hash of the one before it; the
 * first event of a file (`audit.start`) carries the hash of the last event of the previous file and
 * names it, and the first file starts at the genesis hash, so the files form one chain.
 *
 * Durability: `record` answers once the event is on disk. Events recorded while a write is in
 * flight go out together in the next write, with one fdatasync for the batch (group commit, as the
 * Raft log does), so a caller that awaits before acknowledging a request never acknowledges an
 * unrecorded one, and load shares the cost of the sync.
 *
 * Memory: every caller-supplied text is bounded (`event.ts`) and a member reads only the last
 * record of its newest file when it starts, so no audit file, whatever it holds, keeps it from
 * starting. A write that fails (a full disk) stops the member: `onError` says how to recover.
 * Events never contain values, passwords or tokens — keys and names only.
 */
import { mkdir } from 'node:fs/promises';
import path from 'node:path';
import { auditLineBytesMax, boundFields, boundTargets, eventLine, genesisHash, hashEvent, parseEventLine, type AuditEvent, type AuditFields } from './event.js';
import { RecordWriter, readLastRecord } from './records.js';
import { trailFiles } from './verify.js';

/** Where a member's chain stands: event `seq` of `file` has hash `hash`. */
export interface ChainHead {
  readonly file: string;
  readonly seq: number;
  readonly hash: string;
}

interface Batch {
  readonly lines: string[];
  /** The chain head after the batch's last event. */
  head?: ChainHead;
  readonly done: Promise<void>;
  resolve(): void;
  reject(error: unknown): void;
}

function newBatch(): Batch {
  let resolve!: () => void;
  let reject!: (error: unknown) => void;
  const done = new Promise<void>((yes, no) => {
    resolve = yes;
    reject = no;
  });
  done.catch(() => undefined); // the failure is reported through onError; callers may ignore it
  return { lines: [], done, resolve, reject };
}

/** What an operator reads when the trail cannot be written: the cause and the way out. */
export function describeAuditWriteError(error: unknown, directory: string): string {
  const code = (error as NodeJS.ErrnoException | undefined)?.code;
  if (code === 'ENOSPC' || code === 'EDQUOT') {
    return `the audit disk is full (${code}) at ${directory}: this member stops rather than serve unaudited. ` +
      `To recover: verify and archive old audit files elsewhere (rampart audit verify ${directory}), ` +
      'free space on that file system (or move the trail with --audit-dir), then start the member again';
  }
  if (code === 'EACCES' || code === 'EPERM' || code === 'EROFS') {
    return `the audit directory ${directory} is not writable (${code}): fix its permissions (0700, owned by the member's user) and start the member again`;
  }
  return `cannot write the audit trail at ${directory}: ${error instanceof Error ? error.message : String(error)}`;
}

export class AuditLog {
  private seq = 0;
  private pending: Batch | undefined;
  private draining = false;
  private failed: unknown;
  private closed = false;
  private durable: ChainHead;
  private readonly listeners = new Set<(line: string, file: string) => void>();

  /** Events recorded and not yet handed to the writer (the metrics' audit queue). */
  get queuedEvents(): number {
    return this.pending?.lines.length ?? 0;
  }

  private constructor(
    private readonly writer: RecordWriter,
    readonly file: string,
    private readonly member: string,
    private prev: string,
    private readonly onError: (error: unknown) => void,
  ) {
    this.durable = { file, seq: -1, hash: prev };
  }

  /** Opens a new file in `directory`, linked to the last event of the newest earlier file. */
  static async open(directory: string, member: string, onError: (error: unknown) => void): Promise<AuditLog> {
    await mkdir(directory, { recursive: true, mode: 0o700 });
    const earlier = await trailFiles(directory);
    let prev = genesisHash;
    let previousFile = '';
    const last = earlier[earlier.length - 1];
    if (last !== undefined) {
      previousFile = path.basename(last);
      const record = await readLastRecord(last);
      const event = record === undefined ? 'none' : parseEventLine(record);
      // A torn, oversized or altered last line: verify reports it, and the new file says so.
      prev = typeof event === 'string' ? 'unreadable' : event.hash;
    }
    // Names sort in creation order; a name is never reused (a clash waits for the next millisecond).
    let writer: RecordWriter | undefined;
    let name = '';
    while (writer === undefined) {
      name = `audit-${new Date().toISOString().replace(/[:.]/g, '-')}.jsonl`;
      writer = await RecordWriter.create(path.join(directory, name));
      if (writer === undefined) await new Promise((resolve) => setTimeout(resolve, 2));
    }
    const log = new AuditLog(writer, name, member, prev, onError);
    await log.record({ action: 'audit.start', targets: previousFile === '' ? [] : [previousFile], outcome: 'allowed' });
    return log;
  }

  /**
   * Adds an event to the chain; the answer comes once it is durably written (a failed write
   * rejects, after `onError` heard of it). Order is the order of calls. The first `alwaysNamed`
   * targets (sensitive keys) are never summarised away.
   */
  record(fields: AuditFields, alwaysNamed = 0): Promise<void> {
    if (this.closed) return Promise.reject(new Error('the audit trail is closed'));
    if (this.failed !== undefined) return Promise.reject(this.failed);
    const line = this.chain(boundFields(fields, alwaysNamed));
    const batch = (this.pending ??= newBatch());
    batch.lines.push(line);
    batch.head = { file: this.file, seq: this.seq - 1, hash: this.prev };
    if (!this.draining) {
      this.draining = true;
      // Events recorded in the same turn of the event loop share the write.
      setImmediate(() => void this.drain());
    }
    return batch.done;
  }

  private chain(fields: AuditFields): string {
    const build = (bounded: AuditFields): { line: string; hash: string } => {
      const base = { ...bounded, seq: this.seq, time: new Date().toISOString(), member: this.member, prev: this.prev };
      const hash = hashEvent(base);
      return { line: eventLine({ ...base, hash }), hash };
    };
    let built = build(fields);
    if (Buffer.byteLength(built.line) > auditLineBytesMax) {
      // Only targets named past the summary bound (sensitive keys) can get here: summarise them too.
      built = build({ ...fields, targets: boundTargets(fields.targets ?? [], 0) });
    }
    this.seq += 1;
    this.prev = built.hash;
    return built.line;
  }

  private async drain(): Promise<void> {
    while (this.pending !== undefined) {
      const batch = this.pending;
      this.pending = undefined;
      try {
        await this.writer.append(batch.lines);
      } catch (error) {
        this.failed = error;
        batch.reject(error);
        const queued = this.pending as Batch | undefined; // recorded while the write was failing
        queued?.reject(error);
        this.pending = undefined;
        this.draining = false;
        this.onError(error);
        return;
      }
      if (batch.head !== undefined) this.durable = batch.head;
      batch.resolve();
      for (const listener of this.listeners) for (const line of batch.lines) listener(line, this.file);
    }
    this.draining = false;
  }

  /** Resolves once every event recorded so far is durable. */
  async flush(): Promise<void> {
    while (this.pending !== undefined || this.draining) {
      await (this.pending?.done ?? new Promise((resolve) => setImmediate(resolve)));
    }
  }

  /** The last durably written event: an anchor to keep elsewhere (checkpoints). */
  get head(): ChainHead {
    return this.durable;
  }

  /** Calls `listener` with each event's line (and its file) once it is durably written; returns the unsubscribe. */
  subscribe(listener: (line: string, file: string) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  async close(): Promise<void> {
    if (this.closed) return;
    await this.flush().catch(() => undefined);
    this.closed = true;
    await this.writer.close();
  }
}

export type { AuditEvent, AuditFields };
