/**
 * The replicated auth state: users, roles, key-range permissions, certificate bindings, whether
 * auth is enabled, its revision, and the cluster's token signing key. Changed only by applying
 * `AuthChange`s from the log, identically on every member; every check runs before the first change.
 *
 * Semantics follow etcd: the `root` user with the `root` role must exist before auth is enabled, and
 * neither can be removed while it is; every change bumps the auth revision (tokens minted before it
 * are stale); granting a permission for an existing [key, range_end) replaces its type.
 */
import { z } from 'zod';
import { RampartError } from '../errors.js';
import { IntervalSet, grants, intervalOf, rootName, type Access, type Interval, type KeyPermission, type PermissionType } from './permissions.js';

export interface UserRecord {
  readonly name: string;
  /** `scrypt$…` (see password.ts); empty for users without a password. */
  readonly passwordHash: string;
  readonly noPassword: boolean;
  /** Sorted, unique. */
  readonly roles: readonly string[];
}

export interface RoleRecord {
  readonly name: string;
  /** Sorted by key then range_end, as etcd keeps them. */
  readonly permissions: readonly KeyPermission[];
  /** Rampart's explicit denies (policy files only): they win over any grant. */
  readonly denies: readonly KeyPermission[];
}

export interface AuthState {
  readonly enabled: boolean;
  readonly revision: number;
  readonly users: ReadonlyMap<string, UserRecord>;
  readonly roles: ReadonlyMap<string, RoleRecord>;
  /** Client certificate CN → user name (Rampart; without a binding the CN is the user name). */
  readonly bindings: ReadonlyMap<string, string>;
  /**
   * PKCS#8 PEM of the Ed25519 key that signs tokens. Replaced on every auth enable and disable and
   * by the leader on a schedule (rotateSigningKey), so a key read from one disk or snapshot stops
   * minting tokens (members accept the previous key for one token TTL only: see api/identity.ts).
   */
  readonly signingKey: string;
  /** When the leader last rotated the key on schedule (its clock, ms since the epoch); 0 or absent: never. */
  readonly signingKeyRotatedAtMs?: number;
  /**
   * The audit policy in force, as its canonical JSON (audit/policy.ts), the same on every member;
   * absent: the shipped default. Kept here so that it is replicated, snapshotted and sealed at
   * rest with the rest of the auth state; changing it is not an auth change (no revision bump).
   */
  readonly auditPolicy?: string;
  /**
   * The cluster's audit HMAC key (32 random bytes, base64; audit/value-hmac.ts), made at bootstrap
   * or with the first audit policy applied. Never logged, never in an event or an export.
   */
  readonly auditHmacKey?: string;
}

/** The policy part of the state: what `rampart policy apply` replaces as a whole. */
export interface PolicyState {
  readonly users: readonly { readonly name: string; readonly roles: readonly string[] }[];
  readonly roles: readonly RoleRecord[];
  readonly bindings: ReadonlyMap<string, string>;
}

export type AuthChange =
  | { op: 'enable'; signingKey: string }
  /** signingKey: the next key (absent in entries written before keys rotated on disable). */
  | { op: 'disable'; signingKey?: string }
  /** The leader's scheduled key rotation; not an auth change for tokens (no revision bump). */
  | { op: 'rotateSigningKey'; signingKey: string; atMs: number }
  | { op: 'userAdd'; name: string; passwordHash: string; noPassword: boolean }
  | { op: 'userDelete'; name: string }
  | { op: 'userChangePassword'; name: string; passwordHash: string }
  | { op: 'userGrantRole'; user: string; role: string }
  | { op: 'userRevokeRole'; name: string; role: string }
  | { op: 'roleAdd'; name: string }
  | { op: 'roleDelete'; name: string }
  | { op: 'roleGrantPermission'; name: string; permission: KeyPermission }
  | { op: 'roleRevokePermission'; name: string; key: Buffer; rangeEnd: Buffer }
  | { op: 'policyApply'; policy: PolicyState; expectRevision: number }
  /**
   * A new cluster's first auth entry: its policies and auth enabled in one step, so no entry ever
   * sees them applied but auth off. Only on a pristine store (see isPristineAuth); else AuthOldRevision.
   */
  | { op: 'bootstrap'; policy: PolicyState; signingKey: string; auditPolicy?: string; auditHmacKey?: string }
  /**
   * Puts an audit policy (canonical JSON, checked before it is proposed) in force; `hmacKey` becomes
   * the audit HMAC key only when the cluster has none yet (one made before keys existed).
   */
  | { op: 'auditPolicy'; policy: string; hmacKey: string };

export const emptyAuthState: AuthState = { enabled: false, revision: 1, users: new Map(), roles: new Map(), bindings: new Map(), signingKey: '' };

/** Auth never touched since the cluster was created: what a new cluster's bootstrap secures. */
export function isPristineAuth(state: AuthState): boolean {
  return !state.enabled && state.revision === emptyAuthState.revision && state.users.size === 0 && state.roles.size === 0;
}

function comparePermissions(a: KeyPermission, b: KeyPermission): number {
  return Buffer.compare(a.key, b.key) || Buffer.compare(a.rangeEnd, b.rangeEnd);
}

/** Applies one change; throws a RampartError (and changes nothing) when etcd would refuse it. */
export function applyAuthChange(state: AuthState, change: AuthChange): AuthState {
  const users = new Map(state.users);
  const roles = new Map(state.roles);
  const bump = (next: Partial<AuthState>): AuthState => ({ ...state, users, roles, ...next, revision: state.revision + 1 });
  const user = (name: string): UserRecord => {
    const found = users.get(name);
    if (found === undefined) throw new RampartError('UserNotFound');
    return found;
  };
  const role = (name: string): RoleRecord => {
    const found = roles.get(name);
    if (found === undefined) throw new RampartError('RoleNotFound');
    return found;
  };
  switch (change.op) {
    case 'enable': {
      if (state.enabled) return state;
      const root = users.get(rootName);
      if (root === undefined) throw new RampartError('RootUserNotExist');
      if (!root.roles.includes(rootName)) throw new RampartError('RootRoleNotExist');
      // A fresh key with every enable (entries from before keys rotated may carry none: keep the key).
      return bump({ enabled: true, signingKey: change.signingKey !== '' ? change.signingKey : state.signingKey });
    }
    case 'disable':
      if (!state.enabled) return state;
      return bump({ enabled: false, signingKey: change.signingKey !== undefined && change.signingKey !== '' ? change.signingKey : state.signingKey });
    case 'rotateSigningKey':
      if (!state.enabled || change.signingKey === '') return state;
      return { ...state, signingKey: change.signingKey, signingKeyRotatedAtMs: change.atMs };
    case 'userAdd':
      if (change.name === '') throw new RampartError('UserEmpty');
      if (users.has(change.name)) throw new RampartError('UserAlreadyExist');
      users.set(change.name, { name: change.name, passwordHash: change.noPassword ? '' : change.passwordHash, noPassword: change.noPassword, roles: [] });
      return bump({});
    case 'userDelete': {
      if (state.enabled && change.name === rootName) throw new RampartError('InvalidAuthMgmt');
      user(change.name);
      users.delete(change.name);
      const bindings = new Map([...state.bindings].filter(([, bound]) => bound !== change.name));
      return bump({ bindings });
    }
    case 'userChangePassword': {
      const found = user(change.name);
      users.set(change.name, { ...found, passwordHash: change.passwordHash, noPassword: false });
      return bump({});
    }
    case 'userGrantRole': {
      const found = user(change.user);
      if (change.role !== rootName) role(change.role);
      if (found.roles.includes(change.role)) return state; // as etcd: ignored, no new revision
      users.set(change.user, { ...found, roles: [...found.roles, change.role].sort() });
      return bump({});
    }
    case 'userRevokeRole': {
      if (state.enabled && change.name === rootName && change.role === rootName) throw new RampartError('InvalidAuthMgmt');
      const found = user(change.name);
      if (!found.roles.includes(change.role)) throw new RampartError('RoleNotGranted');
      users.set(change.name, { ...found, roles: found.roles.filter((name) => name !== change.role) });
      return bump({});
    }
    case 'roleAdd':
      if (change.name === '') throw new RampartError('RoleEmpty');
      if (roles.has(change.name)) throw new RampartError('RoleAlreadyExist');
      roles.set(change.name, { name: change.name, permissions: [], denies: [] });
      return bump({});
    case 'roleDelete': {
      if (state.enabled && change.name === rootName) throw new RampartError('InvalidAuthMgmt');
      role(change.name);
      roles.delete(change.name);
      for (const [name, found] of users) {
        if (found.roles.includes(change.name)) users.set(name, { ...found, roles: found.roles.filter((granted) => granted !== change.name) });
      }
      return bump({});
    }
    case 'roleGrantPermission': {
      const found = role(change.name);
      const others = found.permissions.filter((permission) => comparePermissions(permission, change.permission) !== 0);
      roles.set(change.name, { ...found, permissions: [...others, change.permission].sort(comparePermissions) });
      return bump({});
    }
    case 'roleRevokePermission': {
      const found = role(change.name);
      const target = { type: 0 as PermissionType, key: change.key, rangeEnd: change.rangeEnd };
      const remaining = found.permissions.filter((permission) => comparePermissions(permission, target) !== 0);
      if (remaining.length === found.permissions.length) throw new RampartError('PermissionNotGranted');
      roles.set(change.name, { ...found, permissions: remaining });
      return bump({});
    }
    case 'policyApply':
      return applyPolicy(state, change.policy, change.expectRevision);
    case 'bootstrap': {
      if (!isPristineAuth(state)) throw new RampartError('AuthOldRevision');
      const secured = applyAuthChange(applyPolicy(state, change.policy, state.revision), { op: 'enable', signingKey: change.signingKey });
      return {
        ...secured,
        ...(change.auditPolicy === undefined ? {} : { auditPolicy: change.auditPolicy }),
        ...(change.auditHmacKey === undefined ? {} : { auditHmacKey: change.auditHmacKey }),
      };
    }
    case 'auditPolicy':
      if (change.policy === state.auditPolicy && state.auditHmacKey !== undefined) return state;
      return { ...state, auditPolicy: change.policy, auditHmacKey: state.auditHmacKey ?? change.hmacKey };
  }
}

function applyPolicy(state: AuthState, policy: PolicyState, expectRevision: number): AuthState {
  if (expectRevision !== 0 && expectRevision !== state.revision) throw new RampartError('AuthOldRevision');
  const roles = new Map(policy.roles.map((role) => [role.name, { ...role, permissions: [...role.permissions].sort(comparePermissions), denies: [...role.denies].sort(comparePermissions) }]));
  for (const wanted of policy.users) {
    if (wanted.name === '') throw new RampartError('UserEmpty');
    for (const name of wanted.roles) {
      if (name !== rootName && !roles.has(name)) throw new RampartError('RoleNotFound');
    }
  }
  const users = usersOfPolicy(state, policy.users);
  for (const bound of policy.bindings.values()) {
    if (!users.has(bound)) throw new RampartError('UserNotFound');
  }
  if (state.enabled && !(users.get(rootName)?.roles.includes(rootName) ?? false)) throw new RampartError('InvalidAuthMgmt');
  const next: AuthState = { ...state, users, roles, bindings: new Map(policy.bindings) };
  if (sameAuth(state, next)) return state;
  return { ...next, revision: state.revision + 1 };
}

/**
 * The users a policy names, over a base state: a user that exists keeps its password (policy files
 * never carry one); a new one has none. Roles sorted and unique.
 */
export function usersOfPolicy(base: AuthState, users: PolicyState['users']): Map<string, UserRecord> {
  return new Map(users.map((user) => {
    const existing = base.users.get(user.name);
    return [user.name, { name: user.name, passwordHash: existing?.passwordHash ?? '', noPassword: existing?.noPassword ?? true, roles: [...new Set(user.roles)].sort() }];
  }));
}

/** Users (names, roles, password state), roles and bindings equal: applying `b` over `a` changes nothing. */
export function sameAuth(a: AuthState, b: AuthState): boolean {
  const passwords = (state: AuthState): string => JSON.stringify([...state.users.values()].map((user) => [user.name, user.passwordHash, user.noPassword]).sort());
  return JSON.stringify(policyOf(a)) === JSON.stringify(policyOf(b)) && passwords(a) === passwords(b);
}

/** The state's policy in a canonical, comparable JSON shape (keys base64). */
export function policyOf(state: AuthState): object {
  return {
    users: [...state.users.values()].sort((a, b) => a.name.localeCompare(b.name)).map((user) => ({ name: user.name, roles: [...user.roles] })),
    roles: [...state.roles.values()].sort((a, b) => a.name.localeCompare(b.name)).map((role) => ({ name: role.name, permissions: role.permissions.map(encodePermission), denies: role.denies.map(encodePermission) })),
    bindings: [...state.bindings].sort(([a], [b]) => a.localeCompare(b)),
  };
}

// ---- decisions ----

interface AccessSets {
  readonly allow: IntervalSet;
  readonly deny: IntervalSet;
}

/** Permission decisions over one state, with each user's merged ranges computed once. */
export class AuthDecider {
  private readonly cache = new Map<string, Record<Access, AccessSets>>();

  constructor(readonly state: AuthState) {}

  isAdmin(userName: string): boolean {
    return this.state.users.get(userName)?.roles.includes(rootName) ?? false;
  }

  /** Whether `userName` may `access` every key of [key, range_end) (etcd's conventions for range_end). */
  isPermitted(userName: string, key: Buffer, rangeEnd: Buffer, access: Access): boolean {
    if (!this.state.enabled) return true;
    const user = this.state.users.get(userName);
    if (user === undefined) return false;
    if (user.roles.includes(rootName)) return true;
    const sets = this.setsFor(user)[access];
    const range: Interval = intervalOf(key, rangeEnd);
    return sets.allow.covers(range) && !sets.deny.intersects(range);
  }

  private setsFor(user: UserRecord): Record<Access, AccessSets> {
    const cached = this.cache.get(user.name);
    if (cached !== undefined) return cached;
    const roles = user.roles.map((name) => this.state.roles.get(name)).filter((role) => role !== undefined);
    const build = (access: Access): AccessSets => ({
      allow: new IntervalSet(roles.flatMap((role) => role.permissions.filter((entry) => grants(entry.type, access)).map((entry) => intervalOf(entry.key, entry.rangeEnd)))),
      deny: new IntervalSet(roles.flatMap((role) => role.denies.filter((entry) => grants(entry.type, access)).map((entry) => intervalOf(entry.key, entry.rangeEnd)))),
    });
    const sets = { read: build('read'), write: build('write') };
    this.cache.set(user.name, sets);
    return sets;
  }
}

// ---- persistence (one JSON record; keys and ranges base64) ----

/** A permission in JSON: its key and range end in base64. */
export interface EncodedPermission { type: PermissionType; key: string; rangeEnd: string }

export function encodePermission(entry: KeyPermission): EncodedPermission {
  return { type: entry.type, key: entry.key.toString('base64'), rangeEnd: entry.rangeEnd.toString('base64') };
}

export function decodePermission(entry: EncodedPermission): KeyPermission {
  if (![0, 1, 2].includes(entry.type)) throw new Error('bad permission type');
  return { type: entry.type, key: Buffer.from(entry.key, 'base64'), rangeEnd: Buffer.from(entry.rangeEnd, 'base64') };
}

export function encodeAuthState(state: AuthState): Buffer {
  return Buffer.from(JSON.stringify({
    enabled: state.enabled,
    revision: state.revision,
    users: [...state.users.values()],
    roles: [...state.roles.values()].map((role) => ({ name: role.name, permissions: role.permissions.map(encodePermission), denies: role.denies.map(encodePermission) })),
    bindings: [...state.bindings],
    signingKey: state.signingKey,
    ...(state.signingKeyRotatedAtMs === undefined ? {} : { signingKeyRotatedAtMs: state.signingKeyRotatedAtMs }),
    ...(state.auditPolicy === undefined ? {} : { auditPolicy: state.auditPolicy }),
    ...(state.auditHmacKey === undefined ? {} : { auditHmacKey: state.auditHmacKey }),
  }));
}

export function decodeAuthState(data: Buffer): AuthState {
  const raw = JSON.parse(data.toString('utf8')) as {
    enabled: boolean; revision: number; users: UserRecord[]; signingKey: string; signingKeyRotatedAtMs?: number; bindings: [string, string][];
    auditPolicy?: string; auditHmacKey?: string;
    roles: { name: string; permissions: EncodedPermission[]; denies: EncodedPermission[] }[];
  };
  return {
    enabled: raw.enabled,
    revision: raw.revision,
    users: new Map(raw.users.map((user) => [user.name, user])),
    roles: new Map(raw.roles.map((role) => [role.name, { name: role.name, permissions: role.permissions.map(decodePermission), denies: role.denies.map(decodePermission) }])),
    bindings: new Map(raw.bindings),
    signingKey: raw.signingKey,
    ...(raw.signingKeyRotatedAtMs === undefined ? {} : { signingKeyRotatedAtMs: raw.signingKeyRotatedAtMs }),
    ...(raw.auditPolicy === undefined ? {} : { auditPolicy: raw.auditPolicy }),
    ...(raw.auditHmacKey === undefined ? {} : { auditHmacKey: raw.auditHmacKey }),
  };
}

// ---- log encoding of changes ----

export function encodeAuthChange(change: AuthChange): string {
  return JSON.stringify(change, (_key, value: unknown) => {
    if (value instanceof Map) return { $map: [...(value as Map<unknown, unknown>)] };
    if (typeof value === 'object' && value !== null && (value as { type?: string }).type === 'Buffer' && Array.isArray((value as { data?: unknown }).data)) {
      return { $b64: Buffer.from((value as { data: number[] }).data).toString('base64') };
    }
    return value;
  });
}

/**
 * A committed auth change whose JSON is not an AuthChange: an unknown op, a field missing or of
 * the wrong type (a number where a string belongs, an array of non-strings, a permission range
 * that is no Buffer). Only a crafted entry has one; decoding it throws this on every member alike,
 * so every member skips the entry (committed-proposal.ts). The message names the field, never its value.
 */
export class MalformedAuthChangeError extends TypeError {
  override readonly name = 'MalformedAuthChangeError';
}

const text = z.string();
const buffer = z.custom<Buffer>((value) => Buffer.isBuffer(value), 'expected a Buffer');
const keyPermission = z.object({ type: z.union([z.literal(0), z.literal(1), z.literal(2)]), key: buffer, rangeEnd: buffer });
const policyState = z.object({
  users: z.array(z.object({ name: text, roles: z.array(text) })),
  roles: z.array(z.object({ name: text, permissions: z.array(keyPermission), denies: z.array(keyPermission) })),
  bindings: z.map(text, text),
});
/**
 * Every AuthChange, field by field: what applyAuthChange reads and the state stores. Fields it does
 * not know are dropped (they were never read); the optional ones are those older entries lack.
 */
const authChangeSchema = z.discriminatedUnion('op', [
  z.object({ op: z.literal('enable'), signingKey: text }),
  z.object({ op: z.literal('disable'), signingKey: text.exactOptional() }),
  z.object({ op: z.literal('rotateSigningKey'), signingKey: text, atMs: z.int() }),
  z.object({ op: z.literal('userAdd'), name: text, passwordHash: text, noPassword: z.boolean() }),
  z.object({ op: z.literal('userDelete'), name: text }),
  z.object({ op: z.literal('userChangePassword'), name: text, passwordHash: text }),
  z.object({ op: z.literal('userGrantRole'), user: text, role: text }),
  z.object({ op: z.literal('userRevokeRole'), name: text, role: text }),
  z.object({ op: z.literal('roleAdd'), name: text }),
  z.object({ op: z.literal('roleDelete'), name: text }),
  z.object({ op: z.literal('roleGrantPermission'), name: text, permission: keyPermission }),
  z.object({ op: z.literal('roleRevokePermission'), name: text, key: buffer, rangeEnd: buffer }),
  z.object({ op: z.literal('policyApply'), policy: policyState, expectRevision: z.int() }),
  z.object({ op: z.literal('bootstrap'), policy: policyState, signingKey: text, auditPolicy: text.exactOptional(), auditHmacKey: text.exactOptional() }),
  z.object({ op: z.literal('auditPolicy'), policy: text, hmacKey: text }),
]);

/**
 * An auth change from the log, checked field by field against its op: anything else throws a
 * MalformedAuthChangeError (or the SyntaxError of text that is not JSON), the same on every member.
 */
export function decodeAuthChange(encoded: string): AuthChange {
  const raw: unknown = JSON.parse(encoded, (_key, value: unknown) => {
    if (typeof value === 'object' && value !== null) {
      if ('$b64' in value) {
        // A string only: Buffer.from({ length: 2 ** 30 }) would allocate a GiB for 20 bytes of JSON.
        const base64: unknown = value.$b64;
        if (typeof base64 !== 'string') throw new MalformedAuthChangeError('auth change: $b64 is not a string');
        return Buffer.from(base64, 'base64');
      }
      if ('$map' in value) {
        const entries: unknown = value.$map;
        if (!Array.isArray(entries) || !entries.every((entry) => Array.isArray(entry) && entry.length === 2)) throw new MalformedAuthChangeError('auth change: $map is not a list of pairs');
        return new Map(entries as [unknown, unknown][]);
      }
    }
    return value;
  });
  const parsed = authChangeSchema.safeParse(raw);
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    const where = issue === undefined || issue.path.length === 0 ? 'the change' : issue.path.map(String).join('.');
    throw new MalformedAuthChangeError(`auth change: ${where}: ${issue?.code ?? 'invalid'}`);
  }
  return parsed.data;
}

/** A member's current auth state and the decider over it (rebuilt on each change). */
export class AuthHolder {
  private deciderValue = new AuthDecider(emptyAuthState);

  get state(): AuthState {
    return this.deciderValue.state;
  }

  get decider(): AuthDecider {
    return this.deciderValue;
  }

  set(state: AuthState): void {
    if (state !== this.deciderValue.state) this.deciderValue = new AuthDecider(state);
  }
}
