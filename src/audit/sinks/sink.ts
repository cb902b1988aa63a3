/**
 * One streaming audit sink: delivers a member's trail to a receiver, in trail order, resuming
 * after a durable cursor. The trail files are the source of truth; memory only speeds things up.
 *
 * Feeding: the trail calls `offer` with each event once it is durable. The sink keeps those in a
 * bounded queue (`queueEventsMax`, `queueBytesMax`). When the receiver falls behind and the queue
 * is full, the queue is emptied — never grown — and the sink drops to catch-up mode: it reads the
 * events after its position from the trail files (a batch at a time, up to the durable head) and
 * returns to the queue once it is contiguous again. A member that starts catches up the same way
 * from the cursor, so a restart loses nothing either.
 *
 * Delivery: one batch in flight, so order is kept. The cursor moves (fsynced) only when the
 * receiver acknowledged, or confirmed (see `transport.ts`); a failure sends the sink back to the
 * cursor. A batch the receiver did not acknowledge is retried byte for byte (same idempotency
 * key) while it still starts right after the cursor, with exponential backoff
 * (`retryDelayMinMs`…`retryDelayMaxMs`). Nothing is ever dropped: while the receiver is down the
 * events wait in the trail, and the metrics and rate-limited log lines say how many.
 */
import path from 'node:path';
import { parseEventLine, type AuditEvent } from '../event.js';
import type { StoredRecord } from '../records.js';
import type { SinkCursor } from './cursor.js';
import { comparePositions, describePosition, follows, type TrailPosition } from './position.js';
import { PartialDeliveryError, type SinkRecord, type SinkTransport } from './transport.js';

export interface SinkLimits {
  /** Events kept in memory for the sink before it falls back to reading the trail. */
  readonly queueEventsMax: number;
  readonly queueBytesMax: number;
  /** Events and payload bytes of one delivery. */
  readonly batchEventsMax: number;
  readonly batchBytesMax: number;
  readonly retryDelayMinMs: number;
  readonly retryDelayMaxMs: number;
  /** Idle time after which events sent but not confirmed (syslog) are confirmed. */
  readonly confirmIdleMs: number;
  /** How often a sink that stays down says so again in the log. */
  readonly downLogIntervalMs: number;
}

export const sinkLimitsDefault: SinkLimits = {
  queueEventsMax: 10_000,
  queueBytesMax: 16 * 1024 * 1024,
  batchEventsMax: 500,
  batchBytesMax: 1024 * 1024,
  retryDelayMinMs: 100,
  retryDelayMaxMs: 5_000,
  confirmIdleMs: 500,
  downLogIntervalMs: 30_000,
};

/** The member's trail as the sink reads it (the readers of `verify.ts` and `records.ts`). */
export interface TrailSource {
  /** Trail files, oldest first (full paths). */
  files(): Promise<string[]>;
  records(file: string): AsyncIterable<StoredRecord>;
  /** The last durably written event (seq -1: none yet in that file). */
  head(): TrailPosition;
}

export interface SinkLog {
  warn(fields: Record<string, unknown>, message: string): void;
  info(fields: Record<string, unknown>, message: string): void;
}

export interface SinkStatus {
  readonly name: string;
  /** The last attempt reached the receiver (no failure since). */
  readonly up: boolean;
  /** Since when the receiver has been failing (epoch ms), while it is. */
  readonly downSinceMs?: number;
  readonly delivered: number;
  readonly failures: number;
  /** Events durable in the trail that the receiver does not hold yet (a lower bound while catching up across files). */
  readonly pending: number;
  /** Times the sink fell back to reading the trail (queue full, gap, failure, start). */
  readonly catchUps: number;
  readonly queued: number;
  readonly delivering: TrailPosition | undefined;
}

interface Queued {
  readonly position: TrailPosition;
  readonly line: string;
}

/** The sequence number of a canonical event line (fields in fixed order: seq precedes time). */
const seqOf = (line: string): number | undefined => {
  const match = /,"seq":(\d+),"time":"/.exec(line);
  return match === null ? undefined : Number(match[1]);
};

export interface AuditSinkOptions {
  readonly name: string;
  readonly transport: SinkTransport;
  readonly format: (event: AuditEvent, line: string, file: string) => string;
  readonly cursor: SinkCursor;
  readonly trail: TrailSource;
  readonly log: SinkLog;
  readonly limits?: Partial<SinkLimits>;
  readonly now?: () => number;
}

export class AuditSink {
  readonly name: string;
  private readonly limits: SinkLimits;
  private readonly now: () => number;
  private queue: Queued[] = [];
  private queueBytes = 0;
  private mode: 'catch-up' | 'live' = 'catch-up';
  /** The last event handed to the receiver (confirmed or not). */
  private sent: TrailPosition | undefined;
  /** Events sent and not yet confirmed, and the last of them. */
  private unconfirmed = 0;
  private retry: SinkRecord[] | undefined;
  private stopped = false;
  private wake: (() => void) | undefined;
  private running: Promise<void> | undefined;
  private delivered = 0;
  private failures = 0;
  private catchUps = 0;
  private up = true;
  private downSinceMs: number | undefined;
  private lastDownLogMs = 0;

  constructor(private readonly options: AuditSinkOptions) {
    this.name = options.name;
    this.limits = { ...sinkLimitsDefault, ...options.limits };
    this.now = options.now ?? Date.now;
    this.sent = options.cursor.delivered;
  }

  /** An event that is now durable in the trail file `file` (a base name). */
  offer(line: string, file: string): void {
    if (this.stopped) return;
    const seq = seqOf(line);
    if (seq === undefined) return; // not a canonical line: the trail reader will report it
    const bytes = Buffer.byteLength(line);
    if (this.queue.length >= this.limits.queueEventsMax || this.queueBytes + bytes > this.limits.queueBytesMax) {
      // Behind: forget the queue rather than grow; the gap sends the loop back to the trail.
      this.queue = [];
      this.queueBytes = 0;
    }
    this.queue.push({ position: { file, seq }, line });
    this.queueBytes += bytes;
    this.wake?.();
  }

  start(): void {
    this.running ??= this.run();
  }

  async stop(): Promise<void> {
    this.stopped = true;
    this.wake?.();
    this.options.transport.close();
    await this.running;
  }

  status(): SinkStatus {
    const head = this.options.trail.head();
    const confirmed = this.options.cursor.delivered;
    let pending: number;
    if (confirmed === undefined || confirmed.file < head.file) pending = head.seq + 1;
    else pending = Math.max(0, head.seq - confirmed.seq);
    return {
      name: this.name,
      up: this.up,
      ...(this.downSinceMs === undefined ? {} : { downSinceMs: this.downSinceMs }),
      delivered: this.delivered,
      failures: this.failures,
      pending,
      catchUps: this.catchUps,
      queued: this.queue.length,
      delivering: this.sent,
    };
  }

  private async run(): Promise<void> {
    let delayMs = this.limits.retryDelayMinMs;
    while (!this.stopped) {
      try {
        await this.step();
        delayMs = this.limits.retryDelayMinMs;
      } catch (error) {
        if (this.stopped) return;
        this.failed(error);
        await this.sleep(delayMs);
        delayMs = Math.min(this.limits.retryDelayMaxMs, delayMs * 2);
      }
    }
  }

  private async step(): Promise<void> {
    if (this.retry !== undefined) {
      await this.deliver(this.retry);
      return;
    }
    if (this.mode === 'catch-up') {
      this.catchUps += 1;
      await this.catchUp();
      this.mode = 'live';
      return;
    }
    const batch = this.takeLive();
    if (batch === 'gap') {
      this.mode = 'catch-up';
      return;
    }
    if (batch.length > 0) {
      await this.deliver(batch);
      return;
    }
    if (this.unconfirmed > 0) {
      // Idle with events sent but not confirmed (syslog): confirm them once nothing else comes.
      if (await this.idle(this.limits.confirmIdleMs)) return;
      await this.options.transport.confirm();
      await this.confirmed();
      return;
    }
    await this.idle(undefined);
  }

  /** Waits for an offer (true) or `timeoutMs` (false). */
  private idle(timeoutMs: number | undefined): Promise<boolean> {
    if (this.stopped || this.queue.length > 0) return Promise.resolve(true);
    return new Promise((resolve) => {
      const timer = timeoutMs === undefined ? undefined : setTimeout(() => {
        this.wake = undefined;
        resolve(false);
      }, timeoutMs);
      this.wake = () => {
        this.wake = undefined;
        if (timer !== undefined) clearTimeout(timer);
        resolve(true);
      };
    });
  }

  private sleep(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const timer = setTimeout(resolve, ms);
      const previous = this.wake;
      this.wake = () => {
        // Only a stop cuts the backoff short; offers wait for the next attempt.
        if (this.stopped) {
          clearTimeout(timer);
          resolve();
        }
        previous?.();
      };
    });
  }

  /** The queued events that follow what was sent, as records; 'gap' when they do not. */
  private takeLive(): SinkRecord[] | 'gap' {
    const sent = this.sent;
    let index = 0;
    while (index < this.queue.length && sent !== undefined && comparePositions((this.queue[index] as Queued).position, sent) <= 0) index += 1;
    if (index > 0) this.dequeue(index);
    const first = this.queue[0];
    if (first === undefined) return [];
    if (!follows(sent, first.position)) return 'gap';
    const batch: SinkRecord[] = [];
    let bytes = 0;
    let count = 0;
    for (const queued of this.queue) {
      if (batch.length >= this.limits.batchEventsMax || (batch.length > 0 && bytes + queued.line.length > this.limits.batchBytesMax)) break;
      const record = this.record(queued.line, queued.position.file);
      count += 1;
      if (record === undefined) continue;
      batch.push(record);
      bytes += record.payload.length;
    }
    this.dequeue(count);
    return batch;
  }

  private dequeue(count: number): void {
    for (const queued of this.queue.slice(0, count)) this.queueBytes -= Buffer.byteLength(queued.line);
    this.queue = this.queue.slice(count);
  }

  private record(line: string, file: string): SinkRecord | undefined {
    const event = parseEventLine(line);
    if (typeof event === 'string') {
      this.options.log.warn({ sink: this.name, file, problem: event }, 'audit sink: skipping a trail line that is not an event (rampart audit verify names it)');
      return undefined;
    }
    return { position: { file, seq: event.seq }, event, payload: this.options.format(event, line, file) };
  }

  /** Delivers the trail's events after `sent`, up to the durable head as it was when this began. */
  private async catchUp(): Promise<void> {
    const head = this.options.trail.head();
    const files = await this.options.trail.files();
    const from = this.sent;
    if (from !== undefined && !files.some((file) => path.basename(file) === from.file) && files.length > 0) {
      this.options.log.warn({ sink: this.name, cursor: describePosition(from) }, 'audit sink: the trail file after which delivery resumes is gone (removed by retention?); resuming at the next file');
    }
    let batch: SinkRecord[] = [];
    let bytes = 0;
    for (const file of files) {
      const name = path.basename(file);
      if (name > head.file) break;
      if (from !== undefined && name < from.file) continue;
      let previousSeq = -1;
      for await (const stored of this.options.trail.records(file)) {
        if (this.stopped) return;
        if (stored.kind === 'torn' && name === head.file) break; // a write in flight
        const seq = stored.kind === 'record' ? seqOf(stored.text) : undefined;
        previousSeq = seq ?? previousSeq + 1;
        const position = { file: name, seq: previousSeq };
        if (from !== undefined && comparePositions(position, from) <= 0) continue;
        if (name === head.file && previousSeq > head.seq) break; // not durable yet: the queue brings it
        const record = stored.kind === 'record' && seq !== undefined ? this.record(stored.text, name) : undefined;
        if (record === undefined) {
          // A torn, oversized or altered line (verify names it): it takes its position and is
          // skipped — said in the log, and the sink moves past it rather than reading it again.
          if (stored.kind !== 'record' || seq === undefined) this.options.log.warn({ sink: this.name, file: name, line: stored.number }, 'audit sink: skipping an unreadable trail line (rampart audit verify names it)');
          if (batch.length > 0) await this.deliver(batch);
          batch = [];
          bytes = 0;
          if (this.sent === undefined || comparePositions(position, this.sent) > 0) this.sent = position;
          continue;
        }
        batch.push(record);
        bytes += record.payload.length;
        if (batch.length >= this.limits.batchEventsMax || bytes >= this.limits.batchBytesMax) {
          await this.deliver(batch);
          batch = [];
          bytes = 0;
        }
      }
    }
    if (batch.length > 0) await this.deliver(batch);
  }

  private async deliver(batch: SinkRecord[]): Promise<void> {
    this.retry = batch;
    let acknowledged: boolean;
    try {
      acknowledged = await this.options.transport.send(batch);
    } catch (error) {
      // The receiver took the start of the batch (RELP answers each event): the cursor moves past
      // it before the failure sends the sink back to the cursor, so only the rest goes again.
      const taken = error instanceof PartialDeliveryError ? batch[error.acknowledged - 1] : undefined;
      if (taken !== undefined && this.unconfirmed === 0) {
        this.sent = taken.position;
        this.unconfirmed = (error as PartialDeliveryError).acknowledged;
        await this.confirmed();
      }
      throw error;
    }
    this.sent = (batch[batch.length - 1] as SinkRecord).position;
    this.unconfirmed += batch.length;
    // Until the cursor holds it (its disk may be full), the batch is the one to send again, as is.
    if (acknowledged) await this.confirmed();
    this.retry = undefined;
    this.recovered();
  }

  /** Everything sent is at the receiver: the cursor moves there. */
  private async confirmed(): Promise<void> {
    if (this.sent === undefined || this.unconfirmed === 0) return;
    await this.options.cursor.save(this.sent);
    this.delivered += this.unconfirmed;
    this.unconfirmed = 0;
  }

  private recovered(): void {
    if (this.up) return;
    this.up = true;
    const downMs = this.now() - (this.downSinceMs ?? this.now());
    this.options.log.info({ sink: this.name, downSeconds: Math.round(downMs / 1000), failures: this.failures }, 'audit sink recovered; delivering the events that waited in the trail');
    this.downSinceMs = undefined;
  }

  private failed(error: unknown): void {
    this.failures += 1;
    const now = this.now();
    this.options.transport.close();
    // Whatever was not confirmed is sent again; a batch that starts right after the cursor is
    // retried as it was (same idempotency key), anything else is read again from the trail.
    const cursor = this.options.cursor.delivered;
    this.sent = cursor;
    this.unconfirmed = 0;
    const first = this.retry?.[0];
    if (first !== undefined && !(cursor === undefined ? first.position.seq === 0 : follows(cursor, first.position))) this.retry = undefined;
    this.mode = 'catch-up';
    if (this.up) {
      this.up = false;
      this.downSinceMs = now;
    }
    if (now - this.lastDownLogMs >= this.limits.downLogIntervalMs) {
      this.lastDownLogMs = now;
      this.options.log.warn({
        sink: this.name,
        err: error instanceof Error ? error.message : String(error),
        downSeconds: Math.round((now - (this.downSinceMs ?? now)) / 1000),
        pending: this.status().pending,
        failures: this.failures,
      }, 'audit sink down: events wait in the trail and are delivered when it returns');
    }
  }

  /** Whether the sink takes events: up, or down for less than `graceMs`. */
  accepting(graceMs: number): boolean {
    return this.up || this.now() - (this.downSinceMs ?? this.now()) < graceMs;
  }
}
