import { readFileSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import {
  AuditPolicyError, CompiledAuditPolicy, auditPolicyFile, auditRulesMax, compiledAuditPolicy, encodeAuditPolicy, parseAuditPolicy,
  shippedAuditPolicy, shippedAuditPolicyFile, type AuditSubject,
} from '../../src/audit/policy.js';
import { auditHmacKeyOf, hmacValue, newAuditHmacKey } from '../../src/audit/value-hmac.js';
import { loadPolicy } from '../../src/auth/policy.js';

const key = (text: string): { key: Buffer; rangeEnd: Buffer } => ({ key: Buffer.from(text), rangeEnd: Buffer.alloc(0) });
const subject = (fields: Partial<AuditSubject> & { action: string }): AuditSubject => ({ user: 'alice', outcome: 'allowed', ranges: [], ...fields });

/** The problems a malformed policy is refused with. */
function problemsOf(text: string): readonly string[] {
  try {
    parseAuditPolicy('audit.yaml', text);
  } catch (error) {
    if (error instanceof AuditPolicyError) return error.problems;
    throw error;
  }
  throw new Error('the policy was accepted');
}

describe('the shipped audit policy', () => {
  const policy = new CompiledAuditPolicy(parseAuditPolicy(shippedAuditPolicyFile, readFileSync(shippedAuditPolicyFile, 'utf8')));

  it('records every write, denial, error, auth and admin action, and secret reads; not other reads', () => {
    const level = (fields: Partial<AuditSubject> & { action: string }): string => policy.decide(subject(fields)).level;
    expect(level({ action: 'Put', ranges: [key('/registry/pods/p')] })).toBe('metadata');
    expect(level({ action: 'DeleteRange', ranges: [key('/a')] })).toBe('metadata');
    expect(level({ action: 'Txn', writes: true, ranges: [key('/a')] })).toBe('metadata');
    expect(level({ action: 'LeaseGrant' })).toBe('metadata');
    expect(level({ action: 'Range', ranges: [key('/registry/pods/p')] })).toBe('none');
    expect(level({ action: 'Range', ranges: [key('/registry/pods/p')], outcome: 'denied' })).toBe('metadata');
    expect(level({ action: 'Range', ranges: [key('/registry/pods/p')], outcome: 'failed' })).toBe('metadata');
    expect(level({ action: 'Range', ranges: [key('/registry/secrets/default/db')] })).toBe('metadata');
    // A range that reaches into the prefix, and a read-only Txn hiding a secret read among decoys.
    expect(level({ action: 'Range', ranges: [{ key: Buffer.from('/registry/'), rangeEnd: Buffer.from('/registry0') }] })).toBe('metadata');
    expect(level({ action: 'Range', ranges: [{ key: Buffer.from('/'), rangeEnd: Buffer.of(0) }] })).toBe('metadata');
    expect(level({ action: 'Txn', writes: false, ranges: [...Array.from({ length: 32 }, (_, index) => key(`/decoy/${index}`)), key('/registry/secrets/x')] })).toBe('metadata');
    expect(level({ action: 'Txn', writes: false, ranges: [key('/decoy')] })).toBe('none');
    expect(level({ action: 'Watch.create', ranges: [key('/registry/secrets/')] })).toBe('metadata');
    expect(level({ action: 'Watch.create', ranges: [key('/registry/pods/')] })).toBe('none');
    for (const action of ['Authenticate', 'UserAdd', 'RoleGrantPermission', 'AuthEnable', 'MemberAdd', 'Snapshot', 'Defragment', 'PolicyApply', 'EncryptionRotate']) {
      expect(level({ action }), action).toBe('metadata');
    }
    // An action the policy does not know (added later, or an unknown method) falls to the catch-all.
    expect(level({ action: '/foo.Bar/Baz' })).toBe('metadata');
  });

  it('is what shippedAuditPolicy serves, and the RBAC loader skips it', async () => {
    expect(shippedAuditPolicy()).toBe(encodeAuditPolicy(policy.policy));
    const rbac = await loadPolicy(path.dirname(shippedAuditPolicyFile));
    expect(rbac.files.some((file) => file.endsWith('audit.yaml'))).toBe(false);
    expect(rbac.files.length).toBeGreaterThan(0);
  });
});

describe('audit policy rules', () => {
  it('first matching rule wins, by operation, user, keys and outcome', () => {
    const policy = new CompiledAuditPolicy(parseAuditPolicy('p.yaml', `
rules:
  - { users: [ci], operations: [put], keys: [ { prefix: /app/ } ], level: request, values: hmac }
  - { operations: [put], keys: [ { key: /exact } ], level: none }
  - { operations: [delete], keys: [ { from: /m, to: /p } ], level: request }
  - { operations: [Range], keys: [ { fromKey: /z } ], outcomes: [success], level: request }
  - { operations: [read], level: none }
`));
    const decide = (fields: Partial<AuditSubject> & { action: string }): ReturnType<CompiledAuditPolicy['decide']> => policy.decide(subject(fields));
    const ci = decide({ action: 'Put', user: 'ci', ranges: [key('/app/x')] });
    expect(ci).toMatchObject({ level: 'request', hmacValues: true, rule: 'rule 1' });
    expect(ci.valueInScope(Buffer.from('/app/y'))).toBe(true);
    expect(ci.valueInScope(Buffer.from('/other'))).toBe(false);
    expect(decide({ action: 'Put', user: 'bob', ranges: [key('/app/x')] }).level).toBe('metadata'); // no rule: metadata
    expect(decide({ action: 'Put', user: 'ci', ranges: [key('/exact')] }).level).toBe('none');
    expect(decide({ action: 'Put', user: 'ci', ranges: [key('/exact/no')] }).level).toBe('metadata');
    expect(decide({ action: 'DeleteRange', ranges: [key('/n')] }).level).toBe('request');
    expect(decide({ action: 'DeleteRange', ranges: [key('/p')] }).level).toBe('metadata'); // `to` is exclusive
    expect(decide({ action: 'DeleteRange', ranges: [{ key: Buffer.from('/a'), rangeEnd: Buffer.from('/n') }] }).level).toBe('request'); // overlaps
    expect(decide({ action: 'Range', ranges: [key('/zz')] }).level).toBe('request');
    expect(decide({ action: 'Range', ranges: [key('/zz')], outcome: 'denied' }).level).toBe('none');
    expect(decide({ action: 'Range', ranges: [key('/a')] }).level).toBe('none');
    // A keys rule never matches a request without keys.
    expect(decide({ action: 'DeleteRange', ranges: [] }).level).toBe('metadata');
  });

  it('records the policy change and HMAC look-ups whatever the policy says', () => {
    const policy = new CompiledAuditPolicy(parseAuditPolicy('p.yaml', 'rules:\n  - { level: none }\n'));
    expect(policy.decide(subject({ action: 'Put', ranges: [key('/a')] })).level).toBe('none');
    expect(policy.decide(subject({ action: 'AuditPolicyApply' })).level).toBe('metadata');
    expect(policy.decide(subject({ action: 'AuditHmac' })).level).toBe('metadata');
    expect(policy.decide(subject({ action: 'AuditPolicyApply', outcome: 'denied' })).level).toBe('metadata');
  });

  it('round-trips through its canonical JSON and its file form', () => {
    const text = 'rules:\n  - name: a\n    keys: [ { prefix: "" }, { from: /a, to: /b } ]\n    values: none\n    level: request\n  - { level: metadata }\n';
    const policy = parseAuditPolicy('p.yaml', text);
    const encoded = encodeAuditPolicy(policy);
    expect(encodeAuditPolicy(parseAuditPolicy('json', encoded))).toBe(encoded);
    expect(encodeAuditPolicy(parseAuditPolicy('show', auditPolicyFile(policy)))).toBe(encoded);
    expect(compiledAuditPolicy(encoded).decide(subject({ action: 'Put', ranges: [key('/x')] })).level).toBe('request');
    expect(compiledAuditPolicy(encoded)).toBe(compiledAuditPolicy(encoded)); // compiled once
  });
});

describe('malformed audit policies', () => {
  it('names file:line for each problem', () => {
    expect(problemsOf('rules:\n  - level: metadata\n  - level: loud\n')).toEqual([expect.stringMatching(/^audit\.yaml:3: level must be none, metadata or request/)]);
    expect(problemsOf('rules:\n  - level: none\n    operations: [read, frobnicate]\n')).toEqual([expect.stringMatching(/^audit\.yaml:3: unknown operation "frobnicate"/)]);
    expect(problemsOf('rules:\n  - level: none\n    colour: red\n')).toEqual([expect.stringMatching(/^audit\.yaml:3: .*colour/)]);
    expect(problemsOf('rules:\n  - level: metadata\n    values: hmac\n')).toEqual([expect.stringMatching(/^audit\.yaml:3: rule 1: values: hmac needs level: request/)]);
    expect(problemsOf('rules:\n  - { level: none, keys: [ { from: /b, to: /a } ] }\n')).toEqual([expect.stringMatching(/^audit\.yaml:2: .*"to" must sort after "from"/)]);
    expect(problemsOf('rules:\n  - { level: none, keys: [ { prefix: /a, key: /b } ] }\n')).toEqual([expect.stringMatching(/^audit\.yaml:2: expected exactly one of/)]);
    expect(problemsOf('rules:\n  - level: none\n  - level: metadata\n    users: [bob]\n')).toEqual([expect.stringMatching(/^audit\.yaml:3: rule 2 can never apply: rule 1/)]);
    expect(problemsOf('rules:\n  - { name: x, level: none, users: [a] }\n  - { name: x, level: none, users: [b] }\n')).toEqual([expect.stringMatching(/^audit\.yaml:3: rule name x is already used/)]);
    expect(problemsOf('rules:\n  - { level: none, users: [] }\n')).toEqual([expect.stringMatching(/^audit\.yaml:2: must not be empty/)]);
    expect(problemsOf('rules:\n  - level: none\n  level: none\n')[0]).toMatch(/^audit\.yaml:3: /);
    expect(problemsOf('rules: [ { level: none }\n')[0]).toMatch(/^audit\.yaml:\d+: /);
    expect(problemsOf('rulez: []\n').join('\n')).toMatch(/^audit\.yaml:1: .*rulez/m);
  });

  it('bounds rules, selectors and sizes', () => {
    const many = `rules:\n${Array.from({ length: auditRulesMax + 1 }, (_, index) => `  - { level: none, users: [u${index}] }\n`).join('')}`;
    expect(problemsOf(many)[0]).toMatch(/at most 256 rules/);
    const users = `rules:\n  - { level: none, users: [${Array.from({ length: 65 }, (_, index) => `u${index}`).join(', ')}] }\n`;
    expect(problemsOf(users)[0]).toMatch(/at most 64 entries/);
    expect(problemsOf(`rules:\n  - { level: none, keys: [ { key: "${'k'.repeat(4097)}" } ] }\n`)[0]).toMatch(/at most 4096 bytes/);
    expect(problemsOf(`# ${'x'.repeat(300 * 1024)}\nrules: []\n`)[0]).toMatch(/larger than/);
  });
});

describe('audit value HMACs', () => {
  it('is keyed, deterministic, and never the value', () => {
    const keyA = auditHmacKeyOf(newAuditHmacKey());
    const keyB = auditHmacKeyOf(newAuditHmacKey());
    if (keyA === undefined || keyB === undefined) throw new Error('no key');
    const value = Buffer.from('s3cret-password');
    const mac = hmacValue(keyA, value);
    expect(mac).toMatch(/^hmac-sha256:[0-9a-f]{64}$/);
    expect(hmacValue(keyA, Buffer.from('s3cret-password'))).toBe(mac);
    expect(hmacValue(keyB, value)).not.toBe(mac);
    expect(mac).not.toContain('s3cret');
    // Known answer, computed with openssl (key 32 bytes of 0x0b, message "Hi There").
    expect(hmacValue(Buffer.alloc(32, 0x0b), Buffer.from('Hi There'))).toBe('hmac-sha256:198a607eb44bfbc69903a0f1cf2bbdc5ba0aa3f3d9ae3c1c7a3b1696a0b68cf7');
    expect(auditHmacKeyOf(undefined)).toBeUndefined();
    expect(auditHmacKeyOf(Buffer.alloc(16).toString('base64'))).toBeUndefined();
  });
});
