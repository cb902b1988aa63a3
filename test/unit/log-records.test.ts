import { describe, expect, it } from 'vitest';
import type { Entry } from '../../src/raft/types.js';
import { decodeLogRecord, encodeLogRecord } from '../../src/storage/log.js';
import { decodeRecords, encodeRecords, type WrittenRecord } from '../../src/storage/wal/log-records.js';

describe('log records', () => {
  it("writes a plain entry record in place byte for byte as an 'entry' record of encodeLogRecord, and reads it back as one", () => {
    const entries: Entry[] = [
      { index: 7, term: 3, type: 'normal', data: Buffer.from('a put proposal') },
      { index: 8, term: 3, type: 'configurationChange', data: Buffer.from('{"type":"addNode"}') },
      { index: 2 ** 40, term: 2 ** 33, type: 'normal', data: Buffer.alloc(0) },
      { index: 9, term: 4, type: 'normal', data: Buffer.alloc(1100, 0xab) },
    ];
    const head: WrittenRecord[] = [{ type: 'header', firstIndex: 7 }];
    const inPlace = encodeRecords([...head, ...entries.map((entry): WrittenRecord => ({ type: 'plainEntry', index: entry.index, entry }))]);
    const stored = encodeRecords([...head, ...entries.map((entry): WrittenRecord => ({ type: 'entry', index: entry.index, value: encodeLogRecord(entry) }))]);
    expect(inPlace.equals(stored)).toBe(true);
    const read = decodeRecords(inPlace, 'test').slice(1);
    expect(read.map((record) => (record.type === 'entry' ? decodeLogRecord(record.index, record.value) : record))).toEqual(entries);
  });
});
