/**
 * Values in the audit trail, as Vault records them: never in clear, only as HMAC-SHA256 under the
 * cluster's audit HMAC key (32 random bytes made at bootstrap, replicated in the auth state and
 * sealed at rest with it). An auditor who knows a value asks the cluster for its HMAC
 * (`rampart audit hmac VALUE`) and finds it in the trail; the trail alone does not reveal it, and a
 * plain hash would (a guessable value hashes the same everywhere).
 *
 * Never log the key, never put it in an event.
 */
import { createHmac, randomBytes } from 'node:crypto';

export const auditHmacKeyBytes = 32;
const marker = 'hmac-sha256:';

/** A fresh key, base64 (as the auth state keeps it). */
export function newAuditHmacKey(): string {
  return randomBytes(auditHmacKeyBytes).toString('base64');
}

/** A key as kept in the auth state, or undefined when it is not one (absent, or malformed). */
export function auditHmacKeyOf(encoded: string | undefined): Buffer | undefined {
  if (encoded === undefined) return undefined;
  const key = Buffer.from(encoded, 'base64');
  return key.length === auditHmacKeyBytes ? key : undefined;
}

/** `hmac-sha256:<hex>` of a value: how the trail and `rampart audit hmac` spell it. */
export function hmacValue(key: Buffer, value: Buffer): string {
  if (key.length !== auditHmacKeyBytes) throw new Error('assertion failed: an audit HMAC key is 32 bytes');
  return `${marker}${createHmac('sha256', key).update(value).digest('hex')}`;
}
