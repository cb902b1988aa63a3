/**
 * Frames: how one write of the Raft log's segment files is laid out, and how a file is read back.
 *
 * Frame layout (all integers big-endian), starting at an 8-byte aligned offset:
 *   offset 0   u32  payload length in bytes (never 0: a zero length marks the end of the data)
 *   offset 4   u32  CRC-32 of the payload
 *   offset 8        payload
 *   then zero bytes up to the next multiple of 8
 * Segment files are preallocated with zeros, so the data ends where the first zero header is.
 *
 * Each write (one Ready) is ONE frame, fdatasynced before the next write, so after a crash only
 * the last frame can be damaged: bytes of an interrupted write are the new ones or still zeros,
 * sector by sector (`sectorBytes`). `scanFrames` reads frames up to the first that is not whole
 * and valid, and tells a torn write from corruption as etcd's WAL does (decoder `isTornEntry`):
 * - a valid frame further on: corruption (the data after it was written later);
 * - a header of zeros: the end of the data (a write whose header sector never reached the disk);
 * - a header that was written, and some sector's share of its payload still all zeros (outside the
 *   header's own sector, which reached the disk whole with the header): the torn tail of a write
 *   never acknowledged (acknowledgements wait for its sync), cut off;
 * - a header that was written and a payload with no unwritten sector that fails its CRC (a
 *   flipped bit, say), or a length that runs past the file: corruption, though nothing follows it.
 *   Cutting it off as a torn tail would silently drop an entry that may have been acknowledged.
 * Corruption throws LogCorruptionError naming the file and offset: the member refuses to start.
 * (A payload whose data has a sector's share of zeros is taken as torn, as etcd takes it.)
 */
import { crc32 } from 'node:zlib';
import { LogCorruptionError } from '../log.js';

export { LogCorruptionError };

export const frameHeaderBytes = 8;
export const frameAlignmentBytes = 8;
/** The unit a disk writes whole, at the least (etcd's minSectorSize): a torn write leaves whole ones unwritten. */
export const sectorBytes = 512;

function alignUp(bytes: number): number {
  return Math.ceil(bytes / frameAlignmentBytes) * frameAlignmentBytes;
}

/** The bytes one frame takes in a file, padding included. */
export function frameBytes(payloadBytes: number): number {
  return alignUp(frameHeaderBytes + payloadBytes);
}

export function encodeFrame(payload: Buffer): Buffer {
  return buildFrame(payload.length, (frame, offset) => payload.copy(frame, offset));
}

/**
 * A frame of `payloadBytes`, the payload written in place by `write(frame, offset)` (it must fill
 * exactly that many bytes from `offset`): one allocation and no copy of the payload, which holds
 * every entry of a Ready. The padding is zeroed; the CRC covers what `write` put there.
 */
export function buildFrame(payloadBytes: number, write: (frame: Buffer, offset: number) => void): Buffer {
  if (payloadBytes === 0) throw new Error('assertion failed: an empty frame');
  const bytes = frameBytes(payloadBytes);
  const frame = Buffer.allocUnsafe(bytes);
  const end = frameHeaderBytes + payloadBytes;
  frame.fill(0, end, bytes);
  write(frame, frameHeaderBytes);
  frame.writeUInt32BE(payloadBytes, 0);
  frame.writeUInt32BE(crc32(frame.subarray(frameHeaderBytes, end)), 4);
  return frame;
}

/** The payload of a whole, valid frame at `offset`, or undefined. */
function frameAt(data: Buffer, offset: number): Buffer | undefined {
  if (offset + frameHeaderBytes > data.length) return undefined;
  const length = data.readUInt32BE(offset);
  if (length === 0 || offset + frameHeaderBytes + length > data.length) return undefined;
  const payload = data.subarray(offset + frameHeaderBytes, offset + frameHeaderBytes + length);
  return crc32(payload) === data.readUInt32BE(offset + 4) ? payload : undefined;
}

export interface ScannedFrame {
  readonly offset: number;
  readonly payload: Buffer;
}

export interface ScanResult {
  readonly frames: ScannedFrame[];
  /** Where the valid data ends: the next frame is written here. */
  readonly end: number;
  /** The end of the last non-zero byte after `end` (a torn write's leftovers); `end` when none. */
  readonly dirtyEnd: number;
}

/**
 * Reads the frames of one file's contents. Throws LogCorruptionError naming `file` and the
 * offset when a damaged frame is followed by a valid one.
 */
export function scanFrames(data: Buffer, file: string): ScanResult {
  const frames: ScannedFrame[] = [];
  let offset = 0;
  for (;;) {
    const payload = frameAt(data, offset);
    if (payload === undefined) break;
    frames.push({ offset, payload });
    offset += frameBytes(payload.length);
  }
  let dirtyEnd = offset;
  for (let probe = offset; probe + frameHeaderBytes <= data.length; probe += frameAlignmentBytes) {
    if (data.readUInt32BE(probe) === 0 && data.readUInt32BE(probe + 4) === 0) continue;
    dirtyEnd = probe + frameHeaderBytes;
    if (probe > offset && frameAt(data, probe) !== undefined) {
      throw new LogCorruptionError(`${file}: the record at offset ${offset} is damaged and a valid record follows it at offset ${probe} (not a torn last write); refusing to use the log`);
    }
  }
  // Trailing bytes shorter than a header (files are multiples of 8, so only in a damaged file).
  for (let index = Math.max(offset, data.length - (data.length % frameAlignmentBytes)); index < data.length; index++) {
    if (data[index] !== 0) dirtyEnd = data.length;
  }
  const damage = damageAt(data, offset);
  if (damage !== undefined) throw new LogCorruptionError(`${file}: the record at offset ${offset} ${damage} (not a torn last write); refusing to use the log`);
  return { frames, end: offset, dirtyEnd };
}

/**
 * Why the frame at `offset` (the first that is not valid, none valid after it) is corruption rather
 * than a torn write; undefined when it is torn, or the data simply ends there.
 */
function damageAt(data: Buffer, offset: number): string | undefined {
  if (offset + frameHeaderBytes > data.length) return undefined;
  const length = data.readUInt32BE(offset);
  if (length === 0 && data.readUInt32BE(offset + 4) === 0) return undefined;
  // The header was written: its 8 bytes are aligned, so they lie in one sector, written whole.
  if (length === 0) return 'has a length of 0 and a checksum';
  const payloadStart = offset + frameHeaderBytes;
  if (length > data.length - payloadStart) return `has a length of ${length}, past the end of the file`;
  if (hasUnwrittenSector(data, payloadStart, payloadStart + length)) return undefined;
  return 'is whole (no sector of it unwritten) but fails its checksum';
}

/** Whether, in some sector after the one holding the header, the payload's share [start, end) is all zeros. */
function hasUnwrittenSector(data: Buffer, start: number, end: number): boolean {
  const headerSectorEnd = (Math.floor((start - frameHeaderBytes) / sectorBytes) + 1) * sectorBytes;
  for (let sector = headerSectorEnd; sector < end; sector += sectorBytes) {
    const shareEnd = Math.min(end, sector + sectorBytes);
    let zeros = true;
    for (let index = sector; index < shareEnd; index++) {
      if (data[index] !== 0) {
        zeros = false;
        break;
      }
    }
    if (zeros) return true;
  }
  return false;
}
