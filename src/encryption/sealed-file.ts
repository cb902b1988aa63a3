/**
 * A sealed snapshot file: the whole snapshot (Rampart's or etcd's format) under AES-256-GCM, either
 * with a snapshot key (`--seal-key-file`: 32 bytes in a file of mode 0600, like a KEK file, kept
 * apart from the backups it opens; version 1) or to a recipient's public key (`--recipient-cert`:
 * a random file key wrapped for the holder of the private key, so a backup host writes snapshots
 * it cannot read; version 2).
 *
 * Layout (version 1):
 *   offset 0   16   magic "rampart-sealed\n\0"
 *   offset 16  u8   version (1)
 *   offset 17  8    key id: the first 8 bytes of SHA-256("rampart snapshot key id" ‖ key)
 *   offset 25  12   random nonce
 *   offset 37       ciphertext of the snapshot file
 *   last 16         GCM tag; additional data: bytes [0, 37)
 * A wrong key is named by its id; any altered byte fails the tag, and nothing is restored.
 *
 * Layout (version 2, to a recipient):
 *   offset 0   16   magic
 *   offset 16  u8   version (2)
 *   offset 17  8    recipient id: the first 8 bytes of SHA-256("rampart snapshot recipient id" ‖
 *                   the recipient public key as SPKI DER)
 *   offset 25  u8   scheme: 1 RSA-OAEP (SHA-256) of the file key; 2 ECDH (P-256/384/521, X25519,
 *                   X448) with an ephemeral key, HKDF-SHA256 → a wrapping key, AES-256-GCM of the file key
 *   offset 26  u16  L, bytes of the wrapped file key (at most 4096)
 *   offset 28  L    wrapped file key; scheme 2: u16 E ‖ ephemeral public key (SPKI DER, E bytes) ‖
 *                   12-byte nonce ‖ 32 encrypted bytes ‖ 16-byte tag, additional data bytes [0, 26)
 *   28+L       12   random nonce
 *   40+L            ciphertext of the snapshot file under the random 32-byte file key
 *   last 16         GCM tag; additional data: bytes [0, 40+L)
 * One GCM message, as version 1: snapshots are read whole and bounded (4 GiB), far below GCM's
 * limit for one key and nonce. A file key is used once.
 */
import {
  KeyObject, constants, createCipheriv, createDecipheriv, createHash, createPrivateKey, createPublicKey,
  diffieHellman, generateKeyPairSync, hkdfSync, privateDecrypt, publicEncrypt, randomBytes,
} from 'node:crypto';

export const sealedFileMagic = Buffer.from('rampart-sealed\n\0', 'latin1');
const version = 1;
const recipientVersion = 2;
const wrappedKeyBytesMax = 4096;
const scheme = { rsaOaep: 1, ecdh: 2 } as const;
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

/** What opens a sealed file: a snapshot key (version 1) or a recipient's private key (version 2). */
export type SnapshotOpenKey = Buffer | KeyObject;

/** What the caller must pass to open `sealed`, said as a command-line hint. */
export function sealedFileNeeds(sealed: Buffer, name: string): string {
  return sealed[16] === recipientVersion
    ? `${name} is sealed to recipient key ${sealed.subarray(17, 25).toString('hex')}: pass its private key with --recipient-key`
    : `${name} is a sealed snapshot: pass its --snapshot-key-file`;
}

/** Opens a sealed file of either version; `name` is used in errors. */
export function openSealedFile(key: SnapshotOpenKey, sealed: Buffer, name: string): Buffer {
  if (isSealedFile(sealed) && sealed[16] === recipientVersion) {
    if (!(key instanceof KeyObject)) throw new Error(sealedFileNeeds(sealed, name));
    return openFileFor(key, sealed, name);
  }
  if (key instanceof KeyObject) throw new Error(`${name} is sealed under a snapshot key, not to a recipient: pass its --snapshot-key-file`);
  return openFile(key, sealed, name);
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

function recipientIdOf(publicKey: KeyObject): Buffer {
  return createHash('sha256').update('rampart snapshot recipient id').update(publicKey.export({ type: 'spki', format: 'der' })).digest().subarray(0, 8);
}

/** The file key's wrapping key for scheme 2: HKDF-SHA256 over the shared secret, bound to both public keys. */
function wrappingKey(shared: Buffer, ephemeral: Buffer, recipient: KeyObject): Buffer {
  const salt = Buffer.concat([ephemeral, recipient.export({ type: 'spki', format: 'der' })]);
  return Buffer.from(hkdfSync('sha256', shared, salt, 'rampart snapshot file key', 32));
}

function ephemeralPairFor(recipient: KeyObject): { publicKey: KeyObject; privateKey: KeyObject } {
  switch (recipient.asymmetricKeyType) {
    case 'ec': {
      const namedCurve = recipient.asymmetricKeyDetails?.namedCurve;
      if (namedCurve === undefined) throw new Error('the recipient EC key names no curve');
      return generateKeyPairSync('ec', { namedCurve });
    }
    case 'x25519':
      return generateKeyPairSync('x25519');
    case 'x448':
      return generateKeyPairSync('x448');
    default:
      throw new Error(`a ${String(recipient.asymmetricKeyType)} key cannot receive sealed snapshots (use RSA, EC P-256/384/521, X25519 or X448)`);
  }
}

/**
 * A recipient public key from PEM text: a certificate or a public key. Refuses key types that
 * cannot wrap a file key (Ed25519 signs only) and RSA under 2048 bits.
 */
export function recipientPublicKey(pem: string, name: string): KeyObject {
  let key: KeyObject;
  try {
    key = createPublicKey(pem);
  } catch {
    throw new Error(`${name} holds no certificate or public key in PEM`);
  }
  if (key.asymmetricKeyType === 'rsa') {
    if ((key.asymmetricKeyDetails?.modulusLength ?? 0) < 2048) throw new Error(`${name}: an RSA recipient key needs at least 2048 bits`);
    return key;
  }
  try {
    ephemeralPairFor(key);
  } catch (error) {
    throw new Error(`${name}: ${error instanceof Error ? error.message : String(error)}`);
  }
  return key;
}

/** A recipient private key from PEM text (unencrypted PKCS#8, PKCS#1 or SEC1). */
export function recipientPrivateKey(pem: string, name: string): KeyObject {
  try {
    return createPrivateKey(pem);
  } catch {
    throw new Error(`${name} holds no unencrypted private key in PEM`);
  }
}

/** Seals `content` to `recipient`'s public key: only its private key opens the file. */
export function sealFileTo(recipient: KeyObject, content: Buffer): Buffer {
  const fileKey = randomBytes(32);
  const fixed = Buffer.concat([sealedFileMagic, Buffer.of(recipientVersion), recipientIdOf(recipient)]);
  let wrapped: Buffer;
  let used: number;
  if (recipient.asymmetricKeyType === 'rsa') {
    used = scheme.rsaOaep;
    wrapped = publicEncrypt({ key: recipient, padding: constants.RSA_PKCS1_OAEP_PADDING, oaepHash: 'sha256' }, fileKey);
  } else {
    used = scheme.ecdh;
    const ephemeral = ephemeralPairFor(recipient);
    const ephemeralDer = ephemeral.publicKey.export({ type: 'spki', format: 'der' });
    const key = wrappingKey(diffieHellman({ privateKey: ephemeral.privateKey, publicKey: recipient }), ephemeralDer, recipient);
    const nonce = randomBytes(12);
    const cipher = createCipheriv('aes-256-gcm', key, nonce);
    cipher.setAAD(Buffer.concat([fixed, Buffer.of(used)]));
    const length = Buffer.alloc(2);
    length.writeUInt16BE(ephemeralDer.length);
    wrapped = Buffer.concat([length, ephemeralDer, nonce, cipher.update(fileKey), cipher.final(), cipher.getAuthTag()]);
  }
  const wrappedLength = Buffer.alloc(2);
  wrappedLength.writeUInt16BE(wrapped.length);
  const header = Buffer.concat([fixed, Buffer.of(used), wrappedLength, wrapped, randomBytes(12)]);
  const cipher = createCipheriv('aes-256-gcm', fileKey, header.subarray(header.length - 12));
  cipher.setAAD(header);
  return Buffer.concat([header, cipher.update(content), cipher.final(), cipher.getAuthTag()]);
}

/** Opens a file sealed to a recipient with its private key; `name` is used in errors. */
export function openFileFor(privateKey: KeyObject, sealed: Buffer, name: string): Buffer {
  const damaged = (): Error => new Error(`${name}: the sealed snapshot was altered or damaged (authentication failed); nothing was restored`);
  if (!isSealedFile(sealed) || sealed[16] !== recipientVersion) throw new Error(`${name} is not a snapshot sealed to a recipient key`);
  const publicKey = createPublicKey(privateKey);
  const id = sealed.subarray(17, 25);
  if (!id.equals(recipientIdOf(publicKey))) throw new Error(`${name} is sealed to recipient key ${id.toString('hex')}, not to the one given (${recipientIdOf(publicKey).toString('hex')})`);
  const used = sealed[25];
  const wrappedLength = sealed.readUInt16BE(26);
  const headerLength = 28 + wrappedLength + 12;
  if (wrappedLength > wrappedKeyBytesMax || sealed.length < headerLength + tagBytes) throw damaged();
  const wrapped = sealed.subarray(28, 28 + wrappedLength);
  let fileKey: Buffer;
  try {
    if (used === scheme.rsaOaep && publicKey.asymmetricKeyType === 'rsa') {
      fileKey = privateDecrypt({ key: privateKey, padding: constants.RSA_PKCS1_OAEP_PADDING, oaepHash: 'sha256' }, wrapped);
    } else if (used === scheme.ecdh && publicKey.asymmetricKeyType !== 'rsa') {
      const ephemeralLength = wrapped.readUInt16BE(0);
      if (wrapped.length !== 2 + ephemeralLength + 12 + 32 + 16) throw damaged();
      const ephemeralDer = wrapped.subarray(2, 2 + ephemeralLength);
      const ephemeral = createPublicKey({ key: ephemeralDer, format: 'der', type: 'spki' });
      const key = wrappingKey(diffieHellman({ privateKey, publicKey: ephemeral }), ephemeralDer, publicKey);
      const rest = wrapped.subarray(2 + ephemeralLength);
      const decipher = createDecipheriv('aes-256-gcm', key, rest.subarray(0, 12));
      decipher.setAAD(sealed.subarray(0, 26));
      decipher.setAuthTag(rest.subarray(44, 60));
      fileKey = Buffer.concat([decipher.update(rest.subarray(12, 44)), decipher.final()]);
    } else {
      throw damaged();
    }
  } catch {
    throw damaged();
  }
  if (fileKey.length !== 32) throw damaged();
  const decipher = createDecipheriv('aes-256-gcm', fileKey, sealed.subarray(headerLength - 12, headerLength));
  decipher.setAAD(sealed.subarray(0, headerLength));
  decipher.setAuthTag(sealed.subarray(sealed.length - tagBytes));
  const content = decipher.update(sealed.subarray(headerLength, sealed.length - tagBytes));
  try {
    decipher.final();
  } catch {
    throw damaged();
  }
  return content;
}
