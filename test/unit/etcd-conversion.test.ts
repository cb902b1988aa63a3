/**
 * Rampart auth state → etcd: what etcd can express is kept exactly; a role's own denies become
 * holes in its grants; a deny that only another role's grant would undo refuses the export.
 */
import { describe, expect, it } from 'vitest';
import { etcdFromRecords, recordsFromEtcd } from '../../src/cli/etcd-conversion.js';
import { decodeAuthState, emptyAuthState, encodeAuthState, type AuthState, type RoleRecord, type UserRecord } from '../../src/auth/store.js';
import { authStateKey } from '../../src/storage/schema.js';
import type { KeyPermission } from '../../src/auth/permissions.js';

const permission = (type: 0 | 1 | 2, key: string, rangeEnd: string): KeyPermission => ({ type, key: Buffer.from(key), rangeEnd: Buffer.from(rangeEnd) });
const everything = (type: 0 | 1 | 2): KeyPermission => ({ type, key: Buffer.alloc(0), rangeEnd: Buffer.of(0) });

function state(roles: RoleRecord[], users: UserRecord[]): AuthState {
  return { ...emptyAuthState, enabled: true, revision: 5, roles: new Map(roles.map((role) => [role.name, role])), users: new Map(users.map((user) => [user.name, user])) };
}

const user = (name: string, roles: string[], passwordHash = ''): UserRecord => ({ name, passwordHash, noPassword: passwordHash === '', roles });
const printable = (permissions: readonly { type: number; key: Buffer; rangeEnd: Buffer }[]): string[] =>
  permissions.map((entry) => `${entry.type} [${entry.key.toString('latin1')}, ${entry.rangeEnd.toString('latin1').replace('\0', '\\0')})`);

describe('auth state to etcd and back', () => {
  it('turns the shipped auditor role (read all, deny read /registry/secrets/) into two read ranges', () => {
    const auditor: RoleRecord = { name: 'auditor', permissions: [everything(0)], denies: [permission(0, '/registry/secrets/', '/registry/secrets0')] };
    const exported = etcdFromRecords([[authStateKey, encodeAuthState(state([auditor], [user('auditor', ['auditor'])]))]]);
    expect(printable(exported.roles[0]?.permissions ?? [])).toEqual(['0 [, /registry/secrets/)', '0 [/registry/secrets0, \\0)']);
  });

  it('keeps what a deny leaves of a readwrite grant as READ, WRITE and READWRITE pieces', () => {
    const role: RoleRecord = { name: 'app', permissions: [permission(2, '/app/', '/app0')], denies: [permission(1, '/app/config/', '/app/config0')] };
    const exported = etcdFromRecords([[authStateKey, encodeAuthState(state([role], []))]]);
    expect(printable(exported.roles[0]?.permissions ?? [])).toEqual(['2 [/app/, /app/config/)', '0 [/app/config/, /app/config0)', '2 [/app/config0, /app0)']);
  });

  it('refuses a user whose other role grants what a deny withholds', () => {
    const auditor: RoleRecord = { name: 'auditor', permissions: [everything(0)], denies: [permission(0, '/registry/secrets/', '/registry/secrets0')] };
    const reader: RoleRecord = { name: 'reader', permissions: [permission(0, '/registry/', '/registry0')], denies: [] };
    const records = [[authStateKey, encodeAuthState(state([auditor, reader], [user('mixed', ['auditor', 'reader'])]))]] as const;
    expect(() => etcdFromRecords(records)).toThrow(/user "mixed": role "reader" grants keys that role "auditor" denies/);
  });

  it('carries etcd bcrypt hashes both ways and drops Rampart scrypt hashes etcd cannot check', () => {
    const bcryptHash = `$2a$10$${'a'.repeat(53)}`;
    const exported = etcdFromRecords([[authStateKey, encodeAuthState(state([], [user('etcd-user', [], bcryptHash), user('rampart-user', [], 'scrypt$32768$8$1$c2FsdA==$aGFzaA==')]))]]);
    expect(exported.users.map((entry) => [entry.name, entry.password])).toEqual([['etcd-user', bcryptHash], ['rampart-user', '']]);
    const back = recordsFromEtcd(exported).find(([key]) => key.equals(authStateKey));
    const restored = decodeAuthState(back?.[1] ?? Buffer.alloc(0));
    expect(restored.users.get('etcd-user')?.passwordHash).toBe(bcryptHash);
    expect(restored.enabled).toBe(true);
    expect(restored.revision).toBe(5);
    expect(restored.signingKey).toContain('PRIVATE KEY');
  });
});
