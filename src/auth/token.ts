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

export class TokenSigner {
  private readonly privateKey: KeyObject;
  private readonly publicKey: KeyObject;

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

  /** The claims of a valid, unexpired token signed by this key; undefined for anything else. */
  async verify(token: string): Promise<TokenClaims | undefined> {
    try {
      const { payload } = await jwtVerify(token, this.publicKey, { issuer, algorithms: ['EdDSA'] });
      if (typeof payload.sub !== 'string' || typeof payload.revision !== 'number') return undefined;
      return { user: payload.sub, revision: payload.revision };
    } catch {
      return undefined;
    }
  }
}
