import { describe, expect, it } from 'vitest';
import { targetsOf } from '../../src/api/audit-events.js';
import { compiledAuditPolicy, shippedAuditPolicy } from '../../src/audit/policy.js';

// Election and lock RPCs read and write the keys under `name/`: the audit policy's key rules must see them.
describe('audit targets of lock and election requests', () => {
  const policy = compiledAuditPolicy(shippedAuditPolicy());
  const decide = (action: string, request: Record<string, unknown>) =>
    policy.decide({ action, user: 'kube-apiserver', outcome: 'allowed', ranges: targetsOf(action, request).ranges });

  it('records Leader and Observe of a name under /registry/secrets/ (the shipped secret-reads rule)', () => {
    for (const action of ['Leader', 'Observe']) {
      const decision = decide(action, { name: Buffer.from('/registry/secrets') });
      expect(decision.level).toBe('metadata');
      expect(decision.rule).toBe('secret-reads');
      const { targets, named } = targetsOf(action, { name: Buffer.from('/registry/secrets') });
      expect(targets).toEqual(['/registry/secrets']);
      expect(named).toBe(1);
    }
  });

  it('still leaves other election reads to other-reads', () => {
    expect(decide('Leader', { name: Buffer.from('/registry/leases') }).level).toBe('none');
  });

  it('gives Lock, Campaign, Proclaim and Resign the keys they write', () => {
    expect(targetsOf('Lock', { name: Buffer.from('job') }).ranges).toEqual([{ key: Buffer.from('job/'), rangeEnd: Buffer.from('job0') }]);
    expect(targetsOf('Campaign', { name: Buffer.from('e') }).ranges).toEqual([{ key: Buffer.from('e/'), rangeEnd: Buffer.from('e0') }]);
    const leader = { name: Buffer.from('e'), key: Buffer.from('e/694d'), rev: '3', lease: '5' };
    for (const action of ['Proclaim', 'Resign']) {
      expect(targetsOf(action, { leader }).ranges).toEqual([{ key: Buffer.from('e/694d'), rangeEnd: Buffer.alloc(0) }]);
    }
  });
});
