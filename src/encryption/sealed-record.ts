/**
 * The sealed record: how one database value is stored when the member encrypts at rest.
 *
 * Sealed record layout (format version 1), the LevelDB value of every record but the key store's:
 *   offset 0   u8   marker 0xE5
 *   offset 1   u8   format version (1)
 *   offset 2   u32  DEK id (big-endian), see `keyring.ts`
 *   offset 6   12   nonce (random, fresh for every seal)
 *   offset 18       ciphertext (AES-256-GCM of the plaintext value, same length)
 *   last 16         GCM authentication tag
 * Additional authenticated data: bytes [0, 18) of the record followed by the record's LevelDB key.
 * So the header cannot be edited, and a record copied or moved to another key (another revision,
 * another log index) fails to open, as does any flipped bit: `SealedRecordError` names the key.
 *
 * Nonces are 96 random bits. NIST SP 800-38D bounds random-nonce GCM to 2^32 encryptions per key;
 * the keyring retires a DEK after `dekEncryptionsMax` (2^30) seals, counted durably, so no DEK
 * comes near that bound (a nonce collision among 2^30 random nonces has probability < 2^-33).
 * LevelDB keys are never sealed: they are revisions, log indexes and fixed names (`storage/schema.ts`),
 * never client bytes.
 */
import { createCipheriv, createDecipheriv, randomFillSync } from 'node:crypto';

export const sealedRecordMarker = 0xe5;
export const sealedRecordVersion = 1;
export const sealedHeaderBytes = 18;
export const sealedTagBytes = 16;
export const sealedOverheadBytes = sealedHeaderBytes + sealedTagBytes;
export const dekBytes = 32;
const nonceBytes = 12;

export class SealedRecordError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'SealedRecordError';
  }
}

/** A LevelDB key in messages: printable keys as text, others as hex. Keys never hold client bytes. */
export function describeKey(key: Buffer): string {
  const printable = key.length > 0 && key.subarray(1).every((byte) => byte >= 0x20 && byte < 0x7f);
  return printable ? `'${key.toString('latin1')}'` : `'${String.fromCharCode(key[0] ?? 0x3f)}'+${key.subarray(1).toString('hex')}`;
}

/** Whether `record` carries a sealed header (it may still fail to open). */
export function looksSealed(record: Buffer): boolean {
  return record.length >= sealedOverheadBytes && record[0] === sealedRecordMarker && record[1] === sealedRecordVersion;
}

/** The DEK id in a sealed record's header. */
export function sealedDekId(record: Buffer): number {
  return record.readUInt32BE(2);
}

/**
 * Random nonces drawn from a pool the CSPRNG refills in one call per 512 seals: one call per seal
 * cost ~12 µs, the larger part of sealing a small record. The bytes are the same CSPRNG output,
 * each used once; nonces are not secret (they sit in the record's header).
 */
const noncePool = Buffer.allocUnsafe(nonceBytes * 512);
let noncePoolOffset = noncePool.length;

function takeNonce(target: Buffer, offset: number): void {
  if (noncePoolOffset + nonceBytes > noncePool.length) {
    randomFillSync(noncePool);
    noncePoolOffset = 0;
  }
  noncePool.copy(target, offset, noncePoolOffset, noncePoolOffset + nonceBytes);
  noncePoolOffset += nonceBytes;
}

/**
 * The record `sealRecord` makes, as three buffers whose concatenation it is: header, ciphertext,
 * tag. For a large plaintext written out at once (`writev`): the ciphertext is not copied into one
 * buffer (at 4 MiB a frame, that copy and its fresh allocation cost as much as the encryption).
 */
export function sealRecordParts(dekId: number, dek: Buffer, key: Buffer, plaintext: Buffer): [Buffer, Buffer, Buffer] {
  const header = Buffer.allocUnsafe(sealedHeaderBytes);
  header[0] = sealedRecordMarker;
  header[1] = sealedRecordVersion;
  header.writeUInt32BE(dekId, 2);
  takeNonce(header, 6);
  const cipher = createCipheriv('aes-256-gcm', dek, header.subarray(6, sealedHeaderBytes));
  cipher.setAAD(Buffer.concat([header, key]));
  const ciphertext = cipher.update(plaintext);
  cipher.final();
  return [header, ciphertext, cipher.getAuthTag()];
}

export function sealRecord(dekId: number, dek: Buffer, key: Buffer, plaintext: Buffer): Buffer {
  const record = Buffer.allocUnsafe(sealedOverheadBytes + plaintext.length);
  record[0] = sealedRecordMarker;
  record[1] = sealedRecordVersion;
  record.writeUInt32BE(dekId, 2);
  takeNonce(record, 6);
  const cipher = createCipheriv('aes-256-gcm', dek, record.subarray(6, sealedHeaderBytes));
  cipher.setAAD(Buffer.concat([record.subarray(0, sealedHeaderBytes), key]));
  const written = cipher.update(plaintext).copy(record, sealedHeaderBytes);
  cipher.final();
  cipher.getAuthTag().copy(record, sealedHeaderBytes + written);
  return record;
}

/** Opens a record sealed under `dek` at `key`; throws SealedRecordError naming the key on any damage. */
export function openRecord(dek: Buffer, key: Buffer, record: Buffer): Buffer {
  if (!looksSealed(record)) {
    throw new SealedRecordError(`record ${describeKey(key)}: not a sealed record (${record.length} bytes, header ${record.subarray(0, 2).toString('hex')})`);
  }
  const decipher = createDecipheriv('aes-256-gcm', dek, record.subarray(6, sealedHeaderBytes));
  decipher.setAAD(Buffer.concat([record.subarray(0, sealedHeaderBytes), key]));
  decipher.setAuthTag(record.subarray(record.length - sealedTagBytes));
  const plaintext = decipher.update(record.subarray(sealedHeaderBytes, record.length - sealedTagBytes));
  try {
    decipher.final();
  } catch {
    throw new SealedRecordError(`record ${describeKey(key)}: authentication failed (the record was altered, moved, or sealed under another key)`);
  }
  return plaintext;
}
