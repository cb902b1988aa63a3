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

/** fsyncs a directory, so that files created, renamed or deleted in it stay so after a crash. */
export async function syncDirectory(directory: string): Promise<void> {
  const handle = await open(directory, constants.O_RDONLY | constants.O_DIRECTORY);
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
   * Makes segment `sequence` from a preallocated file (`next.tmp` when it exists and is large
   * enough, else a new one of `sizeBytes`): renamed into place and the directory fsynced.
   */
  static async create(directory: string, sequence: number, sizeBytes: number): Promise<SegmentFile> {
    const spare = path.join(directory, preallocatingName);
    const file = path.join(directory, segmentName(sequence));
    let handle: FileHandle | undefined;
    try {
      handle = await open(spare, durableWriteFlags);
      if ((await handle.stat()).size < sizeBytes) {
        await handle.close();
        handle = undefined;
      }
    } catch {
      handle = undefined;
    }
    if (handle === undefined) {
      await preallocate(spare, sizeBytes);
      handle = await open(spare, durableWriteFlags);
    }
    try {
      const size = (await handle.stat()).size;
      await rename(spare, file);
      await syncDirectory(directory);
      return new SegmentFile(sequence, file, handle, size, 0);
    } catch (error) {
      await handle.close();
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
