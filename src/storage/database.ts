/**
 * The member's database: one classic-level (LevelDB) database per member, seen through the
 * sealing layer. Every value written goes through the keyring's `seal` and every value read
 * through its `open` (`src/encryption/`), so the MVCC store, the Raft log, the auth state, leases
 * and membership hold plaintext in memory and never handle a key. The key store's own records
 * (prefix 'x') are invisible here: iterators skip them and snapshots never carry them.
 *
 * A member that does not encrypt (`--no-encryption`, or `--insecure` without a key) runs the same
 * code with no sealer; a database that holds a key store refuses to open without its KEK.
 */
import { existsSync } from 'node:fs';
import path from 'node:path';
import { ClassicLevel } from 'classic-level';
import { Keyring, keyStorePrefix, type KeyringStatus, type KeyStoreBackend, type RecordSealer } from '../encryption/keyring.js';
import type { KekProvider } from '../encryption/kek.js';
import { SealedRecordError } from '../encryption/sealed-record.js';
import type { BatchOperation } from './mvcc/store.js';

export type { KekProvider } from '../encryption/kek.js';
export type { KeyringStatus } from '../encryption/keyring.js';
export { SealedRecordError };

export interface IteratorRange {
  readonly gte?: Buffer;
  readonly lt?: Buffer;
  readonly lte?: Buffer;
}

export interface DatabaseIterator extends AsyncIterable<[Buffer, Buffer]> {
  close(): Promise<void>;
}

/** What the storage layer needs of a database; a plain ClassicLevel<Buffer, Buffer> fits too. */
export interface Database {
  get(key: Buffer): Promise<Buffer | undefined>;
  getSync(key: Buffer): Buffer | undefined;
  put(key: Buffer, value: Buffer): Promise<void>;
  batch(operations: BatchOperation[], options?: { sync?: boolean }): Promise<void>;
  iterator(range: IteratorRange): DatabaseIterator;
  keys(range: IteratorRange): AsyncIterable<Buffer>;
  clear(range: IteratorRange): Promise<void>;
  compactRange(start: Buffer, end: Buffer): Promise<void>;
  close(): Promise<void>;
}

type Level = ClassicLevel<Buffer, Buffer>;

function isKeyStoreKey(key: Buffer): boolean {
  return key[0] === keyStorePrefix;
}

class SealedIterator implements DatabaseIterator {
  constructor(
    private readonly inner: AsyncIterable<[Buffer, Buffer]> & { close(): Promise<void> },
    private readonly sealer: RecordSealer | undefined,
  ) {}

  async *[Symbol.asyncIterator](): AsyncGenerator<[Buffer, Buffer]> {
    for await (const [key, value] of this.inner) {
      if (isKeyStoreKey(key)) continue;
      yield [key, this.sealer === undefined ? value : this.sealer.open(key, value)];
    }
  }

  close(): Promise<void> {
    return this.inner.close();
  }
}

export class SealedDatabase implements Database {
  private constructor(
    private readonly level: Level,
    private readonly keyring: Keyring | undefined,
  ) {}

  /**
   * Opens the database in `dataDir`. With a provider: unwraps the DEKs of an encrypted database,
   * or creates the key store of a new one. Refuses (and writes nothing) when the database's
   * encryption and the provider do not match.
   */
  static async open(dataDir: string, provider: KekProvider | undefined): Promise<SealedDatabase> {
    const location = path.join(dataDir, 'db');
    const isNew = !existsSync(path.join(location, 'CURRENT'));
    const level: Level = new ClassicLevel<Buffer, Buffer>(location, { keyEncoding: 'buffer', valueEncoding: 'buffer' });
    await level.open();
    try {
      const backend: KeyStoreBackend = level;
      const encrypted = await Keyring.exists(backend);
      if (provider === undefined) {
        if (encrypted) {
          throw new Error(`the data in ${dataDir} is encrypted: start the member with its key (--encryption-key-file or --encryption-kms-socket)`);
        }
        return new SealedDatabase(level, undefined);
      }
      if (encrypted) return new SealedDatabase(level, await Keyring.load(backend, provider));
      if (!isNew && !(await isEmpty(level))) {
        throw new Error(`the data in ${dataDir} is not encrypted; start it with --no-encryption`);
      }
      return new SealedDatabase(level, await Keyring.create(backend, provider));
    } catch (error) {
      await level.close();
      throw error;
    }
  }

  /** Whether records are sealed. */
  get encrypted(): boolean {
    return this.keyring !== undefined;
  }

  encryptionStatus(): KeyringStatus | undefined {
    return this.keyring?.status();
  }

  async get(key: Buffer): Promise<Buffer | undefined> {
    const value = await this.level.get(key);
    return value === undefined || this.keyring === undefined ? value : this.keyring.open(key, value);
  }

  getSync(key: Buffer): Buffer | undefined {
    const value = this.level.getSync(key);
    return value === undefined || this.keyring === undefined ? value : this.keyring.open(key, value);
  }

  async put(key: Buffer, value: Buffer): Promise<void> {
    await this.batch([{ type: 'put', key, value }]);
  }

  async batch(operations: BatchOperation[], options: { sync?: boolean } = {}): Promise<void> {
    const keyring = this.keyring;
    if (keyring === undefined) {
      await this.level.batch(operations, { sync: options.sync ?? false });
      return;
    }
    const puts = operations.reduce((count, operation) => count + (operation.type === 'put' ? 1 : 0), 0);
    // Room is checked and the records sealed in one synchronous stretch: no other batch can take
    // the reserved nonces in between.
    while (!keyring.hasRoom(puts)) await keyring.reserve(puts);
    const sealed = operations.map((operation): BatchOperation => {
      if (isKeyStoreKey(operation.key)) throw new Error('assertion failed: a write into the key store through the sealing layer');
      return operation.type === 'put' ? { type: 'put', key: operation.key, value: keyring.seal(operation.key, operation.value) } : operation;
    });
    await this.level.batch(sealed, { sync: options.sync ?? false });
  }

  iterator(range: IteratorRange): DatabaseIterator {
    return new SealedIterator(this.level.iterator(range), this.keyring);
  }

  async *keys(range: IteratorRange): AsyncGenerator<Buffer> {
    for await (const key of this.level.keys(range)) {
      if (!isKeyStoreKey(key)) yield key;
    }
  }

  async clear(range: IteratorRange): Promise<void> {
    const start = range.gte?.[0] ?? 0;
    const end = range.lt?.[0] ?? range.lte?.[0] ?? 0xff;
    if (start <= keyStorePrefix && end >= keyStorePrefix) throw new Error('assertion failed: a clear over the key store');
    await this.level.clear(range);
  }

  compactRange(start: Buffer, end: Buffer): Promise<void> {
    return this.level.compactRange(start, end);
  }

  async close(): Promise<void> {
    await this.level.close();
    this.keyring?.close();
  }
}

async function isEmpty(level: Level): Promise<boolean> {
  for await (const _key of level.keys({ limit: 1 })) return false;
  return true;
}

/** Whether a data directory holds a database already. */
export function databaseExists(dataDir: string): boolean {
  return existsSync(path.join(dataDir, 'db', 'CURRENT'));
}
