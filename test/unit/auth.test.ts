import { createPrivateKey } from 'node:crypto';
import { SignJWT } from 'jose';
import { describe, expect, it, vi } from 'vitest';
import type { RampartError } from '../../src/errors.js';
import { LoginLimiter } from '../../src/auth/limiter.js';
import { hashPassword, verifyPassword } from '../../src/auth/password.js';
import { TokenSigner, newSigningKey, verifiedTokensMax } from '../../src/auth/token.js';
import { checkCaller } from '../../src/server/authorize.js';
import { applyAuthChange, decodeAuthChange, decodeAuthState, emptyAuthState, encodeAuthChange, encodeAuthState, type AuthChange, type AuthState } from '../../src/auth/store.js';
import { exportPolicy, parsePolicy, policyStateOf, stateWithPolicy, describePermission, prefixRangeEnd } from '../../src/auth/policy.js';

const apply = (state: AuthState, ...changes: AuthChange[]): AuthState => changes.reduce(applyAuthChange, state);
const refusal = (state: AuthState, change: AuthChange): string => {
  try {
    applyAuthChange(state, change);
    return 'accepted';
  } catch (error) {
    return (error as RampartError).code;
  }
};

describe('auth state changes', () => {
  const base = apply(emptyAuthState,
    { op: 'userAdd', name: 'root', passwordHash: 'h', noPassword: false },
    { op: 'roleAdd', name: 'app' },
    { op: 'userAdd', name: 'alice', passwordHash: '', noPassword: true },
    { op: 'userGrantRole', user: 'alice', role: 'app' });

  it('follows etcd: root needs the root role before enabling, and stays while enabled', () => {
    expect(refusal(emptyAuthState, { op: 'enable', signingKey: 'k' })).toBe('RootUserNotExist');
    expect(refusal(base, { op: 'enable', signingKey: 'k' })).toBe('RootRoleNotExist');
    const enabled = apply(base, { op: 'userGrantRole', user: 'root', role: 'root' }, { op: 'enable', signingKey: 'k' });
    expect(enabled.enabled).toBe(true);
    expect(enabled.signingKey).toBe('k');
    expect(refusal(enabled, { op: 'userDelete', name: 'root' })).toBe('InvalidAuthMgmt');
    expect(refusal(enabled, { op: 'userRevokeRole', name: 'root', role: 'root' })).toBe('InvalidAuthMgmt');
    expect(applyAuthChange(enabled, { op: 'enable', signingKey: 'other' })).toBe(enabled);
  });

  it('refuses with etcd errors and changes nothing; every change bumps the revision', () => {
    expect(refusal(base, { op: 'userAdd', name: 'alice', passwordHash: '', noPassword: true })).toBe('UserAlreadyExist');
    expect(refusal(base, { op: 'userAdd', name: '', passwordHash: '', noPassword: true })).toBe('UserEmpty');
    expect(refusal(base, { op: 'roleAdd', name: '' })).toBe('RoleEmpty');
    expect(refusal(base, { op: 'userGrantRole', user: 'alice', role: 'ghost' })).toBe('RoleNotFound');
    expect(refusal(base, { op: 'userRevokeRole', name: 'alice', role: 'other' })).toBe('RoleNotGranted');
    expect(refusal(base, { op: 'roleRevokePermission', name: 'app', key: Buffer.from('k'), rangeEnd: Buffer.alloc(0) })).toBe('PermissionNotGranted');
    expect(refusal(base, { op: 'userDelete', name: 'ghost' })).toBe('UserNotFound');
    const granted = apply(base, { op: 'roleGrantPermission', name: 'app', permission: { type: 0, key: Buffer.from('b'), rangeEnd: Buffer.alloc(0) } },
      { op: 'roleGrantPermission', name: 'app', permission: { type: 0, key: Buffer.from('a'), rangeEnd: Buffer.alloc(0) } },
      { op: 'roleGrantPermission', name: 'app', permission: { type: 2, key: Buffer.from('b'), rangeEnd: Buffer.alloc(0) } });
    expect(granted.roles.get('app')?.permissions.map((entry) => [entry.key.toString(), entry.type])).toEqual([['a', 0], ['b', 2]]);
    expect(granted.revision).toBe(base.revision + 3);
    const deleted = apply(granted, { op: 'roleDelete', name: 'app' });
    expect(deleted.users.get('alice')?.roles).toEqual([]);
  });

  it('survives its encodings: the stored record and the log entry', () => {
    const state = apply(base, { op: 'roleGrantPermission', name: 'app', permission: { type: 1, key: Buffer.from([0, 255]), rangeEnd: Buffer.of(0) } });
    expect(decodeAuthState(encodeAuthState(state))).toEqual(state);
    const change: AuthChange = { op: 'policyApply', policy: policyStateOf(state), expectRevision: 7 };
    expect(decodeAuthChange(encodeAuthChange(change))).toEqual(change);
  });

  it('applies the same policy twice as one change, then as none', () => {
    const policy = parsePolicy([{ file: 'p.yaml', text: 'users:\n  - { name: root, roles: [root] }\n  - { name: alice, roles: [app], certificates: [alice-cert] }\nroles:\n  - { name: root }\n  - name: app\n    grants: [{ prefix: /app/, access: readwrite }]\n' }]);
    const once = applyAuthChange(base, { op: 'policyApply', policy: policy.state, expectRevision: base.revision });
    expect(once.revision).toBe(base.revision + 1);
    expect(applyAuthChange(once, { op: 'policyApply', policy: policy.state, expectRevision: 0 })).toBe(once);
    expect(refusal(once, { op: 'policyApply', policy: policy.state, expectRevision: base.revision })).toBe('AuthOldRevision');
    expect(once.users.get('root')?.passwordHash).toBe('h');
    expect(once.bindings.get('alice-cert')).toBe('alice');
  });
});

describe('policy files', () => {
  it('round-trips through export', () => {
    const text = 'users:\n  - { name: u, roles: [r] }\nroles:\n  - name: r\n    grants:\n      - { key: /k, access: read }\n      - { prefix: /p/, access: write }\n      - { fromKey: /f, access: readwrite }\n      - { from: /a, to: /b, access: read }\n      - { prefix: "", access: read }\n    deny:\n      - { prefix: /p/x/, access: write }\n';
    const first = parsePolicy([{ file: 'a.yaml', text }]);
    const second = parsePolicy([{ file: 'b.yaml', text: exportPolicy(first.state) }]);
    expect(stateWithPolicy(emptyAuthState, second.state)).toEqual(stateWithPolicy(emptyAuthState, first.state));
  });

  it('computes prefix ends as etcd does', () => {
    expect(prefixRangeEnd(Buffer.from('abc'))).toEqual(Buffer.from('abd'));
    expect(prefixRangeEnd(Buffer.from([0x61, 0xff]))).toEqual(Buffer.from('b'));
    expect(prefixRangeEnd(Buffer.from([0xff]))).toEqual(Buffer.of(0));
    expect(describePermission({ type: 2, key: Buffer.from('/p/'), rangeEnd: Buffer.from('/p0') })).toEqual({ prefix: '/p/', access: 'readwrite' });
  });

  it('names file and line for every problem', () => {
    expect(() => parsePolicy([{ file: 'x.yaml', text: 'roles:\n  - name: r\n    grants:\n      - { key: /k, access: all }\n' }])).toThrow(/^x\.yaml:4: /);
    expect(() => parsePolicy([{ file: 'x.yaml', text: 'users:\n  - { name: u, roles: [ghost] }\n' }])).toThrow('x.yaml:2: role ghost is not defined');
    expect(() => parsePolicy([{ file: 'a.yaml', text: 'roles: [{ name: r }]\n' }, { file: 'b.yaml', text: '\nroles: [{ name: r }]\n' }])).toThrow('b.yaml:2: role r is already defined at a.yaml:1');
    expect(() => parsePolicy([{ file: 'x.yaml', text: 'users: [\n' }])).toThrow(/^x\.yaml:\d+: /);
  });
});

describe('passwords, tokens and login limits', () => {
  it('hashes with a salt and verifies only the right password', async () => {
    const first = await hashPassword('correct horse');
    expect(first).toMatch(/^scrypt\$32768\$8\$1\$/);
    expect(await hashPassword('correct horse')).not.toBe(first);
    expect(await verifyPassword('correct horse', first)).toBe(true);
    expect(await verifyPassword('wrong', first)).toBe(false);
    expect(await verifyPassword('', '')).toBe(false);
  });

  it('verifies its own tokens only, and not after they expire', async () => {
    // Validity is checked with the default TTL: a 1 s token could expire between signing and
    // verifying on a loaded machine. Expiry is checked with a second signer of the same key.
    const key = newSigningKey();
    const signer = new TokenSigner(key);
    const token = await signer.sign({ user: 'alice', revision: 4 });
    expect(await signer.verify(token)).toMatchObject({ user: 'alice', revision: 4 });
    expect(await new TokenSigner(newSigningKey()).verify(token)).toBeUndefined();
    expect(await signer.verify('not.a.token')).toBeUndefined();
    const shortLived = new TokenSigner(key, 1);
    const expiring = await shortLived.sign({ user: 'alice', revision: 4 });
    await new Promise((resolve) => setTimeout(resolve, 2_100));
    expect(await shortLived.verify(expiring)).toBeUndefined();
  });

  it('locks a user out per source after repeated failures, doubling the lockout', () => {
    let now = 0;
    const limiter = new LoginLimiter({ freeFailures: 3, baseLockoutMs: 1_000, maxLockoutMs: 60_000, now: () => now });
    for (let failure = 0; failure < 2; failure++) limiter.failed('bob', '10.0.0.1');
    expect(limiter.blockedFor('bob', '10.0.0.1')).toBe(0);
    limiter.failed('bob', '10.0.0.1');
    expect(limiter.blockedFor('bob', '10.0.0.1')).toBe(1_000);
    expect(limiter.blockedFor('bob', '10.0.0.2')).toBe(0);
    expect(limiter.blockedFor('carol', '10.0.0.1')).toBe(0);
    now = 1_000;
    limiter.failed('bob', '10.0.0.1');
    expect(limiter.blockedFor('bob', '10.0.0.1')).toBe(2_000);
    limiter.succeeded('bob', '10.0.0.1');
    expect(limiter.blockedFor('bob', '10.0.0.1')).toBe(0);
  });
});

describe('password checks under a flood', () => {
  it('run a few at a time, queue a bounded number per source, and refuse the rest without hashing; another source still logs in', async () => {
    const { Authenticator, passwordChecksMax } = await import('../../src/api/identity.js');
    const { AuthHolder } = await import('../../src/auth/store.js');
    const { LoginLimiter: Limiter } = await import('../../src/auth/limiter.js');
    const holder = new AuthHolder();
    holder.set({ ...emptyAuthState, enabled: true, signingKey: newSigningKey(), users: new Map([['root', { name: 'root', passwordHash: await hashPassword('pw'), noPassword: false, roles: ['root'] }]]) });
    const authenticator = new Authenticator(holder, 300, new Limiter({ freeFailures: 1_000 }));
    // 80 concurrent guesses for many different users from one source: the per-user lockout does
    // not apply, the per-source share of the queue does.
    const flood = Promise.all(Array.from({ length: 80 }, (_, index) =>
      authenticator.authenticate(`user-${index}`, 'guess', '10.0.0.9:5000').then(() => 'ok', (error: RampartError) => error.code)));
    // A real login from another address during the flood gets the next free slot.
    const real = authenticator.authenticate('root', 'pw', '10.0.0.7:6000');
    const outcomes = await flood;
    expect(await real).toMatch(/^ey/);
    const checked = passwordChecksMax.running + passwordChecksMax.waitingPerSource;
    expect(outcomes.filter((outcome) => outcome === 'AuthFailed')).toHaveLength(checked);
    expect(outcomes.filter((outcome) => outcome === 'TooManyRequests')).toHaveLength(80 - checked);
    // Many sources together still queue at most passwordChecksMax.waiting.
    const spread = await Promise.all(Array.from({ length: 120 }, (_, index) =>
      authenticator.authenticate(`user-${index}`, 'guess', `10.1.${index % 20}.1:5000`).then(() => 'ok', (error: RampartError) => error.code)));
    expect(spread.filter((outcome) => outcome === 'AuthFailed')).toHaveLength(passwordChecksMax.running + passwordChecksMax.waiting);
  }, 60_000);

  it('keeps the records of real users when junk names flood the limiter, and never clears them all', async () => {
    const { loginRecordsMax } = await import('../../src/auth/limiter.js');
    const limiter = new LoginLimiter({ freeFailures: 1, now: () => 1_000 });
    limiter.failed('root', '10.0.0.1', true);
    expect(limiter.blockedFor('root', '10.0.0.1')).toBeGreaterThan(0);
    for (let index = 0; index < loginRecordsMax.unknownNames + 10; index++) limiter.failed(`junk-${index}`, '10.0.0.2', false);
    expect(limiter.blockedFor('root', '10.0.0.1')).toBeGreaterThan(0);
    expect(limiter.recordCount).toBe(loginRecordsMax.unknownNames + 1);
    // The oldest junk record went first, one at a time; the newest are kept.
    expect(limiter.blockedFor('junk-0', '10.0.0.2')).toBe(0);
    expect(limiter.blockedFor(`junk-${loginRecordsMax.unknownNames + 9}`, '10.0.0.2')).toBeGreaterThan(0);
  });
});

describe('bootstrap of a new cluster', () => {
  const policy = { users: [{ name: 'root', roles: ['root'] }], roles: [], bindings: new Map([['root', 'root']]) };
  it('applies the policies and enables auth in one entry, only on a pristine store', () => {
    const secured = applyAuthChange(emptyAuthState, { op: 'bootstrap', policy, signingKey: newSigningKey() });
    expect(secured.enabled).toBe(true);
    expect([...secured.users.keys()]).toEqual(['root']);
    // Anything applied first (a racing RoleAdd) makes the bootstrap refuse, never half-apply.
    const touched = applyAuthChange(emptyAuthState, { op: 'roleAdd', name: 'mallory' });
    expect(refusal(touched, { op: 'bootstrap', policy, signingKey: newSigningKey() })).toBe('AuthOldRevision');
    expect(refusal(secured, { op: 'bootstrap', policy, signingKey: newSigningKey() })).toBe('AuthOldRevision');
    expect(decodeAuthChange(encodeAuthChange({ op: 'bootstrap', policy, signingKey: 'k' }))).toEqual({ op: 'bootstrap', policy, signingKey: 'k' });
  });
});

describe('token signing key: a stolen key does not make a root token', () => {
  /** What someone holding the key can sign, with every claim of their choosing. */
  async function forge(pem: string, claims: { revision: number; lifetimeSeconds: number; issuedAtSeconds?: number }, subject = 'root'): Promise<string> {
    const issuedAt = claims.issuedAtSeconds ?? Math.floor(Date.now() / 1000);
    return new SignJWT({ revision: claims.revision }).setProtectedHeader({ alg: 'EdDSA', typ: 'JWT' }).setSubject(subject).setIssuer('rampart')
      .setIssuedAt(issuedAt).setExpirationTime(issuedAt + claims.lifetimeSeconds).sign(createPrivateKey(pem));
  }
  const rootUser = { name: 'root', passwordHash: '', noPassword: true, roles: ['root'] };

  it('refuses a token whose revision is ahead of the store or whose lifetime exceeds the TTL', async () => {
    const { Authenticator } = await import('../../src/api/identity.js');
    const { AuthHolder } = await import('../../src/auth/store.js');
    const holder = new AuthHolder();
    const key = newSigningKey();
    holder.set({ ...emptyAuthState, enabled: true, revision: 7, signingKey: key, users: new Map([['root', rootUser]]) });
    let caughtUp = 0;
    const authenticator = new Authenticator(holder, 300, undefined, () => {
      caughtUp += 1;
      return Promise.resolve();
    });
    const identify = (token: string) => authenticator.identify(token, undefined).then((caller) => caller.user, (error: RampartError) => error.code);
    // What the attacker made with the key from one data directory: revision 2^40, ten years.
    expect(await identify(await forge(key, { revision: 2 ** 40, lifetimeSeconds: 10 * 365 * 86_400 }))).toBe('InvalidAuthToken');
    expect(await identify(await forge(key, { revision: 2 ** 40, lifetimeSeconds: 300 }))).toBe('InvalidAuthToken');
    expect(caughtUp).toBe(1); // ahead: the member catches up once before refusing
    expect(await identify(await forge(key, { revision: 7, lifetimeSeconds: 301 }))).toBe('InvalidAuthToken');
    expect(await identify(await forge(key, { revision: 7, lifetimeSeconds: 300, issuedAtSeconds: Math.floor(Date.now() / 1000) + 600 }))).toBe('InvalidAuthToken');
    expect(await identify(await forge(key, { revision: 7, lifetimeSeconds: 300 }))).toBe('root');
  });

  it('remembers a verified token only while it is valid: expiry, a role change and a user deleted take effect on the next call', async () => {
    const { Authenticator } = await import('../../src/api/identity.js');
    const { AuthHolder } = await import('../../src/auth/store.js');
    vi.useFakeTimers({ toFake: ['Date'] });
    try {
      vi.setSystemTime(new Date('2026-01-01T00:00:00.500Z'));
      const started = Date.now();
      const signer = new TokenSigner(newSigningKey(), 60);
      const token = await signer.sign({ user: 'alice', revision: 4 });
      const first = await signer.verify(token);
      expect(first).toMatchObject({ user: 'alice', revision: 4 });
      expect(await signer.verify(token)).toBe(first); // remembered, not checked again
      vi.setSystemTime(started + 59_000);
      expect(await signer.verify(token)).toBe(first);
      vi.setSystemTime(started + 60_000);
      expect(await signer.verify(token)).toBeUndefined(); // expired: never answered from memory
      // Bounded: past the limit the oldest are forgotten (and checked again when they come back).
      vi.setSystemTime(started);
      const many = await Promise.all(Array.from({ length: verifiedTokensMax + 1 }, (_, index) => signer.sign({ user: `u${index}`, revision: 1 })));
      const seen = [];
      for (const minted of many) seen.push(await signer.verify(minted));
      expect(await signer.verify(many[1] as string)).toBe(seen[1]);
      const again = await signer.verify(many[0] as string);
      expect(again?.user).toBe('u0');
      expect(again).not.toBe(seen[0]); // forgotten, so checked again

      // Through the authenticator: the token stays verified, but the caller it names is checked
      // against the auth state in force, so any auth change after it was minted refuses it at once.
      const holder = new AuthHolder();
      const key = newSigningKey();
      const users = apply(emptyAuthState,
        { op: 'userAdd', name: 'root', passwordHash: '', noPassword: true },
        { op: 'userAdd', name: 'alice', passwordHash: '', noPassword: true },
        { op: 'roleAdd', name: 'app' },
        { op: 'userGrantRole', user: 'alice', role: 'app' });
      holder.set({ ...users, enabled: true, signingKey: key });
      const minted = holder.state.revision;
      const authenticator = new Authenticator(holder, 300);
      const aliceToken = await forge(key, { revision: minted, lifetimeSeconds: 300 }, 'alice');
      const caller = await authenticator.identify(aliceToken, undefined);
      expect(caller).toEqual({ user: 'alice', revision: minted, token: true });
      expect(() => checkCaller(holder.decider, caller)).not.toThrow();
      expect(await authenticator.identify(aliceToken, undefined)).toEqual(caller);
      holder.set(applyAuthChange(holder.state, { op: 'userRevokeRole', name: 'alice', role: 'app' }));
      expect(holder.state.revision).toBe(minted + 1);
      const refusedAs = async (): Promise<string> => {
        const again = await authenticator.identify(aliceToken, undefined);
        try {
          checkCaller(holder.decider, again);
          return 'allowed';
        } catch (error) {
          return (error as RampartError).code;
        }
      };
      expect(await refusedAs()).toBe('AuthOldRevision');
      holder.set(applyAuthChange(holder.state, { op: 'userDelete', name: 'alice' }));
      expect(await refusedAs()).toBe('AuthOldRevision');
      vi.setSystemTime(Date.now() + 301_000);
      await expect(authenticator.identify(aliceToken, undefined)).rejects.toMatchObject({ code: 'InvalidAuthToken' });
    } finally {
      vi.useRealTimers();
    }
  });

  it('a remembered token of a user deleted and created again, or after a password change, is refused; the same claims under another key are not taken for it', async () => {
    const { Authenticator } = await import('../../src/api/identity.js');
    const { AuthHolder } = await import('../../src/auth/store.js');
    const holder = new AuthHolder();
    const key = newSigningKey();
    holder.set({ ...apply(emptyAuthState, { op: 'userAdd', name: 'root', passwordHash: '', noPassword: true }, { op: 'userAdd', name: 'alice', passwordHash: '', noPassword: true }), enabled: true, signingKey: key });
    const authenticator = new Authenticator(holder, 300);
    const minted = holder.state.revision;
    const issuedAtSeconds = Math.floor(Date.now() / 1000) - 1;
    const aliceToken = await forge(key, { revision: minted, lifetimeSeconds: 300, issuedAtSeconds }, 'alice');
    const outcome = async (token: string): Promise<string> => {
      try {
        checkCaller(holder.decider, await authenticator.identify(token, undefined));
        return 'allowed';
      } catch (error) {
        return (error as RampartError).code;
      }
    };
    expect(await outcome(aliceToken)).toBe('allowed');
    expect(await outcome(aliceToken)).toBe('allowed'); // now remembered
    // Same header and claims, signed by another key: a different string, checked (and refused) on its own.
    expect(await outcome(await forge(newSigningKey(), { revision: minted, lifetimeSeconds: 300, issuedAtSeconds }, 'alice'))).toBe('InvalidAuthToken');
    const [header, payload] = aliceToken.split('.');
    expect(await outcome(`${header}.${payload}.${'A'.repeat(86)}`)).toBe('InvalidAuthToken');
    holder.set(apply(holder.state, { op: 'userDelete', name: 'alice' }, { op: 'userAdd', name: 'alice', passwordHash: '', noPassword: true }));
    expect(await outcome(aliceToken)).toBe('AuthOldRevision');
    const recreated = await forge(key, { revision: holder.state.revision, lifetimeSeconds: 300 }, 'alice');
    expect(await outcome(recreated)).toBe('allowed');
    holder.set(apply(holder.state, { op: 'userChangePassword', name: 'alice', passwordHash: await hashPassword('new') }));
    expect(await outcome(recreated)).toBe('AuthOldRevision');
    holder.set(apply(holder.state, { op: 'disable', signingKey: newSigningKey() }));
    expect((await authenticator.identify(recreated, undefined)).token).toBe(false); // auth off: the token is not even read
  });

  it('rotates the key on enable, disable and schedule; the previous key only for tokens minted before, for one TTL', async () => {
    const { Authenticator } = await import('../../src/api/identity.js');
    const { AuthHolder } = await import('../../src/auth/store.js');
    const holder = new AuthHolder();
    const first = newSigningKey();
    holder.set({ ...emptyAuthState, enabled: true, revision: 3, signingKey: first, users: new Map([['root', rootUser]]) });
    const authenticator = new Authenticator(holder, 300);
    const identify = (token: string) => authenticator.identify(token, undefined).then((caller) => caller.user, (error: RampartError) => error.code);
    const minted = await forge(first, { revision: 3, lifetimeSeconds: 300, issuedAtSeconds: Math.floor(Date.now() / 1000) - 1 });
    expect(await identify(minted)).toBe('root');
    const rotated = applyAuthChange(holder.state, { op: 'rotateSigningKey', signingKey: newSigningKey(), atMs: Date.now() });
    expect(rotated.revision).toBe(3);
    expect(rotated.signingKey).not.toBe(first);
    holder.set(rotated);
    expect(await identify(minted)).toBe('root'); // minted before the rotation: good until it expires
    // Minted with the old key after the rotation: a stolen key, refused.
    expect(await identify(await forge(first, { revision: 3, lifetimeSeconds: 300, issuedAtSeconds: Math.floor(Date.now() / 1000) + 2 }))).toBe('InvalidAuthToken');
    // Disable and enable each bring a new key.
    const disabled = applyAuthChange(rotated, { op: 'disable', signingKey: newSigningKey() });
    const enabled = applyAuthChange(disabled, { op: 'enable', signingKey: newSigningKey() });
    expect(new Set([rotated.signingKey, disabled.signingKey, enabled.signingKey]).size).toBe(3);
    // Replayed entries from before rotation existed carry no key: the key stays.
    expect(applyAuthChange(disabled, { op: 'enable', signingKey: '' }).signingKey).toBe(disabled.signingKey);
    expect(decodeAuthState(encodeAuthState(rotated)).signingKeyRotatedAtMs).toBe(rotated.signingKeyRotatedAtMs);
  });
});

