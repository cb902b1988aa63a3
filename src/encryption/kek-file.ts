/**
 * The `file` KEK provider: 32 random bytes in a file of mode 0600, kept outside the data
 * directory (a copy of the data directory alone opens nothing). `rampart up` and `rampart init`
 * create one per member; a TLS `rampart serve` creates it when it founds a new data directory.
 *
 * Wrapped DEK (the provider's ciphertext): u8 version (1), 12-byte random nonce, AES-256-GCM
 * ciphertext, 16-byte tag; additional data: the KEK id. The KEK id is the first 8 bytes of
 * SHA-256("rampart kek id" ‖ KEK), hex: it names the key without revealing it.
 *
 * KEK rotation (`rampart encryption rotate --kek`): a new key is written to `<file>.next`, every DEK
 * is re-wrapped under it in one fsynced key-store batch, then `<file>.next` is renamed over the
 * file. A crash before the batch leaves an unused `.next` (removed at the next start); a crash
 * after it leaves DEKs wrapped by `.next`, which the next start unwraps with it and then renames.
 */
import { createCipheriv, createDecipheriv, createHash, randomBytes } from 'node:crypto';
import { mkdir, open, readFile, rename, rm, stat } from 'node:fs/promises';
import path from 'node:path';
import { KeyProviderError, type KekHealth, type KekProvider, type WrappedKey } from './kek.js';

export const kekBytes = 32;
const wrapVersion = 1;
const nonceBytes = 12;
const tagBytes = 16;

/** Where `serve` keeps a member's key file when none is named: beside, not inside, the data directory. */
export function defaultKeyFile(dataDir: string): string {
  return `${path.resolve(dataDir)}.encryption-key`;
}

function kekIdOf(kek: Buffer): string {
  return createHash('sha256').update('rampart kek id').update(kek).digest().subarray(0, 8).toString('hex');
}

export class FileKekProvider implements KekProvider {
  readonly kind = 'file';
  private kek: Buffer;
  kekId: string;
  /** The key of a rotation in progress (`<file>.next`). */
  private next: { kek: Buffer; kekId: string } | undefined;
  private nextUsed = false;

  private constructor(readonly source: string, kek: Buffer, next: Buffer | undefined) {
    this.kek = kek;
    this.kekId = kekIdOf(kek);
    this.next = next === undefined ? undefined : { kek: next, kekId: kekIdOf(next) };
  }

  private get nextFile(): string {
    return `${this.source}.next`;
  }

  /** Reads and checks the key file (and an interrupted rotation's `.next`); errors name the file. */
  static async open(file: string): Promise<FileKekProvider> {
    const absolute = path.resolve(file);
    const kek = await FileKekProvider.readKey(absolute);
    const next = await stat(`${absolute}.next`).then(() => FileKekProvider.readKey(`${absolute}.next`), () => undefined);
    return new FileKekProvider(absolute, kek, next);
  }

  private static async readKey(absolute: string): Promise<Buffer> {
    let mode: number;
    try {
      const info = await stat(absolute);
      if (!info.isFile()) throw new KeyProviderError(`encryption key file ${absolute} is not a regular file`);
      mode = info.mode;
    } catch (error) {
      if (error instanceof KeyProviderError) throw error;
      const code = (error as NodeJS.ErrnoException).code;
      throw new KeyProviderError(code === 'ENOENT'
        ? `encryption key file ${absolute} does not exist (the member's data is sealed under it; restore the file, or start a new member)`
        : `cannot read encryption key file ${absolute}: ${code ?? String(error)}`);
    }
    if ((mode & 0o077) !== 0) {
      throw new KeyProviderError(`encryption key file ${absolute} is accessible to other users (mode ${(mode & 0o777).toString(8)}); chmod 600 it`);
    }
    let kek: Buffer;
    try {
      kek = await readFile(absolute);
    } catch (error) {
      throw new KeyProviderError(`cannot read encryption key file ${absolute}: ${(error as NodeJS.ErrnoException).code ?? String(error)}`);
    }
    if (kek.length !== kekBytes) {
      throw new KeyProviderError(`encryption key file ${absolute} must hold exactly ${kekBytes} bytes, it holds ${kek.length}`);
    }
    return kek;
  }

  /** Creates a new key file (never overwrites one). */
  static async create(file: string): Promise<void> {
    const absolute = path.resolve(file);
    await mkdir(path.dirname(absolute), { recursive: true, mode: 0o700 });
    const handle = await open(absolute, 'wx', 0o600);
    try {
      await handle.writeFile(randomBytes(kekBytes));
      await handle.sync();
    } finally {
      await handle.close();
    }
  }

  /** Creates the key file unless it exists. */
  static async ensure(file: string): Promise<boolean> {
    try {
      await FileKekProvider.create(file);
      return true;
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === 'EEXIST') return false;
      throw error;
    }
  }

  /** Wraps under the new key while a rotation is in progress, else under the key file's. */
  async wrap(plaintext: Buffer): Promise<WrappedKey> {
    const { kek, kekId } = this.next ?? { kek: this.kek, kekId: this.kekId };
    const nonce = randomBytes(nonceBytes);
    const cipher = createCipheriv('aes-256-gcm', kek, nonce);
    cipher.setAAD(Buffer.from(kekId, 'utf8'));
    const ciphertext = Buffer.concat([Buffer.of(wrapVersion), nonce, cipher.update(plaintext), cipher.final(), cipher.getAuthTag()]);
    return { kekId, ciphertext, annotations: new Map() };
  }

  async unwrap(wrapped: WrappedKey): Promise<Buffer> {
    if (this.next !== undefined && wrapped.kekId === this.next.kekId) {
      this.nextUsed = true;
      return unwrapWith(this.next.kek, this.next.kekId, wrapped.ciphertext, this.nextFile);
    }
    if (wrapped.kekId !== this.kekId) {
      throw new KeyProviderError(`the data keys were wrapped by KEK ${wrapped.kekId}, but encryption key file ${this.source} holds KEK ${this.kekId}: wrong key file`);
    }
    return unwrapWith(this.kek, this.kekId, wrapped.ciphertext, this.source);
  }

  async beginRotation(): Promise<void> {
    await rm(this.nextFile, { force: true });
    await FileKekProvider.create(this.nextFile);
    const kek = await FileKekProvider.readKey(this.nextFile);
    this.next = { kek, kekId: kekIdOf(kek) };
  }

  async completeRotation(): Promise<void> {
    const next = this.next;
    if (next === undefined) return;
    await rename(this.nextFile, this.source);
    const directory = await open(path.dirname(this.source), 'r');
    try {
      await directory.sync();
    } finally {
      await directory.close();
    }
    this.kek.fill(0);
    this.kek = next.kek;
    this.kekId = next.kekId;
    this.next = undefined;
    this.nextUsed = false;
  }

  async settle(): Promise<void> {
    if (this.next === undefined) return;
    if (this.nextUsed) {
      await this.completeRotation();
      return;
    }
    // A rotation that stopped before the key store changed: its new key was never used.
    this.next.kek.fill(0);
    this.next = undefined;
    await rm(this.nextFile, { force: true });
  }

  async health(): Promise<KekHealth> {
    return { reachable: true, kekId: this.kekId, detail: this.source };
  }

  close(): void {
    this.kek.fill(0);
    this.next?.kek.fill(0);
  }
}

function unwrapWith(kek: Buffer, kekId: string, data: Buffer, source: string): Buffer {
  if (data.length < 1 + nonceBytes + tagBytes || data[0] !== wrapVersion) {
    throw new KeyProviderError(`a wrapped data key is malformed (${data.length} bytes)`);
  }
  const decipher = createDecipheriv('aes-256-gcm', kek, data.subarray(1, 1 + nonceBytes));
  decipher.setAAD(Buffer.from(kekId, 'utf8'));
  decipher.setAuthTag(data.subarray(data.length - tagBytes));
  const plaintext = decipher.update(data.subarray(1 + nonceBytes, data.length - tagBytes));
  try {
    decipher.final();
  } catch {
    throw new KeyProviderError(`a data key does not unwrap with encryption key file ${source}: the key store was altered or the key file is wrong`);
  }
  return plaintext;
}
