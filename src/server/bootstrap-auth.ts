/**
 * Secure by default for every way of starting a cluster, not only `rampart up`: on a brand-new
 * cluster (auth never touched: revision 1, no users), its first leader applies the default policies
 * and enables auth. The policy change is guarded by that revision, so two members racing, or an
 * operator who got there first, can only make it a no-op. `--no-bootstrap-auth` turns it off.
 */
import type { Logger } from 'pino';
import { isRampartError } from '../errors.js';
import type { PolicyState } from '../auth/store.js';
import { newSigningKey } from '../auth/token.js';
import type { Member } from './member.js';

const pristineRevision = 1;

export function bootstrapAuth(member: Member, policy: PolicyState, logger: Logger, intervalMs = 250): () => void {
  let stopped = false;
  let running = false;
  const attempt = async (): Promise<void> => {
    const state = member.auth.state;
    if (state.enabled || state.revision !== pristineRevision || state.users.size > 0) {
      stop();
      return;
    }
    if (!member.isLeader) return;
    try {
      await member.authChange({ op: 'policyApply', policy, expectRevision: pristineRevision });
      await member.authChange({ op: 'enable', signingKey: newSigningKey() });
      logger.info({ users: policy.users.map((user) => user.name) }, 'new cluster: applied the default policies and enabled auth');
      stop();
    } catch (error) {
      if (isRampartError(error) && error.code === 'AuthOldRevision') {
        stop(); // someone else changed auth first: theirs stands
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
  const stop = (): void => {
    stopped = true;
    clearInterval(timer);
  };
  return stop;
}
