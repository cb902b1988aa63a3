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
import type { TLSSocket } from 'node:tls';
import { connectReceiver } from './receiver-tls.js';
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

/** One connection and what is known of it. */
interface Connection {
  readonly socket: TLSSocket;
  error?: Error;
  /** The receiver ended its side (after ours: a confirmation; before: it went away). */
  peerEnded: boolean;
  weEnded: boolean;
  closed: boolean;
}

export class SyslogTlsTransport implements SinkTransport {
  private connection: Connection | undefined;
  private unconfirmed = 0;
  private openedAtMs = 0;
  private readonly origin: SyslogOrigin = { hostname: hostname(), procId: String(process.pid) };

  constructor(private readonly options: SyslogOptions) {}

  private async open(): Promise<Connection> {
    const { timeoutMs } = this.options;
    const socket = connectReceiver(this.options);
    const connection: Connection = { socket, peerEnded: false, weEnded: false, closed: false };
    this.connection = connection;
    socket.on('error', (error) => (connection.error ??= error));
    socket.on('end', () => {
      connection.peerEnded = true;
      if (!connection.weEnded) connection.error ??= new Error('the receiver ended the connection');
    });
    socket.on('close', () => (connection.closed = true));
    socket.setTimeout(timeoutMs, () => socket.destroy(new Error(`no progress within ${timeoutMs} ms`)));
    await new Promise<void>((resolve, reject) => {
      socket.once('secureConnect', resolve);
      socket.once('close', () => reject(connection.error ?? new Error('connection closed during the TLS handshake')));
    });
    this.openedAtMs = Date.now();
    return connection;
  }

  async send(batch: readonly SinkRecord[]): Promise<boolean> {
    const current = this.connection;
    if (current !== undefined && (current.error !== undefined || current.closed)) {
      // Events written on a connection that broke may not have been read: they are sent again.
      this.close();
      throw current.error ?? new Error('the connection closed');
    }
    const connection = current ?? await this.open();
    const frames = Buffer.concat(batch.map((record) => octetCountedFrame(syslogMessage(record.event, record.position, record.payload, this.origin))));
    await new Promise<void>((resolve, reject) => {
      const onClose = (): void => reject(connection.error ?? new Error('the connection closed'));
      connection.socket.once('close', onClose);
      connection.socket.write(frames, (error) => {
        connection.socket.off('close', onClose);
        if (error !== null && error !== undefined) reject(error);
        else if (connection.error !== undefined) reject(connection.error);
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

  /** Ends our side and waits for the receiver to end its own, which it does after reading everything. */
  async confirm(): Promise<void> {
    const connection = this.connection;
    if (connection === undefined) return;
    await new Promise<void>((resolve, reject) => {
      const finish = (): void => {
        this.connection = undefined;
        this.unconfirmed = 0;
        if (connection.peerEnded && connection.error === undefined) resolve();
        else reject(connection.error ?? new Error('the connection closed without the receiver ending its side'));
      };
      if (connection.closed) finish();
      else connection.socket.once('close', finish);
      connection.weEnded = true;
      connection.socket.end();
    });
  }

  close(): void {
    this.connection?.socket.destroy();
    this.connection = undefined;
    this.unconfirmed = 0;
  }
}
