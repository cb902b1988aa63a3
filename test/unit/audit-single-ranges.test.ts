/**
 * services.ts asks the audit policy with `singleAuditRanges` (no target text built) for calls with
 * one key or range, and builds `targetsOf` only for an event the policy records: both must give
 * the policy the same ranges, so it decides as before.
 */
import { describe, expect, it } from 'vitest';
import { singleAuditRanges, targetsOf } from '../../src/api/audit-events.js';
import { compiledAuditPolicy, shippedAuditPolicy } from '../../src/audit/policy.js';

const requests: [string, Record<string, unknown>][] = [
  ['Range', { key: Buffer.from('/registry/pods/a') }],
  ['Range', { key: Buffer.from('/registry/'), range_end: Buffer.from('/registry0') }],
  ['Range', { key: Buffer.from('a'), range_end: Buffer.from([0]) }],
  ['Range', { key: Buffer.from('/registry/secrets/ns/s'), range_end: Buffer.alloc(0) }],
  ['Range', { key: Buffer.from([0xff, 0x00, 0x0a]) }],
  ['Range', { key: 'as-text', range_end: 'as-tey' }],
  ['Range', {}],
  ['DeleteRange', { key: Buffer.from('/registry/secrets/'), range_end: Buffer.from('/registry/secrets0') }],
  ['Watch.create', { key: Buffer.from('/'), range_end: Buffer.from([0]) }],
  ['Put', { key: Buffer.from('/registry/secrets/x'), value: Buffer.from('v'), lease: '7' }],
  ['Put', { key: Buffer.from('k'), value: Buffer.from('v'), range_end: Buffer.from('ignored') }],
  ['Unlock', { key: Buffer.from('job/694d') }],
];

describe('the ranges the audit policy decides on', () => {
  it('are targetsOf\'s ranges for every call with one key or range', () => {
    for (const [rpc, request] of requests) expect(singleAuditRanges(rpc, request), rpc).toEqual(targetsOf(rpc, request).ranges);
  });

  it('lead the shipped policy to the same decision (secret reads recorded, other reads not)', () => {
    const policy = compiledAuditPolicy(shippedAuditPolicy());
    for (const [rpc, request] of requests) {
      const subject = { action: rpc, user: 'u', outcome: 'allowed' as const };
      const fast = policy.decide({ ...subject, ranges: singleAuditRanges(rpc, request) ?? [] });
      const full = policy.decide({ ...subject, ranges: targetsOf(rpc, request).ranges });
      expect([fast.level, fast.rule], rpc).toEqual([full.level, full.rule]);
    }
    expect(policy.decide({ action: 'Range', user: 'u', outcome: 'allowed', ranges: singleAuditRanges('Range', { key: Buffer.from('/registry/secrets/ns/s') }) ?? [] }).level).toBe('metadata');
    expect(policy.decide({ action: 'Range', user: 'u', outcome: 'allowed', ranges: singleAuditRanges('Range', { key: Buffer.from('/registry/pods/a') }) ?? [] }).level).toBe('none');
  });

  it('are left to targetsOf for calls with several targets or none', () => {
    for (const rpc of ['Txn', 'LeaseGrant', 'UserAdd', 'RoleGrantPermission', 'Lock', 'Leader', 'Compact']) expect(singleAuditRanges(rpc, {})).toBeUndefined();
  });
});
