import { describe, expect, it } from 'vitest';
import { Authenticator } from '../../src/api/identity.js';
import { LoginLimiter } from '../../src/auth/limiter.js';
import { hashPassword } from '../../src/auth/password.js';
import { AuthHolder, emptyAuthState } from '../../src/auth/store.js';
import { newSigningKey } from '../../src/auth/token.js';
import type { RampartError } from '../../src/errors.js';

// Clients behind one address hold different certificates: one guessing must not lock out the others.
describe('failed-login lockout with client certificates', () => {
  it('locks out the certificate that guessed, not the user for every client of its address', async () => {
    const holder = new AuthHolder();
    holder.set({ ...emptyAuthState, enabled: true, signingKey: newSigningKey(), users: new Map([['auditor', { name: 'auditor', passwordHash: await hashPassword('right'), noPassword: false, roles: [] }]]) });
    const authenticator = new Authenticator(holder, 300, new LoginLimiter());
    const attacker = 'AA:BB:CC:DD:EE:FF:00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF:00:11:22:33:44:55:66:77:88:99';
    const victim = '11:22:33:44:55:66:77:88:99:00:AA:BB:CC:DD:EE:FF:11:22:33:44:55:66:77:88:99:00:AA:BB:CC:DD:EE:FF';
    const attempt = (password: string, certificate: string | undefined, port: number) =>
      authenticator.authenticate('auditor', password, `10.0.0.5:${port}`, certificate).then(() => 'ok', (error: RampartError) => error.code);
    for (let guess = 0; guess < 8; guess++) await attempt(`wrong-${guess}`, attacker, 5000 + guess);
    expect(await attempt('right', attacker, 6000)).toBe('TooManyRequests');
    expect(await attempt('right', victim, 6001)).toBe('ok');
    // Without a certificate (token-only clients), the address alone still counts.
    for (let guess = 0; guess < 8; guess++) await attempt(`wrong-${guess}`, undefined, 7000 + guess);
    expect(await attempt('right', undefined, 7100)).toBe('TooManyRequests');
  }, 60_000);
});
