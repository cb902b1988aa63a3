/**
 * The syslog sink: RFC 5424 messages over TLS (RFC 5425, octet-counting framing), the receiver's
 * certificate verified against the given CA (or the system's) and its name or IP; a client
 * certificate for mutual TLS when given.
 *
 * Syslog over TLS has no acknowledgement: bytes written to a connection that then breaks may or
 * may not have been read. So events count as delivered only once confirmed by an orderly close:
 * after `confirmEventsMax` events, `confirmIntervalMs` of connection time, or when the sink goes
 * idle, the sink ends its side (TLS close_notify, then FIN) and waits for the receiver to end its
 * own — which a receiver does only after reading everything before our end (rsyslog's imtcp closes
 * a session at end of stream). A connection that breaks instead sends the sink back to its last
 * confirmed event: delivery is at least once, in order, and a copy (an event sent again after a
 * break) carries the same member, file and seq in its structured data for the receiver to drop.
 */
import { hostname } from 'node:os';
import { isIP } from 'node:net';
import { connect, type TLSSocket } from 'node:tls';
import type { SinkRecord, SinkTransport } from './transport.js';
import { octetCountedFrame, syslogMessage, type SyslogOrigin } from './syslog-message.js';

export interface SyslogOptions {
  readonly host: string;
  readonly port: number;
  readonly ca?: Buffer;
  readonly cert?: Buffer;
  readonly key?: Buffer;
  readonly timeoutMs: number;
  /** Events written on one connection before it is closed to confirm them. */
  readonly confirmEventsMax: number;
  /** Connection time after which it is closed to confirm what it carried. */
  readonly confirmIntervalMs: number;
}

export class SyslogTlsTransport implements SinkTransport {
  private socket: TLSSocket | undefined;
  private broken: Error | undefined;
  private ended = false;
  private unconfirmed = 0;
  private openedAtMs = 0;
  private readonly origin: SyslogOrigin = { hostname: hostname(), procId: String(process.pid) };

  constructor(private readonly options: SyslogOptions) {}

  private async open(): Promise<TLSSocket> {
    const { host, port, ca, cert, key, timeoutMs } = this.options;
    const socket = connect({
      host, port, minVersion: 'TLSv1.2',
      ...(isIP(host) === 0 ? { servername: host } : {}),
      ...(ca === undefined ? {} : { ca }), ...(cert === undefined ? {} : { cert }), ...(key === undefined ? {} : { key }),
    });
    this.socket = socket;
    this.broken = undefined;
    this.ended = false;
    socket.on('error', (error) => (this.broken ??= error));
    socket.on('end', () => (this.ended = true));
    socket.on('close', () => (this.broken ??= new Error('the receiver closed the connection')));
    socket.setTimeout(timeoutMs, () => socket.destroy(new Error(`no progress within ${timeoutMs} ms`)));
    await new Promise<void>((resolve, reject) => {
      socket.once('secureConnect', resolve);
      socket.once('error', reject);
      socket.once('close', () => reject(this.broken ?? new Error('connection closed during the TLS handshake')));
    });
    this.openedAtMs = Date.now();
    return socket;
  }

  async send(batch: readonly SinkRecord[]): Promise<boolean> {
    if (this.socket !== undefined && this.broken !== undefined) {
      // Events written on a connection that broke may not have been read: they are sent again.
      const broken = this.broken;
      this.close();
      throw broken;
    }
    const socket = this.socket ?? await this.open();
    const frames = Buffer.concat(batch.map((record) => octetCountedFrame(syslogMessage(record.event, record.position, record.payload, this.origin))));
    await new Promise<void>((resolve, reject) => {
      const onClose = (): void => reject(this.broken ?? new Error('the receiver closed the connection'));
      socket.once('close', onClose);
      socket.write(frames, (error) => {
        socket.off('close', onClose);
        if (error !== null && error !== undefined) reject(error);
        else if (this.broken !== undefined) reject(this.broken);
        else resolve();
      });
    });
    this.unconfirmed += batch.length;
    if (this.unconfirmed >= this.options.confirmEventsMax || Date.now() - this.openedAtMs >= this.options.confirmIntervalMs) {
      await this.confirm();
      return true;
    }
    return false;
  }

  /** Ends the connection and waits for the receiver to end its side after reading everything. */
  async confirm(): Promise<void> {
    const socket = this.socket;
    if (socket === undefined) return;
    await new Promise<void>((resolve, reject) => {
      const finish = (): void => {
        this.socket = undefined;
        this.unconfirmed = 0;
        if (this.ended && this.broken?.message === 'the receiver closed the connection') resolve();
        else reject(this.broken ?? new Error('the connection ended without the receiver\'s close'));
      };
      if (socket.closed) finish();
      else socket.once('close', finish);
      socket.end();
    });
  }

  close(): void {
    this.socket?.destroy();
    this.socket = undefined;
    this.unconfirmed = 0;
  }
}
