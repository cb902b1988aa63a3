/**
 * TLS handshakes the client port refuses are in the audit trail, not only in the log: a real TLS
 * client presenting no certificate, one presenting a certificate of another CA, and plaintext HTTP
 * on the TLS port are each recorded as a refusal (action `TLS`, the source, the reason). A client
 * that connects and closes without a handshake (a TCP health check) is not. A flood of refused
 * handshakes is recorded one by one only up to the refusal burst, the rest counted in
 * `refusals.unrecorded` summaries: every refusal accounted for, and the trail does not grow with it.
 */
import path from 'node:path';
import { connect as connectTcp } from 'node:net';
import { connect as connectTls } from 'node:tls';
import { readFile } from 'node:fs/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { refusalEventsBurst, refusalEventsPerSecond } from '../../src/api/refusal-limit.js';
import type { AuditEvent } from '../../src/audit/event.js';
import { createAuthority, issueCertificate } from '../../src/pki/authority.js';
import { run } from '../helpers/processes.js';
import { startTlsMember, type TlsMember } from '../helpers/tls-member.js';
import { trailOf, trailWhen, verifyTrail } from '../helpers/tls-member-trail.js';

/** One TLS connection attempt to the client port, to its end: whether it was refused (no HTTP/2 answer). */
function handshake(port: number, ca: Buffer, certificate?: { cert: string; key: string }): Promise<{ refused: boolean; localPort: number }> {
  return new Promise((resolve) => {
    let answered = false;
    let localPort = 0;
    const socket = connectTls({ host: '127.0.0.1', port, ca, ALPNProtocols: ['h2'], ...certificate }, () => {
      localPort = socket.localPort ?? 0;
      // TLS 1.3: the client is done before the server has checked its certificate; wait for the verdict.
      socket.write('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n');
    });
    socket.on('data', () => (answered = true));
    socket.on('error', () => undefined);
    socket.on('close', () => resolve({ refused: !answered, localPort: localPort || (socket.localPort ?? 0) }));
    socket.setTimeout(5000, () => socket.destroy());
  });
}

function plaintextRequest(port: number): Promise<number> {
  return new Promise((resolve) => {
    const socket = connectTcp(port, '127.0.0.1', () => socket.write('GET /health HTTP/1.1\r\nHost: x\r\n\r\n'));
    const localPort = (): number => socket.localPort ?? 0;
    let seen = 0;
    socket.on('connect', () => (seen = localPort()));
    socket.on('error', () => undefined);
    socket.on('close', () => resolve(seen));
    socket.setTimeout(5000, () => socket.destroy());
  });
}

/** Connects and closes without a byte: what a TCP health check does. */
function connectAndClose(port: number): Promise<number> {
  return new Promise((resolve) => {
    const socket = connectTcp(port, '127.0.0.1', () => {
      const localPort = socket.localPort ?? 0;
      socket.end();
      socket.on('close', () => resolve(localPort));
    });
    socket.on('error', () => undefined);
  });
}

describe('refused TLS handshakes in the audit trail', () => {
  let member: TlsMember;
  let ca: Buffer;
  const events = (): Promise<AuditEvent[]> => trailOf(member);
  /** Waits until the trail holds events `done` accepts (refusals are recorded after the connection ends). */
  const eventually = (done: (all: AuditEvent[]) => boolean): Promise<AuditEvent[]> => trailWhen(member, done);
  const bySource = (all: readonly AuditEvent[], localPort: number): AuditEvent[] => all.filter((event) => event.source === `127.0.0.1:${localPort}`);

  beforeAll(async () => {
    member = await startTlsMember();
    ca = await readFile(path.join(member.directory, 'pki', 'ca.crt'));
  }, 60_000);

  afterAll(async () => {
    await member?.stop();
  }, 120_000);

  it('records no certificate, another CA\'s certificate and plaintext, each with its source and reason; not a bare connect', async () => {
    const none = await handshake(member.clientPort, ca);
    const otherAuthority = await createAuthority('another cluster root CA');
    const foreign = await issueCertificate(otherAuthority, { kind: 'client', commonName: 'root' });
    const other = await handshake(member.clientPort, ca, { cert: foreign.certificatePem, key: foreign.keyPem });
    const plaintext = await plaintextRequest(member.clientPort);
    const bare = await connectAndClose(member.clientPort);
    expect(none.refused).toBe(true);
    expect(other.refused).toBe(true);
    const all = await eventually((found) => bySource(found, plaintext).length > 0);

    const [noCertificate] = bySource(all, none.localPort);
    expect(noCertificate).toMatchObject({ action: 'TLS', user: '', via: 'none', outcome: 'failed', code: 'UNAUTHENTICATED', detail: 'TLS handshake refused: ERR_SSL_PEER_DID_NOT_RETURN_A_CERTIFICATE' });
    const [foreignCertificate] = bySource(all, other.localPort);
    // A refused certificate names no one: its CN (root here) is never taken as the user.
    expect(foreignCertificate).toMatchObject({ action: 'TLS', user: '', via: 'none', outcome: 'failed', code: 'UNAUTHENTICATED' });
    expect(foreignCertificate?.detail).toMatch(/^TLS handshake refused: (UNABLE_TO_VERIFY_LEAF_SIGNATURE|UNABLE_TO_GET_ISSUER_CERT_LOCALLY|SELF_SIGNED_CERT_IN_CHAIN)$/);
    expect(bySource(all, plaintext)).toMatchObject([{ action: 'TLS', outcome: 'failed', detail: 'TLS handshake refused: ERR_SSL_HTTP_REQUEST' }]);
    expect(bySource(all, bare)).toEqual([]);
    // The admin still works, and the trail still verifies.
    const verified = await verifyTrail(member);
    expect(verified.stdout, verified.stderr).toMatch(/^audit trail intact: /);
  }, 60_000);

  it('records a flood of refused handshakes one by one only up to the burst, counting the rest', async () => {
    const before = (await events()).filter((event) => event.action === 'TLS').length;
    const attempts = refusalEventsBurst * 3;
    const started = Date.now();
    let refused = 0;
    for (let batch = 0; batch < attempts / 20; batch++) {
      const results = await Promise.all(Array.from({ length: 20 }, () => handshake(member.clientPort, ca)));
      refused += results.filter((result) => result.refused).length;
    }
    expect(refused).toBe(attempts);
    // Every refusal is either its own event or counted in a summary (written within a second or two).
    const accounted = (all: readonly AuditEvent[]): { oneByOne: number; summarised: number } => ({
      oneByOne: all.filter((event) => event.action === 'TLS').length - before,
      summarised: all.filter((event) => event.action === 'refusals.unrecorded')
        .reduce((sum, event) => sum + Number(/UNAUTHENTICATED=(\d+)/.exec(event.detail ?? '')?.[1] ?? 0), 0),
    });
    const all = await eventually((found) => { const { oneByOne, summarised } = accounted(found); return oneByOne + summarised >= attempts; });
    const elapsedSeconds = (Date.now() - started) / 1000;
    const { oneByOne, summarised } = accounted(all);
    expect(oneByOne + summarised).toBe(attempts);
    expect(summarised).toBeGreaterThan(0);
    // Events (one by one and summaries) never outrun the burst plus the steady rate over the flood.
    const summaries = all.filter((event) => event.action === 'refusals.unrecorded').length;
    expect(oneByOne + summaries).toBeLessThanOrEqual(refusalEventsBurst + Math.ceil(refusalEventsPerSecond * elapsedSeconds));
    expect(all.filter((event) => event.action === 'refusals.unrecorded')[0]?.detail).toMatch(/^\d+ refused requests past 10\/s not recorded one by one: UNAUTHENTICATED=\d+; sources 127\.0\.0\.1$/);
    // Still serving.
    expect((await run('etcdctl', [...member.adminFlags, 'put', 'after', 'flood'])).stdout).toBe('OK\n');
  }, 90_000);
});
