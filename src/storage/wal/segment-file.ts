/**
 * One segment file of the Raft log: a preallocated file of zeros that frames are written into, in
 * order, each write followed by fdatasync. Preallocated (zeros written and fsynced once, before the
 * file is used) so that a sync commits only data, not the file's size or new blocks: measured here
 * p50 2.0-2.7 ms against 3.2-6.0 ms for appending to a growing file.
 *
 * The file is opened O_DSYNC: each write returns once its data is on disk (what write + fdatasync
 * do, in one call to the thread pool instead of two, each a wake-up of the busy main thread).
 *
 * Names: `<sequence, 16 hex digits>.seg` in the log directory, in write order. A file being
 * preallocated is `next.tmp` until it is renamed into place (and the directory fsynced); a
 * leftover `next.tmp` after a crash is deleted.
 *
 * The next segment is prepared in the background while the current one fills (`prepareSpare`:
 * zeros written and fsynced, the file opened), so the roll on the write path is only its rename
 * and the directory's fsync.
 */
import { constants } from 'node:fs';
import { open, readdir, rename, rm, type FileHandle } from 'node:fs/promises';
import path from 'node:path';
import { scanFrames, type ScanResult } from './frame.js';

const segmentPattern = /^([0-9a-f]{16})\.seg$/;
export const preallocatingName = 'next.tmp';
/** Zeros written per call while preallocating. */
const zeroChunkBytes = 1024 * 1024;
const zeros = Buffer.alloc(zeroChunkBytes);
/** Read, write, and every write durable before it returns. */
const durableWriteFlags = constants.O_RDWR | constants.O_DSYNC;

export function segmentName(sequence: number): string {
  return `${sequence.toString(16).padStart(16, '0')}.seg`;
}

/** Sequence numbers of the segment files in `directory`, ascending. */
export async function listSegments(directory: string): Promise<number[]> {
  const sequences: number[] = [];
  for (const name of await readdir(directory)) {
    const match = segmentPattern.exec(name);
    if (match?.[1] !== undefined) sequences.push(Number.parseInt(match[1], 16));
  }
  return sequences.sort((a, b) => a - b);
}

/** A handle on a directory, to fsync it. */
export function openDirectory(directory: string): Promise<FileHandle> {
  return open(directory, constants.O_RDONLY | constants.O_DIRECTORY);
}

/** fsyncs a directory, so that files created, renamed or deleted in it stay so after a crash. */
export async function syncDirectory(directory: string): Promise<void> {
  const handle = await openDirectory(directory);
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}

/** Writes `sizeBytes` of zeros to a new file at `file` and fsyncs it. */
export async function preallocate(file: string, sizeBytes: number): Promise<void> {
  const handle = await open(file, 'w', 0o600);
  try {
    for (let position = 0; position < sizeBytes; position += zeroChunkBytes) {
      const length = Math.min(zeroChunkBytes, sizeBytes - position);
      await handle.write(zeros, 0, length, position);
    }
    await handle.sync();
  } finally {
    await handle.close();
  }
}

/** A preallocated `next.tmp`, open for durable writes: the next segment once renamed into place. */
export interface Spare {
  readonly handle: FileHandle;
  readonly size: number;
}

/** Preallocates `next.tmp` in `directory` and opens it (for `SegmentFile.create`). */
export async function prepareSpare(directory: string, sizeBytes: number): Promise<Spare> {
  const file = path.join(directory, preallocatingName);
  await preallocate(file, sizeBytes);
  const handle = await open(file, durableWriteFlags);
  try {
    return { handle, size: (await handle.stat()).size };
  } catch (error) {
    await handle.close();
    throw error;
  }
}

export class SegmentFile {
  private constructor(
    readonly sequence: number,
    readonly file: string,
    private readonly handle: FileHandle,
    private sizeValue: number,
    private endValue: number,
  ) {}

  /** Opens an existing segment for reading and appending; `scan` says where its data ends. */
  static async open(directory: string, sequence: number): Promise<{ segment: SegmentFile; contents: Buffer; scan: ScanResult }> {
    const file = path.join(directory, segmentName(sequence));
    const handle = await open(file, durableWriteFlags);
    try {
      const contents = await handle.readFile();
      const scan = scanFrames(contents, file);
      return { segment: new SegmentFile(sequence, file, handle, contents.length, scan.end), contents, scan };
    } catch (error) {
      await handle.close();
      throw error;
    }
  }

  /**
   * Makes segment `sequence` from `spare` (`prepareSpare`'s `next.tmp`) when it is large enough,
   * else from a new one of `sizeBytes`: renamed into place and the directory fsynced (through
   * `directoryHandle` when given, a handle open on `directory`).
   */
  static async create(directory: string, sequence: number, sizeBytes: number, spare?: Spare, directoryHandle?: FileHandle): Promise<SegmentFile> {
    const file = path.join(directory, segmentName(sequence));
    let ready = spare;
    if (ready !== undefined && ready.size < sizeBytes) {
      await ready.handle.close();
      ready = undefined;
    }
    ready ??= await prepareSpare(directory, sizeBytes);
    try {
      await rename(path.join(directory, preallocatingName), file);
      if (directoryHandle === undefined) await syncDirectory(directory);
      else await directoryHandle.sync();
      return new SegmentFile(sequence, file, ready.handle, ready.size, 0);
    } catch (error) {
      await ready.handle.close();
      throw error;
    }
  }

  /** Where the next frame goes. */
  get end(): number {
    return this.endValue;
  }

  get size(): number {
    return this.sizeValue;
  }

  /** Room left for frames. */
  get free(): number {
    return this.sizeValue - this.endValue;
  }

  /** Writes `frame` at the end: durable when this resolves (O_DSYNC). */
  async append(frame: Buffer): Promise<void> {
    if (frame.length > this.free) throw new Error('assertion failed: a frame beyond the end of its segment');
    let written = 0;
    while (written < frame.length) {
      const { bytesWritten } = await this.handle.write(frame, written, frame.length - written, this.endValue + written);
      written += bytesWritten;
    }
    this.endValue += frame.length;
  }

  /** Zeros [from, to), durably: a torn tail's leftovers go, so a later scan ends at `from`. */
  async zeroRange(from: number, to: number): Promise<void> {
    for (let position = from; position < to; position += zeroChunkBytes) {
      const length = Math.min(zeroChunkBytes, to - position);
      await this.handle.write(zeros, 0, length, position);
    }
    this.endValue = from;
  }

  async close(): Promise<void> {
    await this.handle.close();
  }

  /** Closes and deletes the file (the caller fsyncs the directory). */
  async remove(): Promise<void> {
    await this.handle.close().catch(() => undefined);
    await rm(this.file, { force: true });
  }
}
