/**
 * Policy files (`policies/*.yaml`): users, roles, key-range grants and denies, certificate CN
 * bindings, and embedded tests, as reviewed code. A directory of files merges into one policy;
 * every problem is reported as `file:line: message`, and a policy with problems changes nothing.
 *
 *   users:
 *     - name: kube-apiserver
 *       roles: [kube-apiserver]
 *       certificates: [kube-apiserver]      # client certificate CNs that act as this user
 *   roles:
 *     - name: kube-apiserver
 *       grants:
 *         - { prefix: /registry/, access: readwrite }   # or key:, fromKey:, or from: + to:
 *       deny:
 *         - { prefix: /registry/secrets/, access: write }
 *   tests:
 *     - { as: kube-apiserver, access: write, key: /registry/pods/p1, expect: allow }
 *
 * The schema is zod's (a maintained validator whose error paths map straight back to YAML nodes).
 */
import { readFile, readdir } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { LineCounter, parseDocument, stringify, type Document } from 'yaml';
import { z } from 'zod';
import { nameProblem } from './names.js';
import { AuthDecider, decodePermission, emptyAuthState, policyOf, usersOfPolicy, type AuthState, type EncodedPermission, type PolicyState, type RoleRecord } from './store.js';
import { prefixRangeEnd } from '../storage/mvcc/range.js';
import { permissionType, rootName, type Access, type KeyPermission, type PermissionType } from './permissions.js';

/** The policies shipped with Rampart (root, auditor, kube-apiserver): `policies/` at the package root. */
export const shippedPolicies = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../../policies');

const name = z.string().min(1, 'must not be empty').regex(/^[^\s]+$/, 'must not contain spaces')
  .refine((value) => nameProblem(value) === undefined, 'must be at most 256 bytes with no control characters');
const accessName = z.enum(['read', 'write', 'readwrite']);
const keyText = z.string();

const rangeSchema = z.union([
  z.strictObject({ key: keyText.min(1, 'must not be empty'), access: accessName }),
  z.strictObject({ prefix: keyText, access: accessName }),
  z.strictObject({ fromKey: keyText.min(1, 'must not be empty'), access: accessName }),
  z.strictObject({ from: keyText.min(1, 'must not be empty'), to: keyText.min(1, 'must not be empty'), access: accessName }),
], { error: 'expected exactly one of key, prefix, fromKey, or from+to, with access: read, write or readwrite' });

const userSchema = z.strictObject({
  name,
  roles: z.array(name).default([]),
  certificates: z.array(name).default([]),
});
const roleSchema = z.strictObject({
  name,
  grants: z.array(rangeSchema).default([]),
  deny: z.array(rangeSchema).default([]),
});
const testSchema = z.strictObject({
  as: name,
  access: z.enum(['read', 'write']),
  key: keyText.min(1, 'must not be empty'),
  rangeEnd: keyText.optional(),
  prefix: z.boolean().optional(),
  expect: z.enum(['allow', 'deny']),
});
const fileSchema = z.strictObject({
  users: z.array(userSchema).default([]),
  roles: z.array(roleSchema).default([]),
  tests: z.array(testSchema).default([]),
});

type PolicyFile = z.infer<typeof fileSchema>;
type RangeSpec = z.infer<typeof rangeSchema>;

export interface PolicyTest {
  readonly as: string;
  readonly access: Access;
  readonly key: Buffer;
  readonly rangeEnd: Buffer;
  readonly expect: 'allow' | 'deny';
  readonly where: string;
  readonly description: string;
}

export interface Policy {
  readonly state: PolicyState;
  readonly tests: readonly PolicyTest[];
  readonly files: readonly string[];
}

export class PolicyError extends Error {
  constructor(readonly problems: readonly string[]) {
    super(problems.join('\n'));
    this.name = 'PolicyError';
  }
}

export { prefixRangeEnd };

const typeOf: Record<z.infer<typeof accessName>, PermissionType> = { read: permissionType.read, write: permissionType.write, readwrite: permissionType.readwrite };

function toPermission(spec: RangeSpec): KeyPermission {
  const type = typeOf[spec.access];
  if ('key' in spec) return { type, key: Buffer.from(spec.key), rangeEnd: Buffer.alloc(0) };
  if ('prefix' in spec) {
    if (spec.prefix === '') return { type, key: Buffer.of(0), rangeEnd: Buffer.of(0) };
    const key = Buffer.from(spec.prefix);
    return { type, key, rangeEnd: prefixRangeEnd(key) };
  }
  if ('fromKey' in spec) return { type, key: Buffer.from(spec.fromKey), rangeEnd: Buffer.of(0) };
  return { type, key: Buffer.from(spec.from), rangeEnd: Buffer.from(spec.to) };
}

/** The readable form of a permission, the inverse of `toPermission`. */
export function describePermission(permission: KeyPermission): Record<string, string> {
  const access = (['read', 'write', 'readwrite'] as const)[permission.type];
  const { key, rangeEnd } = permission;
  if (rangeEnd.length === 0) return { key: key.toString(), access };
  if (rangeEnd.length === 1 && rangeEnd[0] === 0) {
    return key.length === 1 && key[0] === 0 ? { prefix: '', access } : { fromKey: key.toString(), access };
  }
  if (prefixRangeEnd(key).equals(rangeEnd)) return { prefix: key.toString(), access };
  return { from: key.toString(), to: rangeEnd.toString(), access };
}

interface Located {
  readonly document: Document;
  readonly lines: LineCounter;
  readonly file: string;
}

function lineOf(located: Located, pathParts: readonly PropertyKey[]): number {
  for (let length = pathParts.length; length >= 0; length--) {
    const node = located.document.getIn(pathParts.slice(0, length) as (string | number)[], true) as { range?: [number, number, number] } | undefined;
    if (node?.range !== undefined) return located.lines.linePos(node.range[0]).line;
  }
  return 1;
}

/**
 * The entries of a file that failed the schema which pass it one by one, at their original indexes
 * (a sparse array: forEach skips the holes and reports lines by the right index), so the checks
 * across entries (undefined roles, duplicates, test users) still run and every problem is listed
 * at once. Names of broken entries are kept: a reference to them is not reported a second time.
 */
function salvage(raw: unknown): { parsed: PolicyFile; brokenNames: string[] } {
  const brokenNames: string[] = [];
  const section = <T>(key: string, schema: z.ZodType<T>): T[] => {
    const entries = typeof raw === 'object' && raw !== null ? (raw as Record<string, unknown>)[key] : undefined;
    const kept: T[] = [];
    if (!Array.isArray(entries)) return kept;
    entries.forEach((entry: unknown, index) => {
      const result = schema.safeParse(entry);
      if (result.success) kept[index] = result.data;
      else if (typeof entry === 'object' && entry !== null && typeof (entry as { name?: unknown }).name === 'string') brokenNames.push((entry as { name: string }).name);
    });
    return kept;
  };
  return { parsed: { users: section('users', userSchema), roles: section('roles', roleSchema), tests: section('tests', testSchema) }, brokenNames };
}

/** Reads and checks one file: its parsed content (what of it is valid), and problems as `file:line: message`. */
function readPolicyText(file: string, text: string): { parsed?: PolicyFile; brokenNames?: string[]; located: Located; problems: string[] } {
  const lines = new LineCounter();
  const document = parseDocument(text, { lineCounter: lines, prettyErrors: false, uniqueKeys: true });
  const located = { document, lines, file };
  const problems = document.errors.map((error) => `${file}:${lines.linePos(error.pos[0]).line}: ${error.message.split('\n')[0] ?? 'YAML error'}`);
  if (problems.length > 0) return { located, problems };
  const result = fileSchema.safeParse(document.toJS() ?? {});
  if (!result.success) {
    for (const issue of result.error.issues) {
      // An unknown key is reported at the key itself, not at the object holding it.
      const at = issue.code === 'unrecognized_keys' ? [...issue.path, issue.keys[0] ?? ''] : issue.path;
      const where = at.length === 0 ? '' : ` (${at.join('.')})`;
      problems.push(`${file}:${lineOf(located, at)}: ${issue.message}${where}`);
    }
    return { ...salvage(document.toJS()), located, problems };
  }
  return { parsed: result.data, located, problems };
}

/** The audit policy lives next to the RBAC files (`policies/audit.yaml`) but is not one of them. */
const auditPolicyName = /^audit\.ya?ml$/;

/** Loads every `*.yaml`/`*.yml` in a directory (or one file) into one validated policy; `audit.yaml` is the audit policy's (audit/policy.ts). */
export async function loadPolicy(target: string): Promise<Policy> {
  const entries = await readdir(target).then(
    (names) => names.filter((entry) => /\.ya?ml$/.test(entry) && !auditPolicyName.test(entry)).sort().map((entry) => path.join(target, entry)),
    () => [target],
  );
  const texts = await Promise.all(entries.map(async (file) => ({ file, text: await readFile(file, 'utf8') })));
  return parsePolicy(texts);
}

export function parsePolicy(texts: readonly { file: string; text: string }[]): Policy {
  const problems: string[] = [];
  const users = new Map<string, { roles: string[]; where: string }>();
  const roles = new Map<string, { record: RoleRecord; where: string }>();
  const bindings = new Map<string, { user: string; where: string }>();
  const roleReferences: { role: string; where: string }[] = [];
  const tests: PolicyTest[] = [];
  const broken = new Set<string>();
  for (const { file, text } of texts) {
    const { parsed, brokenNames, located, problems: fileProblems } = readPolicyText(file, text);
    problems.push(...fileProblems);
    for (const brokenName of brokenNames ?? []) broken.add(brokenName);
    if (parsed === undefined) continue;
    const at = (...parts: (string | number)[]): string => `${file}:${lineOf(located, parts)}`;
    parsed.users.forEach((user, index) => {
      const where = at('users', index, 'name');
      const previous = users.get(user.name);
      if (previous !== undefined) problems.push(`${where}: user ${user.name} is already defined at ${previous.where}`);
      users.set(user.name, { roles: user.roles, where });
      user.roles.forEach((role, roleIndex) => roleReferences.push({ role, where: at('users', index, 'roles', roleIndex) }));
      user.certificates.forEach((cn, cnIndex) => {
        const bindingWhere = at('users', index, 'certificates', cnIndex);
        const bound = bindings.get(cn);
        if (bound !== undefined) problems.push(`${bindingWhere}: certificate CN ${cn} is already bound to ${bound.user} at ${bound.where}`);
        else if (cn !== user.name) bindings.set(cn, { user: user.name, where: bindingWhere });
      });
    });
    parsed.roles.forEach((role, index) => {
      const where = at('roles', index, 'name');
      const previous = roles.get(role.name);
      if (previous !== undefined) problems.push(`${where}: role ${role.name} is already defined at ${previous.where}`);
      role.grants.forEach((grant, grantIndex) => checkRange(grant, at('roles', index, 'grants', grantIndex), problems));
      role.deny.forEach((deny, denyIndex) => checkRange(deny, at('roles', index, 'deny', denyIndex), problems));
      roles.set(role.name, { record: { name: role.name, permissions: dedupe(role.grants.map(toPermission)), denies: dedupe(role.deny.map(toPermission)) }, where });
    });
    parsed.tests.forEach((test, index) => {
      const key = Buffer.from(test.key);
      const rangeEnd = test.prefix === true ? prefixRangeEnd(key) : Buffer.from(test.rangeEnd ?? '');
      const description = `as ${test.as}, ${test.access} ${test.key}${test.prefix === true ? ' (prefix)' : test.rangeEnd !== undefined ? `..${test.rangeEnd}` : ''}: ${test.expect}`;
      tests.push({ as: test.as, access: test.access, key, rangeEnd, expect: test.expect, where: at('tests', index), description });
    });
  }
  for (const reference of roleReferences) {
    if (reference.role !== rootName && !roles.has(reference.role) && !broken.has(reference.role)) problems.push(`${reference.where}: role ${reference.role} is not defined`);
  }
  for (const [cn, binding] of bindings) {
    if (users.has(cn)) problems.push(`${binding.where}: certificate CN ${cn} is also a user name; a binding would hide that user`);
  }
  for (const test of tests) {
    if (!users.has(test.as) && !broken.has(test.as)) problems.push(`${test.where}: test user ${test.as} is not defined`);
  }
  if (problems.length > 0) throw new PolicyError(problems);
  return {
    state: {
      users: [...users].map(([userName, user]) => ({ name: userName, roles: user.roles })),
      roles: [...roles.values()].map((role) => role.record),
      bindings: new Map([...bindings].map(([cn, binding]) => [cn, binding.user])),
    },
    tests,
    files: texts.map((entry) => entry.file),
  };
}

function checkRange(spec: RangeSpec, where: string, problems: string[]): void {
  if ('from' in spec && Buffer.compare(Buffer.from(spec.to), Buffer.from(spec.from)) <= 0) problems.push(`${where}: "to" must sort after "from"`);
}

function dedupe(permissions: KeyPermission[]): KeyPermission[] {
  const seen = new Map<string, KeyPermission>();
  for (const permission of permissions) seen.set(`${permission.key.toString('hex')}:${permission.rangeEnd.toString('hex')}`, permission);
  return [...seen.values()];
}

/** The auth state a policy describes, over a base state (passwords, revision and enablement kept). */
export function stateWithPolicy(base: AuthState, policy: PolicyState, enabled = true): AuthState {
  return {
    ...base,
    enabled,
    users: usersOfPolicy(base, policy.users),
    roles: new Map(policy.roles.map((role) => [role.name, role])),
    bindings: new Map(policy.bindings),
  };
}

export interface TestResult {
  readonly test: PolicyTest;
  readonly passed: boolean;
}

/** Runs the embedded tests as if auth were enabled with exactly this policy. */
export function runPolicyTests(policy: Policy): TestResult[] {
  const decider = new AuthDecider(stateWithPolicy(emptyAuthState, policy.state));
  return policy.tests.map((test) => ({ test, passed: decider.isPermitted(test.as, test.key, test.rangeEnd, test.access) === (test.expect === 'allow') }));
}

/** A policy (users, roles, bindings) as a policy file. */
export function exportPolicy(state: PolicyState): string {
  const certificates = (user: string): string[] => [...state.bindings].filter(([, bound]) => bound === user).map(([cn]) => cn).sort();
  const body = {
    users: [...state.users].sort((a, b) => a.name.localeCompare(b.name)).map((user) => ({ name: user.name, roles: [...user.roles].sort(), ...(certificates(user.name).length > 0 ? { certificates: certificates(user.name) } : {}) })),
    roles: [...state.roles].sort((a, b) => a.name.localeCompare(b.name)).map((role) => ({
      name: role.name,
      ...(role.permissions.length > 0 ? { grants: role.permissions.map(describePermission) } : {}),
      ...(role.denies.length > 0 ? { deny: role.denies.map(describePermission) } : {}),
    })),
  };
  return stringify(body, { flowCollectionPadding: true });
}

/** The policy part of an auth state. */
export function policyStateOf(state: AuthState): PolicyState {
  return { users: [...state.users.values()].map((user) => ({ name: user.name, roles: [...user.roles] })), roles: [...state.roles.values()], bindings: state.bindings };
}

/** Human-readable differences from `live` to `wanted`: `+` added, `-` removed, `~` changed. Empty when equal. */
export function diffPolicy(live: PolicyState, wanted: PolicyState): string[] {
  const lines: string[] = [];
  const liveUsers = new Map(live.users.map((user) => [user.name, [...user.roles].sort().join(',')]));
  const wantedUsers = new Map(wanted.users.map((user) => [user.name, [...new Set(user.roles)].sort().join(',')]));
  for (const [userName, roles] of wantedUsers) {
    const before = liveUsers.get(userName);
    if (before === undefined) lines.push(`+ user ${userName} roles [${roles}]`);
    else if (before !== roles) lines.push(`~ user ${userName} roles [${before}] -> [${roles}]`);
  }
  for (const userName of liveUsers.keys()) if (!wantedUsers.has(userName)) lines.push(`- user ${userName}`);
  const ranges = (role: RoleRecord): string[] => [
    ...role.permissions.map((entry) => `grant ${JSON.stringify(describePermission(entry))}`),
    ...role.denies.map((entry) => `deny ${JSON.stringify(describePermission(entry))}`),
  ].sort();
  const liveRoles = new Map(live.roles.map((role) => [role.name, ranges(role)]));
  for (const role of wanted.roles) {
    const before = liveRoles.get(role.name);
    const after = ranges(role);
    if (before === undefined) {
      lines.push(`+ role ${role.name}`, ...after.map((entry) => `+   ${entry}`));
      continue;
    }
    for (const entry of after) if (!before.includes(entry)) lines.push(`~ role ${role.name}: + ${entry}`);
    for (const entry of before) if (!after.includes(entry)) lines.push(`~ role ${role.name}: - ${entry}`);
  }
  for (const roleName of liveRoles.keys()) if (!wanted.roles.some((role) => role.name === roleName)) lines.push(`- role ${roleName}`);
  for (const [cn, user] of wanted.bindings) {
    const before = live.bindings.get(cn);
    if (before !== user) lines.push(before === undefined ? `+ certificate ${cn} -> user ${user}` : `~ certificate ${cn} -> user ${before} -> ${user}`);
  }
  for (const cn of live.bindings.keys()) if (!wanted.bindings.has(cn)) lines.push(`- certificate ${cn}`);
  return lines;
}

/** Canonical JSON of a policy, for the wire (keys base64). */
export function encodePolicy(state: PolicyState): string {
  return JSON.stringify(policyOf(stateWithPolicy(emptyAuthState, state)));
}

export function decodePolicy(text: string): PolicyState {
  const raw = JSON.parse(text) as {
    users: { name: string; roles: string[] }[];
    roles: { name: string; permissions: EncodedPermission[]; denies: EncodedPermission[] }[];
    bindings: [string, string][];
  };
  return {
    users: raw.users.map((user) => ({ name: String(user.name), roles: user.roles.map(String) })),
    roles: raw.roles.map((role) => ({ name: String(role.name), permissions: role.permissions.map(decodePermission), denies: role.denies.map(decodePermission) })),
    bindings: new Map(raw.bindings.map(([cn, user]) => [String(cn), String(user)])),
  };
}
