/** Lease ownership rules at unit level: who may grant and use a lease, and the per-user cap. */
import { describe, expect, it } from 'vitest';
import type { RampartError } from '../../src/errors.js';
import { AuthDecider, emptyAuthState, type AuthState } from '../../src/auth/store.js';
import { authorizeLeaseUse, mayUseLease } from '../../src/server/lease-ownership.js';
import { Lessor, leasesPerUserMax } from '../../src/server/lessor.js';
import type { InternalRequest } from '../../src/api/messages.js';

const user = (name: string, roles: string[] = []) => ({ name, passwordHash: '', noPassword: true, roles });
const state: AuthState = { ...emptyAuthState, enabled: true, revision: 5, signingKey: 'k', users: new Map([['root', user('root', ['root'])], ['alice', user('alice')], ['bob', user('bob')]]) };
const decider = new AuthDecider(state);
const as = (name: string) => ({ user: name, revision: 5, token: false });
const outcome = (request: InternalRequest, ownerOf: (id: bigint) => string | undefined, ownedBy: (name: string) => number = () => 0): string => {
  try {
    authorizeLeaseUse(decider, request, ownerOf, ownedBy);
    return 'allowed';
  } catch (error) {
    return (error as RampartError).code;
  }
};

describe('lease ownership', () => {
  it('lets only the owner or root use a lease; an ownerless lease is root\'s', () => {
    expect(mayUseLease(decider, as('alice'), 'alice')).toBe(true);
    expect(mayUseLease(decider, as('bob'), 'alice')).toBe(false);
    expect(mayUseLease(decider, as('root'), 'alice')).toBe(true);
    expect(mayUseLease(decider, as('alice'), '')).toBe(false);
    expect(mayUseLease(new AuthDecider(emptyAuthState), as(''), 'alice')).toBe(true); // auth off: etcd's rules
    const owners = (id: bigint): string | undefined => (id === 7n ? 'alice' : undefined);
    expect(outcome({ id: 0, request: 'lease_revoke', lease_revoke: { ID: '7' }, caller: as('bob') } as InternalRequest, owners)).toBe('PermissionDenied');
    expect(outcome({ id: 0, request: 'lease_revoke', lease_revoke: { ID: '7' }, caller: as('alice') } as InternalRequest, owners)).toBe('allowed');
    // The leader's own revoke of an expired lease carries no caller: it must pass, or no lease expires.
    expect(outcome({ id: 0, request: 'lease_revoke', lease_revoke: { ID: '7' } } as InternalRequest, owners)).toBe('allowed');
    const put = (caller: string): InternalRequest => ({ id: 0, request: 'txn', caller: as(caller), txn: { compare: [], success: [], failure: [{ request: 'request_put', request_put: { key: Buffer.from('k'), value: Buffer.from('v'), lease: '7' } }] } } as unknown as InternalRequest);
    expect(outcome(put('bob'), owners)).toBe('PermissionDenied'); // in a Txn's other branch too
    expect(outcome(put('alice'), owners)).toBe('allowed');
  });

  it('needs a user to grant, and caps the leases one user holds', () => {
    const grant = (caller: string): InternalRequest => ({ id: 0, request: 'lease_grant', lease_grant: { ID: '1', TTL: '60' }, caller: as(caller) } as InternalRequest);
    expect(outcome(grant('mallory'), () => undefined)).toBe('UserNotFound');
    expect(outcome(grant('alice'), () => undefined, () => leasesPerUserMax - 1)).toBe('allowed');
    expect(outcome(grant('alice'), () => undefined, () => leasesPerUserMax)).toBe('TooManyLeases');
    const lessor = new Lessor(() => 0);
    lessor.grant(1n, 60, 'alice');
    lessor.grant(2n, 60, 'alice');
    expect(lessor.ownedBy('alice')).toBe(2);
    lessor.revoke(1n);
    expect(lessor.ownedBy('alice')).toBe(1);
  });
});
