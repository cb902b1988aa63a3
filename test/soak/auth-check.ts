/**
 * The soak's auth check: permission and password changes while faults hit a secure cluster.
 *
 * A probe user (its client certificate's CN, `soak-auth`) whose role has readwrite on `auth/` keeps
 * putting and reading `auth/k` through any member. The nemesis revokes that permission, holds it
 * revoked 1-3 s and grants it back, retrying each change until it is acknowledged; it also changes
 * the password of a second user. Checked:
 * - granted access is never refused: a request refused with "permission denied" must overlap a
 *   revocation window, from the first revoke sent to the grant acknowledged;
 * - revoked access is refused once the revoke is acknowledged: a request asked after that and
 *   answered before the grant was sent must not succeed (etcd checks permissions when it applies a
 *   write and after a linearizable read's barrier, so no member may still allow it);
 * - a changed password: once the change is acknowledged, the old password fails and the new works
 *   (Authenticate waits for a read barrier first).
 * Each check can fail: RAMPART_SOAK_SELF_TEST=skip-restore never grants back (requests are then
 * refused outside any window), skip-revoke never revokes (requests then succeed inside one).
 */
import * as grpc from '@grpc/grpc-js';
import { call, type RawClient } from '../helpers/client.js';
import type { AuthClient } from './secure-cluster.js';

export const probeUser = 'soak-auth';
const probeRole = 'soak-auth';
const passwordUser = 'soak-password';
const probePrefix = 'auth/';
const probeRangeEnd = 'auth0';
/** etcd's permission type READWRITE. */
const readWrite = 2;
const changeDeadlineMs = 5000;
const changeTriesMax = 60;

const now = (): number => performance.now();
const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

export interface ProbeOperation {
  readonly kind: 'put' | 'get';
  readonly callMs: number;
  readonly returnMs: number;
  readonly outcome: 'allowed' | 'denied' | 'failed';
  readonly via: string;
}

export interface Revocation {
  readonly revokeSent: number;
  revokeAcknowledged: number;
  grantSent: number;
  grantAcknowledged: number;
}

export type SelfTest = 'skip-restore' | 'skip-revoke' | undefined;

function authCall(client: AuthClient, method: string, request: object): Promise<Record<string, unknown>> {
  return new Promise((resolve, reject) => {
    const fn = client[method];
    if (fn === undefined) {
      reject(new Error(`no method ${method}`));
      return;
    }
    fn.call(client, request, { deadline: Date.now() + changeDeadlineMs }, (error, response) => (error === null ? resolve(response) : reject(error)));
  });
}

/** Retries an auth change until it is acknowledged (`done`: an error saying an earlier try applied). */
async function changeAuth(admins: () => AuthClient, method: string, request: object, done?: RegExp): Promise<void> {
  for (let tries = 0; ; tries++) {
    try {
      await authCall(admins(), method, request);
      return;
    } catch (error) {
      if (done !== undefined && done.test((error as grpc.ServiceError).details ?? '')) return;
      if (tries >= changeTriesMax) throw new Error(`auth ${method} kept failing: ${String(error)}`);
      await sleep(300);
    }
  }
}

/** Waits until the members have enabled auth themselves (the bootstrap, as on a new `rampart up` cluster). */
export async function awaitAuthEnabled(admins: () => AuthClient, timeoutMs: number): Promise<void> {
  const deadline = now() + timeoutMs;
  for (;;) {
    const status = await authCall(admins(), 'AuthStatus', {}).catch(() => undefined);
    if (status?.enabled === true) return;
    if (now() > deadline) throw new Error(`auth was not enabled within ${timeoutMs} ms`);
    await sleep(300);
  }
}

/** A certificate user (no password) whose role `role` has readwrite on [from, to). */
export async function ensureUser(admins: () => AuthClient, user: string, role: string, from: string, to: string): Promise<void> {
  await changeAuth(admins, 'RoleAdd', { name: role }, /already exists/);
  await changeAuth(admins, 'RoleGrantPermission', { name: role, perm: { permType: readWrite, key: Buffer.from(from), range_end: Buffer.from(to) } });
  await changeAuth(admins, 'UserAdd', { name: user, options: { no_password: true } }, /already exists/);
  await changeAuth(admins, 'UserGrantRole', { user, role });
}

export class AuthProbe {
  private readonly operations: ProbeOperation[] = [];
  private readonly revocations: Revocation[] = [];
  /** Problems found as they happened (password checks); the windows are checked at the end. */
  private readonly found: { ms: number; text: string }[] = [];
  private password = 'soak-password-0';
  counts = { revocations: 0, passwordChanges: 0, allowed: 0, denied: 0, failed: 0 };

  constructor(
    /** Root Auth clients, one per member. */
    private readonly admins: () => AuthClient,
    /** The probe user's clients and the member each talks to. */
    private readonly probes: () => { client: RawClient; name: string },
    private readonly selfTest: SelfTest,
  ) {}

  /** Creates the probe user and role and the password user (as root; auth is already on). */
  async setup(): Promise<void> {
    await ensureUser(this.admins, probeUser, probeRole, probePrefix, probeRangeEnd);
    await this.change('UserAdd', { name: passwordUser, password: this.password }, /already exists/);
  }

  private change(method: string, request: object, done?: RegExp): Promise<void> {
    return changeAuth(this.admins, method, request, done);
  }

  /** The probe's workload: puts and linearizable reads of its key, until `running` turns false. */
  async run(running: () => boolean): Promise<void> {
    let sequence = 0;
    while (running()) {
      const { client, name } = this.probes();
      const kind = sequence % 2 === 0 ? 'put' : 'get';
      const callMs = now();
      const key = Buffer.from(`${probePrefix}k`);
      let outcome: ProbeOperation['outcome'] = 'allowed';
      try {
        const request = kind === 'put' ? call(client.kv, 'Put', { key, value: Buffer.from(String(sequence)) }) : call(client.kv, 'Range', { key });
        await Promise.race([request, sleep(3000).then(() => Promise.reject(new Error('client deadline')))]);
      } catch (error) {
        outcome = (error as grpc.ServiceError).code === grpc.status.PERMISSION_DENIED ? 'denied' : 'failed';
      }
      sequence += 1;
      this.counts[outcome] += 1;
      this.operations.push({ kind, callMs, returnMs: now(), outcome, via: name });
      await sleep(outcome === 'failed' ? 100 : 20);
    }
  }

  /** One revocation of the probe's permission (held `holdMs`) and one password change. */
  async revokeAndRestore(holdMs: number, event: (text: string) => void): Promise<void> {
    const revocation: Revocation = { revokeSent: now(), revokeAcknowledged: Infinity, grantSent: Infinity, grantAcknowledged: Infinity };
    this.revocations.push(revocation);
    if (this.selfTest !== 'skip-revoke') await this.change('RoleRevokePermission', { role: probeRole, key: Buffer.from(probePrefix), range_end: Buffer.from(probeRangeEnd) }, /not granted/);
    revocation.revokeAcknowledged = now();
    event(`auth: revoked ${probeRole} readwrite on ${probePrefix} (acknowledged after ${Math.round(revocation.revokeAcknowledged - revocation.revokeSent)} ms)`);
    this.counts.revocations += 1;
    await sleep(holdMs);
    revocation.grantSent = now();
    if (this.selfTest !== 'skip-restore') await this.change('RoleGrantPermission', { name: probeRole, perm: { permType: readWrite, key: Buffer.from(probePrefix), range_end: Buffer.from(probeRangeEnd) } });
    revocation.grantAcknowledged = now();
    event(`auth: granted ${probeRole} readwrite on ${probePrefix} back (acknowledged after ${Math.round(revocation.grantAcknowledged - revocation.grantSent)} ms)`);

    const old = this.password;
    const next = `soak-password-${this.counts.passwordChanges + 1}`;
    await this.change('UserChangePassword', { name: passwordUser, password: next });
    this.password = next;
    this.counts.passwordChanges += 1;
    const changed = now();
    if ((await this.authenticate(old)) === 'accepted') this.found.push({ ms: changed, text: `auth: user ${passwordUser}'s old password still accepted after the change to it was acknowledged` });
    if ((await this.authenticate(next)) === 'refused') this.found.push({ ms: changed, text: `auth: user ${passwordUser}'s new password refused after the change to it was acknowledged` });
  }

  /** Authenticate's verdict, retried past failures that say nothing (no leader, a member down). */
  private async authenticate(password: string): Promise<'accepted' | 'refused' | 'unknown'> {
    for (let tries = 0; tries < 30; tries++) {
      try {
        await authCall(this.admins(), 'Authenticate', { name: passwordUser, password });
        return 'accepted';
      } catch (error) {
        if (/authentication failed/.test((error as grpc.ServiceError).details ?? '')) return 'refused';
        await sleep(300);
      }
    }
    return 'unknown';
  }

  /** Anomalies (with when they happened): the rules in the header. */
  check(at: (ms: number) => string): { ms: number; text: string }[] {
    return [...this.found, ...probeAnomalies(this.operations, this.revocations, at)];
  }
}

/** The probe's requests against the revocations: refused outside every window, or allowed inside one after its acknowledgement. */
export function probeAnomalies(operations: readonly ProbeOperation[], revocations: readonly Revocation[], at: (ms: number) => string): { ms: number; text: string }[] {
  const problems: { ms: number; text: string }[] = [];
  const describe = (operation: ProbeOperation): string => `${operation.kind} via ${operation.via} asked ${at(operation.callMs)}, answered ${at(operation.returnMs)}`;
  const window = (entry: Revocation): string => `[revoke sent ${at(entry.revokeSent)}, acknowledged ${at(entry.revokeAcknowledged)}; grant sent ${at(entry.grantSent)}, acknowledged ${at(entry.grantAcknowledged)}]`;
  for (const operation of operations) {
    if (operation.outcome === 'denied') {
      const explained = revocations.some((entry) => operation.returnMs >= entry.revokeSent && operation.callMs <= entry.grantAcknowledged);
      if (!explained) problems.push({ ms: operation.callMs, text: `auth: ${probeUser} refused access it was granted: ${describe(operation)}; no revocation overlaps it` });
    } else if (operation.outcome === 'allowed') {
      const revoked = revocations.find((entry) => operation.callMs > entry.revokeAcknowledged && operation.returnMs < entry.grantSent);
      if (revoked !== undefined) problems.push({ ms: operation.callMs, text: `auth: ${probeUser} allowed after its permission's revocation was acknowledged: ${describe(operation)}; revocation ${window(revoked)}` });
    }
  }
  return problems;
}
