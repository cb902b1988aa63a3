/**
 * RAMPART-AUDIT-POLICY: the audit policy in force still records what PCI DSS 10.2.1/10.2.2 asks
 * an audit trail to hold — every write, every denial, every failed login, every administrative
 * change and every read of a sensitive key — for every user the cluster has (a rule can exempt one
 * user, so each is asked about), and none of it is dropped (`none`). The policy is asked exactly
 * as members ask it (CompiledAuditPolicy.decide), so the verdict is the members'.
 */
import { CompiledAuditPolicy, parseAuditPolicy, type AuditSubject } from '../audit/policy.js';
import type { ControlResult } from './control.js';
import type { AuthFacts, AuditPolicyFacts } from './facts.js';
import type { Observed } from './control.js';

/** What must be recorded, asked of the policy (keys in etcd's key/range_end convention). */
const required: readonly { readonly what: string; readonly subject: Omit<AuditSubject, 'user'> }[] = [
  { what: 'a put', subject: { action: 'Put', outcome: 'allowed', ranges: [{ key: Buffer.from('/compliance/probe'), rangeEnd: Buffer.alloc(0) }] } },
  { what: 'a delete', subject: { action: 'DeleteRange', outcome: 'allowed', ranges: [{ key: Buffer.from('/compliance/probe'), rangeEnd: Buffer.alloc(0) }] } },
  { what: 'a writing txn', subject: { action: 'Txn', writes: true, outcome: 'allowed', ranges: [{ key: Buffer.from('/compliance/probe'), rangeEnd: Buffer.alloc(0) }] } },
  { what: 'a denied read', subject: { action: 'Range', outcome: 'denied', ranges: [{ key: Buffer.from('/compliance/probe'), rangeEnd: Buffer.alloc(0) }] } },
  { what: 'a failed login', subject: { action: 'Authenticate', outcome: 'denied', ranges: [] } },
  { what: 'a read of /registry/secrets/', subject: { action: 'Range', outcome: 'allowed', ranges: [{ key: Buffer.from('/registry/secrets/default/probe'), rangeEnd: Buffer.alloc(0) }] } },
  ...['AuthEnable', 'AuthDisable', 'UserAdd', 'UserChangePassword', 'RoleGrantPermission', 'PolicyApply', 'MemberAdd', 'EncryptionRotate'].map((action) => ({ what: `an allowed ${action}`, subject: { action, outcome: 'allowed' as const, ranges: [] } })),
];

export function auditPolicyControl(policy: Observed<AuditPolicyFacts>, auth: Observed<AuthFacts>): ControlResult {
  const id = 'RAMPART-AUDIT-POLICY';
  const title = 'The audit policy in force records every write, denial, failed login, administrative change and secret read';
  const fix = 'put back rules that record them (`rampart audit policy show` shows the one in force; the shipped policies/audit.yaml records them all), then `rampart audit policy apply FILE`';
  if ('unavailable' in policy) return { id, title, status: 'skip', evidence: [`audit policy: ${policy.unavailable}`], fix };
  let compiled: CompiledAuditPolicy;
  try {
    compiled = new CompiledAuditPolicy(parseAuditPolicy('(audit policy in force)', policy.value.json));
  } catch (error) {
    return { id, title, status: 'fail', evidence: [`the policy in force does not parse: ${error instanceof Error ? error.message : String(error)}`], fix };
  }
  // Every user the cluster knows, and callers that are no user (a certificate without one, a failed login's name).
  const users = ['', 'compliance-probe-unknown-user', ...('value' in auth ? auth.value.users : [])];
  const gaps: string[] = [];
  for (const probe of required) {
    const exempt = users.flatMap((user) => {
      const decision = compiled.decide({ ...probe.subject, user });
      return decision.level === 'none' ? [`${user === '' ? '(no user)' : user} (${decision.rule ?? 'no rule'})`] : [];
    });
    if (exempt.length > 0) gaps.push(`${probe.what} is NOT recorded for ${exempt.join(', ')}`);
  }
  const seen = `policy in force sha256:${policy.value.digest}${policy.value.shippedDefault ? ' (the shipped default)' : ''}, ${compiled.policy.rules.length} rules, asked for ${users.length} users${'value' in auth ? '' : ' (the user list was not available: only anonymous callers were asked)'}`;
  if (gaps.length > 0) return { id, title, status: 'fail', evidence: [seen, ...gaps], fix };
  return { id, title, status: 'pass', evidence: [`${seen}: ${required.map((probe) => probe.what).join(', ')} — all recorded`], fix };
}
