/**
 * The audit event of a call a transport refused before any handler ran (malformed, oversized, an
 * unknown method or gateway path): the transport reports it, this records it with the identity the
 * connection's certificate gives (no token is read: the call never got that far). Transport-neutral.
 * How many are recorded one by one is refusal-limit.ts's business.
 */
import type { PeerCertificate } from 'node:tls';
import type { AuditLog } from '../audit/log.js';
import type { AuthHolder } from '../auth/store.js';
import { auditDecision, namePolicyInForce } from './audit-decision.js';
import { refusalEventsPerSecond, type UnrecordedRefusals } from './refusal-limit.js';

export interface TransportRefusal {
  /** The method path, e.g. `/etcdserverpb.KV/Put`. */
  readonly method: string;
  readonly peer: string;
  readonly certificate: PeerCertificate | undefined;
  /** The status name, e.g. `RESOURCE_EXHAUSTED`. */
  readonly code: string;
  readonly details: string;
  /** The method is not one this server has. */
  readonly unknownMethod: boolean;
}

export function recordRefusal(audit: AuditLog, auth: AuthHolder, refusal: TransportRefusal): Promise<void> {
  const commonName = refusal.certificate?.subject?.CN;
  const cn = typeof commonName === 'string' ? commonName : '';
  const user = cn === '' ? '' : auth.state.bindings.get(cn) ?? cn;
  // A known method by its RPC name, as its handled calls are; an unknown one by its whole path.
  const action = refusal.unknownMethod ? refusal.method : refusal.method.slice(refusal.method.lastIndexOf('/') + 1);
  // The request was never decoded: no keys, no request fields; the policy decides on the rest.
  if (auditDecision(auth.state, { action, user, outcome: 'failed', ranges: [] }).level === 'none') return Promise.resolve();
  namePolicyInForce(audit, auth.state);
  return audit.record({
    action,
    user,
    via: user === '' ? 'none' : 'certificate',
    source: refusal.peer,
    targets: [],
    outcome: 'failed',
    code: refusal.code,
    ...(refusal.details === '' ? {} : { detail: refusal.details }),
  });
}

/**
 * The event for requests the rate limit left out of the trail (refusal-limit.ts): how many, of
 * which codes, from which sources — `refusals` refused by a transport before any handler,
 * `denials` denied to callers that are no user. Recorded whatever the audit policy says: a flood is
 * never silent.
 */
export function recordUnrecordedRefusals(audit: AuditLog, summary: UnrecordedRefusals, kind: 'refusals' | 'denials' = 'refusals'): Promise<void> {
  const codes = [...summary.codes].map(([code, count]) => `${code}=${count}`).join(' ');
  const what = kind === 'refusals' ? 'refused requests' : 'requests denied to callers that are no user';
  return audit.record({
    action: `${kind}.unrecorded`,
    targets: [],
    outcome: 'failed',
    code: 'RESOURCE_EXHAUSTED',
    detail: `${summary.count} ${what} past ${refusalEventsPerSecond}/s not recorded one by one: ${codes}; sources ${summary.sources.join(' ')}`,
  });
}
