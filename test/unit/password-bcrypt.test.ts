/** Password hashes taken over from etcd (bcrypt) verify as etcd verifies them; absurd costs are refused. */
import bcrypt from 'bcryptjs';
import { describe, expect, it } from 'vitest';
import { bcryptCostMax, verifyPassword } from '../../src/auth/password.js';

describe('bcrypt hashes from etcd', () => {
  it('verifies the right password and only it', async () => {
    const stored = bcrypt.hashSync('etcd-password', 4);
    expect(stored.startsWith('$2b$04$')).toBe(true);
    expect(await verifyPassword('etcd-password', stored)).toBe(true);
    expect(await verifyPassword('etcd-passwore', stored)).toBe(false);
    expect(await verifyPassword('', stored)).toBe(false);
  });

  it('accepts etcd\'s $2a$ hashes', async () => {
    const stored = bcrypt.hashSync('root-secret', 4).replace(/^\$2b\$/, '$2a$');
    expect(await verifyPassword('root-secret', stored)).toBe(true);
  });

  it(`refuses a hash costing more than 2^${bcryptCostMax} rounds without computing it`, async () => {
    const cheap = bcrypt.hashSync('x', 4);
    const expensive = cheap.replace(/^\$2b\$04\$/, '$2b$31$');
    const started = Date.now();
    expect(await verifyPassword('x', expensive)).toBe(false);
    expect(Date.now() - started).toBeLessThan(5_000);
  });
});
