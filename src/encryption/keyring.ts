/**
 * The keyring: a member's data-encryption keys (DEKs), kept wrapped by the KEK in the key store,
 * and the one `RecordSealer` the storage layer seals and opens records through.
 *
 * Key store records (LevelDB keys under `keyStorePrefix`, 'x'; never sealed by a DEK, never seen
 * above the storage layer, never in a snapshot):
 *   'x' + "dek" + id(u32)  → DEK record, layout (version 1):
 *       u8   version (1)
 *       u64  created at (ms since the epoch)
 *       u64  encryptions reserved: seals under this DEK never exceed it before it is rewritten
 *       u16  K, then K bytes: the wrapping KEK id (UTF-8)
 *       u16  A annotations, each: u16 N, N bytes name (UTF-8), u32 V, V bytes value
 *       u32  W, then W bytes: the provider's ciphertext of (u32 DEK id ‖ 32-byte DEK)
 *   'x' + "active"         → u8 version (1), u32 the DEK new records are sealed under,
 *                            u64 when it became active (ms since the epoch)
 *   'x' + "migrating"      → empty; present while a member that kept plaintext is being sealed:
 *                            until the re-seal pass has sealed every record, a record without a
 *                            sealed header (or naming a DEK this member never had) is read as
 *                            plaintext. A record naming a known DEK must open, migrating or not.
 * The DEK id inside the wrapped plaintext binds a wrapped key to its record: swapping two DEK
 * records fails to unwrap. Integrity of the other fields is LevelDB's block CRC; editing them can
 * only make a member refuse to start or retire a DEK early.
 *
 * Nonce safety: each DEK counts its seals. The count is made durable ahead of use in blocks of
 * `encryptionReservationBlock` (one fsynced key-store write per block); after a restart counting
 * resumes at the reserved mark, so it never goes back. A DEK that reaches `dekEncryptionsMax`
 * seals is replaced by a new one (a rotation), far below GCM's 2^32 bound for random nonces.
 */
import { randomBytes } from 'node:crypto';
import { KeyProviderError, type KekProvider, type WrappedKey } from './kek.js';
import { SealedRecordError, dekBytes, describeKey, looksSealed, openRecord, sealRecord, sealRecordParts, sealedDekId } from './sealed-record.js';

export const keyStorePrefix = 0x78;
const dekRecordName = Buffer.from('dek', 'latin1');
export const activeRecordKey = Buffer.concat([Buffer.of(keyStorePrefix), Buffer.from('active', 'latin1')]);
/** Present while a plaintext member's records are being sealed (migration); see `open`. */
export const migratingRecordKey = Buffer.concat([Buffer.of(keyStorePrefix), Buffer.from('migrating', 'latin1')]);
const keyStoreVersion = 1;

export const dekEncryptionsMax = 2 ** 30;
export const encryptionReservationBlock = 2 ** 20;

/** The storage layer's view of the keyring: the one seam through which records are sealed. */
export interface RecordSealer {
  /** Whether `count` more seals may happen now without a key-store write. */
  hasRoom(count: number): boolean;
  /** Durably reserves room for `count` seals (may rotate to a new DEK). */
  reserve(count: number): Promise<void>;
  seal(key: Buffer, plaintext: Buffer): Buffer;
  /** Throws SealedRecordError naming the key if the record is damaged or its DEK is unknown. */
  open(key: Buffer, record: Buffer): Buffer;
  /** Every DEK that opens records now, by id (for opening in bulk on a worker thread). */
  openingKeys(): ReadonlyMap<number, Buffer>;
}

/** Re-wraps a key kept elsewhere with `wrap` (the new KEK during a rotation). */
export type RewrapHook = (wrap: (plaintext: Buffer) => Promise<WrappedKey>) => Promise<void>;

export type KeyStoreOperation = { readonly type: 'put'; readonly key: Buffer; readonly value: Buffer } | { readonly type: 'del'; readonly key: Buffer };

/** The raw database under the sealing layer, as the key store uses it. */
export interface KeyStoreBackend {
  get(key: Buffer): Promise<Buffer | undefined>;
  batch(operations: KeyStoreOperation[], options: { sync: boolean }): Promise<void>;
  iterator(options: { gte: Buffer; lt: Buffer }): AsyncIterable<[Buffer, Buffer]>;
}

interface Dek {
  readonly id: number;
  readonly key: Buffer;
  readonly createdAtMs: number;
  wrapped: WrappedKey;
  reserved: number;
  used: number;
}

export interface DekStatus {
  readonly id: number;
  readonly createdAtMs: number;
  readonly kekId: string;
  readonly sealsReserved: number;
}

export interface KeyringStatus {
  readonly provider: string;
  readonly providerSource: string;
  readonly kekId: string;
  readonly activeDekId: number;
  readonly lastRotationMs: number;
  readonly deks: DekStatus[];
  /** A migration from plaintext has not finished: plaintext may still be on disk. */
  readonly migrating: boolean;
}

export function dekRecordKey(id: number): Buffer {
  const key = Buffer.allocUnsafe(1 + dekRecordName.length + 4);
  key[0] = keyStorePrefix;
  dekRecordName.copy(key, 1);
  key.writeUInt32BE(id, 1 + dekRecordName.length);
  return key;
}

function encodeDekRecord(dek: Dek): Buffer {
  const kekId = Buffer.from(dek.wrapped.kekId, 'utf8');
  const parts: Buffer[] = [];
  const head = Buffer.allocUnsafe(17);
  head[0] = keyStoreVersion;
  head.writeBigUInt64BE(BigInt(dek.createdAtMs), 1);
  head.writeBigUInt64BE(BigInt(dek.reserved), 9);
  parts.push(head, u16(kekId.length), kekId, u16(dek.wrapped.annotations.size));
  for (const [name, value] of dek.wrapped.annotations) {
    const nameBytes = Buffer.from(name, 'utf8');
    parts.push(u16(nameBytes.length), nameBytes, u32(value.length), value);
  }
  parts.push(u32(dek.wrapped.ciphertext.length), dek.wrapped.ciphertext);
  return Buffer.concat(parts);
}

function decodeDekRecord(key: Buffer, record: Buffer): { createdAtMs: number; reserved: number; wrapped: WrappedKey } {
  let offset = 0;
  const take = (bytes: number): Buffer => {
    if (offset + bytes > record.length) throw new KeyProviderError(`key store record ${describeKey(key)} is truncated`);
    const slice = record.subarray(offset, offset + bytes);
    offset += bytes;
    return slice;
  };
  if (take(1)[0] !== keyStoreVersion) throw new KeyProviderError(`key store record ${describeKey(key)} has an unknown version`);
  const createdAtMs = Number(take(8).readBigUInt64BE(0));
  const reserved = Number(take(8).readBigUInt64BE(0));
  const kekId = take(take(2).readUInt16BE(0)).toString('utf8');
  const annotations = new Map<string, Buffer>();
  for (let count = take(2).readUInt16BE(0); count > 0; count--) {
    const name = take(take(2).readUInt16BE(0)).toString('utf8');
    annotations.set(name, Buffer.from(take(take(4).readUInt32BE(0))));
  }
  const ciphertext = Buffer.from(take(take(4).readUInt32BE(0)));
  return { createdAtMs, reserved, wrapped: { kekId, ciphertext, annotations } };
}

function encodeActive(id: number, sinceMs: number): Buffer {
  const record = Buffer.allocUnsafe(13);
  record[0] = keyStoreVersion;
  record.writeUInt32BE(id, 1);
  record.writeBigUInt64BE(BigInt(sinceMs), 5);
  return record;
}

function u16(value: number): Buffer {
  const buffer = Buffer.allocUnsafe(2);
  buffer.writeUInt16BE(value);
  return buffer;
}

function u32(value: number): Buffer {
  const buffer = Buffer.allocUnsafe(4);
  buffer.writeUInt32BE(value);
  return buffer;
}

function wrapPlaintext(id: number, key: Buffer): Buffer {
  return Buffer.concat([u32(id), key]);
}

export class Keyring implements RecordSealer {
  private readonly deks = new Map<number, Dek>();
  /** Retired DEKs: gone from the key store, kept in memory for iterators opened before (never seal). */
  private readonly retired = new Map<number, Buffer>();
  private active!: Dek;
  private activeSinceMs = 0;
  private reserving: Promise<void> | undefined;
  private migratingValue = false;
  /** Keys kept outside the key store under the same KEK (the audit trail key): re-wrapped with the DEKs. */
  private readonly rewrapHooks = new Set<RewrapHook>();

  private constructor(
    private readonly store: KeyStoreBackend,
    readonly provider: KekProvider,
    private readonly nowMs: () => number,
  ) {}

  /** Whether the database holds a key store (the member encrypts). */
  static async exists(store: KeyStoreBackend): Promise<boolean> {
    return (await store.get(activeRecordKey)) !== undefined;
  }

  /**
   * Creates the key store: one DEK, active. `migrating`: the database holds plaintext records,
   * readable as such until the re-seal pass has sealed them all (`finishMigration`).
   */
  static async create(store: KeyStoreBackend, provider: KekProvider, migrating = false, nowMs: () => number = Date.now): Promise<Keyring> {
    const keyring = new Keyring(store, provider, nowMs);
    const dek = await keyring.newDek(1);
    await store.batch([
      { type: 'put', key: dekRecordKey(dek.id), value: encodeDekRecord(dek) },
      ...(migrating ? [{ type: 'put' as const, key: migratingRecordKey, value: Buffer.alloc(0) }] : []),
      { type: 'put', key: activeRecordKey, value: encodeActive(dek.id, nowMs()) },
    ], { sync: true });
    keyring.migratingValue = migrating;
    keyring.deks.set(dek.id, dek);
    keyring.active = dek;
    keyring.activeSinceMs = nowMs();
    return keyring;
  }

  /** Loads and unwraps every DEK; throws KeyProviderError naming the provider when that fails. */
  static async load(store: KeyStoreBackend, provider: KekProvider, nowMs: () => number = Date.now): Promise<Keyring> {
    const keyring = new Keyring(store, provider, nowMs);
    const activeRecord = await store.get(activeRecordKey);
    if (activeRecord === undefined || activeRecord.length < 13) throw new KeyProviderError('the key store has no active data key');
    const activeId = activeRecord.readUInt32BE(1);
    keyring.activeSinceMs = Number(activeRecord.readBigUInt64BE(5));
    keyring.migratingValue = (await store.get(migratingRecordKey)) !== undefined;
    const start = Buffer.concat([Buffer.of(keyStorePrefix), dekRecordName]);
    for await (const [key, value] of store.iterator({ gte: start, lt: Buffer.concat([start, Buffer.of(0xff, 0xff, 0xff, 0xff, 0xff)]) })) {
      const id = key.readUInt32BE(1 + dekRecordName.length);
      const { createdAtMs, reserved, wrapped } = decodeDekRecord(key, value);
      const plaintext = await provider.unwrap(wrapped).catch((error: unknown) => {
        throw new KeyProviderError(`cannot unwrap data key ${id} with the ${provider.kind} KEK provider (${provider.source}): ${error instanceof Error ? error.message : String(error)}`);
      });
      if (plaintext.length !== 4 + dekBytes || plaintext.readUInt32BE(0) !== id) {
        throw new KeyProviderError(`data key ${id} unwrapped to the wrong key (the key store was altered)`);
      }
      // Resume counting at the reserved mark: seals after the last reservation are not known.
      keyring.deks.set(id, { id, key: Buffer.from(plaintext.subarray(4)), createdAtMs, wrapped, reserved, used: reserved });
    }
    const active = keyring.deks.get(activeId);
    if (active === undefined) throw new KeyProviderError(`the active data key ${activeId} is missing from the key store`);
    keyring.active = active;
    await provider.settle();
    return keyring;
  }

  private async newDek(id: number): Promise<Dek> {
    const key = randomBytes(dekBytes);
    const wrapped = await this.provider.wrap(wrapPlaintext(id, key));
    return { id, key, createdAtMs: this.nowMs(), wrapped, reserved: encryptionReservationBlock, used: 0 };
  }

  get activeDekId(): number {
    return this.active.id;
  }

  get lastRotationMs(): number {
    return this.activeSinceMs;
  }

  dekIds(): number[] {
    return [...this.deks.keys()].sort((a, b) => a - b);
  }

  hasRoom(count: number): boolean {
    return this.active.used + count <= this.active.reserved;
  }

  async reserve(count: number): Promise<void> {
    while (!this.hasRoom(count)) {
      this.reserving ??= this.reserveBlock(count).finally(() => {
        this.reserving = undefined;
      });
      await this.reserving;
    }
  }

  private async reserveBlock(count: number): Promise<void> {
    const dek = this.active;
    const wanted = dek.used + Math.max(count, encryptionReservationBlock);
    if (wanted > dekEncryptionsMax) {
      await this.rotate();
      return;
    }
    dek.reserved = wanted;
    await this.store.batch([{ type: 'put', key: dekRecordKey(dek.id), value: encodeDekRecord(dek) }], { sync: true });
  }

  seal(key: Buffer, plaintext: Buffer): Buffer {
    const dek = this.takeEncryption();
    return sealRecord(dek.id, dek.key, key, plaintext);
  }

  /** As `seal`, the record as [header, ciphertext, tag] (`sealRecordParts`: no copy of a large ciphertext). */
  sealParts(key: Buffer, plaintext: Buffer): Buffer[] {
    const dek = this.takeEncryption();
    return sealRecordParts(dek.id, dek.key, key, plaintext);
  }

  /** The active DEK, counting one more encryption under it (within its durable reservation). */
  private takeEncryption(): Dek {
    const dek = this.active;
    if (dek.used >= dek.reserved) throw new Error('assertion failed: sealing beyond the reserved encryptions of a data key');
    dek.used += 1;
    return dek;
  }

  open(key: Buffer, record: Buffer): Buffer {
    if (!looksSealed(record)) {
      if (this.migratingValue) return record;
      throw new SealedRecordError(`record ${describeKey(key)}: not a sealed record (the member encrypts every record)`);
    }
    const id = sealedDekId(record);
    const dek = this.deks.get(id)?.key ?? this.retired.get(id);
    if (dek === undefined) {
      // While migrating, a plaintext record may begin with the header bytes by chance.
      if (this.migratingValue) return record;
      throw new SealedRecordError(`record ${describeKey(key)}: sealed under data key ${id}, which this member does not have`);
    }
    return openRecord(dek, key, record);
  }

  openingKeys(): ReadonlyMap<number, Buffer> {
    const keys = new Map(this.retired);
    for (const [id, dek] of this.deks) keys.set(id, dek.key);
    return keys;
  }

  /** Whether plaintext records may still be in the database (a migration is under way). */
  get migrating(): boolean {
    return this.migratingValue;
  }

  /** Every record is sealed now: from here on a plaintext record is damage. */
  async finishMigration(): Promise<void> {
    await this.store.batch([{ type: 'del', key: migratingRecordKey }], { sync: true });
    this.migratingValue = false;
  }

  /** Makes a new DEK active at once; records sealed under older ones stay readable. */
  async rotate(): Promise<number> {
    const id = Math.max(...this.deks.keys()) + 1;
    const dek = await this.newDek(id);
    const sinceMs = this.nowMs();
    await this.store.batch([
      { type: 'put', key: dekRecordKey(dek.id), value: encodeDekRecord(dek) },
      { type: 'put', key: activeRecordKey, value: encodeActive(dek.id, sinceMs) },
    ], { sync: true });
    this.deks.set(id, dek);
    this.active = dek;
    this.activeSinceMs = sinceMs;
    return id;
  }

  /**
   * Calls `hook` during every KEK rotation, after the new KEK is ready and before it replaces the
   * old one, with the provider's `wrap` (which uses the new KEK then). Returns the unregister.
   */
  onRewrap(hook: RewrapHook): () => void {
    this.rewrapHooks.add(hook);
    return () => this.rewrapHooks.delete(hook);
  }

  /** Re-wraps every DEK under a new KEK (file) or the provider's current one (kms). */
  async rewrap(): Promise<void> {
    await this.provider.beginRotation();
    for (const hook of this.rewrapHooks) await hook((plaintext) => this.provider.wrap(plaintext));
    const operations: KeyStoreOperation[] = [];
    const rewrapped = new Map<number, WrappedKey>();
    for (const dek of this.deks.values()) {
      const wrapped = await this.provider.wrap(wrapPlaintext(dek.id, dek.key));
      rewrapped.set(dek.id, wrapped);
      operations.push({ type: 'put', key: dekRecordKey(dek.id), value: encodeDekRecord({ ...dek, wrapped }) });
    }
    await this.store.batch(operations, { sync: true });
    for (const [id, wrapped] of rewrapped) {
      const dek = this.deks.get(id);
      if (dek !== undefined) dek.wrapped = wrapped;
    }
    await this.provider.completeRotation();
  }

  /** Deletes a DEK that no record uses any more from the key store. */
  async retire(id: number): Promise<void> {
    const dek = this.deks.get(id);
    if (id === this.active.id || dek === undefined) return;
    await this.store.batch([{ type: 'del', key: dekRecordKey(id) }], { sync: true });
    this.deks.delete(id);
    this.retired.set(id, dek.key);
  }

  status(): KeyringStatus {
    return {
      provider: this.provider.kind,
      providerSource: this.provider.source,
      kekId: this.active.wrapped.kekId,
      activeDekId: this.active.id,
      lastRotationMs: this.activeSinceMs,
      deks: [...this.deks.values()].map((dek) => ({ id: dek.id, createdAtMs: dek.createdAtMs, kekId: dek.wrapped.kekId, sealsReserved: dek.reserved })),
      migrating: this.migratingValue,
    };
  }

  close(): void {
    for (const dek of this.deks.values()) dek.key.fill(0);
    for (const key of this.retired.values()) key.fill(0);
    this.provider.close();
  }
}
