/**
 * The evidence bundle's container: a POSIX ustar archive (what `tar -tvf` and every archive tool
 * open), written and read here rather than with a library because the reader must be strict — an
 * auditor's check refuses any byte that is not exactly what the writer produces, where a general
 * tar library tolerates (and so hides) altered headers, padding or trailing data. Uncompressed on
 * purpose: a changed byte is then named by the entry it falls in, not lost in a decompression error.
 *
 * Layout (canonical; the reader accepts nothing else):
 *   for each entry: a 512-byte header, then the content, zero-padded to a multiple of 512
 *   then two 512-byte blocks of zeros, and nothing after them.
 * A header holds: name (NUL-padded, at most 100 bytes of [A-Za-z0-9._/-], no `..`, not absolute),
 * mode 0000644, uid and gid 0, size and mtime in 11 octal digits, the checksum in 6 octal digits
 * followed by NUL and space, type `0` (a regular file), magic `ustar\0`, version `00`, user and
 * group `rampart`; every other byte zero. The reader rebuilds each header from the name, size and
 * mtime it parsed and compares all 512 bytes.
 *
 * Bounds: `tarEntriesMax` entries; an entry is at most `tarEntryBytesMax` (what 11 octal digits hold).
 */
import { createReadStream } from 'node:fs';
import { open, stat, type FileHandle } from 'node:fs/promises';

export const tarBlockBytes = 512;
export const tarEntriesMax = 256;
export const tarEntryBytesMax = 8 ** 11 - 1;
const nameBytesMax = 100;
const namePattern = /^[A-Za-z0-9._-]+(\/[A-Za-z0-9._-]+)*$/;

export function checkEntryName(name: string): string | undefined {
  if (Buffer.byteLength(name) > nameBytesMax) return `entry name longer than ${nameBytesMax} bytes: ${name.slice(0, 120)}`;
  if (!namePattern.test(name) || name.split('/').some((part) => part === '.' || part === '..')) return `entry name not allowed: ${JSON.stringify(name.slice(0, 120))}`;
  return undefined;
}

function octal(value: number, digits: number): string {
  return value.toString(8).padStart(digits, '0');
}

/** The one header the writer makes for an entry. */
export function encodeHeader(name: string, size: number, mtimeSeconds: number): Buffer {
  const header = Buffer.alloc(tarBlockBytes);
  header.write(name, 0, 'utf8');
  header.write('0000644\0', 100, 'latin1');
  header.write('0000000\0', 108, 'latin1');
  header.write('0000000\0', 116, 'latin1');
  header.write(`${octal(size, 11)}\0`, 124, 'latin1');
  header.write(`${octal(mtimeSeconds, 11)}\0`, 136, 'latin1');
  header.write('        ', 148, 'latin1'); // the checksum is computed with its field as spaces
  header.write('0', 156, 'latin1');
  header.write('ustar\0', 257, 'latin1');
  header.write('00', 263, 'latin1');
  header.write('rampart', 265, 'latin1');
  header.write('rampart', 297, 'latin1');
  let sum = 0;
  for (const byte of header) sum += byte;
  header.write(`${octal(sum, 6)}\0 `, 148, 'latin1');
  return header;
}

const padding = (size: number): number => (tarBlockBytes - (size % tarBlockBytes)) % tarBlockBytes;

/** Writes an archive entry by entry; `finish` writes the end blocks and closes it. */
export class TarWriter {
  private readonly names = new Set<string>();
  private position = 0;

  private constructor(private readonly handle: FileHandle, private readonly mtimeSeconds: number) {}

  /** A new archive file (never an existing one), mode 0600: bundles hold who did what. */
  static async create(file: string, mtime: Date): Promise<TarWriter> {
    return new TarWriter(await open(file, 'wx', 0o600), Math.floor(mtime.getTime() / 1000));
  }

  private async start(name: string, size: number): Promise<void> {
    const problem = checkEntryName(name);
    if (problem !== undefined) throw new Error(problem);
    if (this.names.has(name)) throw new Error(`duplicate entry ${name}`);
    if (this.names.size >= tarEntriesMax) throw new Error(`more than ${tarEntriesMax} entries`);
    if (size > tarEntryBytesMax) throw new Error(`${name}: larger than ${tarEntryBytesMax} bytes`);
    this.names.add(name);
    await this.write(encodeHeader(name, size, this.mtimeSeconds));
  }

  private async write(bytes: Buffer): Promise<void> {
    await this.handle.write(bytes, 0, bytes.length, this.position);
    this.position += bytes.length;
  }

  async addBuffer(name: string, content: Buffer | string): Promise<void> {
    const bytes = typeof content === 'string' ? Buffer.from(content, 'utf8') : content;
    await this.start(name, bytes.length);
    await this.write(bytes);
    await this.write(Buffer.alloc(padding(bytes.length)));
  }

  /** Copies a file in, streaming; it must not change while copied (its size is in the header). */
  async addFile(name: string, source: string): Promise<void> {
    const { size } = await stat(source);
    await this.start(name, size);
    let copied = 0;
    for await (const chunk of createReadStream(source) as AsyncIterable<Buffer>) {
      copied += chunk.length;
      if (copied > size) throw new Error(`${source} grew while archived`);
      await this.write(chunk);
    }
    if (copied !== size) throw new Error(`${source} shrank while archived`);
    await this.write(Buffer.alloc(padding(size)));
  }

  async finish(): Promise<void> {
    await this.write(Buffer.alloc(tarBlockBytes * 2));
    await this.handle.sync();
    await this.handle.close();
  }

  async abandon(): Promise<void> {
    await this.handle.close().catch(() => undefined);
  }
}

export interface TarEntry {
  readonly name: string;
  readonly size: number;
  /** Where its content starts in the archive. */
  readonly offset: number;
  readonly mtimeSeconds: number;
}

/** Thrown for any archive that is not exactly what TarWriter writes, naming where. */
export class TarFormatError extends Error {}

function parseOctal(field: Buffer): number | undefined {
  const text = field.toString('latin1');
  const match = /^([0-7]{11})\0$/.exec(text);
  return match === null ? undefined : parseInt(match[1] as string, 8);
}

/** Reads an archive strictly: every header, padding and end block checked before any entry is used. */
export class TarReader {
  private constructor(private readonly handle: FileHandle, readonly entries: readonly TarEntry[]) {}

  static async open(file: string): Promise<TarReader> {
    const handle = await open(file, 'r');
    try {
      return new TarReader(handle, await TarReader.scan(handle));
    } catch (error) {
      await handle.close();
      throw error;
    }
  }

  private static async scan(handle: FileHandle): Promise<TarEntry[]> {
    const { size: archiveBytes } = await handle.stat();
    const entries: TarEntry[] = [];
    const names = new Set<string>();
    const block = Buffer.alloc(tarBlockBytes);
    let position = 0;
    const readBlock = async (what: string): Promise<void> => {
      if (position + tarBlockBytes > archiveBytes) throw new TarFormatError(`the archive ends inside ${what} (truncated)`);
      await handle.read(block, 0, tarBlockBytes, position);
      position += tarBlockBytes;
    };
    for (;;) {
      const after = entries.at(-1)?.name;
      await readBlock(after === undefined ? 'the first header' : `the header after ${after}`);
      if (block.every((byte) => byte === 0)) {
        await readBlock('the end of the archive');
        if (!block.every((byte) => byte === 0)) throw new TarFormatError('the end-of-archive blocks are altered');
        if (position !== archiveBytes) throw new TarFormatError(`${archiveBytes - position} bytes after the end of the archive (appended)`);
        return entries;
      }
      const index = entries.length + 1;
      const nameEnd = block.indexOf(0);
      const name = block.subarray(0, nameEnd === -1 || nameEnd > nameBytesMax ? nameBytesMax : nameEnd).toString('utf8');
      const size = parseOctal(block.subarray(124, 136));
      const mtime = parseOctal(block.subarray(136, 148));
      const label = `entry ${index} (${JSON.stringify(name.slice(0, 100))})`;
      if (size === undefined || mtime === undefined || checkEntryName(name) !== undefined) throw new TarFormatError(`the header of ${label} is altered`);
      if (!encodeHeader(name, size, mtime).equals(block)) throw new TarFormatError(`the header of ${label} is altered`);
      if (names.has(name)) throw new TarFormatError(`${label} appears twice`);
      if (entries.length >= tarEntriesMax) throw new TarFormatError(`more than ${tarEntriesMax} entries`);
      names.add(name);
      const offset = position;
      const padded = size + padding(size);
      if (offset + padded > archiveBytes) throw new TarFormatError(`the archive ends inside ${name} (truncated)`);
      const pad = Buffer.alloc(padding(size));
      if (pad.length > 0) {
        await handle.read(pad, 0, pad.length, offset + size);
        if (!pad.every((byte) => byte === 0)) throw new TarFormatError(`the padding after ${name} is altered`);
      }
      position = offset + padded;
      entries.push({ name, size, offset, mtimeSeconds: mtime });
    }
  }

  entry(name: string): TarEntry | undefined {
    return this.entries.find((entry) => entry.name === name);
  }

  /** An entry's content in chunks of at most 64 KiB. */
  async *content(entry: TarEntry): AsyncGenerator<Buffer> {
    const chunkBytes = 64 * 1024;
    for (let done = 0; done < entry.size;) {
      const chunk = Buffer.alloc(Math.min(chunkBytes, entry.size - done));
      const { bytesRead } = await this.handle.read(chunk, 0, chunk.length, entry.offset + done);
      if (bytesRead === 0) throw new TarFormatError(`${entry.name} is truncated`);
      done += bytesRead;
      yield chunk.subarray(0, bytesRead);
    }
  }

  /** A small entry whole (at most `bytesMax`). */
  async text(entry: TarEntry, bytesMax: number): Promise<string> {
    if (entry.size > bytesMax) throw new TarFormatError(`${entry.name} is larger than ${bytesMax} bytes`);
    const parts: Buffer[] = [];
    for await (const chunk of this.content(entry)) parts.push(chunk);
    return Buffer.concat(parts).toString('utf8');
  }

  close(): Promise<void> {
    return this.handle.close();
  }
}
