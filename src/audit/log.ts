/**
 * The audit trail writer: every client request and its decision as one event, hash-chained so that
 * changing, removing or reordering any event is detectable (`rampart audit verify`).
 *
 * Each member writes its own files under the audit directory (`audit-<start time>.jsonl`, mode
 * 0600): a new one at each process start, and when the current one reaches `maxFileBytes` or
 * `maxFileAgeMs` (rotation). Every event carries the hash of the one before it; the first event of
 * a file (`audit.start`) carries the hash of the last event of the previous file and names it, and
 * the first file starts at the genesis hash, so the files form one chain. How a file is stored
 * (plain, sealed under the trail key, compressed once closed) is `records.ts`'s concern.
 *
 * Retention: closed files are compressed in the background (never on the write path). A file whose
 * successor was opened more than `retentionMs` ago is deleted, oldest first, after an
 * `audit.retention` event naming the oldest file kept and the files deleted is durable, so that
 * `verify` accepts a trail that starts there (and the quorum checkpoints witness that event).
 *
 * Durability: `record` answers once the event is on disk. Events recorded by the same callback of
 * the event loop (and its promise reactions) go out together in one write, with one fdatasync for
 * the batch (group commit, as the Raft log does; pipelined, see group-commit.ts), so a caller that
 * awaits before acknowledging a request never acknowledges an unrecorded one, and load shares the
 * cost of the sync.
 *
 * Memory: every caller-supplied text is bounded (`event.ts`) and a member reads only the last
 * record of its newest file when it starts, so no audit file, whatever it holds, keeps it from
 * starting. A write that fails (a full disk) stops the member: `onError` says how to recover.
 * Events never contain values, passwords or tokens — keys and names only.
 */
import { mkdir, open, rm } from 'node:fs/promises';
import path from 'node:path';
import { auditLineBytesMax, boundFields, boundTargets, chainFields, genesisHash, parseEventLine, type AuditEvent, type AuditFields } from './event.js';
import { GroupCommit } from './group-commit.js';
import { RecordWriter, compressTrailFile, listTrailFiles, readLastRecord, tidyTrailDirectory, type TrailFile } from './records.js';
import type { TrailKey } from './sealed-trail.js';
import { retentionAction } from './verify.js';

/** Rotation and retention defaults: ~64 MiB files, a new file a day, kept 400 days (PCI DSS 10.5.1's year plus margin). */
export const auditMaxFileBytesDefault = 64 * 1024 * 1024;
export const auditMaxFileAgeMsDefault = 24 * 60 * 60 * 1000;
export const auditRetentionMsDefault = 400 * 24 * 60 * 60 * 1000;
/** Files deleted per retention event (each is named in it). */
const retentionFilesPerEventMax = 100;
/** How often an idle member looks for files past their retention. */
const retentionCheckIntervalMs = 60 * 60 * 1000;

export interface AuditLogOptions {
  /** Seal every file under this trail key (`trail-key.ts`); plaintext without it. */
  readonly key?: TrailKey;
  readonly maxFileBytes?: number;
  readonly maxFileAgeMs?: number;
  readonly retentionMs?: number;
  /** A background compression or retention pass failed (the trail itself is unharmed). */
  readonly onMaintenanceError?: (error: unknown) => void;
  /** The clock (tests). */
  readonly nowMs?: () => number;
}

/** The file name of a file opened at `ms`. */
export function trailFileNameAt(ms: number): string {
  return `audit-${new Date(ms).toISOString().replace(/[:.]/g, '-')}.jsonl`;
}

/** When a file was opened, from its name (NaN for a name not written by `trailFileNameAt`). */
export function trailFileTimeMs(name: string): number {
  const match = /^audit-(\d{4}-\d{2}-\d{2})T(\d{2})-(\d{2})-(\d{2})-(\d{3})Z\.jsonl$/.exec(name);
  return match === null ? Number.NaN : Date.parse(`${match[1]}T${match[2]}:${match[3]}:${match[4]}.${match[5]}Z`);
}

/** Where a member's chain stands: event `seq` of `file` has hash `hash`. */
export interface ChainHead {
  readonly file: string;
  readonly seq: number;
  readonly hash: string;
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
  private fileBytes = 0;
  private fileOpenedMs: number;
  /** Writes and syncs the chained lines, in order (the file the writer writes may lag the chain's). */
  private readonly commits: GroupCommit<ChainHead>;
  private closed = false;
  private durable: ChainHead;
  private readonly listeners = new Set<(line: string, file: string) => void>();
  /** The file the writer writes (the chain may already be in a newer one, queued). */
  private writerFile: string;
  /** Compression and retention, one at a time, off the write path. */
  private maintenance: Promise<void> = Promise.resolve();
  private retentionTimer: NodeJS.Timeout | undefined;
  /** Aborted by `close`: a compression under way stops rather than hold up a shutdown. */
  private readonly stopping = new AbortController();
  private readonly maxFileBytes: number;
  private readonly maxFileAgeMs: number;
  private readonly retentionMs: number;
  private readonly now: () => number;
  /** The last event's clock reading and its text (`timeText`). */
  private lastTimeMs = Number.NaN;
  private lastTime = '';

  /** Events recorded and not yet handed to the writer (the metrics' audit queue). */
  get queuedEvents(): number {
    return this.commits.queuedEvents;
  }

  /** The trail key the files are sealed under (readers of this trail need it), if any. */
  get key(): TrailKey | undefined {
    return this.options.key;
  }

  /** The file events are chained into now. */
  get file(): string {
    return this.currentFile;
  }

  private constructor(
    writer: RecordWriter,
    private currentFile: string,
    private readonly directory: string,
    private readonly member: string,
    private prev: string,
    private readonly onError: (error: unknown) => void,
    private readonly options: AuditLogOptions,
  ) {
    this.durable = { file: currentFile, seq: -1, hash: prev };
    this.writerFile = currentFile;
    this.maxFileBytes = Math.max(1, options.maxFileBytes ?? auditMaxFileBytesDefault);
    this.maxFileAgeMs = Math.max(1, options.maxFileAgeMs ?? auditMaxFileAgeMsDefault);
    this.retentionMs = Math.max(1, options.retentionMs ?? auditRetentionMsDefault);
    this.now = options.nowMs ?? Date.now;
    this.fileOpenedMs = this.now();
    this.commits = new GroupCommit<ChainHead>(writer, currentFile, {
      openFile: (file) => this.openFile(file),
      fileClosed: (file) => {
        this.compressLater({ name: file, path: path.join(this.directory, file), compressed: false });
        this.retainLater();
      },
      durable: (batch) => {
        if (batch.head !== undefined) this.durable = batch.head;
        for (const listener of this.listeners) for (const line of batch.lines) listener(line, batch.file);
      },
      failed: (error) => this.onError(error),
    });
  }

  /** Opens a new file in `directory`, linked to the last event of the newest earlier file. */
  static async open(directory: string, member: string, onError: (error: unknown) => void, options: AuditLogOptions = {}): Promise<AuditLog> {
    await mkdir(directory, { recursive: true, mode: 0o700 });
    await tidyTrailDirectory(directory);
    const earlier = await listTrailFiles(directory);
    let prev = genesisHash;
    let previousFile = '';
    const last = earlier[earlier.length - 1];
    if (last !== undefined) {
      previousFile = last.name;
      const record = await readLastRecord(last, options.key).catch(() => undefined);
      const event = record === undefined ? 'none' : parseEventLine(record);
      // A torn, oversized or altered last line: verify reports it, and the new file says so.
      prev = typeof event === 'string' ? 'unreadable' : event.hash;
    }
    // Names sort in creation order; a name is never reused (a clash waits for the next millisecond).
    const now = options.nowMs ?? Date.now;
    let writer: RecordWriter | undefined;
    let name = '';
    while (writer === undefined) {
      name = trailFileNameAt(now());
      if (name > previousFile) writer = await RecordWriter.create(path.join(directory, name), options.key);
      if (writer === undefined) await new Promise((resolve) => setTimeout(resolve, 2));
    }
    const log = new AuditLog(writer, name, directory, member, prev, onError, options);
    await log.record({ action: 'audit.start', targets: previousFile === '' ? [] : [previousFile], outcome: 'allowed' });
    // Files the previous process closed are compressed, and old ones deleted, in the background.
    for (const file of earlier) if (!file.compressed) log.compressLater(file);
    log.retainLater();
    log.retentionTimer = setInterval(() => log.retainLater(), retentionCheckIntervalMs).unref();
    return log;
  }

  /**
   * Adds an event to the chain; the answer comes once it is durably written (a failed write
   * rejects, after `onError` heard of it). Order is the order of calls. The first `alwaysNamed`
   * targets (sensitive keys) are never summarised away.
   */
  record(fields: AuditFields, alwaysNamed = 0): Promise<void> {
    if (this.closed) return Promise.reject(new Error('the audit trail is closed'));
    const failed = this.commits.failed;
    if (failed !== undefined) return Promise.reject(failed.error);
    if (this.seq > 0) {
      const reason = this.fileBytes >= this.maxFileBytes ? 'size' : this.now() - this.fileOpenedMs >= this.maxFileAgeMs ? 'age' : undefined;
      if (reason !== undefined) this.rotate(reason);
    }
    return this.enqueue(this.chain(boundFields(fields, alwaysNamed)));
  }

  /** Starts the next file: its `audit.start` links to the last event chained. */
  private rotate(reason: string): void {
    const previousFile = this.currentFile;
    // Names sort in creation order: the next one is at least a millisecond after the previous.
    const previousMs = trailFileTimeMs(previousFile);
    this.currentFile = trailFileNameAt(Number.isNaN(previousMs) ? this.now() : Math.max(this.now(), previousMs + 1));
    this.fileOpenedMs = this.now();
    this.seq = 0;
    this.fileBytes = 0;
    void this.enqueue(this.chain({ action: 'audit.start', targets: [previousFile], outcome: 'allowed', detail: `rotated (${reason})` }));
  }

  private enqueue(line: string): Promise<void> {
    return this.commits.add(this.currentFile, line, { file: this.currentFile, seq: this.seq - 1, hash: this.prev });
  }

  private chain(fields: AuditFields): string {
    const time = this.timeText();
    const build = (bounded: AuditFields): { readonly line: string; readonly hash: string } => chainFields(bounded, this.seq, time, this.member, this.prev);
    let built = build(fields);
    // A UTF-8 byte is at most 3 per UTF-16 unit: only a line that could be too long is measured.
    if (built.line.length * 3 > auditLineBytesMax && Buffer.byteLength(built.line) > auditLineBytesMax) {
      // Only targets named past the summary bound (sensitive keys) can get here: summarise them too.
      built = build({ ...fields, targets: boundTargets(fields.targets ?? [], 0) });
    }
    this.seq += 1;
    this.prev = built.hash;
    this.fileBytes += built.line.length + 1;
    return built.line;
  }

  /** The clock as an event's `time` (ISO 8601); events of the same millisecond share the text. */
  private timeText(): string {
    const ms = this.now();
    if (ms !== this.lastTimeMs) {
      this.lastTimeMs = ms;
      this.lastTime = new Date(ms).toISOString();
    }
    return this.lastTime;
  }

  /** The writer of the next file (rotation); the group commit closes the old one once its syncs are done. */
  private async openFile(file: string): Promise<RecordWriter> {
    const next = await RecordWriter.create(path.join(this.directory, file), this.options.key);
    if (next === undefined) throw new Error(`audit file ${file} exists already: another process writes this audit directory`);
    this.writerFile = file;
    return next;
  }

  private inBackground(task: () => Promise<void>): void {
    this.maintenance = this.maintenance.then(async () => {
      if (this.closed || this.commits.failed !== undefined) return;
      await task().catch((error: unknown) => {
        if (!this.closed) this.options.onMaintenanceError?.(error);
      });
    });
  }

  private compressLater(file: TrailFile): void {
    this.inBackground(() => compressTrailFile(file, this.options.key, this.stopping.signal));
  }

  /** Deletes files past their retention, oldest first, after recording so (see the file comment). */
  private retainLater(): void {
    this.inBackground(async () => {
      for (;;) {
        const files = await listTrailFiles(this.directory);
        const cutoffMs = this.now() - this.retentionMs;
        const expired: TrailFile[] = [];
        for (const [index, file] of files.entries()) {
          const next = files[index + 1];
          // A file was closed when its successor was opened; the file being written is never deleted.
          if (next === undefined || file.name >= this.writerFile || !(trailFileTimeMs(next.name) <= cutoffMs)) break;
          expired.push(file);
          if (expired.length === retentionFilesPerEventMax) break;
        }
        const firstKept = files[expired.length];
        if (expired.length === 0 || firstKept === undefined) return;
        await this.record({
          action: retentionAction,
          targets: [firstKept.name, ...expired.map((file) => file.name)],
          outcome: 'allowed',
          detail: `deleted ${expired.length} files closed before ${new Date(cutoffMs).toISOString()} (retention ${Math.round(this.retentionMs / 1000)} s)`,
        });
        for (const file of expired) await rm(file.path, { force: true });
        const handle = await open(this.directory, 'r');
        try {
          await handle.sync();
        } finally {
          await handle.close();
        }
        if (expired.length < retentionFilesPerEventMax) return;
      }
    });
  }

  /** Resolves once every event recorded so far is durable. */
  flush(): Promise<void> {
    return this.commits.flush();
  }

  /** Resolves once the background compression and retention queued so far are done (tests, shutdown). */
  async settled(): Promise<void> {
    let current: Promise<void>;
    do {
      current = this.maintenance;
      await current;
    } while (current !== this.maintenance);
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
    if (this.retentionTimer !== undefined) clearInterval(this.retentionTimer);
    this.closed = true;
    // A compression under way stops (its original stays; the next start compresses it again).
    this.stopping.abort();
    await this.maintenance;
    await this.commits.close();
  }
}

export type { AuditEvent, AuditFields };
