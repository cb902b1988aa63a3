/**
 * Who is calling: a token from Authenticate in the `token` metadata wins; otherwise the CN of the
 * verified client certificate (or the user a policy binds that CN to); otherwise nobody. As in etcd,
 * identities only matter while auth is enabled, and a token is ignored while it is not.
 */
import type { PeerCertificate } from 'node:tls';
import { RampartError } from '../errors.js';
import type { AuthHolder } from '../auth/store.js';
import { LoginLimiter } from '../auth/limiter.js';
import { verifyPassword } from '../auth/password.js';
import { TokenSigner, defaultTokenTtlSeconds, type VerifiedClaims } from '../auth/token.js';
import type { Caller } from './messages.js';

/**
 * Password checks (scrypt, ~50 ms of CPU each) running at once, waiting in all, and waiting per
 * source address, at most. Waiting checks are served round-robin across sources: a flood from one
 * address delays another address's login by at most one check per busy source.
 */
export const passwordChecksMax = { running: 4, waiting: 64, waitingPerSource: 8 } as const;
/** Longest user name a login is checked for (longer ones fail without a check or a record). */
export const loginNameBytesMax = 256;

/**
 * Where failed logins are counted and lockouts decided. A member's gate asks the leader, so the
 * limit holds for the cluster (src/server/member.ts); alone, a LoginLimiter in this process.
 */
export interface LoginGate {
  /** Milliseconds the (user, source) pair is locked out for; 0 when it may try now. */
  check(user: string, source: string): Promise<number>;
  failed(user: string, source: string, known: boolean): Promise<void>;
  succeeded(user: string, source: string): Promise<void>;
}

export function localLoginGate(limiter: LoginLimiter): LoginGate {
  return {
    check: (user, source) => Promise.resolve(limiter.blockedFor(user, source)),
    failed: (user, source, known) => Promise.resolve(limiter.failed(user, source, known)),
    succeeded: (user, source) => Promise.resolve(limiter.succeeded(user, source)),
  };
}

export class Authenticator {
  private signer: TokenSigner | undefined;
  private readonly gate: LoginGate;
  private running = 0;
  /** Waiting checks by source address, served round-robin (Map order is the rotation). */
  private readonly waiting = new Map<string, (() => void)[]>();
  private waitingCount = 0;

  private previous: { signer: TokenSigner; replacedAtMs: number } | undefined;

  /** `catchUp`: waits until this member has applied what the leader has committed (a read barrier). */
  constructor(
    private readonly auth: AuthHolder,
    private readonly tokenTtlSeconds = defaultTokenTtlSeconds,
    gate: LoginGate | LoginLimiter = new LoginLimiter(),
    private readonly catchUp: () => Promise<void> = () => Promise.resolve(),
  ) {
    this.gate = gate instanceof LoginLimiter ? localLoginGate(gate) : gate;
  }

  private currentSigner(): TokenSigner {
    const pem = this.auth.state.signingKey;
    if (pem === '') throw new RampartError('AuthNotEnabled');
    if (this.signer?.pem !== pem) {
      // The key was rotated: tokens it signed before now stay good for one TTL at most.
      if (this.signer !== undefined) this.previous = { signer: this.signer, replacedAtMs: Date.now() };
      this.signer = new TokenSigner(pem, this.tokenTtlSeconds);
    }
    return this.signer;
  }

  /** A token of the previous key, minted before it was replaced and within one TTL of that. */
  private async verifyWithPrevious(token: string): Promise<VerifiedClaims | undefined> {
    const previous = this.previous;
    if (previous === undefined || Date.now() > previous.replacedAtMs + this.tokenTtlSeconds * 1000) return undefined;
    const claims = await previous.signer.verify(token);
    return claims !== undefined && claims.issuedAtSeconds * 1000 <= previous.replacedAtMs ? claims : undefined;
  }

  /** `token`: the call's token credential; `certificate`: its verified client certificate, if any. */
  async identify(token: string | undefined, certificate: PeerCertificate | undefined): Promise<Caller> {
    const state = this.auth.state;
    if (state.enabled && token !== undefined && token !== '') {
      const claims = (await this.currentSigner().verify(token)) ?? (await this.verifyWithPrevious(token));
      if (claims === undefined) throw new RampartError('InvalidAuthToken');
      if (claims.revision > state.revision) {
        // Minted at a revision this member has not applied yet (it lags), or forged: catch up once.
        await this.catchUp();
        if (claims.revision > this.auth.state.revision) throw new RampartError('InvalidAuthToken');
      }
      return { user: claims.user, revision: claims.revision, token: true };
    }
    const commonName = certificate?.subject?.CN;
    const cn = Array.isArray(commonName) ? undefined : commonName;
    if (typeof cn === 'string' && cn !== '') {
      return { user: state.bindings.get(cn) ?? cn, revision: state.revision, token: false };
    }
    return { user: '', revision: 0, token: false };
  }

  /**
   * Refuses at once a login from a source that already has its share of password checks waiting:
   * called before anything else is spent on the request (a read barrier, the leader's records).
   */
  admit(source: string): void {
    const address = source.replace(/:\d+$/, '');
    if (this.running >= passwordChecksMax.running && (this.waiting.get(address)?.length ?? 0) >= passwordChecksMax.waitingPerSource) {
      throw new RampartError('TooManyRequests');
    }
  }

  /**
   * Checks a password (rate limited per user and source) and mints a token for the current revision.
   * `certificateFingerprint`: the connection's verified client certificate, when it has one. The
   * lockout then counts per (user, address, certificate): clients behind one address (a host, a NAT,
   * a load balancer) hold different certificates, and one of them guessing a user's password must
   * not lock that user out for all the others (seen: a certificate whose CN is no user locked out
   * `auditor` from 127.0.0.1 with six wrong passwords). Certificates come only from the cluster CA,
   * so they do not multiply guesses; the password-check queue stays per address.
   */
  async authenticate(name: string, password: string, source: string, certificateFingerprint?: string): Promise<string> {
    if (!this.auth.state.enabled) throw new RampartError('AuthNotEnabled');
    // No user has such a name (names are bounded where they are created): nothing to check or record.
    if (Buffer.byteLength(name) > loginNameBytesMax) throw new RampartError('AuthFailed');
    const address = source.replace(/:\d+$/, '');
    const guesser = certificateFingerprint === undefined ? address : `${address} cert:${certificateFingerprint.replace(/[^0-9A-Fa-f]/g, '').slice(0, 32)}`;
    if ((await this.gate.check(name, guesser)) > 0) throw new RampartError('TooManyRequests');
    const user = this.auth.state.users.get(name);
    const ok = await this.bounded(address, () => verifyPassword(password, user === undefined || user.noPassword ? '' : user.passwordHash));
    if (!ok) {
      await this.gate.failed(name, guesser, user !== undefined);
      throw new RampartError('AuthFailed');
    }
    await this.gate.succeeded(name, guesser);
    return this.currentSigner().sign({ user: name, revision: this.auth.state.revision });
  }

  /**
   * Runs a password check when one of the few slots is free. Guessing across many user names
   * escapes the per-user lockout, but not this: beyond the queue, logins are refused outright —
   * first those of a source that already has its share waiting, so one source cannot fill it.
   */
  private async bounded<T>(source: string, check: () => Promise<T>): Promise<T> {
    if (this.running >= passwordChecksMax.running) {
      const queue = this.waiting.get(source) ?? [];
      if (queue.length >= passwordChecksMax.waitingPerSource || this.waitingCount >= passwordChecksMax.waiting) throw new RampartError('TooManyRequests');
      this.waiting.set(source, queue);
      this.waitingCount += 1;
      await new Promise<void>((resolve) => queue.push(resolve));
    } else {
      this.running += 1;
    }
    try {
      return await check();
    } finally {
      this.passSlot();
    }
  }

  /** Hands a finished check's slot to the first waiter of the next source in rotation. */
  private passSlot(): void {
    const next = this.waiting.entries().next();
    if (next.done === true) {
      this.running -= 1;
      return;
    }
    const [source, queue] = next.value;
    const resolve = queue.shift();
    this.waiting.delete(source);
    if (queue.length > 0) this.waiting.set(source, queue); // to the back of the rotation
    this.waitingCount -= 1;
    resolve?.();
  }
}
