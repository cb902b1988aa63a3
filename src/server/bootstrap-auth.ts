/**
 * Secure by default for every way of starting a cluster, not only `rampart up`: on a brand-new
 * cluster (auth never touched: revision 1, no users or roles), its first leader proposes one entry
 * that applies the default policies and enables auth together, with the shipped audit policy and a
 * new audit HMAC key in force from that entry on (`bootstrap`, refused on anything but
 * a pristine store, so two members racing make the second a no-op).
 *
 * A member started with bootstrap auth serves no client until it sees auth enabled (the caller
 * waits for `secured` before opening its client port): nobody holding a certificate can get a
 * request in first and leave the cluster with auth off. That holds also when another member, started
 * with `--no-bootstrap-auth`, leads and the operator secures the cluster by hand in two steps
 * (`rampart policy apply`, then `etcdctl auth enable`): between the two, auth is changed but still
 * off, and this member keeps its port closed. A cluster whose auth is off on purpose is served only
 * by members started with `--no-bootstrap-auth`. A bootstrap the cluster refuses for any reason but
 * a lost race is fatal (`onFatal`). `--no-bootstrap-auth` turns all of this off.
 */
import type { Logger } from 'pino';
import { isRampartError } from '../errors.js';
import { isPristineAuth, type PolicyState } from '../auth/store.js';
import { newSigningKey } from '../auth/token.js';
import { shippedAuditPolicy } from '../audit/policy.js';
import { newAuditHmacKey } from '../audit/value-hmac.js';
import type { Member } from './member.js';

export interface BootstrapAuth {
  /** Resolves once this member has applied an auth state with auth enabled. */
  readonly secured: Promise<void>;
  stop(): void;
}

/** `auditPolicy`: the audit policy's canonical JSON (audit/policy.ts) the cluster starts with. */
export function bootstrapAuth(member: Member, policy: PolicyState, logger: Logger, onFatal: (error: Error) => void, intervalMs = 250, auditPolicy = shippedAuditPolicy()): BootstrapAuth {
  let stopped = false;
  let running = false;
  let markSecured!: () => void;
  const secured = new Promise<void>((resolve) => {
    markSecured = resolve;
  });
  let reportedRevision: number | undefined;
  const attempt = async (): Promise<void> => {
    const state = member.auth.state;
    if (state.enabled) {
      finish();
      return;
    }
    if (!isPristineAuth(state)) {
      // Changed but off: someone else's to enable (`etcdctl auth enable`); said once per auth revision.
      if (reportedRevision !== state.revision) {
        reportedRevision = state.revision;
        logger.error({ revision: state.revision }, 'auth is DISABLED on this cluster: not serving clients until it is enabled (etcdctl auth enable), or start this member with --no-bootstrap-auth to serve with auth off');
      }
      return;
    }
    if (!member.isLeader) return;
    try {
      await member.authChange({ op: 'bootstrap', policy, signingKey: newSigningKey(), auditPolicy, auditHmacKey: newAuditHmacKey() });
      logger.info({ users: policy.users.map((user) => user.name) }, 'new cluster: applied the default policies and enabled auth');
    } catch (error) {
      if (isRampartError(error) && error.code === 'AuthOldRevision') return; // another member's bootstrap won: the next attempt sees it
      if (isRampartError(error)) {
        finish();
        onFatal(new Error(`cannot secure the new cluster: the bootstrap policies were refused (${error.message})`));
        return;
      }
      logger.warn({ err: error instanceof Error ? error.message : String(error) }, 'could not enable auth yet; retrying');
    }
  };
  const timer = setInterval(() => {
    if (running || stopped) return;
    running = true;
    void attempt().finally(() => (running = false));
  }, intervalMs);
  timer.unref();
  const finish = (): void => {
    stopped = true;
    clearInterval(timer);
    markSecured();
  };
  return { secured, stop: finish };
}
