/**
 * One audit event: its fields, their bounds, its canonical line and its hash.
 *
 * Every text that reaches the trail comes from a caller (names, keys, peer addresses, error
 * details) and is bounded here, whatever the API layer already refused: a field longer than its
 * bound keeps its start and ends with a marker naming its full length and SHA-256, so an auditor can
 * still match it against a known name without the trail (or a member's memory) holding megabytes.
 *
 * A line is canonical when it is exactly what `eventLine` writes for the event it parses to: fields
 * in one fixed order, nothing else, JSON escapes only where JSON.stringify puts them. Verification
 * refuses any other spelling of the same event (a user written with `\u` escapes would hide it from
 * grep while hashing the same).
 */
import { createHash, hash as oneShotHash } from 'node:crypto';

export const genesisHash = '0'.repeat(64);

/** Characters kept of one name, key, address or detail before it is cut with a marker. */
export const auditFieldCharactersMax = 512;
/** Request fields kept in one event before the rest is summarised by count and hash. */
export const auditRequestFieldsMax = 128;
/** Characters of all targets of one event before the rest is summarised (sensitive keys are always named). */
export const auditTargetsCharactersMax = 16 * 1024;
/** The longest line a writer produces; readers refuse longer ones without holding them. */
export const auditLineBytesMax = 256 * 1024;

export type AuditOutcome = 'allowed' | 'denied' | 'failed';

export interface AuditFields {
  /** e.g. `Put`, `Authenticate`, `Watch.create`, `audit.start`. */
  readonly action: string;
  readonly user?: string;
  /** How the user was identified: `token`, `certificate`, `password`, or `none`. */
  readonly via?: string;
  readonly source?: string;
  /** Keys and ranges touched (printable text, or `base64:` for other bytes), names of users or roles. */
  readonly targets?: readonly string[];
  /** `allowed`, `denied` (permission or authentication) or `failed` (any other error). */
  readonly outcome: AuditOutcome;
  /** The gRPC status name. */
  readonly code?: string;
  readonly detail?: string | undefined;
  /**
   * The request's fields (`name=value`), only when the audit policy's level for the event is
   * `request` (audit/policy.ts): never a value, unless as `hmac-sha256:…` (audit/value-hmac.ts).
   */
  readonly request?: readonly string[] | undefined;
}

export interface AuditEvent extends AuditFields {
  readonly seq: number;
  readonly time: string;
  readonly member: string;
  readonly prev: string;
  readonly hash: string;
}

/** The order of fields in a written line; no other field may appear. */
const fieldOrder = ['action', 'user', 'via', 'source', 'targets', 'outcome', 'code', 'detail', 'request', 'seq', 'time', 'member', 'prev', 'hash'] as const;
const fieldNames = new Set<string>(fieldOrder);

const sha256 = (text: string): string => createHash('sha256').update(text).digest('hex');

/** Room left for a cut marker, so that a text already cut (a key) is not cut again. */
const markerCharactersMax = 128;

/** `text` when short enough; otherwise its start and `…[cut: N chars sha256:H]`. */
export function boundText(text: string, charactersMax = auditFieldCharactersMax): string {
  if (text.length <= charactersMax + markerCharactersMax) return text;
  return `${text.slice(0, charactersMax)}…[cut: ${text.length} chars sha256:${sha256(text)}]`;
}

/** A key as audit text: printable ASCII as is, anything else as base64; bounded either way. */
export function auditKey(key: Buffer): string {
  // Only the part that can be kept is decoded: a 1.5 MiB key never becomes a 2 MiB string.
  const keptBytes = auditFieldCharactersMax;
  const head = key.subarray(0, keptBytes);
  const marker = key.length > keptBytes ? `…[cut: ${key.length} bytes sha256:${createHash('sha256').update(key).digest('hex')}]` : '';
  let printable = true;
  for (const byte of head) {
    if (byte < 0x20 || byte > 0x7e) {
      printable = false;
      break;
    }
  }
  return printable ? `${head.toString('latin1')}${marker}` : `base64:${head.toString('base64')}${marker}`;
}

/**
 * The fields of an event with every caller-supplied text bounded; the first `alwaysNamed` targets
 * (sensitive keys) are kept whatever the targets' bound.
 */
export function boundFields(fields: AuditFields, alwaysNamed = 0): AuditFields {
  const bounded: { -readonly [K in keyof AuditFields]: AuditFields[K] } = { action: boundText(fields.action, 128), outcome: fields.outcome };
  if (fields.user !== undefined) bounded.user = boundText(fields.user);
  if (fields.via !== undefined) bounded.via = boundText(fields.via, 32);
  if (fields.source !== undefined) bounded.source = boundText(fields.source, 256);
  if (fields.targets !== undefined) bounded.targets = boundTargets(fields.targets, alwaysNamed);
  if (fields.code !== undefined) bounded.code = boundText(fields.code, 64);
  if (fields.detail !== undefined) bounded.detail = boundText(fields.detail);
  if (fields.request !== undefined) bounded.request = boundRequestFields(fields.request);
  return bounded;
}

/**
 * Targets within `auditTargetsCharactersMax`: each one bounded, then as many as fit, then one
 * `…[N more targets sha256:H]` entry over all of them. Callers put the targets that must never be
 * summarised (sensitive keys) first; those are kept even past the bound.
 */
export function boundTargets(targets: readonly string[], alwaysNamed = 0): string[] {
  const kept: string[] = [];
  let characters = 0;
  for (const [index, raw] of targets.entries()) {
    const target = boundText(raw);
    if (index >= alwaysNamed && characters + target.length > auditTargetsCharactersMax) {
      const rest = targets.slice(index);
      kept.push(`…[${rest.length} more targets sha256:${sha256(rest.join('\n'))}]`);
      return kept;
    }
    characters += target.length;
    kept.push(target);
  }
  return kept;
}

/** At most `auditRequestFieldsMax` request fields, each bounded; past it one `…[N more fields sha256:H]`. */
function boundRequestFields(fields: readonly string[]): string[] {
  const kept = fields.slice(0, auditRequestFieldsMax).map((field) => boundText(field));
  if (fields.length > auditRequestFieldsMax) {
    const rest = fields.slice(auditRequestFieldsMax);
    kept.push(`…[${rest.length} more fields sha256:${sha256(rest.join('\n'))}]`);
  }
  return kept;
}

/** Positions in `fieldOrder` of the fields a hash covers (all but `prev`; `hash` is never there when it is computed), in canonical (sorted) order. */
const hashOrder = fieldOrder.map((name, position) => ({ name, position })).filter(({ name }) => name !== 'prev').sort((a, b) => (a.name < b.name ? -1 : 1)).map(({ position }) => position);
const lineOrder = fieldOrder.map((_, position) => position);
/** `"name":` of each field, by position in `fieldOrder`. */
const fieldPrefixes = fieldOrder.map((name) => `"${name}":`);

/** JSON text of a field value of a written event's shape (text, number, list of texts); undefined for any other. */
function encodedValue(value: unknown): string | undefined {
  const shaped = typeof value === 'string' || typeof value === 'number' || (Array.isArray(value) && value.every((item) => typeof item === 'string'));
  return shaped ? JSON.stringify(value) : undefined;
}

/**
 * The fields of `event` as JSON texts by position in `fieldOrder` (undefined: absent), read by name
 * (other properties are not looked at); undefined when a field has a shape no written event has.
 */
function encodedFields(event: object): (string | undefined)[] | undefined {
  const source = event as Record<string, unknown>;
  const encoded: (string | undefined)[] = new Array<string | undefined>(fieldOrder.length);
  for (let position = 0; position < fieldOrder.length; position++) {
    const value = source[fieldOrder[position] as string];
    if (value === undefined) continue;
    const text = encodedValue(value);
    if (text === undefined) return undefined;
    encoded[position] = text;
  }
  return encoded;
}

/** Whether `event` has no property other than the fields (the general path spells those). */
function onlyFields(event: object): boolean {
  for (const name of Object.keys(event)) if (!fieldNames.has(name)) return false;
  return true;
}

/** `{"a":…,"b":…}` of the fields of `encoded` at `order`, in that order (JSON.stringify's spelling). */
function objectText(encoded: readonly (string | undefined)[], order: readonly number[]): string {
  let text = '';
  for (const position of order) {
    const value = encoded[position];
    if (value !== undefined) text += `${text === '' ? '{' : ','}${fieldPrefixes[position] as string}${value}`;
  }
  return text === '' ? '{}' : `${text}}`;
}

/** The hash of an event: SHA-256 over its previous hash and its canonical JSON without `hash`. */
export function hashEvent(event: Omit<AuditEvent, 'hash'>): string {
  const { prev } = event;
  const encoded = onlyFields(event) ? encodedFields(event) : undefined;
  let canonical: string;
  if (encoded === undefined) {
    const { prev: _prev, ...rest } = event;
    canonical = JSON.stringify(rest, Object.keys(rest).sort());
  } else {
    canonical = objectText(encoded, hashOrder);
  }
  return oneShotHash('sha256', `${prev}\n${canonical}`, 'hex');
}

/** The one way an event is written: fields in `fieldOrder`, absent ones left out. */
export function eventLine(event: AuditEvent): string {
  const encoded = encodedFields(event);
  if (encoded !== undefined) return objectText(encoded, lineOrder);
  const ordered: Record<string, unknown> = {};
  const source = event as unknown as Record<string, unknown>;
  for (const name of fieldOrder) if (source[name] !== undefined) ordered[name] = source[name];
  return JSON.stringify(ordered);
}

/**
 * The hash and the line of an event built by the writer (its fields and nothing else), each field
 * spelled once: what `hashEvent` and `eventLine` give for it, in one pass instead of two.
 */
export function chainedEvent(event: Omit<AuditEvent, 'hash'>): { readonly line: string; readonly hash: string } {
  const encoded = encodedFields(event);
  if (encoded === undefined) {
    const hash = hashEvent(event);
    return { line: eventLine({ ...event, hash }), hash };
  }
  const hash = oneShotHash('sha256', `${event.prev}\n${objectText(encoded, hashOrder)}`, 'hex');
  encoded[fieldOrder.length - 1] = `"${hash}"`;
  return { line: objectText(encoded, lineOrder), hash };
}

/** JSON text of a list of texts; undefined when an item is not a text (the general path spells it). */
function encodedTexts(values: readonly string[]): string | undefined {
  for (const value of values) if (typeof value !== 'string') return undefined;
  return JSON.stringify(values);
}

/**
 * The hash and the line of the event of `fields` (already bounded) chained as event `seq` after
 * `prev`: what `chainedEvent` gives for `{ ...fields, seq, time, member, prev }`, without building
 * that object (the writer's hot path: one per audited request).
 */
export function chainFields(fields: AuditFields, seq: number, time: string, member: string, prev: string): { readonly line: string; readonly hash: string } {
  const encoded: (string | undefined)[] = new Array<string | undefined>(fieldOrder.length);
  const texts = [fields.action, fields.user, fields.via, fields.source] as const;
  for (let position = 0; position < texts.length; position++) {
    const value = texts[position];
    if (value === undefined) continue;
    if (typeof value !== 'string') return chainedEvent({ ...fields, seq, time, member, prev });
    encoded[position] = JSON.stringify(value);
  }
  if (fields.targets !== undefined) {
    const text = encodedTexts(fields.targets);
    if (text === undefined) return chainedEvent({ ...fields, seq, time, member, prev });
    encoded[4] = text;
  }
  if (typeof fields.outcome !== 'string' || (fields.code !== undefined && typeof fields.code !== 'string') || (fields.detail !== undefined && typeof fields.detail !== 'string')) {
    return chainedEvent({ ...fields, seq, time, member, prev });
  }
  encoded[5] = JSON.stringify(fields.outcome);
  if (fields.code !== undefined) encoded[6] = JSON.stringify(fields.code);
  if (fields.detail !== undefined) encoded[7] = JSON.stringify(fields.detail);
  if (fields.request !== undefined) {
    const text = encodedTexts(fields.request);
    if (text === undefined) return chainedEvent({ ...fields, seq, time, member, prev });
    encoded[8] = text;
  }
  encoded[9] = JSON.stringify(seq);
  encoded[10] = JSON.stringify(time);
  encoded[11] = JSON.stringify(member);
  encoded[12] = JSON.stringify(prev);
  const hash = oneShotHash('sha256', `${prev}\n${objectText(encoded, hashOrder)}`, 'hex');
  encoded[13] = `"${hash}"`;
  return { line: objectText(encoded, lineOrder), hash };
}

/** A line as an event, or why it is not one written by Rampart (shape and canonical spelling). */
export function parseEventLine(line: string): AuditEvent | string {
  let parsed: unknown;
  try {
    parsed = JSON.parse(line);
  } catch {
    return 'not a JSON event (torn or altered)';
  }
  if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) return 'not a JSON event (torn or altered)';
  const record = parsed as Record<string, unknown>;
  for (const name of Object.keys(record)) if (!fieldNames.has(name)) return `unknown field ${JSON.stringify(boundText(name, 64))} (altered)`;
  const text = (name: string, required: boolean): boolean => (record[name] === undefined ? !required : typeof record[name] === 'string');
  const shaped = text('action', true) && text('user', false) && text('via', false) && text('source', false) && text('code', false) && text('detail', false)
    && text('time', true) && text('member', true) && text('prev', true) && text('hash', true)
    && ['allowed', 'denied', 'failed'].includes(record.outcome as string)
    && Number.isSafeInteger(record.seq) && (record.seq as number) >= 0
    && (record.targets === undefined || (Array.isArray(record.targets) && record.targets.every((target) => typeof target === 'string')))
    && (record.request === undefined || (Array.isArray(record.request) && record.request.every((field) => typeof field === 'string')));
  if (!shaped) return 'not an audit event (a field is missing or of the wrong type; altered)';
  const event = record as unknown as AuditEvent;
  if (eventLine(event) !== line) return 'not in canonical form (the same event spelled differently, e.g. with \\u escapes or reordered fields; altered)';
  return event;
}
