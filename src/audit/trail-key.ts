/**
 * The trail key: 32 random bytes that open every sealed audit file of one member (each file derives
 * its own key from it, see `sealed-trail.ts`). It is kept in the audit directory, wrapped by the
 * member's key-encryption key (KEK) — never by a data key of the database — so that:
 *   - `rampart audit verify|export PATH` opens a trail with the KEK alone (the key file, or the KMS
 *     plugin), even while the member runs and holds its database locked;
 *   - a DEK rotation (`rampart encryption rotate`) neither touches nor needs the audit files: the
 *     database's "old DEK deleted once nothing uses it" is unchanged, and old audit files stay
 *     readable for their whole retention;
 *   - a KEK rotation (`rotate --kek`) adds a wrapping under the new KEK before the new KEK replaces
 *     the old (`addWrapping`, called from the keyring's re-wrap), so a crash at any point leaves a
 *     wrapping that the surviving KEK opens; the next start keeps only the current KEK's.
 *
 * File `trail-key` (mode 0600, replaced atomically: write, fsync, rename, fsync the directory):
 *   JSON {"version":1,"id":"<16 hex>","wrappings":[{"kekId","ciphertext":base64,"annotations":{name:base64}}]}
 * The wrapped plaintext is "rampart audit trail key\n" ‖ the 32-byte key, so a data key's wrapping
 * copied here does not pass for a trail key. The id is the first 8 bytes of
 * SHA-256("rampart audit trail key id" ‖ key): it names the key in headers and errors.
 */
import { createHash, randomBytes } from 'node:crypto';
import { mkdir, open, readFile, rename, rm } from 'node:fs/promises';
import path from 'node:path';
import type { KekProvider, WrappedKey } from '../encryption/kek.js';
import type { TrailKey } from './sealed-trail.js';

export const trailKeyFileName = 'trail-key';
const version = 1;
const wrapPrefix = Buffer.from('rampart audit trail key\n', 'latin1');
const keyBytes = 32;
/** A trail-key file is a few hundred bytes; anything much larger is not one. */
const trailKeyFileBytesMax = 64 * 1024;

export class TrailKeyError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'TrailKeyError';
  }
}

function idOf(key: Buffer): string {
  return createHash('sha256').update('rampart audit trail key id').update(key).digest().subarray(0, 8).toString('hex');
}

interface StoredWrapping {
  kekId: string;
  ciphertext: string;
  annotations: Record<string, string>;
}

function encodeWrapping(wrapped: WrappedKey): StoredWrapping {
  return {
    kekId: wrapped.kekId,
    ciphertext: wrapped.ciphertext.toString('base64'),
    annotations: Object.fromEntries([...wrapped.annotations].map(([name, value]) => [name, value.toString('base64')])),
  };
}

function decodeWrapping(stored: StoredWrapping): WrappedKey {
  return {
    kekId: stored.kekId,
    ciphertext: Buffer.from(stored.ciphertext, 'base64'),
    annotations: new Map(Object.entries(stored.annotations).map(([name, value]) => [name, Buffer.from(value, 'base64')])),
  };
}

export class TrailKeyStore {
  private constructor(
    private readonly file: string,
    readonly key: TrailKey,
    private wrappings: WrappedKey[],
  ) {}

  /** Whether `directory` holds a trail key (its trail is, or was, sealed). */
  static async exists(directory: string): Promise<boolean> {
    return readFile(path.join(directory, trailKeyFileName)).then(() => true, () => false);
  }

  /**
   * The serving member's trail key: created (wrapped by `provider`) when the directory has none,
   * else unwrapped and, when a KEK rotation left wrappings under an older KEK, rewritten under the
   * provider's current KEK alone.
   */
  static async openOrCreate(directory: string, provider: KekProvider): Promise<TrailKeyStore> {
    const file = path.join(directory, trailKeyFileName);
    await mkdir(directory, { recursive: true, mode: 0o700 });
    if (!(await TrailKeyStore.exists(directory))) {
      const key = randomBytes(keyBytes);
      const store = new TrailKeyStore(file, { id: idOf(key), key }, [await provider.wrap(Buffer.concat([wrapPrefix, key]))]);
      await store.write();
      return store;
    }
    const store = await TrailKeyStore.open(directory, provider);
    const current = await provider.wrap(Buffer.concat([wrapPrefix, store.key.key]));
    if (store.wrappings.length !== 1 || store.wrappings[0]?.kekId !== current.kekId) {
      store.wrappings = [current];
      await store.write();
    }
    return store;
  }

  /** Reads and unwraps the trail key of `directory` (read-only: offline tools use this). */
  static async open(directory: string, provider: KekProvider): Promise<TrailKeyStore> {
    const file = path.join(directory, trailKeyFileName);
    let text: string;
    try {
      const bytes = await readFile(file);
      if (bytes.length > trailKeyFileBytesMax) throw new TrailKeyError(`${file} is ${bytes.length} bytes, not a trail key file`);
      text = bytes.toString('utf8');
    } catch (error) {
      if (error instanceof TrailKeyError) throw error;
      const code = (error as NodeJS.ErrnoException).code;
      throw new TrailKeyError(code === 'ENOENT'
        ? `${file} is missing: without it the sealed audit files of ${directory} cannot be opened (restore it from a backup of the audit directory)`
        : `cannot read ${file}: ${code ?? String(error)}`);
    }
    let parsed: { version?: unknown; id?: unknown; wrappings?: unknown };
    try {
      parsed = JSON.parse(text) as typeof parsed;
    } catch {
      throw new TrailKeyError(`${file} is not a trail key file (not JSON)`);
    }
    if (parsed.version !== version || typeof parsed.id !== 'string' || !Array.isArray(parsed.wrappings) || parsed.wrappings.length === 0) {
      throw new TrailKeyError(`${file} is not a trail key file of version ${version}`);
    }
    const wrappings = (parsed.wrappings as StoredWrapping[]).map(decodeWrapping);
    const reasons: string[] = [];
    for (const wrapped of wrappings) {
      let plaintext: Buffer;
      try {
        plaintext = await provider.unwrap(wrapped);
      } catch (error) {
        reasons.push(error instanceof Error ? error.message : String(error));
        continue;
      }
      const key = plaintext.subarray(wrapPrefix.length);
      if (plaintext.length !== wrapPrefix.length + keyBytes || !plaintext.subarray(0, wrapPrefix.length).equals(wrapPrefix) || idOf(key) !== parsed.id) {
        throw new TrailKeyError(`${file}: the wrapped key is not this trail's key (altered)`);
      }
      return new TrailKeyStore(file, { id: parsed.id, key: Buffer.from(key) }, wrappings);
    }
    throw new TrailKeyError(`the audit trail key in ${file} does not unwrap with the ${provider.kind} KEK provider (${provider.source}): ${reasons.join('; ')}`);
  }

  /**
   * Adds a wrapping under the KEK `wrap` uses now (a KEK rotation in progress), keeping the others,
   * so whichever KEK survives a crash still opens the trail.
   */
  async addWrapping(wrap: (plaintext: Buffer) => Promise<WrappedKey>): Promise<void> {
    const wrapped = await wrap(Buffer.concat([wrapPrefix, this.key.key]));
    this.wrappings = [...this.wrappings.filter((existing) => existing.kekId !== wrapped.kekId), wrapped];
    await this.write();
  }

  private async write(): Promise<void> {
    const temporary = `${this.file}.tmp`;
    await rm(temporary, { force: true });
    const handle = await open(temporary, 'wx', 0o600);
    try {
      await handle.writeFile(`${JSON.stringify({ version, id: this.key.id, wrappings: this.wrappings.map(encodeWrapping) })}\n`);
      await handle.sync();
    } finally {
      await handle.close();
    }
    await rename(temporary, this.file);
    const directory = await open(path.dirname(this.file), 'r');
    try {
      await directory.sync();
    } finally {
      await directory.close();
    }
  }
}
