/**
 * The records inside one frame of the Raft log's segment files (see `frame.ts` for the frame).
 *
 * A frame's payload is a sequence of records, each starting with a u8 type (integers big-endian):
 *   1 segment header  u8 format version (1), u64 first index: the segment's first frame starts with
 *                     it; entries before the first index live in earlier segments, if anywhere
 *   2 log start       u8 reset (0 or 1), u64 index, u64 term: the log starts after (index, term);
 *                     reset 1 discards every entry (a snapshot was installed, or the log rewritten)
 *   3 hard state      u32 length, the stored hard state (`encodeHardState`, sealed when encrypting)
 *   4 entry           u64 index, u32 length, the stored entry (`encodeLogRecord`, sealed when
 *                     encrypting under the key `encodeLogKey(index)` as additional data)
 *   5 sealed entries  u64 first index, u32 count (>= 2), u32 length, then the group sealed as one
 *                     record under the key `encodeLogGroupKey(first index, count)` as additional
 *                     data; its plaintext is, for each of the count entries in index order,
 *                     u32 length and the entry (`encodeLogRecord`). Written only when encrypting,
 *                     for the entries of one write (a Ready): one AES-GCM seal instead of one per
 *                     entry (each seal costs ~5 µs before any byte is encrypted). A member of an
 *                     earlier version reads no log that holds one (unknown record type 5).
 * An entry at an index the log already holds replaces it and every entry after it (a conflicting
 * suffix from a new leader); a group acts as its entries one by one. Stored entries (type 4) are
 * byte for byte what the LevelDB log held, so sealing, key rotation and the CRC inside each value
 * are unchanged.
 */
import type { Entry } from '../../raft/types.js';
import { readUint64, writeUint64 } from '../encoding.js';
import { LogCorruptionError, logRecordBytes, writeLogRecord } from '../log.js';

export const segmentFormatVersion = 1;

export type LogRecord =
  | { readonly type: 'header'; readonly firstIndex: number }
  | { readonly type: 'logStart'; readonly reset: boolean; readonly index: number; readonly term: number }
  | { readonly type: 'hardState'; readonly value: Buffer }
  | { readonly type: 'entry'; readonly index: number; readonly value: Buffer }
  | { readonly type: 'sealedEntries'; readonly firstIndex: number; readonly count: number; readonly value: Buffer };

/**
 * An entry record as written by a member that does not seal: byte for byte an 'entry' record whose
 * value is `encodeLogRecord(entry)`, built in place in the frame (no stored value of its own: one
 * allocation and one copy of the entry's data fewer per entry). Reading gives an 'entry' record.
 */
export interface PlainEntryRecord {
  readonly type: 'plainEntry';
  readonly index: number;
  readonly entry: Entry;
}

/** What a frame is written from. */
export type WrittenRecord = LogRecord | PlainEntryRecord;

const typeCodes = { header: 1, logStart: 2, hardState: 3, entry: 4, plainEntry: 4, sealedEntries: 5 } as const;

function recordBytes(record: WrittenRecord): number {
  switch (record.type) {
    case 'header':
      return 1 + 1 + 8;
    case 'logStart':
      return 1 + 1 + 16;
    case 'hardState':
      return 1 + 4 + record.value.length;
    case 'entry':
      return 1 + 8 + 4 + record.value.length;
    case 'plainEntry':
      return 1 + 8 + 4 + logRecordBytes(record.entry);
    case 'sealedEntries':
      return 1 + 8 + 4 + 4 + record.value.length;
  }
}

/** The bytes `records` take encoded. */
export function recordsBytes(records: readonly WrittenRecord[]): number {
  let total = 0;
  for (const record of records) total += recordBytes(record);
  return total;
}

export function encodeRecords(records: readonly WrittenRecord[]): Buffer {
  const payload = Buffer.allocUnsafe(recordsBytes(records));
  writeRecords(records, payload, 0);
  return payload;
}

/** Writes `records` into `payload` from `start` (`recordsBytes(records)` bytes). */
export function writeRecords(records: readonly WrittenRecord[], payload: Buffer, start: number): void {
  let offset = start;
  for (const record of records) {
    payload[offset] = typeCodes[record.type];
    switch (record.type) {
      case 'header':
        payload[offset + 1] = segmentFormatVersion;
        writeUint64(payload, record.firstIndex, offset + 2);
        break;
      case 'logStart':
        payload[offset + 1] = record.reset ? 1 : 0;
        writeUint64(payload, record.index, offset + 2);
        writeUint64(payload, record.term, offset + 10);
        break;
      case 'hardState':
        payload.writeUInt32BE(record.value.length, offset + 1);
        record.value.copy(payload, offset + 5);
        break;
      case 'entry':
        writeUint64(payload, record.index, offset + 1);
        payload.writeUInt32BE(record.value.length, offset + 9);
        record.value.copy(payload, offset + 13);
        break;
      case 'plainEntry':
        writeUint64(payload, record.index, offset + 1);
        payload.writeUInt32BE(logRecordBytes(record.entry), offset + 9);
        writeLogRecord(record.entry, payload, offset + 13);
        break;
      case 'sealedEntries':
        writeUint64(payload, record.firstIndex, offset + 1);
        payload.writeUInt32BE(record.count, offset + 9);
        payload.writeUInt32BE(record.value.length, offset + 13);
        record.value.copy(payload, offset + 17);
        break;
    }
    offset += recordBytes(record);
  }
}

/** The records of a frame whose CRC matched; anything malformed is corruption (`where` names it). */
export function decodeRecords(payload: Buffer, where: string): LogRecord[] {
  const records: LogRecord[] = [];
  let offset = 0;
  const need = (bytes: number): void => {
    if (offset + bytes > payload.length) throw new LogCorruptionError(`${where}: record at byte ${offset} of the frame runs past its end`);
  };
  while (offset < payload.length) {
    const code = payload[offset];
    if (code === typeCodes.header) {
      need(10);
      if (payload[offset + 1] !== segmentFormatVersion) throw new LogCorruptionError(`${where}: unknown segment format ${payload[offset + 1]}`);
      records.push({ type: 'header', firstIndex: readUint64(payload, offset + 2) });
      offset += 10;
    } else if (code === typeCodes.logStart) {
      need(18);
      records.push({ type: 'logStart', reset: payload[offset + 1] === 1, index: readUint64(payload, offset + 2), term: readUint64(payload, offset + 10) });
      offset += 18;
    } else if (code === typeCodes.hardState) {
      need(5);
      const length = payload.readUInt32BE(offset + 1);
      need(5 + length);
      records.push({ type: 'hardState', value: payload.subarray(offset + 5, offset + 5 + length) });
      offset += 5 + length;
    } else if (code === typeCodes.entry) {
      need(13);
      const length = payload.readUInt32BE(offset + 9);
      need(13 + length);
      records.push({ type: 'entry', index: readUint64(payload, offset + 1), value: payload.subarray(offset + 13, offset + 13 + length) });
      offset += 13 + length;
    } else if (code === typeCodes.sealedEntries) {
      need(17);
      const count = payload.readUInt32BE(offset + 9);
      if (count < 2) throw new LogCorruptionError(`${where}: a group of ${count} sealed entries at byte ${offset} of the frame`);
      const length = payload.readUInt32BE(offset + 13);
      need(17 + length);
      records.push({ type: 'sealedEntries', firstIndex: readUint64(payload, offset + 1), count, value: payload.subarray(offset + 17, offset + 17 + length) });
      offset += 17 + length;
    } else {
      throw new LogCorruptionError(`${where}: unknown record type ${code} at byte ${offset} of the frame`);
    }
  }
  return records;
}

/**
 * The plaintext of a group of entries (record type 5): for each, u32 length and the stored entry.
 * `write(position, target, offset)` writes the entry at `position` (its `bytes(position)` long).
 */
export function encodeEntryGroup(count: number, bytes: (position: number) => number, write: (position: number, target: Buffer, offset: number) => void): Buffer {
  let total = 0;
  for (let position = 0; position < count; position++) total += 4 + bytes(position);
  const group = Buffer.allocUnsafe(total);
  let offset = 0;
  for (let position = 0; position < count; position++) {
    const length = bytes(position);
    group.writeUInt32BE(length, offset);
    write(position, group, offset + 4);
    offset += 4 + length;
  }
  return group;
}

/** The stored entries of an opened group: exactly `count`, filling it (anything else is corruption). */
export function decodeEntryGroup(group: Buffer, count: number, where: string): Buffer[] {
  const entries: Buffer[] = [];
  let offset = 0;
  while (offset < group.length) {
    if (offset + 4 > group.length) throw new LogCorruptionError(`${where}: a sealed group's entry ${entries.length} runs past its end`);
    const length = group.readUInt32BE(offset);
    if (offset + 4 + length > group.length) throw new LogCorruptionError(`${where}: a sealed group's entry ${entries.length} runs past its end`);
    entries.push(group.subarray(offset + 4, offset + 4 + length));
    offset += 4 + length;
  }
  if (entries.length !== count) throw new LogCorruptionError(`${where}: a sealed group holds ${entries.length} entries, not ${count}`);
  return entries;
}
