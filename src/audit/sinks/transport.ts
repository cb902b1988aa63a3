/**
 * What a sink's delivery loop (`sink.ts`) needs of a receiver protocol. A transport sends records
 * in the order given and says how far the receiver is known to hold them: at once for protocols
 * with an acknowledgement (an HTTP 2xx, a flushed local pipe), or only after `confirm` for those
 * without one (syslog over TLS: an orderly close that the receiver answers after reading all).
 */
import type { AuditEvent } from '../event.js';
import type { TrailPosition } from './position.js';

export interface SinkRecord {
  readonly position: TrailPosition;
  readonly event: AuditEvent;
  /** The event in the sink's format (one JSON text). */
  readonly payload: string;
}

export interface SinkTransport {
  /**
   * Sends `batch`; resolves true when the receiver acknowledged everything sent so far, false when
   * it was handed over but is not yet confirmed; rejects when the receiver failed (whatever was
   * not confirmed must be sent again).
   */
  send(batch: readonly SinkRecord[]): Promise<boolean>;
  /** Makes the receiver confirm everything sent so far (resolves once it did; rejects if it cannot). */
  confirm(): Promise<void>;
  /** Drops any connection (at shutdown, and after a failure). */
  close(): void;
}

/**
 * A send that failed after the receiver acknowledged the first `acknowledged` records of the
 * batch (RELP answers each message): the sink's cursor moves past those, and only the rest is
 * sent again.
 */
export class PartialDeliveryError extends Error {
  constructor(reason: Error, readonly acknowledged: number) {
    super(reason.message, { cause: reason });
    this.name = 'PartialDeliveryError';
  }
}
