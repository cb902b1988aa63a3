/**
 * Reading a member's trail from a position, for whoever delivers events elsewhere (a sink catching
 * up after an outage): events in order across rotated, compressed and sealed files, after a cursor
 * (trail file name and sequence number, as events and checkpoints name them), and for
 * `rampart audit tail PATH`, offline. It reads; it does not verify the chain (`verify.ts` does) — a
 * record that is not an event stops it with the place named.
 */
import { parseEventLine, type AuditEvent } from './event.js';
import { listTrailFiles, readRecords, type TrailFile } from './records.js';
import type { TrailKey } from './sealed-trail.js';

/** An event's place in the trail: event `seq` of file `file` (its trail name, `audit-….jsonl`). */
export interface TrailCursor {
  readonly file: string;
  readonly seq: number;
}

/** How a reader treats bytes after the last complete record of a file. */
export interface ReadEventsOptions {
  /**
   * `stop`: end the file there quietly (a follower of a live trail reads while the member writes:
   * the rest of that record comes later); by default it stops the reader with the place named.
   */
  readonly tornEnd?: 'stop' | 'throw';
}

/** Every event of one trail file, in order (a record that is not an event stops it, named). */
export async function* eventsOfFile(file: TrailFile, key?: TrailKey, options: ReadEventsOptions = {}): AsyncGenerator<AuditEvent> {
  for await (const record of readRecords(file, key)) {
    if (record.kind === 'torn' && options.tornEnd === 'stop') return;
    if (record.kind !== 'record') {
      throw new Error(`${file.path}:${record.number}: ${record.kind === 'damaged' ? record.detail : `${record.kind} record`} (rampart audit verify names the damage)`);
    }
    const event = parseEventLine(record.text);
    if (typeof event === 'string') throw new Error(`${file.path}:${record.number}: ${event}`);
    yield event;
  }
}

/**
 * Every event after `after` (all of them without it), oldest first, with its file. A cursor whose
 * file is gone (deleted by retention) continues at the oldest file kept.
 */
export async function* readEventsAfter(directory: string, after?: TrailCursor, key?: TrailKey, options: ReadEventsOptions = {}): AsyncGenerator<{ readonly file: string; readonly event: AuditEvent }> {
  for (const file of await listTrailFiles(directory)) {
    if (after !== undefined && file.name < after.file) continue;
    for await (const event of eventsOfFile(file, key, options)) {
      if (after !== undefined && file.name === after.file && event.seq <= after.seq) continue;
      yield { file: file.name, event };
    }
  }
}
