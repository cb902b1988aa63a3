/**
 * Audit events as RFC 5424 syslog messages, framed for TLS transport by RFC 5425's octet counting
 * (`MSG-LEN SP SYSLOG-MSG`, so a message may hold any byte, newlines included).
 *
 *   <PRI>1 TIMESTAMP HOSTNAME rampart PROCID ACTION [rampart@32473 member="…" file="…" seq="N"] MSG
 *
 * PRI: facility 13 (log audit); severity notice for an allowed call, warning for a denied or
 * failed one. TIMESTAMP: the event's time. MSGID: the action. The structured data names the event
 * uniquely (member, trail file, sequence): syslog over TLS has no acknowledgement, so after a
 * broken connection the unconfirmed events are sent again, and a receiver drops copies by these
 * three fields. (32473 is the example enterprise number of RFC 5612: Rampart has none registered.)
 * MSG: the event in the sink's format, UTF-8 without a BOM (RFC 5424's MSG-ANY).
 */
import type { AuditEvent } from '../event.js';
import type { TrailPosition } from './position.js';

const facilityLogAudit = 13;
const severityNotice = 5;
const severityWarning = 4;

/** RFC 5424 PRINTUSASCII (33–126), cut to `charactersMax`; '-' (NILVALUE) when nothing is left. */
export function printableField(text: string, charactersMax: number): string {
  const kept = text.replace(/[^\x21-\x7e]/g, '_').slice(0, charactersMax);
  return kept === '' ? '-' : kept;
}

/** A PARAM-VALUE: `"`, `\` and `]` escaped with a backslash (RFC 5424 section 6.3.3). */
export const paramValue = (text: string): string => text.replace(/["\\\]]/g, (character) => `\\${character}`);

export interface SyslogOrigin {
  readonly hostname: string;
  readonly procId: string;
}

export function syslogMessage(event: AuditEvent, position: TrailPosition, payload: string, origin: SyslogOrigin): string {
  const severity = event.outcome === 'allowed' ? severityNotice : severityWarning;
  const priority = facilityLogAudit * 8 + severity;
  const structured = `[rampart@32473 member="${paramValue(event.member)}" file="${paramValue(position.file)}" seq="${position.seq}"]`;
  return `<${priority}>1 ${event.time} ${printableField(origin.hostname, 255)} rampart ${printableField(origin.procId, 128)} ${printableField(event.action, 32)} ${structured} ${payload}`;
}

/** RFC 5425 octet-counting frame: the message's length in bytes, a space, the message. */
export function octetCountedFrame(message: string): Buffer {
  const body = Buffer.from(message, 'utf8');
  return Buffer.concat([Buffer.from(`${body.length} `, 'ascii'), body]);
}

/**
 * Splits a stream of octet-counted frames: the complete messages and the bytes left over (an
 * incomplete frame). Throws on bytes that are not a frame (a receiver's view; used by tests).
 */
export function parseOctetCountedFrames(buffer: Buffer): { messages: string[]; rest: Buffer } {
  const messages: string[] = [];
  let offset = 0;
  while (offset < buffer.length) {
    const space = buffer.indexOf(0x20, offset);
    if (space === -1) break;
    const lengthText = buffer.subarray(offset, space).toString('ascii');
    if (!/^[1-9][0-9]{0,8}$/.test(lengthText)) throw new Error(`not an octet-counted frame at byte ${offset}`);
    const end = space + 1 + Number(lengthText);
    if (end > buffer.length) break;
    messages.push(buffer.subarray(space + 1, end).toString('utf8'));
    offset = end;
  }
  return { messages, rest: buffer.subarray(offset) };
}
