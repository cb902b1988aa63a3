/**
 * etcd's snapshot file (etcd 3.4's backend database, as `etcdctl snapshot save` writes it): a bbolt
 * file (see `bbolt/format.ts`) followed by the SHA-256 of the database. etcdctl recognises the
 * checksum by the file size alone: size mod 512 = 32. A bare database (a member's `member/snap/db`)
 * has no checksum and is accepted too.
 *
 * Buckets and records (etcd 3.4; integers big-endian unless protobuf):
 *   key      revision key → mvccpb.KeyValue
 *            revision key = u64 main revision, '_', u64 sub revision; a deletion appends 't' and
 *            its value is a KeyValue carrying only the key
 *            KeyValue: 1 key (bytes), 2 create_revision, 3 mod_revision, 4 version, 5 value
 *            (bytes), 6 lease (int64 varints)
 *   meta     "consistent_index" → u64; "scheduledCompactRev", "finishedCompactRev" → revision key
 *   lease    u64 lease id → leasepb.Lease: 1 ID, 2 TTL, 3 RemainingTTL (int64 varints)
 *   auth     "authEnabled" → one byte (1 = on); "authRevision" → u64
 *   authUsers name → authpb.User: 1 name (bytes), 2 password (bcrypt hash, bytes), 3 roles
 *            (repeated string), 4 options { 1 no_password (bool) }
 *   authRoles name → authpb.Role: 1 name (bytes), 2 keyPermission (repeated Permission:
 *            1 permType READ=0 WRITE=1 READWRITE=2, 2 key, 3 range_end)
 *   members, members_removed, cluster, alarm: membership and alarms of the old cluster; a restore
 *            founds a new cluster, so they are neither read nor written with content.
 *
 * Reading checks everything it takes (checksum, bbolt structure, record shapes) and throws
 * `BboltFormatError` before returning anything: a damaged file never yields a partial state.
 */
import { createHash } from 'node:crypto';
import { BboltReader, type BboltEntry } from './bbolt/reader.js';
import { writeBbolt } from './bbolt/writer.js';
import { BboltFormatError } from './bbolt/format.js';

export interface EtcdKeyValue {
  readonly main: number;
  readonly sub: number;
  readonly tombstone: boolean;
  readonly key: Buffer;
  readonly value: Buffer;
  readonly createRevision: number;
  readonly modRevision: number;
  readonly version: number;
  readonly lease: bigint;
}

export interface EtcdLease {
  readonly id: bigint;
  readonly ttl: number;
}

export interface EtcdUser {
  readonly name: string;
  /** etcd's bcrypt hash; empty without a password. */
  readonly password: string;
  readonly roles: readonly string[];
  readonly noPassword: boolean;
}

export interface EtcdPermission {
  readonly type: 0 | 1 | 2;
  readonly key: Buffer;
  readonly rangeEnd: Buffer;
}

export interface EtcdRole {
  readonly name: string;
  readonly permissions: readonly EtcdPermission[];
}

export interface EtcdState {
  /** In revision order. */
  readonly keyValues: readonly EtcdKeyValue[];
  readonly leases: readonly EtcdLease[];
  readonly scheduledCompactRevision: number;
  readonly finishedCompactRevision: number;
  readonly authEnabled: boolean;
  readonly authRevision: number;
  readonly users: readonly EtcdUser[];
  readonly roles: readonly EtcdRole[];
}

const checksumBytes = 32;
const checksumAlignmentBytes = 512;
const revisionKeyBytes = 17;
const tombstoneMark = 0x74; // 't'
const revisionSeparator = 0x5f; // '_'
/** Decoded records are views into the file (it stays in memory while it is restored); never written to. */
const emptyBytes: Buffer = Buffer.alloc(0);

/** Whether `file` starts like a bbolt database (meta page magic at offset 16). */
export function looksLikeBbolt(file: Buffer): boolean {
  return file.length >= 20 && file.readUInt32LE(16) === 0xed0cdaed;
}

export function readEtcdSnapshot(file: Buffer): EtcdState {
  let database = file;
  if (file.length % checksumAlignmentBytes === checksumBytes) {
    database = file.subarray(0, file.length - checksumBytes);
    const digest = createHash('sha256').update(database).digest();
    if (!digest.equals(file.subarray(file.length - checksumBytes))) {
      throw new BboltFormatError('SHA-256 mismatch: the snapshot is damaged or incomplete');
    }
  }
  const reader = BboltReader.open(database);
  const bucket = (name: string): BboltEntry[] => {
    const entries = reader.bucket(name) ?? [];
    const nested = entries.find((entry) => entry.isBucket);
    if (nested !== undefined) throw new BboltFormatError(`bucket "${name}" holds a nested bucket; not an etcd database`);
    return entries;
  };
  if (reader.bucket('key') === undefined || reader.bucket('meta') === undefined) throw new BboltFormatError('a bbolt database without etcd\'s "key" and "meta" buckets');

  const keyValues = bucket('key').map((entry) => decodeKeyValueEntry(entry.key, entry.value));
  const meta = new Map(bucket('meta').map((entry) => [entry.key.toString('latin1'), entry.value]));
  const compactRevision = (name: string): number => {
    const value = meta.get(name);
    if (value === undefined) return 0;
    return decodeRevisionKey(value, `meta ${name}`).main;
  };
  const auth = new Map(bucket('auth').map((entry) => [entry.key.toString('latin1'), entry.value]));
  const enabled = auth.get('authEnabled');
  const revision = auth.get('authRevision');
  return {
    keyValues,
    leases: bucket('lease').map((entry) => decodeLease(entry.key, entry.value)),
    scheduledCompactRevision: compactRevision('scheduledCompactRev'),
    finishedCompactRevision: compactRevision('finishedCompactRev'),
    authEnabled: enabled !== undefined && enabled.length === 1 && enabled[0] === 1,
    authRevision: revision !== undefined && revision.length === 8 ? safeNumber(revision.readBigUInt64BE(0), 'auth revision') : 0,
    users: bucket('authUsers').map((entry) => decodeUser(entry.value)),
    roles: bucket('authRoles').map((entry) => decodeRole(entry.value)),
  };
}

/** The snapshot file: the bbolt database and its SHA-256. */
export function writeEtcdSnapshot(state: EtcdState): Buffer {
  const byKey = (a: readonly [Buffer, Buffer], b: readonly [Buffer, Buffer]): number => Buffer.compare(a[0], b[0]);
  const meta: [Buffer, Buffer][] = [];
  if (state.scheduledCompactRevision > 0) meta.push([Buffer.from('scheduledCompactRev'), encodeRevisionKey(state.scheduledCompactRevision, 0, false)]);
  if (state.finishedCompactRevision > 0) meta.push([Buffer.from('finishedCompactRev'), encodeRevisionKey(state.finishedCompactRevision, 0, false)]);
  const authRevision = Buffer.alloc(8);
  authRevision.writeBigUInt64BE(BigInt(state.authRevision));
  const database = writeBbolt([
    { name: 'alarm', entries: [] },
    { name: 'auth', entries: [[Buffer.from('authEnabled'), Buffer.of(state.authEnabled ? 1 : 0)], [Buffer.from('authRevision'), authRevision]] },
    { name: 'authRoles', entries: state.roles.map((role) => [Buffer.from(role.name), encodeRole(role)] as [Buffer, Buffer]).sort(byKey) },
    { name: 'authUsers', entries: state.users.map((user) => [Buffer.from(user.name), encodeUser(user)] as [Buffer, Buffer]).sort(byKey) },
    { name: 'cluster', entries: [] },
    { name: 'key', entries: state.keyValues.map((kv) => [encodeRevisionKey(kv.main, kv.sub, kv.tombstone), encodeKeyValue(kv)] as [Buffer, Buffer]).sort(byKey) },
    { name: 'lease', entries: state.leases.map((lease) => [int64Key(lease.id), encodeLease(lease)] as [Buffer, Buffer]).sort(byKey) },
    { name: 'members', entries: [] },
    { name: 'members_removed', entries: [] },
    { name: 'meta', entries: meta.sort(byKey) },
  ]);
  return Buffer.concat([database, createHash('sha256').update(database).digest()]);
}

// ---- revision keys ----

function encodeRevisionKey(main: number, sub: number, tombstone: boolean): Buffer {
  const key = Buffer.alloc(revisionKeyBytes + (tombstone ? 1 : 0));
  key.writeBigUInt64BE(BigInt(main), 0);
  key[8] = revisionSeparator;
  key.writeBigUInt64BE(BigInt(sub), 9);
  if (tombstone) key[revisionKeyBytes] = tombstoneMark;
  return key;
}

function decodeRevisionKey(key: Buffer, where: string): { main: number; sub: number; tombstone: boolean } {
  const tombstone = key.length === revisionKeyBytes + 1 && key[revisionKeyBytes] === tombstoneMark;
  if ((key.length !== revisionKeyBytes && !tombstone) || key[8] !== revisionSeparator) throw new BboltFormatError(`${where}: malformed revision key`);
  return { main: safeNumber(key.readBigUInt64BE(0), where), sub: safeNumber(key.readBigUInt64BE(9), where), tombstone };
}

function decodeKeyValueEntry(revisionKey: Buffer, value: Buffer): EtcdKeyValue {
  const revision = decodeRevisionKey(revisionKey, 'key bucket');
  let key: Buffer | undefined;
  let data = emptyBytes;
  let createRevision = 0;
  let modRevision = 0;
  let version = 0;
  let lease = 0n;
  for (const field of protobufFields(value, `key record at revision ${revision.main}`)) {
    if (field.number === 1 && field.bytes !== undefined) key = field.bytes;
    else if (field.number === 2 && field.varint !== undefined) createRevision = safeNumber(field.varint, 'create_revision');
    else if (field.number === 3 && field.varint !== undefined) modRevision = safeNumber(field.varint, 'mod_revision');
    else if (field.number === 4 && field.varint !== undefined) version = safeNumber(field.varint, 'version');
    else if (field.number === 5 && field.bytes !== undefined) data = field.bytes;
    else if (field.number === 6 && field.varint !== undefined) lease = BigInt.asIntN(64, field.varint);
  }
  if (key === undefined || key.length === 0) throw new BboltFormatError(`key record at revision ${revision.main}: no key`);
  if (!revision.tombstone && (modRevision !== revision.main || createRevision < 1 || createRevision > modRevision || version < 1)) {
    throw new BboltFormatError(`key record at revision ${revision.main}: revisions disagree with its position`);
  }
  const { main, sub, tombstone } = revision;
  return tombstone
    ? { main, sub, tombstone, key, value: emptyBytes, createRevision: 0, modRevision: main, version: 0, lease: 0n }
    : { main, sub, tombstone, key, value: data, createRevision, modRevision, version, lease };
}

function encodeKeyValue(kv: EtcdKeyValue): Buffer {
  if (kv.tombstone) return concatFields([bytesField(1, kv.key)]);
  return concatFields([
    bytesField(1, kv.key),
    varintField(2, BigInt(kv.createRevision)),
    varintField(3, BigInt(kv.modRevision)),
    varintField(4, BigInt(kv.version)),
    bytesField(5, kv.value),
    varintField(6, kv.lease),
  ]);
}

// ---- leases ----

function int64Key(id: bigint): Buffer {
  const key = Buffer.alloc(8);
  key.writeBigInt64BE(id);
  return key;
}

function decodeLease(key: Buffer, value: Buffer): EtcdLease {
  if (key.length !== 8) throw new BboltFormatError('lease bucket: malformed lease id');
  let id: bigint | undefined;
  let ttl = 0;
  for (const field of protobufFields(value, 'lease record')) {
    if (field.number === 1 && field.varint !== undefined) id = BigInt.asIntN(64, field.varint);
    else if (field.number === 2 && field.varint !== undefined) ttl = safeNumber(field.varint, 'lease TTL');
  }
  if (id === undefined || id !== key.readBigInt64BE(0)) throw new BboltFormatError('lease record: id disagrees with its key');
  return { id, ttl };
}

function encodeLease(lease: EtcdLease): Buffer {
  return concatFields([varintField(1, lease.id), varintField(2, BigInt(lease.ttl))]);
}

// ---- users and roles ----

function decodeUser(value: Buffer): EtcdUser {
  let name = '';
  let password = '';
  const roles: string[] = [];
  let noPassword = false;
  for (const field of protobufFields(value, 'user record')) {
    if (field.number === 1 && field.bytes !== undefined) name = field.bytes.toString('utf8');
    else if (field.number === 2 && field.bytes !== undefined) password = field.bytes.toString('latin1');
    else if (field.number === 3 && field.bytes !== undefined) roles.push(field.bytes.toString('utf8'));
    else if (field.number === 4 && field.bytes !== undefined) {
      for (const option of protobufFields(field.bytes, 'user options')) {
        if (option.number === 1 && option.varint !== undefined) noPassword = option.varint !== 0n;
      }
    }
  }
  if (name === '') throw new BboltFormatError('user record without a name');
  return { name, password, roles: [...new Set(roles)].sort(), noPassword };
}

function encodeUser(user: EtcdUser): Buffer {
  return concatFields([
    bytesField(1, Buffer.from(user.name)),
    bytesField(2, Buffer.from(user.password, 'latin1')),
    ...user.roles.map((role) => bytesField(3, Buffer.from(role))),
    user.noPassword ? bytesField(4, varintField(1, 1n)) : Buffer.alloc(0),
  ]);
}

function decodeRole(value: Buffer): EtcdRole {
  let name = '';
  const permissions: EtcdPermission[] = [];
  for (const field of protobufFields(value, 'role record')) {
    if (field.number === 1 && field.bytes !== undefined) name = field.bytes.toString('utf8');
    else if (field.number === 2 && field.bytes !== undefined) {
      let type = 0n;
      let key = emptyBytes;
      let rangeEnd = emptyBytes;
      for (const part of protobufFields(field.bytes, 'role permission')) {
        if (part.number === 1 && part.varint !== undefined) type = part.varint;
        else if (part.number === 2 && part.bytes !== undefined) key = part.bytes;
        else if (part.number === 3 && part.bytes !== undefined) rangeEnd = part.bytes;
      }
      if (type !== 0n && type !== 1n && type !== 2n) throw new BboltFormatError(`role "${name}": unknown permission type ${type}`);
      permissions.push({ type: Number(type) as 0 | 1 | 2, key, rangeEnd });
    }
  }
  if (name === '') throw new BboltFormatError('role record without a name');
  return { name, permissions };
}

function encodeRole(role: EtcdRole): Buffer {
  return concatFields([
    bytesField(1, Buffer.from(role.name)),
    ...role.permissions.map((permission) =>
      bytesField(2, concatFields([varintField(1, BigInt(permission.type)), bytesField(2, permission.key), bytesField(3, permission.rangeEnd)]))),
  ]);
}

// ---- a minimal protobuf codec (varint and length-delimited fields are all these records use) ----

interface ProtobufField {
  readonly number: number;
  readonly varint?: bigint;
  readonly bytes?: Buffer;
}

function protobufFields(buffer: Buffer, where: string): ProtobufField[] {
  const fields: ProtobufField[] = [];
  let offset = 0;
  const varint = (): bigint => {
    // Fast path: up to 7 bytes (49 bits) fit a double exactly; BigInt arithmetic per byte is slow.
    let small = 0;
    for (let index = 0; index < 7 && offset + index < buffer.length; index++) {
      const byte = buffer[offset + index] as number;
      small += (byte & 0x7f) * 2 ** (7 * index);
      if ((byte & 0x80) === 0) {
        offset += index + 1;
        return BigInt(small);
      }
    }
    let result = 0n;
    for (let shift = 0n; shift < 70n; shift += 7n) {
      if (offset >= buffer.length) throw new BboltFormatError(`${where}: truncated protobuf`);
      const byte = buffer[offset++] as number;
      result |= BigInt(byte & 0x7f) << shift;
      if ((byte & 0x80) === 0) return BigInt.asUintN(64, result);
    }
    throw new BboltFormatError(`${where}: malformed varint`);
  };
  while (offset < buffer.length) {
    const tag = varint();
    const number = Number(tag >> 3n);
    const wireType = Number(tag & 7n);
    if (wireType === 0) fields.push({ number, varint: varint() });
    else if (wireType === 2) {
      const length = Number(varint());
      if (offset + length > buffer.length) throw new BboltFormatError(`${where}: truncated protobuf`);
      fields.push({ number, bytes: buffer.subarray(offset, offset + length) });
      offset += length;
    } else if (wireType === 1) offset += 8;
    else if (wireType === 5) offset += 4;
    else throw new BboltFormatError(`${where}: unsupported protobuf wire type ${wireType}`);
    if (offset > buffer.length) throw new BboltFormatError(`${where}: truncated protobuf`);
  }
  return fields;
}

function encodeVarint(value: bigint): Buffer {
  let remaining = BigInt.asUintN(64, value);
  const bytes: number[] = [];
  do {
    const low = Number(remaining & 0x7fn);
    remaining >>= 7n;
    bytes.push(remaining === 0n ? low : low | 0x80);
  } while (remaining !== 0n);
  return Buffer.from(bytes);
}

/** Proto3 leaves default values out. */
function varintField(number: number, value: bigint): Buffer {
  if (value === 0n) return Buffer.alloc(0);
  return Buffer.concat([encodeVarint(BigInt(number << 3)), encodeVarint(value)]);
}

function bytesField(number: number, value: Buffer): Buffer {
  if (value.length === 0) return Buffer.alloc(0);
  return Buffer.concat([encodeVarint(BigInt((number << 3) | 2)), encodeVarint(BigInt(value.length)), value]);
}

function concatFields(fields: Buffer[]): Buffer {
  return Buffer.concat(fields);
}

function safeNumber(value: bigint, what: string): number {
  if (value < 0n || value > BigInt(Number.MAX_SAFE_INTEGER)) throw new BboltFormatError(`${what} ${value} out of range`);
  return Number(value);
}
