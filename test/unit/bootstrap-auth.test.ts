/**
 * A member started with bootstrap auth opens its client port (`secured`) only once it has applied
 * auth enabled: not while auth is pristine, and not while it is changed but still off (an operator
 * securing the cluster by hand through a `--no-bootstrap-auth` leader: policies applied, auth enable
 * still to come). The bootstrap it proposes as leader enables auth in one entry.
 */
import type { Logger } from 'pino';
import { describe, expect, it } from 'vitest';
import { applyAuthChange, emptyAuthState, type AuthChange, type AuthState } from '../../src/auth/store.js';
import { bootstrapAuth } from '../../src/server/bootstrap-auth.js';
import type { Member } from '../../src/server/member.js';

/** The part of a member bootstrapAuth reads: its applied auth state, leadership and authChange. */
function fakeMember(isLeader: boolean): { member: Member; apply(change: AuthChange): void; proposed: AuthChange[] } {
  let state: AuthState = emptyAuthState;
  const proposed: AuthChange[] = [];
  const apply = (change: AuthChange): void => {
    state = applyAuthChange(state, change);
  };
  const member = {
    auth: { get state() { return state; } },
    isLeader,
    authChange: (change: AuthChange) => {
      proposed.push(change);
      apply(change);
      return Promise.resolve();
    },
  } as unknown as Member;
  return { member, apply, proposed };
}

function recordingLogger(): { logger: Logger; errors: string[] } {
  const errors: string[] = [];
  const logger = { error: (_fields: object, message: string) => errors.push(message), warn: () => undefined, info: () => undefined } as unknown as Logger;
  return { logger, errors };
}

const settled = (promise: Promise<void>): Promise<boolean> => Promise.race([promise.then(() => true), new Promise<boolean>((resolve) => setTimeout(() => resolve(false), 100))]);

describe('bootstrap auth', () => {
  it('keeps a follower closed while auth is changed but off, and opens it once auth is enabled', async () => {
    const { member, apply } = fakeMember(false);
    const { logger, errors } = recordingLogger();
    const bootstrap = bootstrapAuth(member, { users: [], roles: [], bindings: [] } as never, logger, (error) => { throw error; }, 5);
    try {
      expect(await settled(bootstrap.secured)).toBe(false);
      // The operator's `rampart policy apply` through another leader: auth changed, still off.
      apply({ op: 'roleAdd', name: 'reader' });
      expect(await settled(bootstrap.secured)).toBe(false);
      expect(errors).toEqual(['auth is DISABLED on this cluster: not serving clients until it is enabled (etcdctl auth enable), or start this member with --no-bootstrap-auth to serve with auth off']);
      apply({ op: 'userAdd', name: 'root', passwordHash: '', noPassword: true });
      apply({ op: 'userGrantRole', user: 'root', role: 'root' });
      apply({ op: 'enable', signingKey: 'key' });
      expect(await settled(bootstrap.secured)).toBe(true);
    } finally {
      bootstrap.stop();
    }
  });

  it('as leader of a pristine cluster, enables auth with the policies in one entry and then opens', async () => {
    const { member, proposed } = fakeMember(true);
    const { logger, errors } = recordingLogger();
    const policy = { users: [{ name: 'root', roles: ['root'], noPassword: true }], roles: [], bindings: [] };
    const bootstrap = bootstrapAuth(member, policy as never, logger, (error) => { throw error; }, 5);
    try {
      expect(await settled(bootstrap.secured)).toBe(true);
      expect(proposed.map((change) => change.op)).toEqual(['bootstrap']);
      expect(member.auth.state.enabled).toBe(true);
      expect(errors).toEqual([]);
    } finally {
      bootstrap.stop();
    }
  });
});
