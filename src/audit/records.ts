/**
 * The record seam of audit files: how records (one event line each) are stored in a file and read
 * back. Everything else in `src/audit/` sees records as strings and never touches file bytes, so a
 * different framing (sealed records, for encryption at rest) changes this file only.
 *
 * Format today: each record is its UTF-8 text followed by `\n`; a file is a sequence of records.
 * Reading is a stream with a bounded record length: a file of any size, with records of any
 * length (a tampered or pre-bounds file), is read in constant memory, and a record longer than
 * `recordBytesMax` is reported as such, never loaded.
 */
import { open, unlink, type FileHandle } from 'node:fs/promises';
import { auditLineBytesMax } from './event.js';

/** Records longer than this are reported as oversized, not read (writers stay well below). */
export const recordBytesMax = auditLineBytesMax * 4;
const readChunkBytes = 64 * 1024;

export type StoredRecord =
  | { readonly kind: 'record'; readonly text: string; readonly number: number }
  | { readonly kind: 'oversized'; readonly bytes: number; readonly number: number }
  /** Bytes after the last `\n`: a record whose write never completed (or an altered end). */
  | { readonly kind: 'torn'; readonly bytes: number; readonly number: number };

/** Every record of a file, in order, in bounded memory. */
export async function* readRecords(file: string): AsyncGenerator<StoredRecord> {
  const handle = await open(file, 'r');
  try {
    const chunk = Buffer.alloc(readChunkBytes);
    let pending: Buffer[] = [];
    let pendingBytes = 0;
    let skipping = 0; // > 0 while inside an oversized record: bytes seen of it
    let number = 0;
    for (;;) {
      const { bytesRead } = await handle.read(chunk, 0, readChunkBytes, null);
      if (bytesRead === 0) break;
      let start = 0;
      while (start < bytesRead) {
        const newline = chunk.indexOf(0x0a, start);
        const end = newline === -1 || newline >= bytesRead ? bytesRead : newline;
        const piece = chunk.subarray(start, end);
        if (skipping > 0) {
          skipping += piece.length;
        } else if (pendingBytes + piece.length > recordBytesMax) {
          skipping = pendingBytes + piece.length;
          pending = [];
          pendingBytes = 0;
        } else {
          pending.push(Buffer.from(piece));
          pendingBytes += piece.length;
        }
        if (end === bytesRead) break;
        number += 1;
        if (skipping > 0) {
          yield { kind: 'oversized', bytes: skipping, number };
          skipping = 0;
        } else {
          yield { kind: 'record', text: Buffer.concat(pending, pendingBytes).toString('utf8'), number };
          pending = [];
          pendingBytes = 0;
        }
        start = end + 1;
      }
    }
    if (skipping > 0 || pendingBytes > 0) yield { kind: 'torn', bytes: skipping + pendingBytes, number: number + 1 };
  } finally {
    await handle.close();
  }
}

/**
 * The last complete record of a file, read from its end (a member starting after a crash needs
 * only this, whatever the file's size), or undefined when the file has none that fits the bound.
 */
export async function readLastRecord(file: string): Promise<string | undefined> {
  const handle = await open(file, 'r');
  try {
    const { size } = await handle.stat();
    const windowBytes = Math.min(size, recordBytesMax + 1);
    const tail = Buffer.alloc(windowBytes);
    await handle.read(tail, 0, windowBytes, size - windowBytes);
    const end = tail.lastIndexOf(0x0a);
    if (end === -1) return undefined;
    const start = tail.lastIndexOf(0x0a, end - 1) + 1;
    // A record that starts before the window is longer than the bound: not one to trust.
    if (start === 0 && windowBytes < size) return undefined;
    return tail.subarray(start, end).toString('utf8');
  } finally {
    await handle.close();
  }
}

/** Appends records to a new file; `append` + `sync` make them durable in one write and one fdatasync. */
export class RecordWriter {
  /** Bytes of whole records in the file: a failed append is cut back to it. */
  private bytes = 0;

  private constructor(private readonly handle: FileHandle, private readonly file: string) {}

  /** Creates `file` (never an existing one), mode 0600; undefined when it exists. */
  static async create(file: string): Promise<RecordWriter | undefined> {
    const handle = await open(file, 'wx', 0o600).catch((error: NodeJS.ErrnoException) => {
      if (error.code === 'EEXIST') return undefined;
      throw error;
    });
    return handle === undefined ? undefined : new RecordWriter(handle, file);
  }

  async append(records: readonly string[]): Promise<void> {
    // A nearly full disk takes part of a write without an error: the rest is written again, and
    // only then does the kernel answer ENOSPC (one unchecked write acknowledged a torn record).
    // If it fails, the part written is cut off again, so the file still ends with a whole record.
    const bytes = Buffer.from(`${records.join('\n')}\n`, 'utf8');
    try {
      for (let offset = 0; offset < bytes.length;) {
        const { bytesWritten } = await this.handle.write(bytes, offset, bytes.length - offset, this.bytes + offset);
        if (bytesWritten <= 0) throw new Error('the audit file took no more bytes');
        offset += bytesWritten;
      }
      await this.handle.datasync();
    } catch (error) {
      await this.handle.truncate(this.bytes).then(() => this.handle.datasync()).catch(() => undefined);
      // A file that never held a whole record (a start on a full disk) is no link of the chain.
      if (this.bytes === 0) await unlink(this.file).catch(() => undefined);
      throw error;
    }
    this.bytes += bytes.length;
  }

  close(): Promise<void> {
    return this.handle.close();
  }
}
