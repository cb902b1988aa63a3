/**
 * A sealed snapshot file (`rampart snapshot save FILE --seal-key-file KEY`): the whole snapshot
 * (Rampart's or etcd's format) under AES-256-GCM with a snapshot key — 32 bytes in a file of mode
 * 0600, like a KEK file, kept apart from the backups it opens.
 *
 * Layout (version 1):
 *   offset 0   16   magic "rampart-sealed\n\0"
 *   offset 16  u8   version (1)
 *   offset 17  8    key id: the first 8 bytes of SHA-256("rampart snapshot key id" ‖ key)
 *   offset 25  12   random nonce
 *   offset 37       ciphertext of the snapshot file
 *   last 16         GCM tag; additional data: bytes [0, 37)
 * A wrong key is named by its id; any altered byte fails the tag, and nothing is restored.
 */
import { createCipheriv, createDecipheriv, createHash, randomBytes } from 'node:crypto';

export const sealedFileMagic = Buffer.from('rampart-sealed\n\0', 'latin1');
const version = 1;
const headerBytes = 37;
const tagBytes = 16;

function keyIdOf(key: Buffer): Buffer {
  return createHash('sha256').update('rampart snapshot key id').update(key).digest().subarray(0, 8);
}

export function isSealedFile(content: Buffer): boolean {
  return content.length >= headerBytes + tagBytes && content.subarray(0, sealedFileMagic.length).equals(sealedFileMagic);
}

export function sealFile(key: Buffer, content: Buffer): Buffer {
  const header = Buffer.concat([sealedFileMagic, Buffer.of(version), keyIdOf(key), randomBytes(12)]);
  const cipher = createCipheriv('aes-256-gcm', key, header.subarray(25, headerBytes));
  cipher.setAAD(header);
  return Buffer.concat([header, cipher.update(content), cipher.final(), cipher.getAuthTag()]);
}

/** Opens a sealed file; `name` is used in errors. */
export function openFile(key: Buffer, sealed: Buffer, name: string): Buffer {
  if (!isSealedFile(sealed) || sealed[16] !== version) throw new Error(`${name} is not a sealed snapshot of a known version`);
  const keyId = sealed.subarray(17, 25);
  if (!keyId.equals(keyIdOf(key))) throw new Error(`${name} is sealed under snapshot key ${keyId.toString('hex')}, not under the one given (${keyIdOf(key).toString('hex')})`);
  const decipher = createDecipheriv('aes-256-gcm', key, sealed.subarray(25, headerBytes));
  decipher.setAAD(sealed.subarray(0, headerBytes));
  decipher.setAuthTag(sealed.subarray(sealed.length - tagBytes));
  const content = decipher.update(sealed.subarray(headerBytes, sealed.length - tagBytes));
  try {
    decipher.final();
  } catch {
    throw new Error(`${name}: the sealed snapshot was altered or damaged (authentication failed); nothing was restored`);
  }
  return content;
}
