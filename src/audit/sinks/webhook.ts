/**
 * The HTTPS webhook sink: batches of events POSTed as one JSON array (`application/json`), the
 * server certificate verified against the given CA (or the system's), a client certificate when
 * given, and a bearer token read from a file (never logged).
 *
 * A 2xx answer acknowledges the batch; anything else, a timeout or a broken connection is a
 * failure and the same batch is sent again, with the same `Idempotency-Key`
 * (`<member>:<first file>:<first seq>:<last file>:<last seq>`), so a receiver that saw it and
 * answered into a broken connection can drop the copy. A batch rebuilt after a member restart may
 * span other events under another key, so the rule that always holds is per event: each carries
 * its member, file and seq (OCSF `unmapped.rampart`, and the Rampart line itself), events come in
 * trail order, and a receiver drops any event at or before the last it took from that member.
 */
import { Agent, request } from 'node:https';
import type { SinkRecord, SinkTransport } from './transport.js';

export interface WebhookOptions {
  readonly url: URL;
  readonly ca?: Buffer;
  readonly cert?: Buffer;
  readonly key?: Buffer;
  readonly token?: string;
  readonly member: string;
  readonly userAgent: string;
  readonly timeoutMs: number;
}

/** Bytes of a receiver's answer that are read (and dropped): an answer is not data. */
const responseBytesMax = 64 * 1024;

export class WebhookTransport implements SinkTransport {
  private agent: Agent;

  constructor(private readonly options: WebhookOptions) {
    this.agent = this.newAgent();
  }

  private newAgent(): Agent {
    const { ca, cert, key } = this.options;
    return new Agent({ keepAlive: true, maxSockets: 1, minVersion: 'TLSv1.2', ...(ca === undefined ? {} : { ca }), ...(cert === undefined ? {} : { cert }), ...(key === undefined ? {} : { key }) });
  }

  send(batch: readonly SinkRecord[]): Promise<boolean> {
    const first = batch[0];
    const last = batch[batch.length - 1];
    if (first === undefined || last === undefined) return Promise.resolve(true);
    const body = Buffer.from(`[${batch.map((record) => record.payload).join(',')}]`);
    const headers: Record<string, string> = {
      'content-type': 'application/json',
      'content-length': String(body.length),
      'idempotency-key': `${this.options.member}:${first.position.file}:${first.position.seq}:${last.position.file}:${last.position.seq}`,
      'user-agent': this.options.userAgent,
    };
    if (this.options.token !== undefined) headers.authorization = `Bearer ${this.options.token}`;
    return new Promise((resolve, reject) => {
      const outgoing = request(this.options.url, { method: 'POST', agent: this.agent, headers, timeout: this.options.timeoutMs }, (response) => {
        let read = 0;
        response.on('data', (chunk: Buffer) => {
          read += chunk.length;
          if (read > responseBytesMax) response.destroy();
        });
        response.on('error', () => undefined);
        response.on('close', () => {
          const status = response.statusCode ?? 0;
          if (status >= 200 && status < 300) resolve(true);
          else reject(new Error(`the receiver answered HTTP ${status}`));
        });
      });
      outgoing.on('timeout', () => outgoing.destroy(new Error(`no answer within ${this.options.timeoutMs} ms`)));
      outgoing.on('error', (error) => reject(error));
      outgoing.end(body);
    });
  }

  confirm(): Promise<void> {
    return Promise.resolve();
  }

  close(): void {
    // Connections of a failed receiver are not reused: the next attempt connects afresh.
    this.agent.destroy();
    this.agent = this.newAgent();
  }
}
