import { readFileSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import {
  AuditPolicyError, CompiledAuditPolicy, auditPolicyFile, auditPolicyOfDirectory, auditRulesMax, compiledAuditPolicy, encodeAuditPolicy, parseAuditPolicy,
  shippedAuditPolicy, shippedAuditPolicyFile, type AuditSubject,
} from '../../src/audit/policy.js';
import { auditHmacKeyOf, hmacValue, newAuditHmacKey } from '../../src/audit/value-hmac.js';
import { loadPolicy } from '../../src/auth/policy.js';
import { requestFieldsOf } from '../../src/api/audit-request.js';
import { auditRequestFieldsMax, boundFields, eventLine, hashEvent, parseEventLine } from '../../src/audit/event.js';
import { applyAuthChange, decodeAuthState, emptyAuthState, encodeAuthState } from '../../src/auth/store.js';

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

describe('request fields of an event', () => {
  const macKey = Buffer.alloc(32, 7);
  const values = { inScope: (target: Buffer) => target.toString().startsWith('/app/'), hmac: (value: Buffer) => hmacValue(macKey, value) };

  it('names how a request was asked, never a value unless as an HMAC in scope', () => {
    expect(requestFieldsOf('Range', { key: Buffer.from('/a'), limit: '10', revision: '0', sort_order: 2, sort_target: 3, keys_only: true, serializable: false }, values))
      .toEqual(['limit=10', 'sort=MOD/DESCEND', 'keys_only']);
    expect(requestFieldsOf('Put', { key: Buffer.from('/app/k'), value: Buffer.from('clear'), lease: '255', prev_kv: true }, values))
      .toEqual(['lease=00000000000000ff', 'prev_kv', `value=${hmacValue(macKey, Buffer.from('clear'))}`]);
    expect(requestFieldsOf('Put', { key: Buffer.from('/other'), value: Buffer.from('clear') }, values)).toEqual([]);
    expect(requestFieldsOf('Put', { key: Buffer.from('/app/k'), value: Buffer.from('clear') }, undefined)).toEqual([]);
    const txn = {
      compare: [
        { key: Buffer.from('/app/k'), range_end: Buffer.alloc(0), target: 3, result: 0, value: Buffer.from('clear') },
        { key: Buffer.from('/x'), range_end: Buffer.alloc(0), target: 3, result: 3, value: Buffer.from('clear') },
        { key: Buffer.from('/x'), range_end: Buffer.alloc(0), target: 2, result: 2, mod_revision: '5' },
      ],
      success: [{ request: 'request_put', request_put: { key: Buffer.from('/app/k'), value: Buffer.from('new'), lease: '0' } }],
      failure: [{ request: 'request_txn', request_txn: { compare: [], success: [{ request: 'request_delete_range', request_delete_range: { key: Buffer.from('/d'), range_end: Buffer.of(0), prev_kv: true } }], failure: [] } }],
    };
    const fields = requestFieldsOf('Txn', txn, values);
    expect(fields).toEqual([
      `compare=/app/k VALUE = ${hmacValue(macKey, Buffer.from('clear'))}`,
      'compare=/x VALUE != value',
      'compare=/x MOD < 5',
      'success.put=/app/k',
      `success.value=${hmacValue(macKey, Buffer.from('new'))}`,
      'failure.txn=0 compares',
      'failure.txn.success.delete=/d..',
      'failure.txn.success.prev_kv',
    ]);
    expect(fields.join('\n')).not.toContain('clear');
    expect(requestFieldsOf('UserAdd', { name: 'u', password: 'pw-clear', options: { no_password: false } }, values)).toEqual([]);
    expect(requestFieldsOf('Authenticate', { name: 'u', password: 'pw-clear' }, values)).toEqual([]);
  });

  it('keeps the trail canonical and hash-chained with request fields, bounded', async () => {
    const fields = Array.from({ length: auditRequestFieldsMax + 5 }, (_, index) => `f${index}=${'x'.repeat(700)}`);
    const bounded = boundFields({ action: 'Txn', outcome: 'allowed', request: fields });
    expect(bounded.request).toHaveLength(auditRequestFieldsMax + 1);
    expect(bounded.request?.[auditRequestFieldsMax]).toMatch(/^…\[5 more fields sha256:[0-9a-f]{64}\]$/);
    const base = { action: 'Put', outcome: 'allowed' as const, request: ['limit=1'], seq: 1, time: '2026-01-01T00:00:00.000Z', member: 'm', prev: '0'.repeat(64) };
    const event = { ...base, hash: hashEvent(base) };
    expect(parseEventLine(eventLine(event))).toEqual(event);
    // The hash covers the request fields: changing one changes the hash.
    expect(hashEvent({ ...base, request: ['limit=2'] })).not.toBe(event.hash);
    expect(typeof parseEventLine(eventLine(event).replace('"request":["limit=1"]', '"request":[1]'))).toBe('string');
  });
});

describe('the audit policy in the replicated auth state', () => {
  it('changes without an auth revision bump, keeps its first HMAC key, and survives encoding', () => {
    const first = newAuditHmacKey();
    const bootstrapped = applyAuthChange(emptyAuthState, { op: 'bootstrap', policy: { users: [{ name: 'root', roles: ['root'] }], roles: [], bindings: new Map() }, signingKey: 'k', auditPolicy: shippedAuditPolicy(), auditHmacKey: first });
    expect(bootstrapped.auditPolicy).toBe(shippedAuditPolicy());
    expect(bootstrapped.auditHmacKey).toBe(first);
    const encoded = encodeAuditPolicy(parseAuditPolicy('p', 'rules:\n  - { level: none }\n'));
    const changed = applyAuthChange(bootstrapped, { op: 'auditPolicy', policy: encoded, hmacKey: newAuditHmacKey() });
    expect(changed.auditPolicy).toBe(encoded);
    expect(changed.auditHmacKey).toBe(first);
    expect(changed.revision).toBe(bootstrapped.revision);
    expect(decodeAuthState(encodeAuthState(changed))).toMatchObject({ auditPolicy: encoded, auditHmacKey: first });
    // A cluster made without a key gets one with its first policy.
    const keyed = applyAuthChange(emptyAuthState, { op: 'auditPolicy', policy: encoded, hmacKey: first });
    expect(keyed.auditHmacKey).toBe(first);
    expect(decodeAuthState(encodeAuthState(emptyAuthState)).auditPolicy).toBeUndefined();
  });
});

describe('the audit policy of a bootstrap policies directory', () => {
  it('is its audit.yaml, the shipped default without one, and refused with file:line when malformed', async () => {
    const directory = await mkdtemp(path.join(tmpdir(), 'audit-policy-'));
    try {
      expect(await auditPolicyOfDirectory(directory)).toBe(shippedAuditPolicy());
      await writeFile(path.join(directory, 'root.yaml'), 'users: []\n');
      expect(await auditPolicyOfDirectory(path.join(directory, 'root.yaml'))).toBe(shippedAuditPolicy()); // one RBAC file
      await writeFile(path.join(directory, 'audit.yaml'), 'rules:\n  - { level: none }\n');
      expect(await auditPolicyOfDirectory(directory)).toBe('{"rules":[{"level":"none"}]}');
      await writeFile(path.join(directory, 'audit.yaml'), 'rules:\n  - { level: none }\n  - { level: metadata, users: [a] }\n');
      await expect(auditPolicyOfDirectory(directory)).rejects.toThrow(`${path.join(directory, 'audit.yaml')}:3: rule 2 can never apply`);
    } finally {
      await rm(directory, { recursive: true, force: true });
    }
  });
});
