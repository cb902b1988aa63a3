/**
 * Connections the peer port refuses, in the audit trail: a TLS handshake refused (no certificate,
 * another CA's, expired, plaintext) and a certificate of the cluster's CA refused as a member (a
 * client certificate, a revoked peer certificate, one naming no member's host). A member's peer
 * port is where another cluster, a stolen client certificate or a revoked member knocks; the log
 * said so, the trail did not.
 *
 * Anyone who reaches the port can be refused as fast as the network allows, and a misconfigured
 * member retries every 100 ms: one event each would fill the audit disk, which stops the member.
 * So within each window, the first refusal from a source address is recorded at once (with its
 * reason and, when the refusal is the certificate's, its subject and fingerprint) and the rest
 * from that address are counted, then recorded as one event per address at the window's end. At
 * most `peerRefusalSourcesPerWindowMax` addresses are named per window; refusals from others are
 * counted in one event. So a window records at most 2 × that + 1 events, whatever the flood.
 *
 * Owns: the events and their bound. Never: deciding what is refused (the transport does).
 */
import type { AuditFields } from './event.js';

/** One refusal, as the peer transport reports it. */
export interface PeerRefusal {
  /** `address:port` of the connection. */
  readonly remote: string;
  /**
   * `handshake`: TLS refused it; `certificate`: a certificate of the CA, refused as a member;
   * `message`: a member's stream refused for bytes that are no Raft message batch (peer-codec.ts);
   * `bounds`: a stream reset for passing a bound (peer request bytes in flight, transport.ts).
   */
  readonly stage: 'handshake' | 'certificate' | 'message' | 'bounds';
  /** The verification error (`UNABLE_TO_VERIFY_LEAF_SIGNATURE`, ...) or why the certificate may not act as a member. */
  readonly reason: string;
  /** The presented certificate's subject (`CN=m1, OU=rampart-peer`), when it is known. */
  readonly subject?: string;
  /** Its SHA-256 fingerprint, when it is known. */
  readonly fingerprint?: string;
}

/** How long a source's further refusals are counted before one event says how many. */
export const peerRefusalWindowMs = 10_000;
/** Source addresses named (and recorded at once) per window; the rest are counted together. */
export const peerRefusalSourcesPerWindowMax = 32;
/** Distinct addresses past the named ones that are told apart (for their count only). */
const otherSourcesCountedMax = 1_024;
/** Distinct reasons a counting event names; the rest are counted only. */
const reasonsNamedMax = 8;

interface Tally {
  count: number;
  readonly reasons: Map<string, number>;
}

export interface PeerRefusalAuditOptions {
  /** Appends one event (the audit log's `record`). */
  readonly record: (fields: AuditFields) => void;
  /** Tests only: a shorter window. */
  readonly windowMs?: number;
}

export class PeerRefusalAudit {
  private readonly bySource = new Map<string, Tally>();
  private others: Tally = { count: 0, reasons: new Map() };
  private readonly otherSources = new Set<string>();
  private timer: NodeJS.Timeout | undefined;

  constructor(private readonly options: PeerRefusalAuditOptions) {}

  /** Records `refusal` now if it is its source's first in this window, else counts it. */
  readonly offer = (refusal: PeerRefusal): void => {
    const address = addressOf(refusal.remote);
    const reason = reasonName(refusal);
    this.startWindow();
    const tally = this.bySource.get(address);
    if (tally !== undefined) {
      count(tally, reason);
      return;
    }
    if (this.bySource.size >= peerRefusalSourcesPerWindowMax) {
      count(this.others, reason);
      // Bounded too: past it, the number of addresses is a lower bound (printed with a +).
      if (this.otherSources.size < otherSourcesCountedMax) this.otherSources.add(address);
      return;
    }
    this.bySource.set(address, { count: 0, reasons: new Map() });
    this.options.record(eventOf(refusal));
  };

  /** Ends the window: one event per source with refusals counted, one for the sources not named. */
  flush(): void {
    for (const [address, tally] of this.bySource) {
      if (tally.count === 0) continue;
      this.options.record(countedEvent(tally, `from ${address}`, address));
    }
    if (this.others.count > 0) {
      const addresses = `${this.otherSources.size}${this.otherSources.size >= otherSourcesCountedMax ? '+' : ''}`;
      this.options.record(countedEvent(this.others, `from ${addresses} other addresses`, undefined));
    }
    const active = this.bySource.size > 0;
    this.bySource.clear();
    this.others = { count: 0, reasons: new Map() };
    this.otherSources.clear();
    // A quiet window ends the timer; the next refusal starts another.
    if (!active && this.timer !== undefined) {
      clearInterval(this.timer);
      this.timer = undefined;
    }
  }

  /** Records what is counted and stops the timer. */
  close(): void {
    this.flush();
    if (this.timer !== undefined) clearInterval(this.timer);
    this.timer = undefined;
  }

  private startWindow(): void {
    if (this.timer !== undefined) return;
    this.timer = setInterval(() => this.flush(), this.options.windowMs ?? peerRefusalWindowMs);
    this.timer.unref();
  }
}

function count(tally: Tally, reason: string): void {
  tally.count += 1;
  if (tally.reasons.has(reason) || tally.reasons.size < reasonsNamedMax) tally.reasons.set(reason, (tally.reasons.get(reason) ?? 0) + 1);
}

/** The address without its port (`[::1]:5000` → `::1`): one client's many connections are one source. */
function addressOf(remote: string): string {
  const bracketed = /^\[(.*)\]:\d+$/.exec(remote);
  if (bracketed?.[1] !== undefined) return bracketed[1];
  return remote.replace(/:\d+$/, '');
}

/** A short, countable name for the reason (the certificate's name left out: it is in the first event). */
function reasonName(refusal: PeerRefusal): string {
  if (refusal.stage === 'message') return 'malformed-batch';
  if (refusal.stage === 'bounds') return refusal.reason;
  return refusal.stage === 'handshake' ? refusal.reason : refusal.reason.replace(/^certificate "[^"]*" /, 'certificate ');
}

function eventOf(refusal: PeerRefusal): AuditFields {
  const certificate = [
    ...(refusal.subject === undefined ? [] : [`subject ${refusal.subject}`]),
    ...(refusal.fingerprint === undefined ? [] : [`sha256 ${refusal.fingerprint}`]),
  ];
  const what = { handshake: 'TLS handshake refused', certificate: 'peer certificate refused', message: 'peer message batch refused', bounds: 'peer stream refused' }[refusal.stage];
  return {
    action: 'peer.refused',
    user: '',
    via: refusal.stage === 'handshake' ? 'none' : 'certificate',
    source: refusal.remote,
    targets: [],
    outcome: 'denied',
    code: ({ handshake: 'UNAUTHENTICATED', certificate: 'PERMISSION_DENIED', message: 'INVALID_ARGUMENT', bounds: 'RESOURCE_EXHAUSTED' } as const)[refusal.stage],
    detail: [`${what}: ${refusal.reason}`, ...certificate].join('; '),
  };
}

function countedEvent(tally: Tally, from: string, source: string | undefined): AuditFields {
  const reasons = [...tally.reasons].map(([reason, times]) => `${reason}=${times}`).join(' ');
  return {
    action: 'peer.refused.more',
    user: '',
    via: 'none',
    ...(source === undefined ? {} : { source }),
    targets: [],
    outcome: 'denied',
    code: 'UNAUTHENTICATED',
    detail: `${tally.count} more peer connections refused ${from} in ${peerRefusalWindowMs / 1000} s: ${reasons}`,
  };
}
