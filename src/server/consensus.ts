/**
 * The seam between a member and its consensus. The member proposes opaque entry data; consensus
 * makes entries durable and committed, and hands committed entries back in log order.
 * `SoloConsensus` is a single-member log (commit = durable append); the Raft node implements the
 * same interface for clusters.
 */
import { RampartError } from '../errors.js';
import type { DurableLog, LogEntry } from '../storage/log.js';
import { entryType } from '../storage/log.js';

export interface Consensus {
  readonly term: number;
  readonly leaderId: bigint;
  readonly isLeader: boolean;
  readonly lastIndex: number;
  /** Queues data for the log. Throws NoLeader when it cannot be accepted. */
  propose(data: Buffer): void;
  /** Resolves when a read served after it is linearizable. */
  readBarrier(): Promise<void>;
  close(): Promise<void>;
}

export type ApplyCommitted = (entries: readonly LogEntry[]) => Promise<void>;

/** Proposals waiting for one append, at most; beyond it proposers get `too many requests`. */
export const pendingProposalsMax = 65_536;

/**
 * Group commit: proposals arriving while an fsync is in flight share the next one.
 */
export class SoloConsensus implements Consensus {
  private queue: Buffer[] = [];
  private flushing = false;
  private closed = false;
  private idle: Promise<void> = Promise.resolve();

  constructor(
    private readonly log: DurableLog,
    readonly term: number,
    readonly leaderId: bigint,
    private readonly applyCommitted: ApplyCommitted,
    private readonly onFatal: (error: unknown) => void,
  ) {}

  get isLeader(): boolean {
    return true;
  }

  get lastIndex(): number {
    return this.log.lastIndex;
  }

  propose(data: Buffer): void {
    if (this.closed) {
      throw new RampartError('Stopped');
    }
    if (this.queue.length >= pendingProposalsMax) {
      throw new RampartError('TooManyRequests');
    }
    this.queue.push(data);
    if (!this.flushing) {
      this.flushing = true;
      this.idle = new Promise((resolve) => setImmediate(() => void this.flush().then(resolve, resolve)));
    }
  }

  private async flush(): Promise<void> {
    try {
      while (this.queue.length > 0) {
        const batch = this.queue;
        this.queue = [];
        const first = this.log.lastIndex + 1;
        const entries = batch.map((data, position) => ({ index: first + position, term: this.term, type: entryType.normal, data }));
        await this.log.append(entries);
        await this.applyCommitted(entries);
      }
    } catch (error) {
      // A failed fsync or apply leaves the member in an unknown state: stop rather than guess.
      this.onFatal(error);
    } finally {
      this.flushing = false;
    }
  }

  async readBarrier(): Promise<void> {
    // Every acknowledged write was applied before its acknowledgement; nothing to wait for.
  }

  async close(): Promise<void> {
    this.closed = true;
    await this.idle;
  }
}
