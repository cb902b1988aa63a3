/**
 * A committed entry whose proposal cannot be decoded is skipped by every member (not thrown out of
 * the apply loop, which stopped every member on the same entry): the verdict, the request id read
 * from what bytes there are, and a reason that carries no bytes of the entry.
 */
import { describe, expect, it } from 'vitest';
import { encodeInternalRequest } from '../../src/api/proto.js';
import { MalformedAuthChangeError, decodeAuthChange, encodeAuthChange, type AuthChange } from '../../src/auth/store.js';
import { decodeCommittedProposal, jsonDepth, requestIdOf } from '../../src/server/committed-proposal.js';

const put = encodeInternalRequest({ id: '42', request: 'put', put: { key: Buffer.from('secret-key'), value: Buffer.from('secret-value'), lease: '0', prev_kv: false, ignore_value: false, ignore_lease: false } });

describe('decodeCommittedProposal', () => {
  it('decodes a well-formed proposal', () => {
    const decoded = decodeCommittedProposal(put);
    expect(decoded.ok).toBe(true);
    expect(decoded.ok && decoded.request.put?.value.toString()).toBe('secret-value');
  });

  it('refuses malformed bytes with the id they carry and a reason without their bytes', () => {
    // The proposal, then: an unknown field of wire type 7 (none exists), a put whose length runs
    // past the end, a key with no value.
    for (const junk of [[0xf7, 0x01, 0x00], [0x12, 0x7f], [0x08]]) {
      const decoded = decodeCommittedProposal(Buffer.concat([put, Buffer.from(junk)]));
      expect(decoded.ok).toBe(false);
      if (decoded.ok) continue;
      expect(decoded.id).toBe('42');
      expect(decoded.reason).toMatch(/^\w*Error$/);
    }
    // No id before the damage: nobody's waiter to fail.
    const noId = decodeCommittedProposal(Buffer.from([0x12, 0x05, 0x0a, 0x03, 0x6b]));
    expect(noId).toEqual({ ok: false, id: undefined, reason: expect.stringMatching(/Error$/) as unknown });
  });

  it('refuses an auth change that is not JSON (applying it threw a SyntaxError)', () => {
    const change = encodeInternalRequest({ id: '7', request: 'auth_change', auth_change: '{"op":"userAdd", "password":"hunter2' });
    const decoded = decodeCommittedProposal(change);
    expect(decoded).toEqual({ ok: false, id: '7', reason: 'SyntaxError' });
    expect(JSON.stringify(decoded)).not.toContain('hunter2');
    expect(decodeCommittedProposal(encodeInternalRequest({ id: '8', request: 'auth_change', auth_change: '{"op":"disable"}' })).ok).toBe(true);
  });

  it('refuses an auth change nested absurdly deep, before parsing it (its reviver recurses)', () => {
    expect(jsonDepth('{"a":[1,{"b":"[[[{{{"}],"c":"\\"["}')).toBe(3);
    const deep = `${'['.repeat(100_000)}${']'.repeat(100_000)}`;
    expect(decodeCommittedProposal(encodeInternalRequest({ id: '9', request: 'auth_change', auth_change: deep }))).toEqual({ ok: false, id: '9', reason: 'ProposalBoundsError' });
    const policy = '{"op":"policyApply","policy":{"users":[{"name":"u","roles":["r"]}],"roles":[{"name":"r","permissions":[{"type":0,"key":{"$b64":""},"rangeEnd":{"$b64":""}}],"denies":[]}],"bindings":{"$map":[["cn","u"]]}},"expectRevision":0}';
    expect(jsonDepth(policy)).toBeLessThan(8);
    expect(decodeCommittedProposal(encodeInternalRequest({ id: '10', request: 'auth_change', auth_change: policy })).ok).toBe(true);
  });

  it('refuses an auth change whose fields are not of their types, naming the field, never its value', () => {
    const decoded = (change: unknown, id = '11'): ReturnType<typeof decodeCommittedProposal> =>
      decodeCommittedProposal(encodeInternalRequest({ id, request: 'auth_change', auth_change: typeof change === 'string' ? change : encodeAuthChange(change as AuthChange) }));
    const permission = { type: 1 as const, key: Buffer.from('k'), rangeEnd: Buffer.from('l') };
    const policy = { users: [{ name: 'u', roles: ['r'] }], roles: [{ name: 'r', permissions: [permission], denies: [] }], bindings: new Map([['cn', 'u']]) };
    // Every op as the API writes it decodes to itself.
    const wellFormed: AuthChange[] = [
      { op: 'enable', signingKey: 'k' }, { op: 'disable' }, { op: 'disable', signingKey: 'k' }, { op: 'rotateSigningKey', signingKey: 'k', atMs: 1_800_000_000_000 },
      { op: 'userAdd', name: 'u', passwordHash: 'scrypt$x', noPassword: false }, { op: 'userDelete', name: 'u' }, { op: 'userChangePassword', name: 'u', passwordHash: 'h' },
      { op: 'userGrantRole', user: 'u', role: 'r' }, { op: 'userRevokeRole', name: 'u', role: 'r' }, { op: 'roleAdd', name: 'r' }, { op: 'roleDelete', name: 'r' },
      { op: 'roleGrantPermission', name: 'r', permission }, { op: 'roleRevokePermission', name: 'r', key: Buffer.from('k'), rangeEnd: Buffer.alloc(0) },
      { op: 'policyApply', policy, expectRevision: 3 }, { op: 'bootstrap', policy, signingKey: 'k' }, { op: 'bootstrap', policy, signingKey: 'k', auditPolicy: '{}', auditHmacKey: 'h' },
      { op: 'auditPolicy', policy: '{}', hmacKey: 'h' },
    ];
    for (const change of wellFormed) {
      expect(decoded(change).ok).toBe(true);
      expect(decodeAuthChange(encodeAuthChange(change))).toEqual(change);
    }
    // Stored as given before: the right shape, the wrong types.
    const wrongTypes: unknown[] = [
      { op: 'userAdd', name: 42, passwordHash: 'hunter2', noPassword: false },
      { op: 'userAdd', name: 'u', passwordHash: 7, noPassword: 'no' },
      { op: 'roleAdd', name: ['x'] },
      { op: 'userGrantRole', user: 'u', role: { r: 1 } },
      { op: 'roleGrantPermission', name: 'r', permission: { type: 0, key: 'a', rangeEnd: 'b' } },
      { op: 'roleGrantPermission', name: 'r', permission: { type: 3, key: Buffer.from('a'), rangeEnd: Buffer.alloc(0) } },
      { op: 'roleRevokePermission', name: 'r', key: [1, 2], rangeEnd: Buffer.alloc(0) },
      { op: 'rotateSigningKey', signingKey: 'k', atMs: '1' },
      { op: 'rotateSigningKey', signingKey: 'k', atMs: 1.5 },
      { op: 'enable', signingKey: null },
      { op: 'policyApply', policy: { ...policy, users: [{ name: 'u', roles: [1, 2] }] }, expectRevision: 0 },
      { op: 'policyApply', policy: { ...policy, roles: [{ name: 'r', permissions: [{ ...permission, key: 'k' }], denies: [] }] }, expectRevision: 0 },
      { op: 'policyApply', policy: { ...policy, bindings: new Map<unknown, unknown>([['cn', 5]]) }, expectRevision: 0 },
      { op: 'policyApply', policy: { ...policy, bindings: [['cn', 'u']] }, expectRevision: 0 },
      { op: 'policyApply', policy, expectRevision: 2 ** 60 },
      { op: 'bootstrap', policy, signingKey: 'k', auditPolicy: 1 },
      { op: 'auditPolicy', policy: { rules: [] }, hmacKey: 'h' },
      { op: 'userDelete' },
      'null',
      '[]',
      '"userAdd"',
    ];
    for (const change of wrongTypes) {
      const verdict = decoded(change);
      expect(verdict, JSON.stringify(change)).toEqual({ ok: false, id: '11', reason: 'MalformedAuthChangeError' });
    }
    expect(() => decodeAuthChange(encodeAuthChange({ op: 'userAdd', name: 42, passwordHash: 'hunter2', noPassword: false } as never))).toThrow(new MalformedAuthChangeError('auth change: name: invalid_type'));
    // A $b64 that is an array-like object, not base64: Buffer.from would allocate 1 GiB for it.
    const allocation = '{"op":"roleRevokePermission","name":"r","key":{"$b64":{"length":1073741824}},"rangeEnd":{"$b64":""}}';
    expect(decoded(allocation)).toEqual({ ok: false, id: '11', reason: 'MalformedAuthChangeError' });
    expect(decoded('{"op":"policyApply","policy":{"users":[],"roles":[],"bindings":{"$map":"ab"}},"expectRevision":0}').ok).toBe(false);
  });

  it('reads the request id as far as the bytes go, the last one winning', () => {
    expect(requestIdOf(Buffer.from([0x08, 0x01, 0x08, 0x02]))).toBe('2');
    expect(requestIdOf(Buffer.from([0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]))).toBe('18446744073709551615');
    expect(requestIdOf(Buffer.from([0x08, 0x03, 0x12, 0x7f]))).toBe('3');
    expect(requestIdOf(Buffer.from([0x08]))).toBeUndefined();
    expect(requestIdOf(Buffer.alloc(0))).toBeUndefined();
  });
});
