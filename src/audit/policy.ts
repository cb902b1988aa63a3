/**
 * The audit policy (`policies/audit.yaml`): which requests the trail records, and how much of each.
 *
 *   rules:
 *     - name: secret-reads                        # optional; named in errors and `show`
 *       operations: [read]                        # categories or RPC names (see operationGroups)
 *       users: [kube-apiserver]                   # exact user names
 *       keys: [{ prefix: /registry/secrets/ }]    # key:, prefix:, fromKey:, or from: + to:
 *       outcomes: [success, denied, error]
 *       level: request                            # none | metadata | request
 *       values: hmac                              # only with level request: values as HMAC-SHA256
 *
 * A rule matches an event when every selector it has matches (a selector left out matches
 * anything); a `keys` selector matches when any key or range the request touches meets one of its
 * ranges, so it never matches a request that touches no key. The first matching rule decides the
 * level; an event no rule matches is recorded at `metadata` (the trail is on unless a rule says
 * otherwise). Some events are recorded whatever the policy says (`alwaysRecorded`): a policy
 * cannot hide its own change.
 *
 * Owns: the file format, its validation (every problem as `file:line: message`; a policy with
 * problems changes nothing), its canonical JSON (what the cluster replicates) and the compiled
 * decision. Pure: no I/O but the loaders, no clock. Never: building events (api/audit-events.ts).
 *
 * Cost on the write path: rules are compiled once per policy into, for every known action, the
 * list of rules that can apply to it, each with its users as a set, its outcomes as a set and its
 * key ranges merged into one sorted interval set (one binary search per request range). No regex
 * and no scan of rules that cannot apply; the number of rules and their sizes are bounded.
 */
import { createHash } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { LineCounter, parseDocument, stringify, type Document } from 'yaml';
import { z } from 'zod';
import { IntervalSet, intervalOf } from '../auth/permissions.js';
import { nameProblem } from '../auth/names.js';
import { prefixRangeEnd } from '../storage/mvcc/range.js';

/** The shipped default policy (`policies/audit.yaml` at the package root, from src/audit or dist/src/audit). */
export const shippedAuditPolicyFile = ((): string => {
  const here = path.dirname(fileURLToPath(import.meta.url));
  const candidates = ['../../policies/audit.yaml', '../../../policies/audit.yaml'].map((relative) => path.resolve(here, relative));
  return candidates.find((file) => existsSync(file)) ?? (candidates[1] as string);
})();

/** Rules in one policy. */
export const auditRulesMax = 256;
/** Entries in one selector list (operations, users, keys or outcomes) of a rule. */
export const auditRuleSelectorsMax = 64;
/** Bytes of one key in a key selector. */
export const auditRuleKeyBytesMax = 4096;
/** Bytes of a policy file (or of its replicated JSON). */
export const auditPolicyBytesMax = 256 * 1024;

export const auditLevels = ['none', 'metadata', 'request'] as const;
export type AuditLevel = (typeof auditLevels)[number];

/** The file's outcome names and the trail's: `success` is an `allowed` event, `error` a `failed` one. */
const outcomeNames = { success: 'allowed', denied: 'denied', error: 'failed' } as const;
type OutcomeName = keyof typeof outcomeNames;
export type EventOutcome = (typeof outcomeNames)[OutcomeName];

/**
 * Actions as the trail names them, by group. A read-only Txn is `Txn.read`, one that writes
 * `Txn.write` (the caller says which); `Txn` names both. An action in no group (one added later)
 * matches only rules without `operations`, so it is recorded unless a rule says otherwise.
 */
const actionGroups = {
  range: ['Range'],
  put: ['Put'],
  delete: ['DeleteRange'],
  txn: ['Txn.read', 'Txn.write'],
  compact: ['Compact'],
  lease: ['LeaseGrant', 'LeaseRevoke', 'LeaseKeepAlive', 'LeaseTimeToLive', 'LeaseLeases'],
  watch: ['Watch', 'Watch.create'],
  lock: ['Lock', 'Unlock'],
  election: ['Campaign', 'Proclaim', 'Resign', 'Leader', 'Observe'],
  auth: ['Authenticate', 'AuthEnable', 'AuthDisable', 'AuthStatus', 'UserAdd', 'UserGet', 'UserList', 'UserDelete', 'UserChangePassword',
    'UserGrantRole', 'UserRevokeRole', 'RoleAdd', 'RoleGet', 'RoleList', 'RoleDelete', 'RoleGrantPermission', 'RoleRevokePermission', 'PolicyExport', 'PolicyApply'],
  admin: ['MemberList', 'MemberAdd', 'MemberRemove', 'MemberUpdate', 'MemberPromote', 'Status', 'Alarm', 'Defragment', 'Hash', 'HashKV', 'Snapshot',
    'MoveLeader', 'Downgrade', 'Audit.Stream', 'AuditStream', 'Audit.Checkpoints', 'EncryptionStatus', 'EncryptionRotate',
    'AuditPolicyShow', 'AuditPolicyApply', 'AuditHmac'],
  /** Requests that read keys and change nothing. */
  read: ['Range', 'Txn.read', 'Watch', 'Watch.create', 'LeaseTimeToLive', 'LeaseLeases', 'Leader', 'Observe'],
  /** Requests that change keys or leases. */
  write: ['Put', 'DeleteRange', 'Txn.write', 'Compact', 'LeaseGrant', 'LeaseRevoke', 'LeaseKeepAlive', 'Lock', 'Unlock', 'Campaign', 'Proclaim', 'Resign'],
} as const satisfies Record<string, readonly string[]>;
type GroupName = keyof typeof actionGroups;

/** Every action the policy knows by name. */
const knownActions: ReadonlySet<string> = new Set(Object.values(actionGroups).flat());

/** What one operation name in a rule stands for. */
function actionsOf(operation: string): readonly string[] | undefined {
  if (Object.hasOwn(actionGroups, operation)) return actionGroups[operation as GroupName];
  if (operation === 'Txn') return actionGroups.txn;
  return knownActions.has(operation) && operation !== 'Txn.read' && operation !== 'Txn.write' ? [operation] : undefined;
}

/**
 * Recorded at `metadata` at least whatever the policy says: changing the audit policy and asking
 * the cluster for an HMAC (an oracle over values) are never hidden, not even by the policy changed.
 */
export const alwaysRecorded: ReadonlySet<string> = new Set(['AuditPolicyApply', 'AuditHmac', 'audit.start']);

const keyText = z.string().refine((value) => Buffer.byteLength(value) <= auditRuleKeyBytesMax, `must be at most ${auditRuleKeyBytesMax} bytes`);
const keySchema = z.union([
  z.strictObject({ key: keyText.min(1, 'must not be empty') }),
  z.strictObject({ prefix: keyText }),
  z.strictObject({ fromKey: keyText.min(1, 'must not be empty') }),
  z.strictObject({ from: keyText.min(1, 'must not be empty'), to: keyText.min(1, 'must not be empty') }),
], { error: 'expected exactly one of key, prefix, fromKey, or from+to' });
const userName = z.string().min(1, 'must not be empty').refine((value) => nameProblem(value) === undefined, 'must be at most 256 bytes with no control characters');
const operationName = z.string().refine((value) => actionsOf(value) !== undefined, {
  error: (issue) => `unknown operation ${JSON.stringify(String(issue.input).slice(0, 64))}: use ${Object.keys(actionGroups).join(', ')}, or an RPC name such as Put or UserAdd`,
});
const list = <T extends z.ZodType>(item: T) => z.array(item).min(1, 'must not be empty (leave the selector out to match anything)').max(auditRuleSelectorsMax, `at most ${auditRuleSelectorsMax} entries`);
const ruleSchema = z.strictObject({
  name: z.string().min(1).max(128).optional(),
  operations: list(operationName).optional(),
  users: list(userName).optional(),
  keys: list(keySchema).optional(),
  outcomes: list(z.enum(['success', 'denied', 'error'])).optional(),
  level: z.enum(auditLevels, { error: 'level must be none, metadata or request' }),
  values: z.enum(['none', 'hmac'], { error: 'values must be none or hmac' }).optional(),
});
const fileSchema = z.strictObject({
  rules: z.array(ruleSchema, { error: 'rules must be a list of rules' }).max(auditRulesMax, `at most ${auditRulesMax} rules`),
});

export type AuditKeySelector = z.infer<typeof keySchema>;
export type AuditRule = z.infer<typeof ruleSchema>;
export interface AuditPolicy {
  readonly rules: readonly AuditRule[];
}

export class AuditPolicyError extends Error {
  constructor(readonly problems: readonly string[]) {
    super(problems.join('\n'));
    this.name = 'AuditPolicyError';
  }
}

interface Located {
  readonly document: Document;
  readonly lines: LineCounter;
}

/** The line of the deepest node of `at` that the document has. */
function lineOf(located: Located, at: readonly PropertyKey[]): number {
  for (let length = at.length; length >= 0; length--) {
    const node = located.document.getIn(at.slice(0, length) as (string | number)[], true) as { range?: [number, number, number] } | undefined;
    if (node?.range !== undefined) return located.lines.linePos(node.range[0]).line;
  }
  return 1;
}

/** A rule with no selector matches every event: rules after it could never apply. */
const matchesEverything = (rule: AuditRule): boolean =>
  rule.operations === undefined && rule.users === undefined && rule.keys === undefined && rule.outcomes === undefined;

/**
 * Parses and checks a policy file's text (YAML; the replicated JSON is YAML too). Throws an
 * AuditPolicyError listing every problem as `file:line: message`.
 */
export function parseAuditPolicy(file: string, text: string): AuditPolicy {
  if (Buffer.byteLength(text) > auditPolicyBytesMax) throw new AuditPolicyError([`${file}:1: the policy is larger than ${auditPolicyBytesMax} bytes`]);
  const lines = new LineCounter();
  const document = parseDocument(text, { lineCounter: lines, prettyErrors: false, uniqueKeys: true });
  const located = { document, lines };
  const yamlProblems = document.errors.map((error) => `${file}:${lines.linePos(error.pos[0]).line}: ${error.message.split('\n')[0] ?? 'YAML error'}`);
  if (yamlProblems.length > 0) throw new AuditPolicyError(yamlProblems);
  const result = fileSchema.safeParse(document.toJS({ maxAliasCount: 100 }) ?? {});
  if (!result.success) {
    throw new AuditPolicyError(result.error.issues.map((issue) => {
      // An unknown key is reported at the key itself, not at the object holding it.
      const at = issue.code === 'unrecognized_keys' ? [...issue.path, issue.keys[0] ?? ''] : issue.path;
      const where = at.length === 0 ? '' : ` (${at.join('.')})`;
      return `${file}:${lineOf(located, at)}: ${issue.message}${where}`;
    }));
  }
  const problems: string[] = [];
  const names = new Map<string, number>();
  const at = (...parts: (string | number)[]): string => `${file}:${lineOf(located, parts)}`;
  result.data.rules.forEach((rule, index) => {
    const label = rule.name === undefined ? `rule ${index + 1}` : `rule ${rule.name}`;
    if (rule.name !== undefined) {
      const first = names.get(rule.name);
      if (first !== undefined) problems.push(`${at('rules', index, 'name')}: rule name ${rule.name} is already used by rule ${first + 1}`);
      else names.set(rule.name, index);
    }
    if (rule.values === 'hmac' && rule.level !== 'request') problems.push(`${at('rules', index, 'values')}: ${label}: values: hmac needs level: request`);
    rule.keys?.forEach((selector, keyIndex) => {
      if ('from' in selector && Buffer.compare(Buffer.from(selector.to), Buffer.from(selector.from)) <= 0) {
        problems.push(`${at('rules', index, 'keys', keyIndex)}: ${label}: "to" must sort after "from"`);
      }
    });
    const earlier = result.data.rules.findIndex((other, otherIndex) => otherIndex < index && matchesEverything(other));
    if (earlier !== -1) problems.push(`${at('rules', index)}: ${label} can never apply: rule ${earlier + 1} before it matches every event (the first matching rule wins)`);
  });
  if (problems.length > 0) throw new AuditPolicyError(problems);
  return result.data;
}

/** Reads and checks a policy file. */
export async function loadAuditPolicy(file: string): Promise<AuditPolicy> {
  return parseAuditPolicy(file, await readFile(file, 'utf8'));
}

/**
 * The audit policy of a policies directory (its `audit.yaml`, as `--bootstrap-policies` names one),
 * as canonical JSON; the shipped default when it has none (or is one RBAC file). Throws an
 * AuditPolicyError when the file is malformed.
 */
export async function auditPolicyOfDirectory(directory: string): Promise<string> {
  for (const name of ['audit.yaml', 'audit.yml']) {
    const file = path.join(directory, name);
    const text = await readFile(file, 'utf8').catch((error: NodeJS.ErrnoException) => {
      if (error.code === 'ENOENT' || error.code === 'ENOTDIR') return undefined;
      throw error;
    });
    if (text !== undefined) return encodeAuditPolicy(parseAuditPolicy(file, text));
  }
  return shippedAuditPolicy();
}

let shipped: { text: string; policy: AuditPolicy } | undefined;

/** The shipped default policy's canonical JSON (read and checked once; a broken file stops the caller). */
export function shippedAuditPolicy(): string {
  shipped ??= (() => {
    const policy = parseAuditPolicy(shippedAuditPolicyFile, readFileSync(shippedAuditPolicyFile, 'utf8'));
    return { text: encodeAuditPolicy(policy), policy };
  })();
  return shipped.text;
}

/** The one JSON spelling of a policy: what the cluster replicates and what its digest covers. */
export function encodeAuditPolicy(policy: AuditPolicy): string {
  return JSON.stringify({
    rules: policy.rules.map((rule) => ({
      ...(rule.name === undefined ? {} : { name: rule.name }),
      ...(rule.operations === undefined ? {} : { operations: rule.operations }),
      ...(rule.users === undefined ? {} : { users: rule.users }),
      ...(rule.keys === undefined ? {} : { keys: rule.keys.map(canonicalSelector) }),
      ...(rule.outcomes === undefined ? {} : { outcomes: rule.outcomes }),
      level: rule.level,
      ...(rule.values === undefined || rule.values === 'none' ? {} : { values: rule.values }),
    })),
  });
}

function canonicalSelector(selector: AuditKeySelector): AuditKeySelector {
  if ('key' in selector) return { key: selector.key };
  if ('prefix' in selector) return { prefix: selector.prefix };
  if ('fromKey' in selector) return { fromKey: selector.fromKey };
  return { from: selector.from, to: selector.to };
}

/** The policy as a policy file (for `rampart audit policy show`). */
export function auditPolicyFile(policy: AuditPolicy): string {
  return stringify(JSON.parse(encodeAuditPolicy(policy)), { flowCollectionPadding: true });
}

/** SHA-256 of a policy's canonical JSON: how the trail names the policy an apply put in force. */
export function auditPolicyDigest(encoded: string): string {
  return createHash('sha256').update(encoded).digest('hex');
}

// ---- decisions ----

/** What the policy is asked about one event. */
export interface AuditSubject {
  /** The trail's action (`Put`, `Watch.create`, …); a Txn as `Txn` with `writes`. */
  readonly action: string;
  /** Whether a Txn has a put or delete in either branch (ignored for other actions). */
  readonly writes?: boolean;
  readonly user: string;
  readonly outcome: EventOutcome;
  /** Every key and range the request touches, in etcd's (key, range_end) convention. */
  readonly ranges: readonly { readonly key: Buffer; readonly rangeEnd: Buffer }[];
}

export interface AuditDecision {
  readonly level: AuditLevel;
  /** Whether values go into the event (as HMACs); only at level `request`. */
  readonly hmacValues: boolean;
  /** Whether a value written to (or compared at) `key` is in the deciding rule's key ranges. */
  readonly valueInScope: (key: Buffer) => boolean;
  /** The deciding rule (its name, or `rule N`), or undefined when none matched. */
  readonly rule?: string;
}

interface CompiledRule {
  readonly label: string;
  readonly level: AuditLevel;
  readonly hmacValues: boolean;
  readonly users?: ReadonlySet<string>;
  readonly outcomes?: ReadonlySet<EventOutcome>;
  readonly keys?: IntervalSet;
}

const anyKey = (): boolean => true;
const unmatched: AuditDecision = { level: 'metadata', hmacValues: false, valueInScope: anyKey };

function selectorInterval(selector: AuditKeySelector): { key: Buffer; rangeEnd: Buffer } {
  if ('key' in selector) return { key: Buffer.from(selector.key), rangeEnd: Buffer.alloc(0) };
  if ('prefix' in selector) return selector.prefix === '' ? { key: Buffer.of(0), rangeEnd: Buffer.of(0) } : { key: Buffer.from(selector.prefix), rangeEnd: prefixRangeEnd(Buffer.from(selector.prefix)) };
  if ('fromKey' in selector) return { key: Buffer.from(selector.fromKey), rangeEnd: Buffer.of(0) };
  return { key: Buffer.from(selector.from), rangeEnd: Buffer.from(selector.to) };
}

/** A policy compiled for deciding: per action, the rules that can apply to it, in order. */
export class CompiledAuditPolicy {
  private readonly byAction = new Map<string, readonly CompiledRule[]>();
  /** Rules for actions the policy does not know by name: those without `operations`. */
  private readonly unnamed: readonly CompiledRule[];

  constructor(readonly policy: AuditPolicy) {
    const compiled = policy.rules.map((rule, index): { rule: CompiledRule; actions?: ReadonlySet<string> } => ({
      rule: {
        label: rule.name ?? `rule ${index + 1}`,
        level: rule.level,
        hmacValues: rule.level === 'request' && rule.values === 'hmac',
        ...(rule.users === undefined ? {} : { users: new Set(rule.users) }),
        ...(rule.outcomes === undefined ? {} : { outcomes: new Set(rule.outcomes.map((name) => outcomeNames[name])) }),
        ...(rule.keys === undefined ? {} : { keys: new IntervalSet(rule.keys.map(selectorInterval).map((range) => intervalOf(range.key, range.rangeEnd))) }),
      },
      ...(rule.operations === undefined ? {} : { actions: new Set(rule.operations.flatMap((operation) => actionsOf(operation) ?? [])) }),
    }));
    for (const action of knownActions) {
      this.byAction.set(action, compiled.filter((entry) => entry.actions === undefined || entry.actions.has(action)).map((entry) => entry.rule));
    }
    this.unnamed = compiled.filter((entry) => entry.actions === undefined).map((entry) => entry.rule);
  }

  decide(subject: AuditSubject): AuditDecision {
    if (alwaysRecorded.has(subject.action)) return unmatched;
    const action = subject.action === 'Txn' ? (subject.writes === true ? 'Txn.write' : 'Txn.read') : subject.action;
    const rules = this.byAction.get(action) ?? this.unnamed;
    for (const rule of rules) {
      if (rule.outcomes !== undefined && !rule.outcomes.has(subject.outcome)) continue;
      if (rule.users !== undefined && !rule.users.has(subject.user)) continue;
      const keys = rule.keys;
      if (keys !== undefined && !subject.ranges.some((range) => keys.intersects(intervalOf(range.key, range.rangeEnd)))) continue;
      return {
        level: rule.level,
        hmacValues: rule.hmacValues,
        valueInScope: keys === undefined ? anyKey : (key) => keys.intersects(intervalOf(key, Buffer.alloc(0))),
        rule: rule.label,
      };
    }
    return unmatched;
  }
}

/** Compiles a policy's canonical JSON; the last one compiled is kept (members switch policies rarely). */
export function compiledAuditPolicy(encoded: string): CompiledAuditPolicy {
  if (lastCompiled?.encoded !== encoded) lastCompiled = { encoded, compiled: new CompiledAuditPolicy(parseAuditPolicy('(replicated audit policy)', encoded)) };
  return lastCompiled.compiled;
}
let lastCompiled: { encoded: string; compiled: CompiledAuditPolicy } | undefined;
