/** A lease kept alive by the soak, with what its acknowledged keep-alives guarantee. */
import type * as grpc from '@grpc/grpc-js';
import type { RawClient } from '../helpers/client.js';

const now = (): number => performance.now();

/** One lease kept alive over a keep-alive stream, reconnecting to another member when one fails. */
export class KeptLease {
  /** Until when the acknowledged keep-alives (and the grant) guarantee the lease. */
  coveredUntil = 0;
  gone = false;
  acknowledged = 0;
  private stream: grpc.ClientDuplexStream<object, Record<string, unknown>> | undefined;
  private readonly sent: number[] = [];
  private timer: NodeJS.Timeout | undefined;

  constructor(
    readonly id: string,
    grantedAt: number,
    ttlSeconds: number,
    private readonly clients: () => RawClient,
    private readonly anomaly: (text: string) => void,
  ) {
    this.coveredUntil = grantedAt + ttlSeconds * 1000;
    this.timer = setInterval(() => this.keepAlive(), 700);
  }

  private keepAlive(): void {
    if (this.gone) return;
    if (this.stream === undefined) {
      const stream = this.clients().lease.LeaseKeepAlive();
      this.sent.length = 0;
      stream.on('data', (reply: Record<string, unknown>) => {
        const sentAt = this.sent.shift();
        if (sentAt === undefined) return;
        const ttl = Number(reply.TTL);
        if (ttl > 0) {
          this.acknowledged += 1;
          this.coveredUntil = Math.max(this.coveredUntil, sentAt + ttl * 1000);
        } else if (!this.gone) {
          this.gone = true;
          if (now() < this.coveredUntil) this.anomaly(`lease ${this.id}: keep-alive answered "not found" ${Math.round(this.coveredUntil - now())} ms before its acknowledged TTL ran out`);
        }
      });
      stream.on('error', () => {
        if (this.stream === stream) this.stream = undefined;
      });
      stream.on('end', () => {
        if (this.stream === stream) this.stream = undefined;
      });
      this.stream = stream;
    }
    this.sent.push(now());
    this.stream.write({ ID: this.id });
  }

  stop(): void {
    this.gone = true;
    if (this.timer !== undefined) clearInterval(this.timer);
    this.timer = undefined;
    this.stream?.cancel();
  }
}

