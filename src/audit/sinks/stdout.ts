/**
 * The stdout sink: one JSON event a line on the process's standard output, for a log collector
 * (Fluent Bit, Vector, a container runtime's log driver). The member's own log goes to stderr, so
 * stdout carries audit events only. A line counts as delivered once the write is flushed to the
 * pipe; a closed pipe (EPIPE) is a failure like any receiver's.
 */
import type { Writable } from 'node:stream';
import type { SinkRecord, SinkTransport } from './transport.js';

export class StreamTransport implements SinkTransport {
  constructor(private readonly stream: Writable) {}

  send(batch: readonly SinkRecord[]): Promise<boolean> {
    return new Promise((resolve, reject) => {
      if (this.stream.destroyed || !this.stream.writable) {
        reject(new Error('the output stream is closed'));
        return;
      }
      this.stream.write(batch.map((record) => `${record.payload}\n`).join(''), (error) => (error === null || error === undefined ? resolve(true) : reject(error)));
    });
  }

  confirm(): Promise<void> {
    return Promise.resolve();
  }

  close(): void {
    // The process's stdout stays open.
  }
}
