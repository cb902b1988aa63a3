/**
 * Auth tokens: JWTs signed with the cluster's Ed25519 key (EdDSA, via jose). Every member verifies
 * tokens minted by any other, since the key is part of the replicated auth state. A token names its
 * user and the auth revision it was minted at; a later auth change makes it stale.
 */
import { createPrivateKey, createPublicKey, generateKeyPairSync, type KeyObject } from 'node:crypto';
import { SignJWT, jwtVerify } from 'jose';

export const defaultTokenTtlSeconds = 300;
const issuer = 'rampart';

export function newSigningKey(): string {
  return generateKeyPairSync('ed25519').privateKey.export({ type: 'pkcs8', format: 'pem' }).toString();
}

export interface TokenClaims {
  readonly user: string;
  readonly revision: number;
}

export interface VerifiedClaims extends TokenClaims {
  readonly issuedAtSeconds: number;
}

/** Members' clocks may differ by this much (a token minted on one is checked on another). */
const clockSkewSeconds = 5;
/** Tokens a signer remembers as verified (only valid ones, each ~300 bytes; the oldest goes first). */
export const verifiedTokensMax = 4096;

export class TokenSigner {
  private readonly privateKey: KeyObject;
  private readonly publicKey: KeyObject;
  /**
   * Tokens this key verified, until they expire: a client that logged in sends its token with every
   * call, and checking an Ed25519 signature through jose costs 0.1–0.5 ms of CPU a call. Whether the
   * token is still good for its user (the auth revision it names, the user's roles) is decided on
   * every call from the auth state in force (identity.ts, server/authorize.ts), never from here;
   * a new key is a new signer, so nothing survives a key rotation.
   */
  private readonly verified = new Map<string, { readonly claims: VerifiedClaims; readonly untilMs: number }>();

  constructor(readonly pem: string, private readonly ttlSeconds: number = defaultTokenTtlSeconds) {
    this.privateKey = createPrivateKey(pem);
    this.publicKey = createPublicKey(this.privateKey);
  }

  sign(claims: TokenClaims): Promise<string> {
    return new SignJWT({ revision: claims.revision })
      .setProtectedHeader({ alg: 'EdDSA', typ: 'JWT' })
      .setSubject(claims.user)
      .setIssuer(issuer)
      .setIssuedAt()
      .setExpirationTime(`${this.ttlSeconds}s`)
      .sign(this.privateKey);
  }

  /**
   * The claims of a valid, unexpired token signed by this key; undefined for anything else. A token
   * must also be one this cluster could have minted: issued (not in the future) and lasting no
   * longer than the configured TTL, so one forged with a stolen key lasts no longer than a real one.
   */
  async verify(token: string): Promise<VerifiedClaims | undefined> {
    const known = this.verified.get(token);
    if (known !== undefined) {
      if (Date.now() < known.untilMs) return known.claims;
      this.verified.delete(token);
    }
    const checked = await this.verifySignature(token);
    if (checked === undefined) return undefined;
    const claims: VerifiedClaims = { user: checked.user, revision: checked.revision, issuedAtSeconds: checked.issuedAtSeconds };
    // Good while jose would still accept it: before `exp`, and no older than the TTL allows.
    const untilMs = Math.min(checked.expiresSeconds, checked.issuedAtSeconds + this.ttlSeconds + clockSkewSeconds) * 1000;
    if (this.verified.size >= verifiedTokensMax) {
      const oldest = this.verified.keys().next();
      if (oldest.done !== true) this.verified.delete(oldest.value);
    }
    this.verified.set(token, { claims, untilMs });
    return claims;
  }

  private async verifySignature(token: string): Promise<(VerifiedClaims & { readonly expiresSeconds: number }) | undefined> {
    try {
      const { payload } = await jwtVerify(token, this.publicKey, { issuer, algorithms: ['EdDSA'], maxTokenAge: this.ttlSeconds + clockSkewSeconds });
      if (typeof payload.sub !== 'string' || typeof payload.revision !== 'number' || !Number.isSafeInteger(payload.revision)) return undefined;
      const issuedAt = payload.iat;
      const expires = payload.exp;
      if (issuedAt === undefined || expires === undefined) return undefined;
      if (issuedAt > Date.now() / 1000 + clockSkewSeconds || expires - issuedAt > this.ttlSeconds) return undefined;
      return { user: payload.sub, revision: payload.revision, issuedAtSeconds: issuedAt, expiresSeconds: expires };
    } catch {
      return undefined;
    }
  }
}
