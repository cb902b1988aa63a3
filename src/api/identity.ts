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
import { TokenSigner, defaultTokenTtlSeconds } from '../auth/token.js';
import type { Caller } from './messages.js';

/** Password checks (scrypt, ~50 ms of CPU each) running at once, and waiting, at most. */
export const passwordChecksMax = { running: 4, waiting: 64 } as const;

export class Authenticator {
  private signer: TokenSigner | undefined;
  readonly limiter: LoginLimiter;
  private running = 0;
  private readonly waiting: (() => void)[] = [];

  constructor(private readonly auth: AuthHolder, private readonly tokenTtlSeconds = defaultTokenTtlSeconds, limiter = new LoginLimiter()) {
    this.limiter = limiter;
  }

  private currentSigner(): TokenSigner {
    const pem = this.auth.state.signingKey;
    if (pem === '') throw new RampartError('AuthNotEnabled');
    if (this.signer?.pem !== pem) this.signer = new TokenSigner(pem, this.tokenTtlSeconds);
    return this.signer;
  }

  /** `token`: the call's token credential; `certificate`: its verified client certificate, if any. */
  async identify(token: string | undefined, certificate: PeerCertificate | undefined): Promise<Caller> {
    const state = this.auth.state;
    if (state.enabled && token !== undefined && token !== '') {
      const claims = await this.currentSigner().verify(token);
      if (claims === undefined) throw new RampartError('InvalidAuthToken');
      return { user: claims.user, revision: claims.revision, token: true };
    }
    const commonName = certificate?.subject?.CN;
    const cn = Array.isArray(commonName) ? undefined : commonName;
    if (typeof cn === 'string' && cn !== '') {
      return { user: state.bindings.get(cn) ?? cn, revision: state.revision, token: false };
    }
    return { user: '', revision: 0, token: false };
  }

  /** Checks a password (rate limited per user and source) and mints a token for the current revision. */
  async authenticate(name: string, password: string, source: string): Promise<string> {
    if (!this.auth.state.enabled) throw new RampartError('AuthNotEnabled');
    const address = source.replace(/:\d+$/, '');
    if (this.limiter.blockedFor(name, address) > 0) throw new RampartError('TooManyRequests');
    const user = this.auth.state.users.get(name);
    const ok = await this.bounded(() => verifyPassword(password, user === undefined || user.noPassword ? '' : user.passwordHash));
    if (!ok) {
      this.limiter.failed(name, address);
      throw new RampartError('AuthFailed');
    }
    this.limiter.succeeded(name, address);
    return this.currentSigner().sign({ user: name, revision: this.auth.state.revision });
  }

  /**
   * Runs a password check when one of the few slots is free. Guessing across many user names
   * escapes the per-user lockout, but not this: beyond the queue, logins are refused outright.
   */
  private async bounded<T>(check: () => Promise<T>): Promise<T> {
    if (this.running >= passwordChecksMax.running) {
      if (this.waiting.length >= passwordChecksMax.waiting) throw new RampartError('TooManyRequests');
      await new Promise<void>((resolve) => this.waiting.push(resolve));
    } else {
      this.running += 1;
    }
    try {
      return await check();
    } finally {
      const next = this.waiting.shift();
      if (next !== undefined) next(); // the slot passes on to the next waiter
      else this.running -= 1;
    }
  }
}
