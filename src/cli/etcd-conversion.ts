/**
 * Moving state between etcd's snapshot layout (`storage/etcd-snapshot.ts`) and Rampart's own state
 * records (`storage/schema.ts`): the migration path from etcd to Rampart and back.
 *
 * Carried both ways: every key-value revision (puts and deletions, with create/mod revisions,
 * versions and leases), the compaction revision, leases (granted TTL), users (with etcd's bcrypt
 * password hashes kept verbatim), roles and their key permissions, whether auth is on and its
 * revision. Not carried: membership and alarms (a restore founds a new cluster, as etcdctl's does).
 * Rampart-only state has no etcd equivalent: certificate bindings and the token signing key are
 * dropped; a role's explicit denies are subtracted from that role's grants, and a user whose other
 * roles would grant what a deny withholds makes the export fail rather than widen access.
 */
import { newSigningKey } from '../auth/token.js';
import { IntervalSet, intervalOf, type Interval, type KeyPermission } from '../auth/permissions.js';
import { decodeAuthState, encodeAuthState, type AuthState, type RoleRecord, type UserRecord } from '../auth/store.js';
import { decodeKeyValueRecord, decodeRevisionKey, encodeKeyValueRecord, encodeRevisionKey, recordKind } from '../storage/encoding.js';
import type { EtcdKeyValue, EtcdPermission, EtcdRole, EtcdState, EtcdUser } from '../storage/etcd-snapshot.js';
import { encodeMetaNumber } from '../storage/mvcc/store.js';
import { authStateKey, metaKey, prefix } from '../storage/schema.js';

export type StateRecord = readonly [Buffer, Buffer];

/** Rampart state records (keys in the schema's order) holding what an etcd snapshot holds. */
export function recordsFromEtcd(state: EtcdState): StateRecord[] {
  const records: StateRecord[] = [];
  for (const kv of state.keyValues) {
    records.push([
      encodeRevisionKey(kv.main, kv.sub),
      encodeKeyValueRecord(kv.tombstone ? recordKind.tombstone : recordKind.put, {
        key: kv.key, value: kv.value, createRevision: kv.createRevision, modRevision: kv.modRevision, version: kv.version, lease: kv.lease,
      }),
    ]);
  }
  for (const lease of state.leases) {
    const key = Buffer.alloc(9);
    key[0] = prefix.lease;
    key.writeBigInt64BE(lease.id, 1);
    records.push([key, encodeMetaNumber(lease.ttl)]);
  }
  const compacted = Math.max(state.scheduledCompactRevision, state.finishedCompactRevision);
  if (compacted > 0) {
    records.push([metaKey.scheduledCompactRevision, encodeMetaNumber(compacted)]);
    records.push([metaKey.finishedCompactRevision, encodeMetaNumber(compacted)]);
  }
  const users = new Map<string, UserRecord>(state.users.map((user) => [user.name, { name: user.name, passwordHash: user.password, noPassword: user.noPassword, roles: [...user.roles].sort() }]));
  const roles = new Map<string, RoleRecord>(state.roles.map((role) => [role.name, {
    name: role.name,
    permissions: [...role.permissions].sort(byKeyThenEnd).map((permission) => ({ type: permission.type, key: permission.key, rangeEnd: permission.rangeEnd })),
    denies: [],
  }]));
  if (state.authEnabled || users.size > 0 || roles.size > 0 || state.authRevision > 1) {
    const auth: AuthState = {
      enabled: state.authEnabled,
      revision: Math.max(1, state.authRevision),
      users,
      roles,
      bindings: new Map(),
      signingKey: state.authEnabled ? newSigningKey() : '',
    };
    records.push([authStateKey, encodeAuthState(auth)]);
  }
  return records;
}

/** The etcd snapshot state of Rampart's state records (as a Rampart snapshot carries them). */
export function etcdFromRecords(records: readonly StateRecord[]): EtcdState {
  const keyValues: EtcdKeyValue[] = [];
  const leases: { id: bigint; ttl: number }[] = [];
  let compacted = 0;
  let auth: AuthState | undefined;
  for (const [key, value] of records) {
    if (key[0] === prefix.keyValue) {
      const revision = decodeRevisionKey(key);
      const { kind, kv } = decodeKeyValueRecord(value);
      keyValues.push({ main: revision.main, sub: revision.sub, tombstone: kind === recordKind.tombstone, ...kv });
    } else if (key[0] === prefix.lease && key.length === 9) {
      leases.push({ id: key.readBigInt64BE(1), ttl: Number(value.readBigUInt64BE(0)) });
    } else if (key.equals(metaKey.scheduledCompactRevision) || key.equals(metaKey.finishedCompactRevision)) {
      compacted = Math.max(compacted, Number(value.readBigUInt64BE(0)));
    } else if (key.equals(authStateKey)) {
      auth = decodeAuthState(value);
    }
  }
  keyValues.sort((a, b) => a.main - b.main || a.sub - b.sub);
  const { users, roles } = auth === undefined ? { users: [], roles: [] } : etcdAuth(auth);
  return {
    keyValues,
    leases,
    scheduledCompactRevision: compacted,
    finishedCompactRevision: compacted,
    authEnabled: auth?.enabled ?? false,
    authRevision: auth?.revision ?? 0,
    users,
    roles,
  };
}

function etcdAuth(auth: AuthState): { users: EtcdUser[]; roles: EtcdRole[] } {
  const roles = [...auth.roles.values()].map((role) => ({ name: role.name, permissions: withoutDenies(role) }));
  // A deny in one role also withholds what the user's other roles grant; etcd cannot say that.
  for (const user of auth.users.values()) {
    const denies = user.roles.flatMap((name) => auth.roles.get(name)?.denies ?? []);
    if (denies.length === 0) continue;
    for (const name of user.roles) {
      const role = auth.roles.get(name);
      if (role === undefined || role.denies.length > 0) continue;
      for (const deny of denies) {
        const denied = intervalOf(deny.key, deny.rangeEnd);
        const overlapping = role.permissions.some((grant) => typesOverlap(grant.type, deny.type) && new IntervalSet([intervalOf(grant.key, grant.rangeEnd)]).intersects(denied));
        if (overlapping) {
          throw new Error(`user "${user.name}": role "${name}" grants keys that role "${user.roles.find((other) => auth.roles.get(other)?.denies.includes(deny))}" denies; etcd has no denies, so this policy cannot be exported without widening access`);
        }
      }
    }
  }
  const users = [...auth.users.values()].map((user) => ({
    name: user.name,
    // etcd verifies bcrypt only: a Rampart scrypt hash means nothing to it (the user sets a new password there).
    password: user.passwordHash.startsWith('$2') ? user.passwordHash : '',
    roles: user.roles,
    noPassword: user.noPassword,
  }));
  return { users, roles };
}

function typesOverlap(a: number, b: number): boolean {
  const reads = (type: number): boolean => type === 0 || type === 2;
  const writes = (type: number): boolean => type === 1 || type === 2;
  return (reads(a) && reads(b)) || (writes(a) && writes(b));
}

/** A role's grants less its own denies, as etcd permissions (READ, WRITE or READWRITE ranges). */
function withoutDenies(role: RoleRecord): EtcdPermission[] {
  if (role.denies.length === 0) return role.permissions.map((permission) => ({ type: permission.type, key: permission.key, rangeEnd: permission.rangeEnd }));
  const accessRanges = (access: 'read' | 'write'): Interval[] => {
    const allowed = (permission: KeyPermission): boolean => permission.type === 2 || permission.type === (access === 'read' ? 0 : 1);
    return subtract(
      merge(role.permissions.filter(allowed).map((permission) => intervalOf(permission.key, permission.rangeEnd))),
      merge(role.denies.filter(allowed).map((permission) => intervalOf(permission.key, permission.rangeEnd))),
    );
  };
  const read = accessRanges('read');
  const write = accessRanges('write');
  // Split both sets at every boundary, then name each piece READ, WRITE or READWRITE.
  const boundaries = new Map<string, Buffer>();
  for (const interval of [...read, ...write]) {
    boundaries.set(interval.start.toString('hex'), interval.start);
    if (interval.end !== null) boundaries.set(interval.end.toString('hex'), interval.end);
  }
  const points = [...boundaries.values()].sort(Buffer.compare);
  const inside = (set: Interval[], at: Buffer): boolean => set.some((interval) => Buffer.compare(interval.start, at) <= 0 && (interval.end === null || Buffer.compare(at, interval.end) < 0));
  const pieces: EtcdPermission[] = [];
  points.forEach((start, index) => {
    const end = points[index + 1] ?? null;
    const canRead = inside(read, start);
    const canWrite = inside(write, start);
    if (!canRead && !canWrite) return;
    const type = canRead && canWrite ? 2 : canRead ? 0 : 1;
    const previous = pieces[pieces.length - 1];
    if (previous !== undefined && previous.type === type && previous.rangeEnd.equals(start)) {
      pieces[pieces.length - 1] = { ...previous, rangeEnd: end ?? Buffer.of(0) };
    } else {
      pieces.push({ type, key: start, rangeEnd: end ?? Buffer.of(0) });
    }
  });
  return pieces;
}

function merge(intervals: Interval[]): Interval[] {
  const sorted = [...intervals].sort((a, b) => Buffer.compare(a.start, b.start));
  const merged: { start: Buffer; end: Buffer | null }[] = [];
  for (const interval of sorted) {
    const last = merged[merged.length - 1];
    if (last !== undefined && (last.end === null || Buffer.compare(interval.start, last.end) <= 0)) {
      if (last.end !== null && (interval.end === null || Buffer.compare(interval.end, last.end) > 0)) last.end = interval.end;
    } else {
      merged.push({ ...interval });
    }
  }
  return merged;
}

/** `from` less `minus` (both merged and sorted). */
function subtract(from: Interval[], minus: Interval[]): Interval[] {
  let result = from;
  for (const cut of minus) {
    const next: Interval[] = [];
    for (const interval of result) {
      const startsBeforeCut = Buffer.compare(interval.start, cut.start) < 0;
      const endsAfterCut = cut.end !== null && (interval.end === null || Buffer.compare(interval.end, cut.end) > 0);
      const overlaps = (interval.end === null || Buffer.compare(cut.start, interval.end) < 0) && (cut.end === null || Buffer.compare(interval.start, cut.end) < 0);
      if (!overlaps) {
        next.push(interval);
        continue;
      }
      if (startsBeforeCut) next.push({ start: interval.start, end: cut.start });
      if (endsAfterCut && cut.end !== null) next.push({ start: cut.end, end: interval.end });
    }
    result = next;
  }
  return result;
}

function byKeyThenEnd(a: EtcdPermission, b: EtcdPermission): number {
  return Buffer.compare(a.key, b.key) || Buffer.compare(a.rangeEnd, b.rangeEnd);
}
