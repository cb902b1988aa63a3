/**
 * A sink's durable cursor: the last event of the member's trail that the sink's receiver is known
 * to hold (acknowledged, or confirmed by an orderly close). After a receiver outage or a member
 * restart the sink resumes right after it, reading the trail files.
 *
 * File format (one per sink, `<state dir>/<sink id>.cursor`, mode 0600):
 *   {"version":1,"sink":"<name>","file":"audit-….jsonl","seq":N}
 * Written to a temporary file, fsynced and renamed over the old one, so a crash leaves the old or
 * the new cursor, never a torn one. A cursor that is unreadable is reported, and the sink starts
 * from the beginning of the trail (duplicates rather than loss).
 */
import { mkdir, open, readFile, rename } from 'node:fs/promises';
import path from 'node:path';
import type { TrailPosition } from './position.js';

const cursorVersion = 1;

export class SinkCursor {
  private constructor(private readonly file: string, private readonly sink: string, private position: TrailPosition | undefined) {}

  /** Reads the cursor of `id` (undefined position: nothing delivered yet); `warn` hears of an unreadable one. */
  static async open(directory: string, id: string, sink: string, warn: (message: string) => void): Promise<SinkCursor> {
    await mkdir(directory, { recursive: true, mode: 0o700 });
    const file = path.join(directory, `${id}.cursor`);
    const text = await readFile(file, 'utf8').catch((error: NodeJS.ErrnoException) => {
      if (error.code === 'ENOENT') return undefined;
      throw error;
    });
    let position: TrailPosition | undefined;
    if (text !== undefined) {
      const parsed = parseCursor(text);
      if (parsed === undefined) warn(`${file} is not a sink cursor; delivering the whole trail again (the receiver may see duplicates)`);
      else position = parsed;
    }
    return new SinkCursor(file, sink, position);
  }

  get delivered(): TrailPosition | undefined {
    return this.position;
  }

  /** Makes `position` the durable cursor (fsynced before it resolves). */
  async save(position: TrailPosition): Promise<void> {
    const temporary = `${this.file}.tmp`;
    const handle = await open(temporary, 'w', 0o600);
    try {
      await handle.writeFile(`${JSON.stringify({ version: cursorVersion, sink: this.sink, file: position.file, seq: position.seq })}\n`);
      await handle.sync();
    } finally {
      await handle.close();
    }
    await rename(temporary, this.file);
    this.position = position;
  }
}

function parseCursor(text: string): TrailPosition | undefined {
  try {
    const value = JSON.parse(text) as Record<string, unknown>;
    if (value.version !== cursorVersion || typeof value.file !== 'string' || !/^audit-[^/]*\.jsonl$/.test(value.file)) return undefined;
    if (!Number.isSafeInteger(value.seq) || (value.seq as number) < 0) return undefined;
    return { file: value.file, seq: value.seq as number };
  } catch {
    return undefined;
  }
}
