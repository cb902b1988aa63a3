/**
 * The audit trail: every client request and its decision as one JSON line, hash-chained so that
 * changing, removing or reordering any line is detectable (`rampart audit verify`).
 *
 * Each member writes its own files under the audit directory, one per process start
 * (`audit-<start time>.jsonl`, mode 0600). Every event carries the hash of the one before it; the first event
 * of a file (`audit.start`) carries the hash of the last event of the previous file, so the files
 * form one chain. Events are buffered briefly and written with one write and one fdatasync per
 * batch. Events never contain values, passwords or tokens — keys and names only.
 */
import { createHash } from 'node:crypto';
import { mkdir, open, readdir, readFile, type FileHandle } from 'node:fs/promises';
import path from 'node:path';

export const genesisHash = '0'.repeat(64);

export interface AuditFields {
  /** e.g. `Put`, `Authenticate`, `Watch.create`, `audit.start`. */
  readonly action: string;
  readonly user?: string;
  /** How the user was identified: `token`, `certificate`, or `none`. */
  readonly via?: string;
  readonly source?: string;
  /** Keys and ranges touched (printable text, or `base64:` for other bytes), names of users or roles. */
  readonly targets?: readonly string[];
  /** `allowed`, `denied` (permission or authentication) or `failed` (any other error). */
  readonly outcome: 'allowed' | 'denied' | 'failed';
  /** The gRPC status name. */
  readonly code?: string;
  readonly detail?: string;
}

export interface AuditEvent extends AuditFields {
  readonly seq: number;
  readonly time: string;
  readonly member: string;
  readonly prev: string;
  readonly hash: string;
}

/** The hash of an event: SHA-256 over its previous hash and its canonical JSON without `hash`. */
export function hashEvent(event: Omit<AuditEvent, 'hash'>): string {
  const { prev, ...rest } = event;
  const canonical = JSON.stringify(rest, Object.keys(rest).sort());
  return createHash('sha256').update(prev).update('\n').update(canonical).digest('hex');
}

/** A key as audit text: printable UTF-8 as is, anything else as base64. */
export function auditKey(key: Buffer): string {
  const text = key.toString('utf8');
  return /^[\x20-\x7e]*$/.test(text) ? text : `base64:${key.toString('base64')}`;
}

async function chainFiles(directory: string): Promise<string[]> {
  const names = await readdir(directory).catch(() => [] as string[]);
  return names.filter((name) => /^audit-.*\.jsonl$/.test(name)).sort().map((name) => path.join(directory, name));
}

export interface VerifyResult {
  readonly ok: boolean;
  readonly events: number;
  readonly files: number;
  readonly head: string;
  readonly problem?: string;
}

/**
 * Checks every file of a directory (or one file) in order: hashes, links and sequence numbers, and
 * that the anchored event (if given) is there. `onEvent` sees each event that checked out.
 */
export async function verifyAudit(target: string, anchor?: string, onEvent?: (event: AuditEvent) => void): Promise<VerifyResult> {
  const files = target.endsWith('.jsonl') ? [target] : await chainFiles(target);
  let previous: string | undefined;
  let events = 0;
  let anchorSeen = false;
  const broken = (problem: string): VerifyResult => ({ ok: false, events, files: files.length, head: previous ?? genesisHash, problem });
  for (const file of files) {
    const lines = (await readFile(file, 'utf8')).split('\n');
    if (lines[lines.length - 1] === '') lines.pop();
    let seq = 0;
    for (const [index, line] of lines.entries()) {
      const where = `${file}:${index + 1}`;
      let event: AuditEvent;
      try {
        event = JSON.parse(line) as AuditEvent;
      } catch {
        return broken(`${where}: not a JSON event (torn or altered)`);
      }
      const { hash, ...rest } = event;
      if (hashEvent(rest) !== hash) return broken(`${where}: hash does not match the event (altered)`);
      if (index === 0) {
        if (event.action !== 'audit.start') return broken(`${where}: a file must begin with audit.start`);
        if (previous !== undefined && event.prev !== previous) return broken(`${where}: does not continue the previous file (a file was removed or altered)`);
      } else if (event.prev !== previous) {
        return broken(`${where}: does not follow the line before it (a line was removed, inserted or moved)`);
      }
      if (event.seq !== seq) return broken(`${where}: sequence ${event.seq}, expected ${seq}`);
      seq += 1;
      previous = hash;
      events += 1;
      if (hash === anchor) anchorSeen = true;
      onEvent?.(event);
    }
  }
  if (anchor !== undefined && !anchorSeen) {
    return broken(`the anchored event ${anchor} is not in the trail (lines were removed from its end, or it belongs to another trail)`);
  }
  return { ok: true, events, files: files.length, head: previous ?? genesisHash };
}

/** Every event of a directory, oldest first, read once while verifying the chain (a broken one throws). */
export async function readAudit(directory: string): Promise<AuditEvent[]> {
  const events: AuditEvent[] = [];
  const verified = await verifyAudit(directory, undefined, (event) => events.push(event));
  if (!verified.ok) throw new Error(`the audit trail is broken: ${verified.problem}`);
  return events;
}

export class AuditLog {
  private buffer: string[] = [];
  private seq = 0;
  private timer: NodeJS.Timeout | undefined;
  private writing: Promise<void> = Promise.resolve();
  private closed = false;
  private readonly listeners = new Set<(line: string) => void>();

  private constructor(private readonly file: FileHandle, private readonly member: string, private prev: string, private readonly onError: (error: unknown) => void) {}

  /** Opens a new file in `directory`, linked to the last event of the newest earlier file. */
  static async open(directory: string, member: string, onError: (error: unknown) => void, flushMs = 100): Promise<AuditLog> {
    await mkdir(directory, { recursive: true, mode: 0o700 });
    const earlier = await chainFiles(directory);
    let prev = genesisHash;
    let previousFile = '';
    const last = earlier[earlier.length - 1];
    if (last !== undefined) {
      previousFile = path.basename(last);
      const lines = (await readFile(last, 'utf8')).split('\n').filter((line) => line !== '');
      try {
        prev = (JSON.parse(lines[lines.length - 1] ?? '') as AuditEvent).hash;
      } catch {
        prev = 'unreadable'; // a torn last line: verify reports it, and the new file says so
      }
    }
    // Names sort in creation order; a name is never reused (a clash waits for the next millisecond).
    let handle: FileHandle | undefined;
    while (handle === undefined) {
      const name = `audit-${new Date().toISOString().replace(/[:.]/g, '-')}.jsonl`;
      handle = await open(path.join(directory, name), 'wx', 0o600).catch(async (error: NodeJS.ErrnoException) => {
        if (error.code !== 'EEXIST') throw error;
        await new Promise((resolve) => setTimeout(resolve, 2));
        return undefined;
      });
    }
    const log = new AuditLog(handle, member, prev, onError);
    log.record({ action: 'audit.start', outcome: 'allowed', targets: previousFile === '' ? [] : [previousFile] });
    log.timer = setInterval(() => void log.flush(), flushMs);
    log.timer.unref();
    await log.flush();
    return log;
  }

  record(fields: AuditFields): void {
    if (this.closed) return;
    const base = { ...fields, seq: this.seq++, time: new Date().toISOString(), member: this.member, prev: this.prev };
    const hash = hashEvent(base);
    this.prev = hash;
    this.buffer.push(JSON.stringify({ ...base, hash }));
  }

  /** Writes what is buffered, durably, in order. */
  flush(): Promise<void> {
    if (this.buffer.length === 0) return this.writing;
    const lines = `${this.buffer.join('\n')}\n`;
    this.buffer = [];
    this.writing = this.writing.then(async () => {
      await this.file.write(lines);
      await this.file.datasync();
      if (this.listeners.size > 0) {
        const written = lines.slice(0, -1).split('\n');
        for (const listener of this.listeners) for (const line of written) listener(line);
      }
    }).catch(this.onError);
    return this.writing;
  }

  /** The hash and sequence number of the last recorded event: an anchor to keep elsewhere. */
  get head(): { hash: string; seq: number } {
    return { hash: this.prev, seq: this.seq - 1 };
  }

  /** Calls `listener` with each event's line once it is durably written; returns the unsubscribe. */
  subscribe(listener: (line: string) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  async close(): Promise<void> {
    if (this.timer !== undefined) clearInterval(this.timer);
    await this.flush();
    this.closed = true;
    await this.file.close();
  }
}
