/**
 * The worker thread of `ParallelOpener` (record-opener.ts): opens sealed records in batches off the
 * member's main thread, so a long scan (the index rebuild at start) decrypts while the main thread
 * indexes. It checks every record exactly as `openRecord` does (the GCM tag over header, key and
 * ciphertext); a record it cannot open (damaged, unknown DEK, plaintext) it leaves to the main
 * thread, which opens it again and throws the precise error (or passes plaintext while migrating).
 * Never: decides anything about a record beyond "opened" or "left to the main thread".
 */
import { parentPort, workerData } from 'node:worker_threads';
import { openRecord } from './sealed-record.js';
import type { OpenRequest, OpenResponse } from './record-opener.js';

const port = parentPort;
if (port === null) throw new Error('record-opener-worker runs as a worker thread only');
const deks = new Map<number, Buffer>((workerData as { deks: [number, Uint8Array][] }).deks.map(([id, key]) => [id, Buffer.from(key)]));

port.on('message', (request: OpenRequest) => {
  const input = Buffer.from(request.records);
  const opened: Buffer[] = [];
  const plaintextLengths = new Int32Array(request.lengths.length / 2);
  let offset = 0;
  let outputBytes = 0;
  for (let position = 0; position < plaintextLengths.length; position++) {
    const keyBytes = request.lengths[position * 2] as number;
    const valueBytes = request.lengths[position * 2 + 1] as number;
    const key = input.subarray(offset, offset + keyBytes);
    const record = input.subarray(offset + keyBytes, offset + keyBytes + valueBytes);
    offset += keyBytes + valueBytes;
    const dek = record.length >= 6 ? deks.get(record.readUInt32BE(2)) : undefined;
    let plaintext: Buffer | undefined;
    if (dek !== undefined) {
      try {
        plaintext = openRecord(dek, key, record);
      } catch {
        plaintext = undefined;
      }
    }
    plaintextLengths[position] = plaintext === undefined ? -1 : plaintext.length;
    if (plaintext !== undefined) {
      opened.push(plaintext);
      outputBytes += plaintext.length;
    }
  }
  const output = Buffer.concat(opened, outputBytes);
  // A fresh ArrayBuffer of its own (concat of small inputs may come from the shared pool).
  const transferable = output.byteOffset === 0 && output.buffer.byteLength === output.length ? output.buffer : Uint8Array.prototype.slice.call(output).buffer;
  const response: OpenResponse = { id: request.id, plaintexts: transferable as ArrayBuffer, lengths: plaintextLengths };
  port.postMessage(response, [response.plaintexts, plaintextLengths.buffer]);
});
