/**
 * How many refused requests (refusal-audit.ts: malformed, oversized, unknown method or path, over
 * gRPC or the JSON gateway) reach the audit trail one by one. Anyone who can open a connection can
 * send them as fast as the network allows, and each would be a durable, fsynced event: a flood
 * would fill the audit disk, which stops the member. So they are recorded one by one up to a burst
 * and then at a steady rate; the others are counted, and one summary event per second (while any
 * are left out) says how many, with which codes and from which sources, so the flood is still
 * visible in the trail. The summaries share the same rate.
 *
 * Owns: the rate and the summary. Never: what an event says about one refusal.
 */
/** What the limiter needs of a refused or denied request: its status name and its source. */
export interface LimitedRequest {
  readonly code: string;
  /** The source as `address:port`; summaries name the address only. */
  readonly peer: string;
}

/** Refusals recorded one by one before the rate applies. */
export const refusalEventsBurst = 100;
/** Refusal events (one by one or summaries) recorded per second once the burst is spent. */
export const refusalEventsPerSecond = 10;
/** Distinct codes and sources a summary names; the rest are counted only. */
export const refusalSummaryNamesMax = 8;

export interface UnrecordedRefusals {
  readonly count: number;
  /** Refusals per status name (at most refusalSummaryNamesMax names, the first seen). */
  readonly codes: ReadonlyMap<string, number>;
  /** Distinct source addresses (without the port), at most refusalSummaryNamesMax. */
  readonly sources: readonly string[];
}

export interface RefusalLimiterOptions<T extends LimitedRequest> {
  /** Records one admitted by `offer` (callers of `admit` record it themselves). */
  readonly record?: (refusal: T) => void;
  readonly recordUnrecorded: (summary: UnrecordedRefusals) => void;
  readonly nowMs?: () => number;
}

export class RefusalLimiter<T extends LimitedRequest = LimitedRequest> {
  private tokens = refusalEventsBurst;
  private updatedMs: number;
  private count = 0;
  private codes = new Map<string, number>();
  private sources = new Set<string>();
  private timer: NodeJS.Timeout | undefined;
  private readonly nowMs: () => number;

  constructor(private readonly options: RefusalLimiterOptions<T>) {
    this.nowMs = options.nowMs ?? Date.now;
    this.updatedMs = this.nowMs();
  }

  /** Records `refusal` now if the rate allows, or counts it for the next summary. */
  readonly offer = (refusal: T): void => {
    if (this.admit(refusal)) this.options.record?.(refusal);
  };

  /**
   * Whether `refusal` may be recorded one by one now (the caller then records it); otherwise it is
   * counted for the next summary.
   */
  admit(refusal: LimitedRequest): boolean {
    // While some are left out, the next token goes to their summary, not to a newer refusal.
    if (this.count === 0 && this.take()) return true;
    this.count++;
    if (this.codes.has(refusal.code) || this.codes.size < refusalSummaryNamesMax) this.codes.set(refusal.code, (this.codes.get(refusal.code) ?? 0) + 1);
    // By address, not address:port: one client opening many connections must not fill the list and hide another source.
    if (this.sources.size < refusalSummaryNamesMax) this.sources.add(refusal.peer.replace(/:\d+$/, ''));
    if (this.timer === undefined) {
      this.timer = setInterval(() => this.summarise(), 1000);
      this.timer.unref();
    }
    return false;
  }

  /** Writes the summary of what was left out, if the rate allows one now (else at the next tick). */
  summarise(): void {
    if (this.count === 0) {
      if (this.timer !== undefined) clearInterval(this.timer);
      this.timer = undefined;
      return;
    }
    if (!this.take()) return;
    const summary: UnrecordedRefusals = { count: this.count, codes: this.codes, sources: [...this.sources] };
    this.count = 0;
    this.codes = new Map();
    this.sources = new Set();
    this.options.recordUnrecorded(summary);
  }

  /** Stops the summary timer, writing what is pending if the rate allows. */
  close(): void {
    this.summarise();
    if (this.timer !== undefined) clearInterval(this.timer);
    this.timer = undefined;
  }

  private take(): boolean {
    const now = this.nowMs();
    this.tokens = Math.min(refusalEventsBurst, this.tokens + ((now - this.updatedMs) / 1000) * refusalEventsPerSecond);
    this.updatedMs = now;
    if (this.tokens < 1) return false;
    this.tokens -= 1;
    return true;
  }
}
