/**
 * A watcher for the soak: watches the KV workers' prefix through whichever member answers,
 * resuming from the next revision on another member when a stream fails or falls silent, as etcd
 * clients do. Checked: events arrive in revision order and never twice, and every acknowledged put
 * is delivered with its value — except revisions a compaction removed before the watcher could
 * resume (etcd's documented gap: the watch is canceled with the compaction revision). Such a gap is
 * excused only up to a compaction the soak asked for: a member that cancels a watch as compacted
 * past every compaction asked would lose events silently, and that is an anomaly. The soak's
 * compactor never compacts past what this watcher has received, so there it has no gap at all.
 */
import type * as grpc from '@grpc/grpc-js';
import type { RawClient } from '../helpers/client.js';

/** No response for this long while writes go on: the member is paused or cut off; move on. */
const silenceMs = 5000;

export interface AcknowledgedPut {
  readonly key: string;
  readonly value: string;
  readonly revision: number;
}

export class SoakWatcher {
  /** The next revision the watcher expects (everything below was delivered or compacted away). */
  next: number;
  events = 0;
  resumes = 0;
  /** Revision ranges [from, to] a compaction removed before the watcher resumed. */
  readonly gaps: [number, number][] = [];
  /** Each gap as the report shows it: when, the revisions skipped, the compactions asked by then. */
  readonly gapDetails: string[] = [];
  private readonly seen = new Map<string, string>();
  private stream: grpc.ClientDuplexStream<object, Record<string, unknown>> | undefined;
  private lastHeard = performance.now();
  private readonly timer: NodeJS.Timeout;
  private stopped = false;

  constructor(
    private readonly clients: () => RawClient,
    private readonly anomaly: (text: string) => void,
    private readonly prefix: string,
    private readonly rangeEnd: string,
    startRevision: number,
    /** The highest revision a compaction was asked for so far. */
    private readonly compactionAsked: () => number,
  ) {
    this.next = startRevision;
    this.open();
    this.timer = setInterval(() => {
      if (performance.now() - this.lastHeard > silenceMs) this.reopen();
    }, 1000);
  }

  private open(): void {
    if (this.stopped) return;
    this.lastHeard = performance.now();
    const stream = this.clients().watch.Watch();
    this.stream = stream;
    stream.on('data', (response: Record<string, unknown>) => {
      if (this.stream !== stream) return;
      this.lastHeard = performance.now();
      const compactRevision = Number(response.compact_revision ?? 0);
      if (response.canceled === true) {
        if (compactRevision > this.next) {
          const asked = this.compactionAsked();
          this.gapDetails.push(`revisions ${this.next}..${compactRevision - 1} compacted before the watcher resumed (compaction asked up to ${asked})`);
          if (compactRevision > asked) this.anomaly(`watch: canceled as compacted at revision ${compactRevision} (resuming from ${this.next}) though no compaction past ${asked} was asked: revisions ${this.next}..${compactRevision - 1} were skipped`);
          this.gaps.push([this.next, compactRevision - 1]);
          this.next = compactRevision;
        }
        this.reopen();
        return;
      }
      for (const event of (response.events ?? []) as { kv: { key: Buffer; value: Buffer; mod_revision: string } }[]) {
        const revision = Number(event.kv.mod_revision);
        const key = event.kv.key.toString();
        if (revision < this.next - 1 || this.seen.has(`${key}@${revision}`)) {
          this.anomaly(`watch: event ${key}@${revision} delivered after revision ${this.next - 1} (twice, or out of order)`);
        }
        this.seen.set(`${key}@${revision}`, event.kv.value.toString());
        this.events += 1;
        this.next = Math.max(this.next, revision + 1);
      }
    });
    const retry = (): void => {
      if (this.stream === stream) this.reopen();
    };
    stream.on('error', retry);
    stream.on('end', retry);
    stream.write({ create_request: { key: Buffer.from(this.prefix), range_end: Buffer.from(this.rangeEnd), start_revision: this.next } });
  }

  private reopen(): void {
    const old = this.stream;
    this.stream = undefined;
    old?.cancel();
    if (this.stopped) return;
    this.resumes += 1;
    setTimeout(() => this.open(), 100);
  }

  private compacted(revision: number): boolean {
    return this.gaps.some(([from, to]) => revision >= from && revision <= to);
  }

  /** Anomalies for acknowledged puts the watcher should have delivered (through `next`) but did not. */
  check(puts: readonly AcknowledgedPut[]): string[] {
    const problems: string[] = [];
    for (const put of puts) {
      if (put.revision >= this.next || this.compacted(put.revision)) continue;
      const delivered = this.seen.get(`${put.key}@${put.revision}`);
      if (delivered !== put.value) problems.push(`watch: acknowledged put ${put.key}=${put.value} at revision ${put.revision} ${delivered === undefined ? 'never delivered' : `delivered as ${delivered}`}`);
    }
    return problems;
  }

  stop(): void {
    this.stopped = true;
    clearInterval(this.timer);
    this.stream?.cancel();
    this.stream = undefined;
  }
}
