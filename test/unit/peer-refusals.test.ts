/**
 * The peer port's refusals in the audit trail stay bounded whatever the flood: per window, the
 * first refusal of each named source at once, then one event per source counting the rest, and
 * one event for sources past the named ones. Every refusal is accounted for.
 */
import { describe, expect, it } from 'vitest';
import type { AuditFields } from '../../src/audit/event.js';
import { PeerRefusalAudit, peerRefusalSourcesPerWindowMax } from '../../src/audit/peer-refusals.js';

function recorder(): { events: AuditFields[]; audit: PeerRefusalAudit } {
  const events: AuditFields[] = [];
  return { events, audit: new PeerRefusalAudit({ record: (fields) => events.push(fields), windowMs: 60_000 }) };
}

const counted = (events: readonly AuditFields[]): number =>
  events.reduce((sum, event) => sum + (event.action === 'peer.refused' ? 1 : Number(/^(\d+) more/.exec(event.detail ?? '')?.[1] ?? 0)), 0);

describe('PeerRefusalAudit', () => {
  it('records a source\'s first refusal with its certificate, and counts the rest into one event per window', () => {
    const { events, audit } = recorder();
    audit.offer({ remote: '10.0.0.7:40000', stage: 'certificate', reason: 'certificate "m9" is revoked', subject: 'CN=m9, OU=rampart-peer', fingerprint: 'AB:CD' });
    for (let index = 0; index < 500; index++) audit.offer({ remote: `10.0.0.7:${40001 + index}`, stage: 'handshake', reason: 'UNABLE_TO_VERIFY_LEAF_SIGNATURE' });
    expect(events).toEqual([{
      action: 'peer.refused', user: '', via: 'certificate', source: '10.0.0.7:40000', targets: [], outcome: 'denied', code: 'PERMISSION_DENIED',
      detail: 'peer certificate refused: certificate "m9" is revoked; subject CN=m9, OU=rampart-peer; sha256 AB:CD',
    }]);
    audit.flush();
    expect(events[1]).toMatchObject({ action: 'peer.refused.more', source: '10.0.0.7', outcome: 'denied', detail: '500 more peer connections refused from 10.0.0.7 in 10 s: UNABLE_TO_VERIFY_LEAF_SIGNATURE=500' });
    // A new window records the source's next refusal at once again.
    audit.offer({ remote: '[::1]:5000', stage: 'handshake', reason: 'ERR_SSL_HTTP_REQUEST' });
    audit.offer({ remote: '[::1]:5001', stage: 'handshake', reason: 'ERR_SSL_HTTP_REQUEST' });
    audit.close();
    expect(events.slice(2).map((event) => [event.action, event.source])).toEqual([['peer.refused', '[::1]:5000'], ['peer.refused.more', '::1']]);
    expect(counted(events)).toBe(503);
  });

  it('records a stream reset for passing a bound as RESOURCE_EXHAUSTED, and counts the rest by that reason', () => {
    const { events, audit } = recorder();
    for (let index = 0; index < 3; index++) audit.offer({ remote: `10.0.0.8:${50000 + index}`, stage: 'bounds', reason: 'too many request bytes in flight' });
    audit.close();
    expect(events[0]).toEqual({
      action: 'peer.refused', user: '', via: 'certificate', source: '10.0.0.8:50000', targets: [], outcome: 'denied', code: 'RESOURCE_EXHAUSTED',
      detail: 'peer stream refused: too many request bytes in flight',
    });
    expect(events[1]).toMatchObject({ action: 'peer.refused.more', detail: '2 more peer connections refused from 10.0.0.8 in 10 s: too many request bytes in flight=2' });
  });

  it('names at most peerRefusalSourcesPerWindowMax sources a window and counts the others in one event', () => {
    const { events, audit } = recorder();
    const sources = 5_000;
    for (let index = 0; index < sources; index++) {
      for (let repeat = 0; repeat < 3; repeat++) audit.offer({ remote: `10.1.${index >> 8}.${index & 255}:${1000 + repeat}`, stage: 'handshake', reason: 'ERR_SSL_PEER_DID_NOT_RETURN_A_CERTIFICATE' });
    }
    audit.close();
    expect(events.length).toBe(peerRefusalSourcesPerWindowMax * 2 + 1);
    expect(counted(events)).toBe(sources * 3);
    expect(events.at(-1)?.detail).toMatch(new RegExp(`^${(sources - peerRefusalSourcesPerWindowMax) * 3} more peer connections refused from 1024\\+ other addresses in 10 s: ERR_SSL_PEER_DID_NOT_RETURN_A_CERTIFICATE=${(sources - peerRefusalSourcesPerWindowMax) * 3}$`));
  });
});
