/**
 * Password hashing with scrypt (a memory-hard KDF, in Node's crypto; no native add-on needed).
 * Stored as `scrypt$N$r$p$salt$hash` (base64), so the cost can rise later without breaking old
 * hashes. Hashing runs on libuv's thread pool, off the event loop. Passwords are never logged.
 * Hashes taken over from etcd (`$2a$…`, bcrypt) are verified as etcd verifies them.
 */
import { randomBytes, scrypt, timingSafeEqual, type ScryptOptions } from 'node:crypto';
// bcryptjs (pure JavaScript, no native add-on): etcd stores bcrypt hashes, and users migrated from
// an etcd snapshot keep theirs; Rampart never writes one.
import bcrypt from 'bcryptjs';

const cost = { N: 1 << 15, r: 8, p: 1 } as const;
const keyBytes = 32;

function derive(password: string, salt: Buffer, options: ScryptOptions): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    scrypt(password.normalize('NFC'), salt, keyBytes, { ...options, maxmem: 256 * options.N! * options.r! }, (error, key) => (error === null ? resolve(key) : reject(error)));
  });
}

export async function hashPassword(password: string): Promise<string> {
  const salt = randomBytes(16);
  const key = await derive(password, salt, cost);
  return ['scrypt', cost.N, cost.r, cost.p, salt.toString('base64'), key.toString('base64')].join('$');
}

/** etcd hashes at cost 10; a migrated hash costing more than this is refused, not computed for minutes. */
export const bcryptCostMax = 12;
const bcryptHash = /^\$2[aby]\$(\d\d)\$[./A-Za-z0-9]{53}$/;

/** Constant-time comparison; a malformed or empty stored hash never matches. */
export async function verifyPassword(password: string, stored: string): Promise<boolean> {
  const bcryptMatch = bcryptHash.exec(stored);
  if (bcryptMatch !== null && Number(bcryptMatch[1]) <= bcryptCostMax) {
    return bcrypt.compare(password, stored); // as etcd compares: the bytes given, not normalized
  }
  const parts = stored.split('$');
  if (parts.length !== 6 || parts[0] !== 'scrypt') {
    await derive(password, randomBytes(16), cost); // same work as a real check: no timing oracle for unknown users
    return false;
  }
  const [, n, r, p, salt, hash] = parts as [string, string, string, string, string, string];
  const expected = Buffer.from(hash, 'base64');
  const key = await derive(password, Buffer.from(salt, 'base64'), { N: Number(n), r: Number(r), p: Number(p) });
  return expected.length === key.length && timingSafeEqual(expected, key);
}
