/**
 * Which audit policy a member applies to an event, and with which HMAC key: the one in the
 * replicated auth state (the same on every member), or the shipped default while the cluster has
 * none (a cluster started without bootstrap auth, or made before audit policies). Transport-neutral;
 * shared by handled calls (services.ts) and calls a transport refused (refusal-audit.ts).
 */
import type { AuthState } from '../auth/store.js';
import type { AuditLog } from '../audit/log.js';
import { auditPolicyDigest, compiledAuditPolicy, shippedAuditPolicy, type AuditDecision, type AuditSubject } from '../audit/policy.js';
import { auditHmacKeyOf, hmacValue } from '../audit/value-hmac.js';
import type { ValueRecorder } from './audit-request.js';

/** Recorded at metadata: what a member does when its policy cannot be compiled (fail safe, never silent). */
const recordEverything: AuditDecision = { level: 'metadata', hmacValues: false, valueInScope: () => true };

export function auditDecision(state: AuthState, subject: AuditSubject): AuditDecision {
  try {
    return compiledAuditPolicy(state.auditPolicy ?? shippedAuditPolicy()).decide(subject);
  } catch {
    // Only a policy not checked before it was proposed (or a broken shipped file) gets here.
    return recordEverything;
  }
}

/** How a decision records values: HMACs under the cluster's key, or not at all (no key yet, or no `values: hmac`). */
export function valueRecorder(state: AuthState, decision: AuditDecision): ValueRecorder | undefined {
  if (!decision.hmacValues) return undefined;
  const key = auditHmacKeyOf(state.auditHmacKey);
  if (key === undefined) return undefined;
  return { inScope: decision.valueInScope, hmac: (value) => hmacValue(key, value) };
}

/** The policy each trail last named (see `namePolicyInForce`). */
const namedPolicies = new WeakMap<AuditLog, string>();

/**
 * Before the first event a policy selects, the trail names that policy (`audit.policy`, target
 * `audit-policy:sha256:DIGEST`, as `rampart audit policy show` prints it): every member's trail says
 * which policy chose what follows it — after each start and each change, whichever member applied it.
 */
export function namePolicyInForce(trail: AuditLog, state: AuthState): void {
  const encoded = state.auditPolicy ?? shippedAuditPolicy();
  if (namedPolicies.get(trail) === encoded) return;
  namedPolicies.set(trail, encoded);
  trail.record({
    action: 'audit.policy',
    targets: [`audit-policy:sha256:${auditPolicyDigest(encoded)}`],
    outcome: 'allowed',
    ...(state.auditPolicy === undefined ? { detail: 'the shipped default (no policy applied)' } : {}),
  }).catch(() => undefined); // a trail that cannot be written stops the member through its own error handler
}
