/**
 * Snapshots sealed to a recipient's public key (issue 9): RSA, EC and X25519 recipients round-trip;
 * the wrong private key is refused by id, any flipped byte fails authentication, keys that cannot
 * receive (Ed25519, small RSA) are refused, and each version asks for its own kind of key.
 */
import { generateKeyPairSync, randomBytes, type KeyObject } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { openSealedFile, recipientPublicKey, sealFile, sealFileTo, sealedFileNeeds } from '../../src/encryption/sealed-file.js';

const pairs: Record<string, () => { publicKey: KeyObject; privateKey: KeyObject }> = {
  rsa: () => generateKeyPairSync('rsa', { modulusLength: 2048 }),
  'ec p-256': () => generateKeyPairSync('ec', { namedCurve: 'prime256v1' }),
  'ec p-384': () => generateKeyPairSync('ec', { namedCurve: 'secp384r1' }),
  x25519: () => generateKeyPairSync('x25519'),
};

describe('snapshots sealed to a recipient key', () => {
  for (const [name, make] of Object.entries(pairs)) {
    it(`${name}: opens with the private key only, and refuses any flipped byte`, () => {
      const recipient = make();
      const other = make();
      const content = randomBytes(3000);
      const publicKey = recipientPublicKey(recipient.publicKey.export({ type: 'spki', format: 'pem' }).toString(), 'recipient.pem');
      const sealed = sealFileTo(publicKey, content);
      expect(sealed.includes(content.subarray(0, 32))).toBe(false);
      expect(openSealedFile(recipient.privateKey, sealed, 'f')).toEqual(content);
      // A new file key each time: the same content seals to different bytes.
      expect(sealFileTo(publicKey, content).equals(sealed)).toBe(false);
      expect(() => openSealedFile(other.privateKey, sealed, 'f')).toThrow(/is sealed to recipient key [0-9a-f]{16}, not to the one given/);
      expect(() => openSealedFile(randomBytes(32), sealed, 'f')).toThrow(/pass its private key with --recipient-key/);
      expect(sealedFileNeeds(sealed, 'f')).toMatch(/--recipient-key/);
      // Every byte after the recipient id (scheme, wrapped key, nonces, ciphertext, tag) is authenticated.
      for (let offset = 25; offset < sealed.length; offset += Math.max(1, Math.floor(sealed.length / 97))) {
        const damaged = Buffer.from(sealed);
        damaged[offset] = (damaged[offset] ?? 0) ^ 0x01;
        expect(() => openSealedFile(recipient.privateKey, damaged, 'f'), `byte ${offset}`).toThrow(/altered or damaged|not a snapshot sealed/);
      }
      expect(() => openSealedFile(recipient.privateKey, sealed.subarray(0, sealed.length - 1), 'f')).toThrow(/altered or damaged/);
    });
  }

  it('refuses keys that cannot receive a file key', () => {
    const ed25519 = generateKeyPairSync('ed25519').publicKey.export({ type: 'spki', format: 'pem' }).toString();
    expect(() => recipientPublicKey(ed25519, 'ed.pem')).toThrow(/ed.pem: a ed25519 key cannot receive sealed snapshots/);
    const small = generateKeyPairSync('rsa', { modulusLength: 1024 }).publicKey.export({ type: 'spki', format: 'pem' }).toString();
    expect(() => recipientPublicKey(small, 'small.pem')).toThrow(/at least 2048 bits/);
    expect(() => recipientPublicKey('not pem', 'x.pem')).toThrow(/x.pem holds no certificate or public key/);
  });

  it('a snapshot-key file asks for its key file, not a private key', () => {
    const key = randomBytes(32);
    const sealed = sealFile(key, Buffer.from('snapshot'));
    expect(openSealedFile(key, sealed, 'f').toString()).toBe('snapshot');
    expect(() => openSealedFile(generateKeyPairSync('x25519').privateKey, sealed, 'f')).toThrow(/pass its --snapshot-key-file/);
  });
});
