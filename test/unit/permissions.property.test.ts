/**
 * Every RBAC decision against a small reference model: random roles (grants of every kind — single
 * key, explicit range, prefix, from-key — and explicit denies), random users holding some of them
 * (sometimes root), random requests. The reference decides by walking the grants directly: no
 * merging, no binary search, points checked as points.
 */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { AuthDecider, emptyAuthState, type AuthState, type RoleRecord } from '../../src/auth/store.js';
import { grants, type Access, type KeyPermission, type PermissionType } from '../../src/auth/permissions.js';

const alphabet = [0x00, 0x61, 0x62, 0x63, 0xff];
const bytes = (min: number): fc.Arbitrary<Buffer> => fc.array(fc.constantFrom(...alphabet), { minLength: min, maxLength: 3 }).map((list) => Buffer.from(list));

/** etcd's range ends: single key, from-key ("\0"), prefix (key+1), or any explicit end. */
function prefixEnd(key: Buffer): Buffer {
  const end = Buffer.from(key);
  for (let index = end.length - 1; index >= 0; index--) {
    if ((end[index] as number) < 0xff) {
      end[index] = (end[index] as number) + 1;
      return end.subarray(0, index + 1);
    }
  }
  return Buffer.of(0);
}
const range = fc.tuple(bytes(1), fc.constantFrom('single', 'fromKey', 'prefix', 'explicit'), bytes(1))
  .map(([key, kind, other]) => ({ key, rangeEnd: kind === 'single' ? Buffer.alloc(0) : kind === 'fromKey' ? Buffer.of(0) : kind === 'prefix' ? prefixEnd(key) : other }));
const permission: fc.Arbitrary<KeyPermission> = fc.tuple(fc.constantFrom<PermissionType>(0, 1, 2), range).map(([type, { key, rangeEnd }]) => ({ type, key, rangeEnd }));
const role = (name: string): fc.Arbitrary<RoleRecord> =>
  fc.record({ permissions: fc.array(permission, { maxLength: 5 }), denies: fc.array(permission, { maxLength: 2 }) }).map((parts) => ({ name, ...parts }));

/** A request etcd would accept: a single key, from-key, or an end above the key. */
function validRequest({ key, rangeEnd }: { key: Buffer; rangeEnd: Buffer }): boolean {
  return rangeEnd.length === 0 || (rangeEnd.length === 1 && rangeEnd[0] === 0) || Buffer.compare(rangeEnd, key) > 0;
}

const world = fc.record({
  enabled: fc.boolean(),
  roles: fc.tuple(role('r1'), role('r2'), role('r3')),
  userRoles: fc.subarray(['r1', 'r2', 'r3', 'root']),
  userExists: fc.boolean(),
  requests: fc.array(fc.record({ range: range.filter(validRequest), access: fc.constantFrom<Access>('read', 'write') }), { minLength: 1, maxLength: 20 }),
});

// ---- the reference model ----

type End = Buffer | 'infinity';
function span(key: Buffer, rangeEnd: Buffer): { start: Buffer; end: End } | { point: Buffer } {
  if (rangeEnd.length === 0) return { point: key };
  if (rangeEnd.length === 1 && rangeEnd[0] === 0) return { start: key, end: 'infinity' };
  return { start: key, end: rangeEnd };
}
const below = (key: Buffer, end: End): boolean => end === 'infinity' || Buffer.compare(key, end) < 0;
const contains = (grant: KeyPermission, key: Buffer): boolean => {
  const area = span(grant.key, grant.rangeEnd);
  return 'point' in area ? area.point.equals(key) : Buffer.compare(area.start, key) <= 0 && below(key, area.end);
};

function referenceCovered(granted: KeyPermission[], key: Buffer, rangeEnd: Buffer): boolean {
  const wanted = span(key, rangeEnd);
  if ('point' in wanted) return granted.some((grant) => contains(grant, wanted.point));
  // Walk from the start: always some grant must hold the cursor; jump to the furthest end.
  let cursor = wanted.start;
  for (;;) {
    const holders = granted.filter((grant) => contains(grant, cursor));
    if (holders.length === 0) return false;
    let furthest: End = cursor;
    for (const holder of holders) {
      const area = span(holder.key, holder.rangeEnd);
      const end: End = 'point' in area ? Buffer.concat([area.point, Buffer.of(0)]) : area.end;
      if (end === 'infinity' || (furthest !== 'infinity' && Buffer.compare(end, furthest) > 0)) furthest = end;
    }
    if (furthest === 'infinity') return true;
    if (wanted.end !== 'infinity' && Buffer.compare(furthest, wanted.end) >= 0) return true;
    cursor = furthest;
  }
}

function referenceTouches(denied: KeyPermission[], key: Buffer, rangeEnd: Buffer): boolean {
  const wanted = span(key, rangeEnd);
  return denied.some((deny) => {
    const area = span(deny.key, deny.rangeEnd);
    if ('point' in wanted) return contains(deny, wanted.point);
    if ('point' in area) return Buffer.compare(wanted.start, area.point) <= 0 && below(area.point, wanted.end);
    // Two half-open intervals overlap when each starts before the other ends (and neither is empty).
    const nonEmpty = area.end === 'infinity' || Buffer.compare(area.start, area.end) < 0;
    return nonEmpty && below(area.start, wanted.end) && below(wanted.start, area.end);
  });
}

function referenceDecision(input: { enabled: boolean; userExists: boolean; userRoles: string[]; roles: RoleRecord[] }, key: Buffer, rangeEnd: Buffer, access: Access): boolean {
  if (!input.enabled) return true;
  if (!input.userExists) return false;
  if (input.userRoles.includes('root')) return true;
  const held = input.roles.filter((candidate) => input.userRoles.includes(candidate.name));
  const allow = held.flatMap((held) => held.permissions).filter((entry) => grants(entry.type, access));
  const deny = held.flatMap((held) => held.denies).filter((entry) => grants(entry.type, access));
  return referenceCovered(allow, key, rangeEnd) && !referenceTouches(deny, key, rangeEnd);
}

describe('RBAC decisions', () => {
  it('agree with the reference model on random roles, ranges and requests', () => {
    let decisions = 0;
    let allowed = 0;
    fc.assert(
      fc.property(world, (input) => {
        const state: AuthState = {
          ...emptyAuthState,
          enabled: input.enabled,
          roles: new Map(input.roles.map((entry) => [entry.name, entry])),
          users: new Map(input.userExists ? [['u', { name: 'u', passwordHash: '', noPassword: true, roles: input.userRoles }]] : []),
        };
        const decider = new AuthDecider(state);
        for (const request of input.requests) {
          const expected = referenceDecision({ ...input, roles: [...input.roles] }, request.range.key, request.range.rangeEnd, request.access);
          decisions += 1;
          if (expected) allowed += 1;
          if (decider.isPermitted('u', request.range.key, request.range.rangeEnd, request.access) !== expected) return false;
        }
        return true;
      }),
      { numRuns: 4000, seed: 20261125 },
    );
    // The generator must exercise both outcomes, not just one.
    expect(decisions).toBeGreaterThan(20_000);
    expect(allowed).toBeGreaterThan(decisions / 10);
    expect(decisions - allowed).toBeGreaterThan(decisions / 10);
  });
});
