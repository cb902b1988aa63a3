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
import { randomInt } from 'node:crypto';
import { existsSync } from 'node:fs';
import { open as openFile, readdir } from 'node:fs/promises';
import path from 'node:path';
import type { AbstractResource } from 'abstract-level';
import { ClassicLevel } from 'classic-level';
import { Keyring, keyStorePrefix, type KeyringStatus, type KeyStoreBackend, type RecordSealer, type RewrapHook } from '../encryption/keyring.js';
import type { KekProvider } from '../encryption/kek.js';
import { ParallelOpener } from '../encryption/record-opener.js';
import { SealedRecordError, looksSealed, sealedDekId } from '../encryption/sealed-record.js';
import type { BatchOperation } from './mvcc/store.js';
import type { LogSealer } from './wal/segmented-log.js';

/** The database's sealer for values kept outside it (`outsideSealer`). */
export interface OutsideSealer extends LogSealer {
  /** As `seal`, each record as buffers whose concatenation is the sealed record (no copy of a large ciphertext). */
  sealParts(records: readonly (readonly [Buffer, Buffer])[]): Promise<Buffer[][]>;
}

export type { KekProvider } from '../encryption/kek.js';
export type { KeyringStatus, RewrapHook } from '../encryption/keyring.js';
export { SealedRecordError };

/** A consistent, point-in-time view of the database (LevelDB's snapshot); close it when done. */
export type DatabaseSnapshot = ReturnType<ClassicLevel<Buffer, Buffer>['snapshot']>;

export interface IteratorRange {
  readonly gte?: Buffer;
  readonly gt?: Buffer;
  readonly lt?: Buffer;
  readonly lte?: Buffer;
  /** Newest first. */
  readonly reverse?: boolean;
  /** At most this many records. */
  readonly limit?: number;
  /** Read from this view instead of the current state. */
  readonly snapshot?: DatabaseSnapshot;
  /** Bytes one `nextv` call may read from LevelDB (default 16 KiB): raise it for long scans. */
  readonly highWaterMarkBytes?: number;
  /**
   * A long scan read with `nextv`: the next batch is read, and opened on a worker thread, while
   * the caller works on this one.
   */
  readonly bulk?: boolean;
}

export interface DatabaseIterator extends AsyncIterable<[Buffer, Buffer]> {
  /** Up to `size` records (fewer once `highWaterMarkBytes` are read); none at the end. */
  nextv(size: number): Promise<[Buffer, Buffer][]>;
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
  /** A view that later writes do not change (a state snapshot streamed to a follower reads it). */
  snapshot(): DatabaseSnapshot;
  clear(range: IteratorRange): Promise<void>;
  compactRange(start: Buffer, end: Buffer): Promise<void>;
  close(): Promise<void>;
}

/**
 * classic-level, knowing which readers are open and in what order. Every iterator (and each async
 * get or clear while it runs) holds an implicit LevelDB snapshot, as an explicit snapshot does: a compaction
 * keeps the versions such a snapshot sees, and the table files of the version it started on stay
 * on disk until a later compaction after it closes. The end of a migration waits for the readers
 * that may still see plaintext (`openBefore`).
 */
class TrackedLevel extends ClassicLevel<Buffer, Buffer> {
  /** Open resources (iterators, snapshots, chained batches) and running gets, by serial number. */
  private readonly readers = new Map<object, number>();
  private nextSerial = 0;

  /** The serial number the next reader gets. */
  get readerMark(): number {
    return this.nextSerial;
  }

  /** How many readers opened before `mark` are still open. */
  openBefore(mark: number): number {
    let open = 0;
    for (const serial of this.readers.values()) if (serial < mark) open += 1;
    return open;
  }

  override attachResource(resource: AbstractResource): void {
    super.attachResource(resource);
    if (!this.readers.has(resource)) this.readers.set(resource, this.nextSerial++);
  }

  override detachResource(resource: AbstractResource): void {
    super.detachResource(resource);
    this.readers.delete(resource);
  }

  /** Told of a write LevelDB failed (`writeFailureCodes`), before the write's caller is. */
  onWriteFailure: ((error: unknown) => void) | undefined;

  /** Reports a failed write (see `onWriteFailure`) and rethrows it. */
  writeFailed(error: unknown): never {
    const code = (error as { code?: unknown } | undefined)?.code;
    if (typeof code === 'string' && writeFailureCodes.has(code)) this.onWriteFailure?.(error);
    throw error;
  }

  /** Writes handed to LevelDB and not yet settled (see `syncEarlierLogs`). */
  private readonly writesInFlight = new Set<Promise<unknown>>();

  /** Runs `write` (one of classic-level's own write methods), counted in flight until it settles. */
  trackWrite<T>(write: () => Promise<T>, sync: boolean): Promise<T> {
    const run = sync ? this.syncEarlierLogs().then(write) : write();
    const settled = run.catch((error: unknown) => this.writeFailed(error));
    const counted = settled.then(
      () => undefined,
      () => undefined,
    );
    this.writesInFlight.add(counted);
    void counted.then(() => this.writesInFlight.delete(counted));
    return settled;
  }

  /** Resolves when every write handed over before now has settled. */
  async writesSettled(): Promise<void> {
    await Promise.all([...this.writesInFlight]);
  }

  /**
   * Before a synced write: makes every write that settled before it durable, in whichever of
   * LevelDB's log files it landed. LevelDB syncs only the log it writes to, and when its memtable
   * fills it starts a new log without syncing the old one (kept until the memtable reaches a table
   * file). Unsynced writes (the applied batches) that went to the old log could then be lost to a
   * power cut while a later synced write (the consistent index written before the Raft log is
   * compacted behind it) survives: entries gone from both. So this waits for the writes in flight
   * and syncs every log file there is; a log that a flush has meanwhile removed needs none.
   */
  private async syncEarlierLogs(): Promise<void> {
    await this.writesSettled();
    const logs = (await readdir(this.location)).filter((name) => /^\d+\.log$/.test(name));
    await Promise.all(logs.map((name) => syncIfPresent(path.join(this.location, name))));
  }

  /** `read` (a get, a clear) counted as a reader while it runs. */
  async tracked<T>(read: () => Promise<T>): Promise<T> {
    const token = {};
    this.readers.set(token, this.nextSerial++);
    try {
      return await read();
    } finally {
      this.readers.delete(token);
    }
  }
}

/**
 * What LevelDB answers a write that did not land on disk with (a full disk, a failing device).
 * After one, what LevelDB's own log holds is uncertain: nothing should be written after it.
 */
const writeFailureCodes = new Set(['LEVEL_IO_ERROR', 'LEVEL_CORRUPTION', 'EIO', 'ENOSPC', 'EDQUOT', 'EROFS']);

/** fdatasync of `file`; nothing when it is gone (LevelDB removes a log once its memtable is in a table file). */
async function syncIfPresent(file: string): Promise<void> {
  let handle;
  try {
    handle = await openFile(file, 'r');
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return;
    throw error;
  }
  try {
    await handle.datasync();
  } finally {
    await handle.close();
  }
}

/** Whether a write method's arguments ask for a synced write (`{ sync: true }` among them). */
function asksSync(args: readonly unknown[]): boolean {
  return args.some((arg) => typeof arg === 'object' && arg !== null && !Array.isArray(arg) && !Buffer.isBuffer(arg) && (arg as { sync?: unknown }).sync === true);
}

/**
 * Every write of a TrackedLevel (a put, delete, array batch, chained batch, clear or LevelDB
 * compaction, whoever makes it: the apply path, a compaction, a re-seal, the key store, a snapshot
 * being staged, a Defragment) reports a failure in `writeFailureCodes` to `onWriteFailure` before
 * its caller sees it. classic-level's own methods are looked up at each call (a test may stand in
 * for one).
 */
type DirectWrite = (this: TrackedLevel, ...args: unknown[]) => Promise<unknown>;
type ChainedWrite = { _write: (options: unknown) => Promise<void> };
const classicPrototype = ClassicLevel.prototype as unknown as Record<string, DirectWrite | undefined>;
const trackedPrototype = TrackedLevel.prototype as unknown as Record<string, DirectWrite | ((this: TrackedLevel) => ChainedWrite)>;
for (const name of ['_put', '_del', '_batch', '_clear', 'compactRange']) {
  if (typeof classicPrototype[name] !== 'function') throw new Error(`assertion failed: classic-level has no ${name}`);
}
for (const name of ['_put', '_del', '_batch', '_clear']) {
  trackedPrototype[name] = function (this: TrackedLevel, ...args: unknown[]): Promise<unknown> {
    return this.trackWrite(() => (classicPrototype[name] as DirectWrite).apply(this, args), asksSync(args));
  };
}
/**
 * Deleted (never written) after each compaction; under the key store's prefix, which this layer
 * owns and hides from everything above it.
 */
const compactionCheckKey = Buffer.concat([Buffer.of(keyStorePrefix), Buffer.from('compaction-check', 'latin1')]);
/**
 * A compaction (Defragment, the end of an encryption migration) counts as a write: LevelDB's
 * CompactRange returns nothing, and classic-level's compactRange resolves even when the compaction
 * failed. LevelDB keeps that failure as its background error and answers every later write with it,
 * for as long as the database stays open (measured on a 16 MiB tmpfs filled to ENOSPC: compactRange
 * resolved, reads went on, the next delete failed with LEVEL_IO_ERROR, and again after the space was
 * freed). So a compaction ends with a one-key deletion, which surfaces that error through the write
 * hook above (the member fails at once, not at its next write) and to the compaction's caller (a
 * Defragment is not answered as done).
 */
trackedPrototype.compactRange = function (this: TrackedLevel, ...args: unknown[]): Promise<unknown> {
  return (classicPrototype.compactRange as DirectWrite).apply(this, args).then(() => this.del(compactionCheckKey));
};
trackedPrototype._chainedBatch = function (this: TrackedLevel): ChainedWrite {
  const batch = (classicPrototype._chainedBatch as unknown as (this: TrackedLevel) => ChainedWrite).call(this);
  const write = batch._write;
  batch._write = (options) => this.trackWrite(() => write.call(batch, options), asksSync([options]));
  return batch;
};
// A synced write may still be syncing the logs before it reaches LevelDB: closing waits for it.
if (typeof classicPrototype._close !== 'function') throw new Error('assertion failed: classic-level has no _close');
trackedPrototype._close = async function (this: TrackedLevel): Promise<unknown> {
  await this.writesSettled();
  return (classicPrototype._close as DirectWrite).call(this);
};

type Level = TrackedLevel;

/** classic-level's own array batch (abstract-level's `_batch` contract), below abstract-level's public `batch`. */
interface DirectBatch {
  _batch(operations: readonly BatchOperation[], options: { sync: boolean }): Promise<void>;
}

/**
 * Writes `operations` as one LevelDB batch. While the database is open and every key and value is
 * a Buffer, it goes straight to classic-level's `_batch`: abstract-level's public `batch` copies,
 * validates and re-encodes each operation first (~5 µs an operation; 3-op batches measured 115 ->
 * 84 µs of CPU with the write itself), for Buffers that need none of it, and no hooks or `write`
 * listeners are used here. The native call happens in the same synchronous stretch either way, so
 * the order of writes is unchanged. Anything else (closed, opening, not a Buffer, a library
 * without `_batch`) takes the public path, which checks and refuses as before.
 */
function writeBatch(level: Level, operations: readonly BatchOperation[], sync: boolean): Promise<void> {
  const direct = level as unknown as Partial<DirectBatch>;
  if (level.status === 'open' && typeof direct._batch === 'function' && operations.length > 0 && operations.every(isPlainBufferOperation)) {
    return direct._batch(operations, { sync });
  }
  return level.batch(operations as BatchOperation[], { sync });
}

function isPlainBufferOperation(operation: BatchOperation): boolean {
  return Buffer.isBuffer(operation.key) && (operation.type === 'del' || Buffer.isBuffer(operation.value));
}

function isKeyStoreKey(key: Buffer): boolean {
  return key[0] === keyStorePrefix;
}

type LevelIterator = AsyncIterable<[Buffer, Buffer]> & { nextv(size: number): Promise<[Buffer, Buffer][]>; close(): Promise<void> };

class SealedIterator implements DatabaseIterator {
  /** Bulk reads: the next raw batch, read while the one before is opened. */
  private rawAhead: Promise<[Buffer, Buffer][]> | undefined;
  /** Bulk reads: the next opened batch, read and opened while the caller uses the one before. */
  private openedAhead: Promise<[Buffer, Buffer][]> | undefined;
  private readonly opener: ParallelOpener | undefined;

  constructor(
    private readonly inner: LevelIterator,
    private readonly sealer: RecordSealer | undefined,
    private readonly bulk: boolean,
  ) {
    this.opener = bulk && sealer !== undefined ? ParallelOpener.start(sealer.openingKeys()) : undefined;
  }

  async nextv(size: number): Promise<[Buffer, Buffer][]> {
    if (!this.bulk) return this.fetch(size);
    const opened = await (this.openedAhead ?? this.fetch(size));
    this.openedAhead = undefined;
    if (opened.length > 0) this.openedAhead = quiet(this.fetch(size));
    return opened;
  }

  /** The next batch without key store records, opened; empty only at the end. */
  private async fetch(size: number): Promise<[Buffer, Buffer][]> {
    for (;;) {
      const raw = await (this.rawAhead ?? this.inner.nextv(size));
      this.rawAhead = undefined;
      if (raw.length === 0) return raw;
      if (this.bulk) this.rawAhead = quiet(this.inner.nextv(size));
      const records = raw.filter(([key]) => !isKeyStoreKey(key));
      if (records.length > 0) return this.open(records);
    }
  }

  private async open(records: [Buffer, Buffer][]): Promise<[Buffer, Buffer][]> {
    const sealer = this.sealer;
    if (sealer === undefined) return records;
    let plaintexts: (Buffer | undefined)[] = [];
    try {
      plaintexts = (await this.opener?.open(records)) ?? [];
    } catch {
      // The worker is gone: this thread opens the batch (and every one after).
      plaintexts = [];
    }
    // What the worker did not open is opened here: plaintext while migrating, or the precise error.
    return records.map(([key, value], position) => [key, plaintexts[position] ?? sealer.open(key, value)]);
  }

  async *[Symbol.asyncIterator](): AsyncGenerator<[Buffer, Buffer]> {
    for await (const [key, value] of this.inner) {
      if (isKeyStoreKey(key)) continue;
      yield [key, this.sealer === undefined ? value : this.sealer.open(key, value)];
    }
  }

  async close(): Promise<void> {
    await this.openedAhead?.catch(() => undefined);
    await this.rawAhead?.catch(() => undefined);
    await this.opener?.close();
    await this.inner.close();
  }
}

/** `promise`, with a rejection nobody awaits (a caller that stopped early) not reported as unhandled. */
function quiet<T>(promise: Promise<T>): Promise<T> {
  promise.catch(() => undefined);
  return promise;
}

/** Records examined per re-seal step; the pass yields to the member between steps. */
const resealChunkRecordsMax = 256;
/** Default re-seal rate: records rewritten per second, so a rotation never starves the member. */
export const resealRecordsPerSecondDefault = 2_000;

export interface ResealProgress {
  /** Sealed records per DEK id, as of the last full scan. */
  readonly recordsByDek: ReadonlyMap<number, number>;
  /** Records re-sealed by the running (or last) pass, and how many it had to do. */
  readonly resealed: number;
  readonly toReseal: number;
  readonly running: boolean;
}

interface PendingWrite {
  readonly keys: readonly string[];
  readonly range?: IteratorRange;
  /** Resolves when the write has finished (either way). */
  settled?: Promise<void>;
  finish?: () => void;
}

/** Operations of one batch handed to LevelDB in one synchronous stretch; larger batches go in steps. */
const batchStepOperationsMax = 512;

function countPuts(operations: readonly BatchOperation[]): number {
  return operations.reduce((count, operation) => count + (operation.type === 'put' ? 1 : 0), 0);
}

function inRange(key: Buffer, range: IteratorRange): boolean {
  if (range.gte !== undefined && Buffer.compare(key, range.gte) < 0) return false;
  if (range.gt !== undefined && Buffer.compare(key, range.gt) <= 0) return false;
  if (range.lt !== undefined && Buffer.compare(key, range.lt) >= 0) return false;
  if (range.lte !== undefined && Buffer.compare(key, range.lte) > 0) return false;
  return true;
}

export class SealedDatabase implements Database {
  /** Writes submitted and not yet finished. */
  private readonly pending = new Set<PendingWrite>();
  /** While a re-seal step reads: keys and ranges written since, which it must leave alone. */
  private tracking: { keys: Set<string>; ranges: IteratorRange[] } | undefined;
  /** A re-seal batch being written: writes to its keys wait for it, so they land after it. */
  private resealing: { keys: Set<string>; done: Promise<void> } | undefined;
  private resealPass: Promise<void> | undefined;
  /** A large batch sealing in steps (`writeInSteps`); other seals wait for it. */
  private steppedSeal: Promise<void> | undefined;
  private closed = false;
  private progress: ResealProgress = { recordsByDek: new Map(), resealed: 0, toReseal: 0, running: false };
  resealRecordsPerSecond = resealRecordsPerSecondDefault;
  /**
   * Called when a migration to encryption has sealed every record, before the compaction that drops
   * the plaintext versions: a view (LevelDB snapshot) taken before still sees them, so compaction
   * keeps them on disk for as long as it is open. The owner of such views releases them here, and
   * answers false when one could not be closed (the migration then finishes at a later pass).
   */
  releaseViews: (() => Promise<boolean>) | undefined;

  /**
   * Told when LevelDB fails any write to this database with an I/O error or corruption (a full
   * disk), whoever made it, before that write's caller is: the member fails closed on it.
   */
  set onWriteFailure(listener: ((error: unknown) => void) | undefined) {
    this.level.onWriteFailure = listener;
  }
  /**
   * Records kept outside the database under the same keys (the Raft log's segment files): the
   * re-seal pass calls this before it counts records and retires keys, so they are re-sealed too.
   */
  resealOutside: (() => Promise<void>) | undefined;

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
    const level: Level = new TrackedLevel(location, { keyEncoding: 'buffer', valueEncoding: 'buffer', writeBufferSize: staggeredWriteBufferBytes() });
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
      // A member that kept plaintext is sealed online: new writes at once, the rest by the pass.
      const migrating = !isNew && !(await isEmpty(level));
      return new SealedDatabase(level, await Keyring.create(backend, provider, migrating));
    } catch (error) {
      await level.close();
      throw error;
    }
  }

  /**
   * Seals and opens values kept outside the database (the Raft log's segment files, the key index
   * checkpoint) with the member's keys, as the database's own records; undefined when the member
   * does not encrypt. `sealParts` gives each record as buffers to write one after another.
   */
  outsideSealer(): OutsideSealer | undefined {
    const keyring = this.keyring;
    if (keyring === undefined) return undefined;
    // As `batch`: room is checked and the values sealed in one synchronous stretch (no await
    // between the last check and the seals: another write could take the reserved room).
    return {
      get activeDekId(): number {
        return keyring.activeDekId;
      },
      seal: async (records) => {
        while (!this.maySeal(keyring, records.length)) await this.sealTurn(keyring, records.length);
        return records.map(([key, plaintext]) => keyring.seal(key, plaintext));
      },
      sealParts: async (records) => {
        while (!this.maySeal(keyring, records.length)) await this.sealTurn(keyring, records.length);
        return records.map(([key, plaintext]) => keyring.sealParts(key, plaintext));
      },
      open: (key, stored) => keyring.open(key, stored),
    };
  }

  /** Whether records are sealed. */
  get encrypted(): boolean {
    return this.keyring !== undefined;
  }

  encryptionStatus(): KeyringStatus | undefined {
    return this.keyring?.status();
  }

  get resealProgress(): ResealProgress {
    return this.progress;
  }

  async get(key: Buffer): Promise<Buffer | undefined> {
    const value = await this.level.tracked(() => this.level.get(key));
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
      if (operations.length > batchStepOperationsMax) await this.writeInSteps(operations, undefined, options);
      else await writeBatch(this.level, operations, options.sync ?? false);
      return;
    }
    const write: PendingWrite = { keys: operations.map((operation) => operation.key.toString('latin1')) };
    await this.beginWrite(write);
    try {
      if (operations.length > batchStepOperationsMax) {
        await this.writeInSteps(operations, keyring, options);
        return;
      }
      const puts = countPuts(operations);
      // Room is checked and the records sealed in one synchronous stretch: no other batch can take
      // the reserved nonces in between.
      while (!this.maySeal(keyring, puts)) await this.sealTurn(keyring, puts);
      const sealed = operations.map((operation): BatchOperation => {
        if (isKeyStoreKey(operation.key)) throw new Error('assertion failed: a write into the key store through the sealing layer');
        return operation.type === 'put' ? { type: 'put', key: operation.key, value: keyring.seal(operation.key, operation.value) } : operation;
      });
      await writeBatch(this.level, sealed, options.sync ?? false);
    } finally {
      this.endWrite(write);
    }
  }

  /** Whether `count` seals may happen now: room reserved, and no batch sealing in steps. */
  private maySeal(keyring: Keyring, count: number): boolean {
    return this.steppedSeal === undefined && keyring.hasRoom(count);
  }

  /** What to wait for before `maySeal` can hold. */
  private sealTurn(keyring: Keyring, count: number): Promise<void> {
    return this.steppedSeal ?? keyring.reserve(count);
  }

  /**
   * A large batch (a delete of many keys, a big transaction) is sealed and handed to LevelDB in
   * steps, yielding to the event loop between them, so heartbeats and client calls keep flowing;
   * it stays one atomic LevelDB write. While it seals, other seals wait (none may take its nonces).
   */
  private async writeInSteps(operations: readonly BatchOperation[], keyring: Keyring | undefined, options: { sync?: boolean }): Promise<void> {
    if (keyring !== undefined) while (this.steppedSeal !== undefined) await this.steppedSeal;
    let release = (): void => undefined;
    if (keyring !== undefined) this.steppedSeal = new Promise((resolve) => (release = resolve));
    const chained = this.level.batch();
    try {
      for (let start = 0; start < operations.length; start += batchStepOperationsMax) {
        if (start > 0) await new Promise((resolve) => setImmediate(resolve));
        const step = operations.slice(start, start + batchStepOperationsMax);
        if (keyring !== undefined) {
          const puts = countPuts(step);
          // Only this batch seals now, but a rotation may have made a new DEK active.
          while (!keyring.hasRoom(puts)) await keyring.reserve(puts);
        }
        for (const operation of step) {
          if (operation.type === 'del') {
            chained.del(operation.key);
          } else if (keyring === undefined) {
            chained.put(operation.key, operation.value);
          } else {
            if (isKeyStoreKey(operation.key)) throw new Error('assertion failed: a write into the key store through the sealing layer');
            chained.put(operation.key, keyring.seal(operation.key, operation.value));
          }
        }
      }
    } catch (error) {
      await chained.close();
      throw error;
    } finally {
      if (keyring !== undefined) {
        this.steppedSeal = undefined;
        release();
      }
    }
    await chained.write({ sync: options.sync ?? false });
  }

  private endWrite(write: PendingWrite): void {
    this.pending.delete(write);
    write.finish?.();
  }

  /** Waits until every write submitted before now has finished. */
  private async settlePending(): Promise<void> {
    await Promise.all([...this.pending].map((write) => write.settled));
  }

  /** Registers a write before it is made, and waits for a re-seal batch it overlaps. */
  private async beginWrite(write: PendingWrite): Promise<void> {
    write.settled = new Promise((resolve) => {
      write.finish = resolve;
    });
    this.pending.add(write);
    const tracking = this.tracking;
    if (tracking !== undefined) {
      for (const key of write.keys) tracking.keys.add(key);
      if (write.range !== undefined) tracking.ranges.push(write.range);
    }
    const resealing = this.resealing;
    if (resealing === undefined) return;
    const overlaps = write.keys.some((key) => resealing.keys.has(key)) ||
      (write.range !== undefined && [...resealing.keys].some((key) => inRange(Buffer.from(key, 'latin1'), write.range as IteratorRange)));
    if (overlaps) await resealing.done;
  }

  /** Makes a new DEK active for new writes and starts re-sealing older records in the background. */
  async rotate(): Promise<number> {
    const keyring = this.requireKeyring();
    const id = await keyring.rotate();
    this.startReseal();
    return id;
  }

  /** See `Keyring.onRewrap`: a key kept outside the database, re-wrapped with the DEKs. */
  onKekRewrap(hook: RewrapHook): () => void {
    return this.requireKeyring().onRewrap(hook);
  }

  /** Re-wraps every DEK under the provider's current (or a new) KEK. */
  async rewrap(): Promise<void> {
    await this.requireKeyring().rewrap();
  }

  private requireKeyring(): Keyring {
    if (this.keyring === undefined) throw new Error('this member does not encrypt at rest');
    return this.keyring;
  }

  /**
   * Starts the background re-seal pass unless one runs: it rewrites every record not sealed under
   * the active DEK, rate-limited, then retires the DEKs nothing uses any more. After a crash it is
   * started again at open and rescans (records already re-sealed are skipped), so it resumes.
   */
  startReseal(onError: (error: unknown) => void = () => undefined): Promise<void> {
    if (this.keyring === undefined) return Promise.resolve();
    this.resealPass ??= this.runReseal().catch(onError).finally(() => {
      this.resealPass = undefined;
      this.progress = { ...this.progress, running: false };
    });
    return this.resealPass;
  }

  /** Whether the key store holds DEKs other than the active one, or plaintext (a re-seal pass is due). */
  get resealDue(): boolean {
    return this.keyring !== undefined && (this.keyring.dekIds().length > 1 || this.keyring.migrating);
  }

  /** Whether plaintext records of a member that did not encrypt are still being sealed. */
  get migrating(): boolean {
    return this.keyring?.migrating ?? false;
  }

  private async runReseal(): Promise<void> {
    const keyring = this.requireKeyring();
    for (;;) {
      const active = keyring.activeDekId;
      // Writes sealed under an older DEK just before a rotation may still be on their way to disk.
      await this.settlePending();
      // Readers opened from here on see only what this count sees, or later (sealed) writes.
      const mark = this.level.readerMark;
      const counts = await this.countRecords();
      const toReseal = [...counts].reduce((total, [id, count]) => total + (id === active ? 0 : count), 0);
      this.progress = { recordsByDek: counts, resealed: 0, toReseal, running: true };
      await this.resealOutside?.();
      if (toReseal === 0) {
        if (keyring.activeDekId !== active) continue;
        for (const id of keyring.dekIds()) if (id !== active) await keyring.retire(id);
        // The migration is over only once no file holds plaintext: until then (a crash, a reader
        // that outlasts the wait) the key store says it is migrating and the next pass redoes this.
        if (keyring.migrating && (await this.compactPlaintextAway(mark))) await keyring.finishMigration();
        return;
      }
      let cursor: Buffer | undefined;
      while (!this.closed) {
        const step = await this.resealStep(cursor);
        this.progress = { ...this.progress, resealed: this.progress.resealed + step.resealed };
        if (step.last === undefined) break;
        cursor = step.last;
        const pauseMs = (step.resealed / this.resealRecordsPerSecond) * 1000;
        await new Promise((resolve) => setTimeout(resolve, Math.max(1, pauseMs)));
      }
      if (this.closed) return;
    }
  }

  /**
   * After a migration has sealed every record (as a count that started at reader `mark` saw):
   * older plaintext versions of the records linger in LevelDB's files until they are compacted.
   * Every reader opened before `mark` may see them, and holds a LevelDB snapshot (an iterator, an
   * async get, the view a member keeps for followers): a compaction keeps the versions it sees, in
   * its new tables. So: release the member's views, wait for those readers to close, compact
   * everything, then check the directory: every table and log file there before must be gone or
   * live (a live table was rewritten, or holds only current, sealed records). LevelDB deletes the
   * tables a compaction replaced only at the end of a later compaction, and keeps those an open
   * reader still uses (it pins the version it started on): a status count scanning during the
   * compaction left the plaintext table LevelDB wrote at the member's first start with a key
   * (000005.ldb) on disk after "100%". So while such files remain, it flushes the memtable (an
   * empty range's compaction, after which LevelDB deletes obsolete files) every half second.
   * Waits up to `obsoleteFilesWaitMs` for each; true when done, false when closing, throws when a
   * wait runs out (the migration stays unfinished; the next pass, seconds later, starts over).
   */
  private async compactPlaintextAway(mark: number): Promise<boolean> {
    const before = await this.levelFiles();
    if ((await this.releaseViews?.()) === false) throw new Error('a view of the database taken before the migration is still read; the migration finishes at a later pass');
    for (const started = Date.now(); this.level.openBefore(mark) > 0;) {
      if (this.closed) return false;
      if (Date.now() - started >= this.obsoleteFilesWaitMs) {
        throw new Error(`${this.level.openBefore(mark)} reader(s) of the database opened before the last plaintext record was sealed still open; the migration finishes at a later pass`);
      }
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
    if (this.closed) return false;
    await this.level.compactRange(Buffer.of(0), Buffer.of(0xff));
    for (const started = Date.now(); ;) {
      if (this.closed) return false;
      const left = await this.obsoleteFiles(before);
      if (left.length === 0) return true;
      if (Date.now() - started >= this.obsoleteFilesWaitMs) {
        throw new Error(`${left.join(', ')} in ${this.level.location} still on disk after the migration's compaction (a reader keeps ${left.length === 1 ? 'it' : 'them'}); the migration finishes at a later pass`);
      }
      await new Promise((resolve) => setTimeout(resolve, 500));
      if (this.closed) return false;
      await this.level.compactRange(Buffer.of(0xff), Buffer.of(0xff));
    }
  }

  /** How long the end of a migration waits for readers to let go of the files it replaced. */
  obsoleteFilesWaitMs = 60_000;

  /** LevelDB's table and write-ahead log files in the database directory. */
  private async levelFiles(): Promise<string[]> {
    return (await readdir(this.level.location)).filter((name) => /^\d+\.(ldb|sst|log)$/.test(name));
  }

  /** Which of `files` are still on disk and not a table of the current version. */
  private async obsoleteFiles(files: readonly string[]): Promise<string[]> {
    const live = liveTableNumbers(this.level.getProperty('leveldb.sstables'));
    const present = new Set(await this.levelFiles());
    return files.filter((name) => present.has(name) && !(/\.(ldb|sst)$/.test(name) && live.has(Number.parseInt(name, 10))));
  }

  /** Sealed records per DEK id (headers only). */
  async countRecords(): Promise<Map<number, number>> {
    const counts = new Map<number, number>();
    for await (const [key, value] of this.level.iterator({ gte: Buffer.of(0), lt: Buffer.of(0xff) })) {
      if (this.closed) break;
      if (isKeyStoreKey(key)) continue;
      const id = looksSealed(value) ? sealedDekId(value) : 0;
      counts.set(id, (counts.get(id) ?? 0) + 1);
    }
    return counts;
  }

  /** Re-seals up to a chunk of records after `cursor`; `last` is undefined at the end. */
  private async resealStep(cursor: Buffer | undefined): Promise<{ resealed: number; last: Buffer | undefined }> {
    const keyring = this.requireKeyring();
    this.tracking = { keys: new Set([...this.pending].flatMap((write) => write.keys)), ranges: [...this.pending].flatMap((write) => (write.range === undefined ? [] : [write.range])) };
    try {
      const candidates: [Buffer, Buffer][] = [];
      let last: Buffer | undefined;
      let examined = 0;
      const iterator = this.level.iterator(cursor === undefined ? { gte: Buffer.of(0), lt: Buffer.of(0xff) } : { gt: cursor, lt: Buffer.of(0xff) });
      try {
        for await (const [key, value] of iterator) {
          examined += 1;
          last = key;
          if (!isKeyStoreKey(key) && (!looksSealed(value) || sealedDekId(value) !== keyring.activeDekId)) candidates.push([key, value]);
          if (examined >= resealChunkRecordsMax) break;
        }
      } finally {
        await iterator.close();
      }
      if (examined < resealChunkRecordsMax) last = undefined;
      while (!this.maySeal(keyring, candidates.length)) await this.sealTurn(keyring, candidates.length);
      // From here to the write, synchronously: leave alone whatever was written since the read.
      const tracking = this.tracking;
      const fresh = candidates.filter(([key]) => !tracking.keys.has(key.toString('latin1')) && !tracking.ranges.some((range) => inRange(key, range)));
      const operations = fresh.map(([key, value]): BatchOperation => ({ type: 'put', key, value: keyring.seal(key, keyring.open(key, value)) }));
      this.tracking = undefined;
      if (operations.length === 0) return { resealed: 0, last };
      const done = this.level.batch(operations, { sync: false });
      this.resealing = { keys: new Set(fresh.map(([key]) => key.toString('latin1'))), done: done.catch(() => undefined) };
      try {
        await done;
      } finally {
        this.resealing = undefined;
      }
      return { resealed: operations.length, last };
    } finally {
      this.tracking = undefined;
    }
  }

  iterator(range: IteratorRange): DatabaseIterator {
    return new SealedIterator(this.level.iterator(range), this.keyring, range.bulk === true);
  }

  snapshot(): DatabaseSnapshot {
    return this.level.snapshot();
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
    const write: PendingWrite = { keys: [], range };
    await this.beginWrite(write);
    try {
      await this.level.tracked(() => this.level.clear(range));
    } finally {
      this.endWrite(write);
    }
  }

  compactRange(start: Buffer, end: Buffer): Promise<void> {
    return this.level.compactRange(start, end);
  }

  async close(): Promise<void> {
    this.closed = true;
    await this.resealPass;
    await this.level.close();
    this.keyring?.close();
  }
}

/**
 * LevelDB's write buffer (its memtable) for one open: 4 to 8 MiB, drawn at random. Members apply
 * the same writes, so with one size they filled their memtables, and then started their level-0
 * compactions (~0.3 s of a core each), at the same moment; on shared cores the three at once
 * stalled every member together and the writes waiting on them (the fixed-rate phase's slowest 1%
 * lined up with them). Sizes apart spread the compactions in time; a quorum needs only two members.
 */
export function staggeredWriteBufferBytes(): number {
  return (4 << 20) + randomInt(0, 4 << 20);
}

/**
 * The file numbers of the tables of LevelDB's current version, from its `leveldb.sstables`
 * property (a line ` <number>:<size>[<smallest> .. <largest>]` per table under each level's heading).
 */
export function liveTableNumbers(sstables: string): Set<number> {
  return new Set([...sstables.matchAll(/^ (\d+):\d+\[/gm)].map((match) => Number(match[1])));
}

async function isEmpty(level: Level): Promise<boolean> {
  for await (const _key of level.keys({ limit: 1 })) return false;
  return true;
}

/** Whether a data directory's database holds a key store (opens and closes the database). */
export async function databaseEncrypted(dataDir: string): Promise<boolean> {
  if (!databaseExists(dataDir)) return false;
  const level: ClassicLevel<Buffer, Buffer> = new ClassicLevel<Buffer, Buffer>(path.join(dataDir, 'db'), { keyEncoding: 'buffer', valueEncoding: 'buffer' });
  await level.open();
  try {
    return await Keyring.exists(level);
  } finally {
    await level.close();
  }
}

/** Whether a data directory holds a database already. */
export function databaseExists(dataDir: string): boolean {
  return existsSync(path.join(dataDir, 'db', 'CURRENT'));
}
