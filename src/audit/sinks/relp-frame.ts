/**
 * RELP frames (the Reliable Event Logging Protocol of rsyslog's librelp):
 *
 *   FRAME   = TXNR SP COMMAND SP DATALEN [SP DATA] LF
 *   TXNR    = 1–9 digits (a command's transaction number; 0 only for the receiver's hints)
 *   COMMAND = 1–32 letters, digits or '_' (open, syslog, close, rsp, serverclose)
 *   DATALEN = 1–9 digits, the byte length of DATA (0: no SP and no DATA)
 *
 * A `rsp` frame answers the command of the same TXNR; its DATA is `CODE [SP TEXT] [LF DATA]`
 * (200: done). The encoder is for our commands; the reader splits what a receiver sends, bounded
 * by `frameBytesMax` (a receiver's answers are short: a frame larger than that is an error,
 * never a buffer that grows).
 */

export const txnrMax = 999_999_999;
const dataLengthMax = 999_999_999;

export interface RelpFrame {
  readonly txnr: number;
  readonly command: string;
  readonly data: Buffer;
}

export function encodeRelpFrame(txnr: number, command: string, data: Buffer): Buffer {
  if (!Number.isInteger(txnr) || txnr < 0 || txnr > txnrMax) throw new Error(`RELP transaction number out of range: ${txnr}`);
  if (!/^[A-Za-z0-9_]{1,32}$/.test(command)) throw new Error(`not a RELP command: ${command}`);
  if (data.length > dataLengthMax) throw new Error('RELP frame data too long');
  const header = data.length === 0 ? `${txnr} ${command} 0` : `${txnr} ${command} ${data.length} `;
  return Buffer.concat([Buffer.from(header, 'ascii'), data, Buffer.from('\n', 'ascii')]);
}

/** The transaction number after `txnr` (they wrap to 1, 0 being the receiver's). */
export const nextTxnr = (txnr: number): number => (txnr >= txnrMax ? 1 : txnr + 1);

export interface RelpResponse {
  readonly code: number;
  readonly text: string;
  /** What follows the first line (the offers of an `open` answer). */
  readonly data: string;
}

export function parseRelpResponse(data: Buffer): RelpResponse {
  const text = data.toString('utf8');
  const match = /^(\d{3})(?: ([^\n]*))?(?:\n([\s\S]*))?$/.exec(text);
  if (match === null) throw new Error(`not a RELP response: ${JSON.stringify(text.slice(0, 80))}`);
  return { code: Number(match[1]), text: match[2] ?? '', data: match[3] ?? '' };
}

/** Splits a byte stream into RELP frames. */
export class RelpFrameReader {
  private buffer: Buffer = Buffer.alloc(0);

  constructor(private readonly frameBytesMax: number) {}

  /** Adds `chunk`; returns the frames now complete. Throws on bytes that are not a frame. */
  push(chunk: Buffer): RelpFrame[] {
    this.buffer = this.buffer.length === 0 ? chunk : Buffer.concat([this.buffer, chunk]);
    const frames: RelpFrame[] = [];
    for (;;) {
      const frame = this.next();
      if (frame === undefined) break;
      frames.push(frame);
    }
    if (this.buffer.length > this.frameBytesMax) throw new Error(`a RELP frame from the receiver exceeds ${this.frameBytesMax} bytes`);
    return frames;
  }

  private next(): RelpFrame | undefined {
    const buffer = this.buffer;
    // The header is three space-separated fields; DATALEN ends at SP (data follows) or LF (none).
    const first = buffer.indexOf(0x20);
    const second = first === -1 ? -1 : buffer.indexOf(0x20, first + 1);
    if (second === -1) {
      this.checkPrefix(buffer.subarray(0, Math.min(buffer.length, 45)).toString('latin1'));
      return undefined;
    }
    let end = second + 1;
    while (end < buffer.length && buffer[end] !== 0x20 && buffer[end] !== 0x0a) end += 1;
    const header = buffer.subarray(0, end).toString('latin1');
    const match = /^(\d{1,9}) ([A-Za-z0-9_]{1,32}) (\d{1,9})$/.exec(header);
    if (end >= buffer.length) {
      if (end - second > 10) throw this.malformed(header);
      return undefined;
    }
    if (match === null) throw this.malformed(header);
    const dataLength = Number(match[3]);
    let dataStart = end;
    if (buffer[end] === 0x20) dataStart = end + 1; // SP before DATA (tolerated when DATALEN is 0)
    else if (dataLength !== 0) throw this.malformed(header);
    const trailer = dataStart + dataLength;
    if (trailer >= buffer.length) return undefined;
    if (buffer[trailer] !== 0x0a) throw new Error('a RELP frame from the receiver does not end in LF where its DATALEN says');
    const frame = { txnr: Number(match[1]), command: match[2] as string, data: Buffer.from(buffer.subarray(dataStart, trailer)) };
    this.buffer = buffer.subarray(trailer + 1);
    return frame;
  }

  private checkPrefix(text: string): void {
    if (!/^(\d{0,9}|\d{1,9} [A-Za-z0-9_]{0,32})$/.test(text)) throw this.malformed(text);
  }

  private malformed(header: string): Error {
    return new Error(`the receiver sent bytes that are not a RELP frame: ${JSON.stringify(header.slice(0, 60))}`);
  }
}
