/**
 * The RELP sink: RFC 5424 messages (as the syslog sink writes them) sent as RELP `syslog`
 * commands over TLS — rsyslog's `imrelp` with `tls="on"`. The receiver's certificate is verified
 * against the given CA (or the system's) and its name or IP; a client certificate for mutual TLS
 * when given (imrelp `tls.authMode="name"` or `"certvalid"`).
 *
 * Unlike plain syslog over TLS, RELP answers every message (`rsp 200` for its transaction
 * number), so the sink knows exactly which events the receiver took: a batch counts as delivered
 * only once every message of it is answered, and when a session breaks halfway the sink is told
 * how many of the batch were answered (`PartialDeliveryError`), moves its cursor past those and
 * sends only the rest again. Up to `windowFramesMax` messages are unanswered at a time.
 *
 * What stays possible (said in the README): a receiver that took a message and died before its
 * answer left, or a member that died between an answer and its cursor's fsync, gets that message
 * again after the restart — with the same member, file and seq in its structured data to drop it
 * by. A receiver that stops in an orderly way answers what it took first (imrelp does).
 *
 * Stopping (`close`) is orderly too: no new message is sent, the answers of those in flight are
 * awaited (at most `closeGraceMs`), then the session is closed with RELP `close`.
 */
import { hostname } from 'node:os';
import type { TLSSocket } from 'node:tls';
import { connectReceiver } from './receiver-tls.js';
import { encodeRelpFrame, nextTxnr, parseRelpResponse, RelpFrameReader, type RelpFrame, type RelpResponse } from './relp-frame.js';
import { syslogMessage, type SyslogOrigin } from './syslog-message.js';
import { PartialDeliveryError, type SinkRecord, type SinkTransport } from './transport.js';

export interface RelpOptions {
  readonly host: string;
  readonly port: number;
  readonly ca?: Buffer;
  readonly cert?: Buffer;
  readonly key?: Buffer;
  /** How long an answer may take before the session counts as broken. */
  readonly timeoutMs: number;
  /** Messages sent and not yet answered, at most (librelp's default window is 128). */
  readonly windowFramesMax: number;
  /** How long a stop waits for the answers of messages in flight. */
  readonly closeGraceMs: number;
  /** Our `relp_software` offer. */
  readonly software: string;
}

/** A receiver's frame larger than this is refused (answers are a status line and a few offers). */
const responseFrameBytesMax = 64 * 1024;

type Answer = RelpResponse | Error;

interface Session {
  readonly socket: TLSSocket;
  readonly reader: RelpFrameReader;
  txnr: number;
  /** Waiters of the commands sent and not yet answered, by transaction number. */
  readonly waiting: Map<number, (answer: Answer) => void>;
  /** Why no more commands go on this session (broken, closed by the receiver, or stopping). */
  ended?: Error;
  /** Resolves when the socket is gone. */
  readonly gone: Promise<void>;
  /** Called once nothing is awaited any more (an orderly close waits for it). */
  onSettled?: () => void;
}

export class RelpTlsTransport implements SinkTransport {
  private session: Session | undefined;
  private readonly origin: SyslogOrigin = { hostname: hostname(), procId: String(process.pid) };

  constructor(private readonly options: RelpOptions) {}

  private async open(): Promise<Session> {
    const socket = connectReceiver(this.options);
    let gone: () => void = () => undefined;
    const session: Session = { socket, reader: new RelpFrameReader(responseFrameBytesMax), txnr: 1, waiting: new Map(), gone: new Promise((resolve) => (gone = resolve)) };
    const end = (error: Error): void => {
      session.ended ??= error;
      const waiters = [...session.waiting.values()];
      session.waiting.clear();
      for (const waiter of waiters) waiter(session.ended);
      session.onSettled?.();
    };
    socket.on('error', (error) => end(error));
    socket.on('end', () => end(new Error('the receiver ended the RELP session')));
    socket.on('close', () => {
      end(new Error('the RELP session closed'));
      gone();
    });
    socket.on('data', (chunk: Buffer) => {
      let frames: RelpFrame[];
      try {
        frames = session.reader.push(chunk);
      } catch (error) {
        socket.destroy(error as Error);
        return;
      }
      for (const frame of frames) this.received(session, frame);
    });
    // No progress during the handshake or while answers are awaited: the session is broken (an
    // idle one is left alone). A receiver that accepts and then says nothing must not hang the sink.
    let handshaking = true;
    socket.setTimeout(this.options.timeoutMs, () => {
      if (handshaking || session.waiting.size > 0) socket.destroy(new Error(`no RELP answer within ${this.options.timeoutMs} ms`));
    });
    await new Promise<void>((resolve, reject) => {
      socket.once('secureConnect', resolve);
      void session.gone.then(() => reject(session.ended ?? new Error('the connection closed during the TLS handshake')));
    });
    handshaking = false;
    const offers = Buffer.from(`relp_version=0\nrelp_software=${this.options.software}\ncommands=syslog`, 'utf8');
    const answer = await this.command(session, 'open', offers);
    if (answer instanceof Error) throw answer;
    if (answer.code !== 200) {
      socket.destroy();
      throw new Error(`the receiver refused the RELP session: ${answer.code} ${answer.text}`);
    }
    const commands = /(?:^|\n)commands=([^\n]*)/.exec(answer.data)?.[1]?.split(',') ?? [];
    if (!commands.includes('syslog')) {
      socket.destroy();
      throw new Error('the RELP receiver does not offer the syslog command');
    }
    this.session = session;
    return session;
  }

  private received(session: Session, frame: RelpFrame): void {
    switch (frame.command) {
      case 'rsp': {
        const waiter = session.waiting.get(frame.txnr);
        if (waiter === undefined) {
          session.socket.destroy(new Error(`the receiver answered transaction ${frame.txnr}, which is not awaited`));
          return;
        }
        let answer: Answer;
        try {
          answer = parseRelpResponse(frame.data);
        } catch (error) {
          session.socket.destroy(error as Error);
          return;
        }
        session.waiting.delete(frame.txnr);
        waiter(answer);
        if (session.waiting.size === 0) session.onSettled?.();
        return;
      }
      case 'serverclose':
        // The receiver is going away: no new message; the answers still due may yet come.
        session.ended ??= new Error('the receiver closed the RELP session (serverclose)');
        if (session.waiting.size === 0) session.socket.destroy();
        return;
      default:
        session.socket.destroy(new Error(`the receiver sent an unexpected RELP command ${frame.command}`));
    }
  }

  /** Sends one command; resolves with its answer, or the error that ended the session first. */
  private command(session: Session, command: string, data: Buffer): Promise<Answer> {
    if (session.ended !== undefined) return Promise.resolve(session.ended);
    const txnr = session.txnr;
    session.txnr = nextTxnr(txnr);
    const answered = new Promise<Answer>((resolve) => session.waiting.set(txnr, resolve));
    session.socket.write(encodeRelpFrame(txnr, command, data));
    return answered;
  }

  async send(batch: readonly SinkRecord[]): Promise<boolean> {
    let session = this.session;
    if (session !== undefined && session.ended !== undefined) {
      // Ended with nothing in flight (what was in flight was reported by the send that carried it).
      session.socket.destroy();
      this.session = session = undefined;
    }
    session ??= await this.open();
    const answered: boolean[] = batch.map(() => false);
    let failure: Error | undefined;
    const inFlight = new Set<Promise<void>>();
    for (const [index, record] of batch.entries()) {
      while (inFlight.size >= this.options.windowFramesMax) await Promise.race(inFlight);
      if (failure !== undefined || session.ended !== undefined) break;
      const message = syslogMessage(record.event, record.position, record.payload, this.origin);
      const done: Promise<void> = this.command(session, 'syslog', Buffer.from(message, 'utf8')).then((answer) => {
        inFlight.delete(done);
        if (answer instanceof Error) failure ??= answer;
        else if (answer.code === 200) answered[index] = true;
        else failure ??= new Error(`the receiver refused a message: ${answer.code} ${answer.text}`);
      });
      inFlight.add(done);
    }
    await Promise.all(inFlight);
    const acknowledged = answered.indexOf(false) === -1 ? batch.length : answered.indexOf(false);
    if (acknowledged === batch.length) return true;
    throw new PartialDeliveryError(failure ?? session.ended ?? new Error('the RELP session ended'), acknowledged);
  }

  confirm(): Promise<void> {
    return Promise.resolve(); // every message is answered on its own
  }

  /** Ends the session in order: no new message, the answers in flight awaited (bounded), RELP close. */
  close(): void {
    const session = this.session;
    if (session === undefined) return;
    this.session = undefined;
    if (session.ended !== undefined) {
      session.socket.destroy();
      return;
    }
    session.ended = new Error('the sink is stopping');
    const timer = setTimeout(() => session.socket.destroy(), this.options.closeGraceMs);
    timer.unref();
    const settled = session.waiting.size === 0 ? Promise.resolve() : new Promise<void>((resolve) => (session.onSettled = resolve));
    void (async (): Promise<void> => {
      await settled;
      if (!session.socket.destroyed) {
        // RELP close (sent past `ended`): answered, then the receiver drops the session.
        const answered = new Promise<Answer>((resolve) => session.waiting.set(session.txnr, resolve));
        session.socket.write(encodeRelpFrame(session.txnr, 'close', Buffer.alloc(0)));
        await Promise.race([answered, session.gone]);
      }
      session.socket.destroy();
      clearTimeout(timer);
    })();
  }
}
