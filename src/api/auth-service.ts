/**
 * etcd's Auth service. Every change goes through the log as one auth change (src/auth/store.ts);
 * reads answer from the member's state after a read barrier. While auth is enabled, everything but
 * AuthStatus and Authenticate needs root — checked here and again when the change is applied.
 */
import { RampartError } from '../errors.js';
import { checkCaller, requireAdmin } from '../server/authorize.js';
import { hashPassword } from '../auth/password.js';
import { newSigningKey } from '../auth/token.js';
import { checkName } from '../auth/names.js';
import { type PermissionType } from '../auth/permissions.js';
import type { AuthChange } from '../auth/store.js';
import type { Caller } from './messages.js';
import type { CallContext, Rpc } from './rpc.js';
import type { ServiceKit } from './services.js';

interface PermissionMessage {
  permType: number;
  key: Buffer;
  range_end: Buffer;
}

export function serveAuth({ member, authenticator, who, unary }: ServiceKit): Record<string, Rpc> {
  const header = (): object => ({ header: member.header() });
  /** Proposes an auth change as the caller (identified here unless the handler already did). */
  const change = async (call: CallContext, body: AuthChange, caller?: Caller): Promise<object> => {
    await member.authChange(body, caller ?? (await who(call)));
    return header();
  };
  /**
   * Reads of users and roles: root only while auth is on — except, as etcd, a user reading itself
   * or a role it holds — and current as of a read barrier.
   */
  const read = async (call: CallContext, allowed: (caller: Caller) => boolean = () => false): Promise<void> => {
    const caller = await who(call);
    checkCaller(member.auth.decider, caller);
    try {
      requireAdmin(member.auth.decider, caller);
    } catch (error) {
      if (caller.user === '' || !member.auth.state.users.has(caller.user) || !allowed(caller)) throw error;
    }
    await member.readBarrier();
  };
  const password = async (caller: Caller, request: { password: string; hashedPassword: string }): Promise<string> => {
    if (request.hashedPassword !== '') throw new RampartError('PasswordPreHashed');
    if (request.password === '') throw new RampartError('PasswordEmpty');
    // Root check before the expensive hash: nobody else gets to make this member spend CPU.
    requireAdmin(member.auth.decider, caller);
    return hashPassword(request.password);
  };

  return {
    AuthEnable: unary('AuthEnable', (_request: object, call) =>
      change(call, { op: 'enable', signingKey: newSigningKey() })),
    AuthDisable: unary('AuthDisable', (_request: object, call) => change(call, { op: 'disable', signingKey: newSigningKey() })),
    AuthStatus: unary('AuthStatus', async () => {
      await member.readBarrier();
      return { ...header(), enabled: member.auth.state.enabled, authRevision: member.auth.state.revision };
    }),
    Authenticate: unary('Authenticate', async (request: { name: string; password: string }, call) => {
      authenticator.admit(call.peer);
      await member.readBarrier();
      const token = await authenticator.authenticate(request.name, request.password, call.peer, call.certificate?.fingerprint256);
      return { ...header(), token };
    }),
    UserAdd: unary('UserAdd', async (request: { name: string; password: string; hashedPassword: string; options?: { no_password: boolean } | null }, call) => {
      if (request.name === '') throw new RampartError('UserEmpty');
      checkName(request.name);
      const noPassword = request.options?.no_password ?? false;
      const caller = await who(call);
      const passwordHash = noPassword ? '' : await password(caller, request);
      return change(call, { op: 'userAdd', name: request.name, passwordHash, noPassword }, caller);
    }),
    UserGet: unary('UserGet', async (request: { name: string }, call) => {
      await read(call, (caller) => caller.user === request.name);
      const user = member.auth.state.users.get(request.name);
      if (user === undefined) throw new RampartError('UserNotFound');
      return { ...header(), roles: [...user.roles] };
    }),
    UserList: unary('UserList', async (_request: object, call) => {
      await read(call);
      return { ...header(), users: [...member.auth.state.users.keys()].sort() };
    }),
    UserDelete: unary('UserDelete', (request: { name: string }, call) => change(call, { op: 'userDelete', name: request.name })),
    UserChangePassword: unary('UserChangePassword', async (request: { name: string; password: string; hashedPassword: string }, call) => {
      // As etcd: a caller without permission is refused before anything tells whether the user exists.
      const caller = await who(call);
      requireAdmin(member.auth.decider, caller);
      if (!member.auth.state.users.has(request.name)) throw new RampartError('UserNotFound');
      return change(call, { op: 'userChangePassword', name: request.name, passwordHash: await password(caller, request) }, caller);
    }),
    UserGrantRole: unary('UserGrantRole', (request: { user: string; role: string }, call) => change(call, { op: 'userGrantRole', user: request.user, role: request.role })),
    UserRevokeRole: unary('UserRevokeRole', (request: { name: string; role: string }, call) => change(call, { op: 'userRevokeRole', name: request.name, role: request.role })),
    RoleAdd: unary('RoleAdd', (request: { name: string }, call) => {
      checkName(request.name);
      return change(call, { op: 'roleAdd', name: request.name });
    }),
    RoleGet: unary('RoleGet', async (request: { role: string }, call) => {
      await read(call, (caller) => member.auth.state.users.get(caller.user)?.roles.includes(request.role) ?? false);
      const role = member.auth.state.roles.get(request.role);
      if (role === undefined) throw new RampartError('RoleNotFound');
      const perm: PermissionMessage[] = role.permissions.map((entry) => ({ permType: entry.type, key: entry.key, range_end: entry.rangeEnd }));
      return { ...header(), perm };
    }),
    RoleList: unary('RoleList', async (_request: object, call) => {
      await read(call);
      return { ...header(), roles: [...member.auth.state.roles.keys()].sort() };
    }),
    RoleDelete: unary('RoleDelete', (request: { role: string }, call) => change(call, { op: 'roleDelete', name: request.role })),
    RoleGrantPermission: unary('RoleGrantPermission', (request: { name: string; perm?: PermissionMessage | null }, call) => {
      const perm = request.perm;
      if (perm === undefined || perm === null) throw new RampartError('PermissionNotGiven');
      if (![0, 1, 2].includes(perm.permType)) throw new RampartError('InvalidArgument', 'unknown permission type');
      return change(call, { op: 'roleGrantPermission', name: request.name, permission: { type: perm.permType as PermissionType, key: Buffer.from(perm.key), rangeEnd: Buffer.from(perm.range_end) } });
    }),
    RoleRevokePermission: unary('RoleRevokePermission', (request: { role: string; key: Buffer; range_end: Buffer }, call) =>
      change(call, { op: 'roleRevokePermission', name: request.role, key: Buffer.from(request.key), rangeEnd: Buffer.from(request.range_end) })),
  };
}

