/**
 * The sealed audit file: a member's trail file when it encrypts at rest (the default). The events
 * name keys and users, so a copy of the disk must read none of them; a reader holding the trail key
 * (`trail-key.ts`, itself wrapped by the member's KEK) opens the frames in order.
 *
 * Layout (version 1):
 *   offset 0   16   magic "rampart-audit\n\0\0"
 *   offset 16  u8   version (1)
 *   offset 17  u8   content: 0 = event lines (`line\n` …), 1 = a gzip stream of event lines
 *   offset 18  8    trail key id (see `trail-key.ts`): a wrong key is named, not guessed at
 *   offset 26  32   file salt (random, fresh for every file written)
 *   offset 58       frames, each:
 *     u32  L, the length of the ciphertext (big-endian)
 *     u64  frame index: 0, 1, 2 … in the file
 *     12   nonce (see Nonces below)
 *     L    ciphertext (AES-256-GCM)
 *     16   GCM tag
 *     u32  L again (so the last frame can be found from the end of the file)
 *   File key: HKDF-SHA256(trail key, salt, "rampart audit file v1" ‖ content ‖ the file's name), so
 *   every file has its own key: a frame moved to another file (or a file renamed) fails to open.
 *   Additional authenticated data of a frame: the 58 header bytes ‖ its L and index.
 *
 * Writing: one append of the trail (a group-commit batch) is one or more frames written with one
 * write and one fdatasync; a frame holds whole event lines, at most `framePlaintextBytesMax`. Frames
 * are never rewritten; a file is never reopened for writing. The file being written may end in
 * zeros written ahead of the frames (records.ts: its syncs then commit no size change), cut off
 * when it is closed; a file left by a crash keeps them. They are no frame (no frame has L = 0).
 * Reading: frames in order, each at most `framePlaintextBytesMax` plus overhead (a longer length
 * field is damage, reported without reading it). An index out of order (frames reordered or
 * removed), a tag that fails (a flipped bit, a frame from another file, a wrong key) or bytes after
 * the last complete frame (a torn write) are each reported with the file and frame; in a file that
 * ends in zeros, a last frame that fails is a torn write too (its missing sectors read as zeros).
 * Removing whole frames from the end is what the hash chain and the quorum checkpoints catch
 * (`verify.ts`).
 *
 * Nonces: a key is used for one file only (a fresh random salt each time a file is written), and
 * within it the nonce is 4 random bytes fixed per file ‖ a u64 count of seals under that key, so no
 * nonce repeats under a key — not even when a failed append (a full disk) is cut off and its frame
 * index written again with other contents. (No `randomBytes` per frame: it cost ~12 us a call.)
 */
import { createCipheriv, createDecipheriv, hkdfSync, randomBytes } from 'node:crypto';
import type { FileHandle } from 'node:fs/promises';

export const sealedTrailMagic = Buffer.from('rampart-audit\n\0\0', 'latin1');
const formatVersion = 1;
export const sealedTrailHeaderBytes = 58;
const frameHeadBytes = 4 + 8 + 12;
const tagBytes = 16;
const frameTrailerBytes = 4;
export const frameOverheadBytes = frameHeadBytes + tagBytes + frameTrailerBytes;
/** The most plaintext one frame carries; a batch larger than this is written as several frames. */
export const framePlaintextBytesMax = 1024 * 1024;

export type SealedContent = 'lines' | 'gzip';

/** A trail key, unwrapped: what opens every sealed file of one member's trail. */
export interface TrailKey {
  /** 16 hex digits naming the key (never the key). */
  readonly id: string;
  readonly key: Buffer;
}

export class SealedTrailError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'SealedTrailError';
  }
}

export function isSealedTrail(start: Buffer): boolean {
  return start.length >= sealedTrailMagic.length && start.subarray(0, sealedTrailMagic.length).equals(sealedTrailMagic);
}

/** A sealed file's header, checked against the key; errors name the file. */
export class SealedTrailFile {
  /** Seals so far under this file's key: the nonce's counter part. */
  private seals = 0n;
  private readonly noncePrefix = randomBytes(4);

  private constructor(
    readonly header: Buffer,
    readonly content: SealedContent,
    private readonly fileKey: Buffer,
    /** Where the file is, for messages. */
    private readonly where: string,
  ) {}

  /** A new file's header and key: `name` is the file's trail name (`audit-….jsonl`). */
  static create(trailKey: TrailKey, name: string, content: SealedContent): SealedTrailFile {
    const header = Buffer.alloc(sealedTrailHeaderBytes);
    sealedTrailMagic.copy(header, 0);
    header[16] = formatVersion;
    header[17] = content === 'gzip' ? 1 : 0;
    Buffer.from(trailKey.id, 'hex').copy(header, 18);
    randomBytes(32).copy(header, 26);
    return new SealedTrailFile(header, content, fileKeyOf(trailKey, header, name), name);
  }

  /** The header of an existing file (its first `sealedTrailHeaderBytes` bytes). */
  static open(trailKey: TrailKey | undefined, header: Buffer, name: string, where: string): SealedTrailFile {
    if (header.length < sealedTrailHeaderBytes || !isSealedTrail(header)) throw new SealedTrailError(`${where}: not a sealed audit file (its header is cut or altered)`);
    if (header[16] !== formatVersion) throw new SealedTrailError(`${where}: sealed audit file of unknown version ${header[16]}`);
    const contentCode = header[17];
    if (contentCode !== 0 && contentCode !== 1) throw new SealedTrailError(`${where}: unknown content kind ${contentCode} (altered)`);
    const keyId = header.subarray(18, 26).toString('hex');
    if (trailKey === undefined) {
      throw new SealedTrailError(`${where} is sealed (encryption at rest, trail key ${keyId}): give the member's key-encryption key (--encryption-key-file, or --encryption-kms-socket) to read it`);
    }
    if (keyId !== trailKey.id) throw new SealedTrailError(`${where} is sealed under trail key ${keyId}, not under the one given (${trailKey.id}): another member's key, or the file was altered`);
    const copy = Buffer.from(header.subarray(0, sealedTrailHeaderBytes));
    return new SealedTrailFile(copy, contentCode === 1 ? 'gzip' : 'lines', fileKeyOf(trailKey, copy, name), where);
  }

  /** Frames holding `plaintext`, numbered from `firstIndex`, ready to append in one write. */
  seal(firstIndex: number, plaintext: readonly Buffer[]): Buffer {
    const frames: Buffer[] = [];
    plaintext.forEach((chunk, offset) => {
      if (chunk.length > framePlaintextBytesMax) throw new Error('assertion failed: a frame longer than framePlaintextBytesMax');
      const frame = Buffer.allocUnsafe(frameOverheadBytes + chunk.length);
      frame.writeUInt32BE(chunk.length, 0);
      frame.writeBigUInt64BE(BigInt(firstIndex + offset), 4);
      this.noncePrefix.copy(frame, 12);
      frame.writeBigUInt64BE(this.seals, 16);
      this.seals += 1n;
      const cipher = createCipheriv('aes-256-gcm', this.fileKey, frame.subarray(12, frameHeadBytes));
      cipher.setAAD(Buffer.concat([this.header, frame.subarray(0, 12)]));
      const written = cipher.update(chunk).copy(frame, frameHeadBytes);
      cipher.final();
      cipher.getAuthTag().copy(frame, frameHeadBytes + written);
      frame.writeUInt32BE(chunk.length, frame.length - frameTrailerBytes);
      frames.push(frame);
    });
    return Buffer.concat(frames);
  }

  /** Opens one frame (`head` its first 24 bytes, `body` ciphertext ‖ tag ‖ trailer) expected at `index`. */
  openFrame(index: number, head: Buffer, body: Buffer): Buffer {
    const where = `${this.where} frame ${index}`;
    const found = Number(head.readBigUInt64BE(4));
    if (found !== index) {
      throw new SealedTrailError(`${where}: holds frame ${found} (frames were removed, inserted or reordered)`);
    }
    const length = head.readUInt32BE(0);
    if (body.readUInt32BE(body.length - frameTrailerBytes) !== length) throw new SealedTrailError(`${where}: its two length fields differ (altered)`);
    const decipher = createDecipheriv('aes-256-gcm', this.fileKey, head.subarray(12, frameHeadBytes));
    decipher.setAAD(Buffer.concat([this.header, head.subarray(0, 12)]));
    decipher.setAuthTag(body.subarray(length, length + tagBytes));
    const plaintext = decipher.update(body.subarray(0, length));
    try {
      decipher.final();
    } catch {
      throw new SealedTrailError(`${where}: authentication failed (altered, moved from another file, or sealed under another key)`);
    }
    return plaintext;
  }
}

function fileKeyOf(trailKey: TrailKey, header: Buffer, name: string): Buffer {
  const info = Buffer.concat([Buffer.from('rampart audit file v1', 'latin1'), header.subarray(17, 18), Buffer.from(name, 'utf8')]);
  return Buffer.from(hkdfSync('sha256', trailKey.key, header.subarray(26, 58), info, 32));
}

/** Splits event lines into frame plaintexts of whole lines, each at most `framePlaintextBytesMax`. */
export function framesOfLines(lines: readonly string[]): Buffer[] {
  const frames: Buffer[] = [];
  let current: Buffer[] = [];
  let bytes = 0;
  for (const line of lines) {
    const encoded = Buffer.from(`${line}\n`, 'utf8');
    if (bytes + encoded.length > framePlaintextBytesMax && current.length > 0) {
      frames.push(Buffer.concat(current, bytes));
      current = [];
      bytes = 0;
    }
    current.push(encoded);
    bytes += encoded.length;
  }
  if (current.length > 0) frames.push(Buffer.concat(current, bytes));
  return frames;
}

export type FrameRead =
  | { readonly kind: 'frame'; readonly plaintext: Buffer; readonly index: number }
  /** Bytes after the last complete frame: a write that never completed (or an altered end). */
  | { readonly kind: 'torn'; readonly bytes: number; readonly index: number };

/**
 * Every frame of an open sealed file from `offset` (just after the header), in order, in bounded
 * memory. A writer writes a file ahead with zeros (records.ts): zeros from a frame's start to the
 * end of the file are no frame, and the file ends there. A last frame that fails to open with
 * only zeros after it in a file written ahead is a write that never completed (a crash, or a
 * reader racing the writer), as a frame cut short by the end of the file is: reported as torn.
 */
export async function* readFrames(handle: FileHandle, file: SealedTrailFile, name: string): AsyncGenerator<FrameRead> {
  const { size } = await handle.stat();
  let offset = sealedTrailHeaderBytes;
  const head = Buffer.alloc(frameHeadBytes);
  for (let index = 0; offset < size; index++) {
    if (size - offset < frameHeadBytes) {
      if (await zerosTo(handle, offset, size)) return;
      yield { kind: 'torn', bytes: size - offset, index };
      return;
    }
    await readExactly(handle, head, offset);
    const length = head.readUInt32BE(0);
    if (length === 0) {
      // No frame is empty: the zeros written ahead, or a torn write whose first sector never landed.
      if (await zerosTo(handle, offset, size)) return;
      yield { kind: 'torn', bytes: size - offset, index };
      return;
    }
    if (length > framePlaintextBytesMax) throw new SealedTrailError(`${name} frame ${index}: claims ${length} bytes, more than any frame (altered)`);
    const bodyBytes = length + tagBytes + frameTrailerBytes;
    if (size - offset - frameHeadBytes < bodyBytes) {
      yield { kind: 'torn', bytes: size - offset, index };
      return;
    }
    const body = Buffer.alloc(bodyBytes);
    await readExactly(handle, body, offset + frameHeadBytes);
    const end = offset + frameHeadBytes + bodyBytes;
    let plaintext: Buffer;
    try {
      plaintext = file.openFrame(index, head, body);
    } catch (error) {
      // The head of a write in flight or torn landed first (its index is the one expected): only its later bytes are missing.
      if (error instanceof SealedTrailError && Number(head.readBigUInt64BE(4)) === index && end < size && (await zerosTo(handle, end, size))) {
        yield { kind: 'torn', bytes: end - offset, index };
        return;
      }
      throw error;
    }
    yield { kind: 'frame', plaintext, index };
    offset = end;
  }
}

const zeroScanBytes = 64 * 1024;
const zeroChunk = Buffer.alloc(zeroScanBytes);

/** Whether every byte of [from, to) is zero (read in bounded chunks). */
async function zerosTo(handle: FileHandle, from: number, to: number): Promise<boolean> {
  const chunk = Buffer.alloc(Math.min(zeroScanBytes, Math.max(0, to - from)));
  for (let position = from; position < to; position += chunk.length) {
    const length = Math.min(chunk.length, to - position);
    await readExactly(handle, chunk.subarray(0, length), position);
    if (!chunk.subarray(0, length).equals(zeroChunk.subarray(0, length))) return false;
  }
  return true;
}

/** Where a file's data ends: after its last byte that is not zero (the zeros written ahead excluded), read backwards in bounded chunks. */
async function dataEnd(handle: FileHandle, size: number): Promise<number> {
  const chunk = Buffer.alloc(Math.min(zeroScanBytes, size));
  for (let end = size; end > 0; ) {
    const length = Math.min(chunk.length, end);
    await readExactly(handle, chunk.subarray(0, length), end - length);
    if (!chunk.subarray(0, length).equals(zeroChunk.subarray(0, length))) {
      for (let at = length - 1; at >= 0; at--) if (chunk[at] !== 0) return end - length + at + 1;
    }
    end -= length;
  }
  return 0;
}

/**
 * The last complete frame of an open sealed file, found from its end (a start reads only this).
 * In a file written ahead with zeros, the last frame ends where the zeros begin, or up to 2 bytes
 * after (its trailing length field ends in zero bytes when the length is a multiple of 256).
 */
export async function readLastFrame(handle: FileHandle, file: SealedTrailFile): Promise<Buffer | undefined> {
  const { size } = await handle.stat();
  if (size < sealedTrailHeaderBytes + frameOverheadBytes) return undefined;
  const data = await dataEnd(handle, size);
  for (let end = data; end <= Math.min(size, data + 2); end++) {
    const frame = await frameEndingAt(handle, file, end);
    if (frame !== undefined) return frame;
  }
  return undefined; // a torn or altered end: the start names it "unreadable", verify says where
}

async function frameEndingAt(handle: FileHandle, file: SealedTrailFile, end: number): Promise<Buffer | undefined> {
  if (end < sealedTrailHeaderBytes + frameOverheadBytes) return undefined;
  const trailer = Buffer.alloc(frameTrailerBytes);
  await readExactly(handle, trailer, end - frameTrailerBytes);
  const length = trailer.readUInt32BE(0);
  const frameBytes = frameOverheadBytes + length;
  if (length === 0 || length > framePlaintextBytesMax || end - sealedTrailHeaderBytes < frameBytes) return undefined;
  const head = Buffer.alloc(frameHeadBytes);
  await readExactly(handle, head, end - frameBytes);
  const body = Buffer.alloc(frameBytes - frameHeadBytes);
  await readExactly(handle, body, end - frameBytes + frameHeadBytes);
  try {
    return file.openFrame(Number(head.readBigUInt64BE(4)), head, body);
  } catch {
    return undefined;
  }
}

async function readExactly(handle: FileHandle, buffer: Buffer, position: number): Promise<void> {
  let done = 0;
  while (done < buffer.length) {
    const { bytesRead } = await handle.read(buffer, done, buffer.length - done, position + done);
    if (bytesRead === 0) throw new SealedTrailError('the file ended inside a frame');
    done += bytesRead;
  }
}
