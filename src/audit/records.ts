/**
 * The record seam of audit files: how records (one event line each) are stored in a file and read
 * back. Everything else in `src/audit/` sees records as strings and never touches file bytes.
 *
 * A member's trail is a sequence of files named `audit-<start time>.jsonl` (the trail name, which
 * the chain and the checkpoints use). On disk each is one of:
 *   - plain: each record its UTF-8 text followed by `\n` (a member without encryption at rest);
 *   - sealed: the frames of `sealed-trail.ts`, whose plaintext is those same lines;
 *   - compressed, `<name>.gz` once the file is closed: a gzip stream of the lines, itself sealed
 *     (frames of the gzip stream) when the member encrypts. A crash while compressing leaves the
 *     original and perhaps `<name>.gz.tmp` (ignored, removed at the next start); when both
 *     `<name>` and `<name>.gz` exist the rename was done and the original is read.
 * The kind is read from the file's first bytes (the sealed magic, gzip's 1f 8b, or anything else).
 *
 * Reading is a stream with a bounded record length: a file of any size, with records of any length
 * (a tampered or pre-bounds file) or a gzip bomb, is read in constant memory, and a record longer
 * than `recordBytesMax` is reported as such, never loaded.
 */
import { fdatasyncSync, ftruncateSync, unlinkSync, writeSync } from 'node:fs';
import { open, readdir, rename, rm, type FileHandle } from 'node:fs/promises';
import path from 'node:path';
import { Readable, type Transform } from 'node:stream';
import { createGzip, createGunzip } from 'node:zlib';
import { auditLineBytesMax } from './event.js';
import { SealedTrailError, SealedTrailFile, framePlaintextBytesMax, framesOfLines, isSealedTrail, readFrames, readLastFrame, sealedTrailHeaderBytes, type TrailKey } from './sealed-trail.js';

/** Zeros a sealed file is written ahead with at a time (see RecordWriter). */
export const sealedPreallocateBytes = 256 * 1024;
const aheadZeros = Buffer.alloc(sealedPreallocateBytes);
/** Records longer than this are reported as oversized, not read (writers stay well below). */
export const recordBytesMax = auditLineBytesMax * 4;
const readChunkBytes = 64 * 1024;

export type StoredRecord =
  | { readonly kind: 'record'; readonly text: string; readonly number: number }
  | { readonly kind: 'oversized'; readonly bytes: number; readonly number: number }
  /** Bytes after the last `\n` (or a partial frame): a write that never completed (or an altered end). */
  | { readonly kind: 'torn'; readonly bytes: number; readonly number: number }
  /** A file that cannot be opened as a trail file: a sealed frame that fails, a broken gzip stream. */
  | { readonly kind: 'damaged'; readonly detail: string; readonly number: number };

/** One file of a trail: its trail name and where it is on disk. */
export interface TrailFile {
  /** `audit-<time>.jsonl`: the name events, links and checkpoints use. */
  readonly name: string;
  readonly path: string;
  readonly compressed: boolean;
}

const trailName = /^audit-.*\.jsonl$/;
const compressedSuffix = '.gz';

/** The trail name of a path (`x.jsonl.gz` → `x.jsonl`). */
export function trailNameOf(file: string): string {
  const base = path.basename(file);
  return base.endsWith(compressedSuffix) ? base.slice(0, -compressedSuffix.length) : base;
}

/** The trail files of a directory, oldest first (names sort in creation order). */
export async function listTrailFiles(directory: string): Promise<TrailFile[]> {
  const names = await readdir(directory).catch((error: NodeJS.ErrnoException) => {
    if (error.code === 'ENOENT') return [] as string[];
    throw error;
  });
  const present = new Set(names);
  const files: TrailFile[] = [];
  for (const name of names) {
    if (trailName.test(name)) {
      files.push({ name, path: path.join(directory, name), compressed: false });
    } else if (name.endsWith(compressedSuffix) && trailName.test(name.slice(0, -compressedSuffix.length)) && !present.has(name.slice(0, -compressedSuffix.length))) {
      files.push({ name: name.slice(0, -compressedSuffix.length), path: path.join(directory, name), compressed: true });
    }
  }
  return files.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
}

/** A trail file from a path given by a user (a single file to verify). */
export function trailFileAt(file: string): TrailFile {
  return { name: trailNameOf(file), path: file, compressed: file.endsWith(compressedSuffix) };
}

/**
 * Opens a trail file; a plain file compressed (renamed) since it was listed is opened as `.gz`.
 */
async function openTrailFile(file: TrailFile): Promise<FileHandle> {
  try {
    return await open(file.path, 'r');
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'ENOENT' || file.compressed) throw error;
    return open(`${file.path}${compressedSuffix}`, 'r');
  }
}

async function readStart(handle: FileHandle, bytes: number): Promise<Buffer> {
  const start = Buffer.alloc(bytes);
  const { bytesRead } = await handle.read(start, 0, bytes, 0);
  return start.subarray(0, bytesRead);
}

/** The file's lines as a byte stream: frames opened, gzip undone. */
async function* contentOf(handle: FileHandle, file: TrailFile, key: TrailKey | undefined): AsyncGenerator<Buffer> {
  const start = await readStart(handle, sealedTrailHeaderBytes);
  if (isSealedTrail(start)) {
    const sealed = SealedTrailFile.open(key, start, file.name, file.path);
    async function* frames(): AsyncGenerator<Buffer> {
      for await (const frame of readFrames(handle, sealed, file.path)) {
        if (frame.kind === 'torn') throw new TornFrame(frame.bytes);
        yield frame.plaintext;
      }
    }
    if (sealed.content === 'gzip') yield* through(frames(), createGunzip());
    else yield* frames();
    return;
  }
  async function* raw(): AsyncGenerator<Buffer> {
    const chunk = Buffer.alloc(readChunkBytes);
    let position = 0;
    for (;;) {
      const { bytesRead } = await handle.read(chunk, 0, readChunkBytes, position);
      if (bytesRead === 0) return;
      position += bytesRead;
      yield Buffer.from(chunk.subarray(0, bytesRead));
    }
  }
  if (start[0] === 0x1f && start[1] === 0x8b) yield* through(raw(), createGunzip());
  else yield* raw();
}

/** `source` through a zlib transform; an error of the source ends the output with that error. */
function through(source: AsyncIterable<Buffer>, transform: Transform): AsyncIterable<Buffer> {
  const input = Readable.from(source);
  input.on('error', (error) => transform.destroy(error));
  input.pipe(transform);
  return transform as AsyncIterable<Buffer>;
}

class TornFrame extends Error {
  constructor(readonly bytes: number) {
    super('torn frame');
  }
}

/** Every record of a file, in order, in bounded memory; `key` opens sealed files. */
export async function* readRecords(target: string | TrailFile, key?: TrailKey): AsyncGenerator<StoredRecord> {
  const file = typeof target === 'string' ? trailFileAt(target) : target;
  const handle = await openTrailFile(file);
  let pending: Buffer[] = [];
  let pendingBytes = 0;
  let skipping = 0; // > 0 while inside an oversized record: bytes seen of it
  let number = 0;
  try {
    for await (const chunk of contentOf(handle, file, key)) {
      let start = 0;
      while (start < chunk.length) {
        const newline = chunk.indexOf(0x0a, start);
        const end = newline === -1 ? chunk.length : newline;
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
        if (newline === -1) break;
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
  } catch (error) {
    if (error instanceof TornFrame) {
      yield { kind: 'torn', bytes: error.bytes + skipping + pendingBytes, number: number + 1 };
      return;
    }
    if (error instanceof SealedTrailError) {
      yield { kind: 'damaged', detail: error.message, number: number + 1 };
      return;
    }
    const code = (error as NodeJS.ErrnoException).code;
    if (typeof code === 'string' && code.startsWith('Z_')) {
      yield { kind: 'damaged', detail: `${file.path}: the compressed stream is damaged (${code}; altered or cut)`, number: number + 1 };
      return;
    }
    throw error;
  } finally {
    await handle.close();
  }
  if (skipping > 0 || pendingBytes > 0) yield { kind: 'torn', bytes: skipping + pendingBytes, number: number + 1 };
}

/**
 * The last complete record of a file, read from its end (a member starting after a crash needs
 * only this, whatever the file's size), or undefined when the file has none that fits the bound.
 * A compressed file (closed, never the newest one written) is read through.
 */
export async function readLastRecord(target: string | TrailFile, key?: TrailKey): Promise<string | undefined> {
  const file = typeof target === 'string' ? trailFileAt(target) : target;
  const handle = await openTrailFile(file);
  let tail: Buffer;
  try {
    const start = await readStart(handle, sealedTrailHeaderBytes);
    if (isSealedTrail(start)) {
      const sealed = SealedTrailFile.open(key, start, file.name, file.path);
      if (sealed.content === 'lines') {
        const frame = await readLastFrame(handle, sealed);
        if (frame === undefined) return undefined;
        tail = frame;
      } else {
        return readLastByStreaming(file, key);
      }
    } else if (start[0] === 0x1f && start[1] === 0x8b) {
      return readLastByStreaming(file, key);
    } else {
      const { size } = await handle.stat();
      const windowBytes = Math.min(size, recordBytesMax + 1);
      tail = Buffer.alloc(windowBytes);
      await handle.read(tail, 0, windowBytes, size - windowBytes);
      const end = tail.lastIndexOf(0x0a);
      if (end === -1) return undefined;
      const first = tail.lastIndexOf(0x0a, end - 1) + 1;
      // A record that starts before the window is longer than the bound: not one to trust.
      if (first === 0 && windowBytes < size) return undefined;
      return tail.subarray(first, end).toString('utf8');
    }
  } finally {
    await handle.close();
  }
  // A frame holds whole lines: its last one is the file's last record.
  const end = tail.lastIndexOf(0x0a);
  if (end === -1) return undefined;
  return tail.subarray(tail.lastIndexOf(0x0a, end - 1) + 1, end).toString('utf8');
}

async function readLastByStreaming(file: TrailFile, key: TrailKey | undefined): Promise<string | undefined> {
  let last: string | undefined;
  for await (const record of readRecords(file, key)) last = record.kind === 'record' ? record.text : undefined;
  return last;
}

/** Where a write started: the file is cut back to it when the write or its sync fails. */
export interface WriteMark {
  readonly bytes: number;
  readonly frames: number;
}

/**
 * Appends records to a new file. `write` puts them in the file at once (the page cache: a
 * memory copy, no wait for the disk) and `sync` makes everything written so far durable with one
 * fdatasync, so the audit trail can write batch N+1 while batch N's sync runs (group-commit.ts);
 * `append` is both. Given a trail key it writes a sealed file (the header goes out with the first
 * write).
 *
 * A sealed file is written ahead with zeros (`sealedPreallocateBytes` at a time, written right
 * after the records that need the room, from one shared buffer of zeros): an fdatasync after an append to a
 * growing file must also commit the file's new size and blocks (an ext4 journal commit, which
 * every other sync of the disk then waits behind), while one after a write into blocks already
 * written and synced flushes only the data. The zeros after the last frame are no part of the
 * file (`readFrames`, `readLastFrame`), and `close` cuts them off, so a closed file is as before.
 * A plain file (JSON lines an operator may read with any tool) only ever holds whole records.
 */
export class RecordWriter {
  /** Bytes of whole records (whole frames, with the header) written to the file. */
  private bytes = 0;
  private frames = 0;
  private header: Buffer | undefined;
  /** The file's size: `bytes` and the zeros written after them (sealed files). */
  private allocated = 0;

  private constructor(
    private readonly handle: FileHandle,
    private readonly file: string,
    private readonly sealed: SealedTrailFile | undefined,
    /** Zeros written ahead at a time (0: none; plain files never). */
    private preallocateBytes: number,
  ) {
    this.header = sealed?.header;
  }

  /** Creates `file` (never an existing one), mode 0600; undefined when it exists. */
  static async create(file: string, key?: TrailKey, preallocateBytes = sealedPreallocateBytes): Promise<RecordWriter | undefined> {
    const handle = await open(file, 'wx', 0o600).catch((error: NodeJS.ErrnoException) => {
      if (error.code === 'EEXIST') return undefined;
      throw error;
    });
    if (handle === undefined) return undefined;
    const sealed = key === undefined ? undefined : SealedTrailFile.create(key, trailNameOf(file), 'lines');
    return new RecordWriter(handle, file, sealed, sealed === undefined ? 0 : Math.min(Math.max(0, preallocateBytes), sealedPreallocateBytes));
  }

  async append(records: readonly string[]): Promise<void> {
    await this.sync(this.write(records));
  }

  /**
   * Writes `records` after those written before, not yet durable: `sync` makes them so. A write
   * is synchronous on purpose: it is a copy into the page cache, and an asynchronous one costs the
   * caller a turn of a busy event loop before the sync can even start. On failure the part
   * written is cut off again (the file still ends with a whole record) and it throws.
   */
  write(records: readonly string[]): WriteMark {
    const mark: WriteMark = { bytes: this.bytes, frames: this.frames };
    let bytes: Buffer;
    let frames = 0;
    if (this.sealed === undefined) {
      bytes = Buffer.from(`${records.join('\n')}\n`, 'utf8');
    } else {
      const plaintext = framesOfLines(records);
      const sealed = this.sealed.seal(this.frames, plaintext);
      bytes = this.header === undefined ? sealed : Buffer.concat([this.header, sealed]);
      frames = plaintext.length;
    }
    // A nearly full disk takes part of a write without an error: the rest is written again, and
    // only then does the kernel answer ENOSPC (one unchecked write acknowledged a torn record).
    const end = this.bytes + bytes.length;
    try {
      writeFully(this.handle.fd, bytes, this.bytes);
    } catch (error) {
      this.cutBackSync(mark);
      throw error;
    }
    // Room ahead ran out: zeros after these records (from one buffer of zeros, never a new one).
    if (end > this.allocated && this.preallocateBytes > 0) {
      try {
        writeFully(this.handle.fd, aheadZeros.subarray(0, this.preallocateBytes), end);
        this.allocated = end + this.preallocateBytes;
      } catch {
        // They did not fit (a nearly full disk): the records alone, and no more room ahead.
        this.preallocateBytes = 0;
        try {
          ftruncateSync(this.handle.fd, end);
        } catch (error) {
          this.cutBackSync(mark);
          throw error;
        }
      }
    }
    this.allocated = Math.max(this.allocated, end);
    this.bytes = end;
    this.frames += frames;
    this.header = undefined;
    return mark;
  }

  /**
   * Makes every record written so far durable (one fdatasync). On failure the file is cut back
   * to `mark` — the records written from there are not durable, whatever later syncs say — and it
   * throws; the writer takes no more records after that (the trail stops).
   */
  async sync(mark: WriteMark): Promise<void> {
    try {
      await this.handle.datasync();
    } catch (error) {
      this.cutBackSync(mark);
      throw error;
    }
  }

  /** Cuts the file back to `mark` (best effort: the write or sync that failed is what is reported). */
  private cutBackSync(mark: WriteMark): void {
    // Only ever shorter: a later batch's failure after an earlier one's must not extend the file with zeros.
    if (mark.bytes > this.bytes) return;
    try {
      ftruncateSync(this.handle.fd, mark.bytes);
      fdatasyncSync(this.handle.fd);
    } catch {
      // the first failure is reported
    }
    this.bytes = mark.bytes;
    this.allocated = mark.bytes;
    this.preallocateBytes = 0;
    this.frames = mark.frames;
    if (mark.bytes === 0) this.header = this.sealed?.header;
    // A file that never held a whole record (a start on a full disk) is no link of the chain.
    if (mark.bytes === 0) {
      try {
        unlinkSync(this.file);
      } catch {
        // already gone
      }
    }
  }

  /** Closes the file, cut back to its records (the zeros written ahead go: readers skip them anyway). */
  async close(): Promise<void> {
    if (this.allocated > this.bytes) await this.handle.truncate(this.bytes).catch(() => undefined);
    await this.handle.close();
  }
}

/** Writes all of `bytes` at `position` (a nearly full disk may take part of a write without an error). */
function writeFully(fd: number, bytes: Buffer, position: number): void {
  for (let offset = 0; offset < bytes.length;) {
    const bytesWritten = writeSync(fd, bytes, offset, bytes.length - offset, position + offset);
    if (bytesWritten <= 0) throw new Error('the audit file took no more bytes');
    offset += bytesWritten;
  }
}

async function syncDirectory(directory: string): Promise<void> {
  const handle = await open(directory, 'r');
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}

/**
 * Compresses a closed trail file to `<name>.gz` (sealed under `key` when given, whatever the
 * original was: a plaintext trail of a member that now encrypts is sealed this way), then removes
 * the original. Streams in bounded memory; zlib works off the event loop's thread. The result is
 * read back and compared record by record before the original goes. `signal` stops it early
 * (the half-written copy is removed; the original stays).
 */
export async function compressTrailFile(file: TrailFile, key: TrailKey | undefined, signal?: AbortSignal): Promise<void> {
  if (file.compressed) return;
  const target = `${file.path}${compressedSuffix}`;
  const temporary = `${target}.tmp`;
  await rm(temporary, { force: true });
  const handle = await open(temporary, 'wx', 0o600);
  try {
    const sealed = key === undefined ? undefined : SealedTrailFile.create(key, file.name, 'gzip');
    let frames = 0;
    if (sealed !== undefined) await handle.write(sealed.header);
    async function* lines(): AsyncGenerator<Buffer> {
      for await (const record of readRecords(file, key)) {
        // A member stopping does not wait for a long compression: the original stays, redone next start.
        if (signal?.aborted === true) throw new Error(`${file.path}: compression stopped (the member is stopping)`);
        if (record.kind !== 'record') throw new Error(`${file.path}: not compressed, it does not read whole (${record.kind})`);
        yield Buffer.from(`${record.text}\n`, 'utf8');
      }
    }
    const gzip = through(lines(), createGzip());
    let buffered: Buffer[] = [];
    let bufferedBytes = 0;
    const flush = async (): Promise<void> => {
      if (bufferedBytes === 0) return;
      const chunk = Buffer.concat(buffered, bufferedBytes);
      await handle.write(sealed === undefined ? chunk : sealed.seal(frames++, [chunk]));
      buffered = [];
      bufferedBytes = 0;
    };
    for await (const chunk of gzip) {
      if (bufferedBytes + chunk.length > framePlaintextBytesMax) await flush();
      buffered.push(chunk);
      bufferedBytes += chunk.length;
    }
    await flush();
    await handle.sync();
  } catch (error) {
    await handle.close();
    await rm(temporary, { force: true });
    throw error;
  }
  await handle.close();
  // Read back before the original goes: the compressed file must hold the same records.
  const original = readRecords(file, key);
  for await (const record of readRecords({ name: file.name, path: temporary, compressed: true }, key)) {
    const expected = await original.next();
    if (expected.done === true || record.kind !== 'record' || expected.value.kind !== 'record' || expected.value.text !== record.text) {
      await original.return(undefined);
      await rm(temporary, { force: true });
      throw new Error(`${file.path}: the compressed copy does not read back the same; kept uncompressed`);
    }
  }
  if ((await original.next()).done !== true) {
    await rm(temporary, { force: true });
    throw new Error(`${file.path}: the compressed copy is shorter; kept uncompressed`);
  }
  await rename(temporary, target);
  await syncDirectory(path.dirname(file.path));
  await rm(file.path);
  await syncDirectory(path.dirname(file.path));
}

/** After a crash: removes half-written compressed copies, and originals whose copy was completed. */
export async function tidyTrailDirectory(directory: string): Promise<void> {
  const names = await readdir(directory).catch(() => [] as string[]);
  const present = new Set(names);
  for (const name of names) {
    if (name.endsWith(`${compressedSuffix}.tmp`) && trailName.test(name.slice(0, -`${compressedSuffix}.tmp`.length))) {
      await rm(path.join(directory, name), { force: true });
    } else if (trailName.test(name) && present.has(`${name}${compressedSuffix}`)) {
      // The rename happened (after the copy was fsynced and read back): the original is redundant.
      await rm(path.join(directory, name), { force: true });
    }
  }
}
