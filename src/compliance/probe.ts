/**
 * Probes of a listener, as an outsider would try it: does it present a certificate of the cluster
 * CA, does it take a TLS connection that offers no client certificate, does it answer plaintext?
 * Facts from the wire, not from flags a member was started with (which the checker cannot see).
 *
 * A connection "is accepted" when the server speaks HTTP/2 back after our preface (a SETTINGS
 * frame) or HTTP/1.1 (a status line); a TLS alert, a reset, a close or silence until the timeout
 * is a refusal. Every probe is bounded by `probeTimeoutMs` and reads at most `probeReplyBytesMax`.
 */
import { X509Certificate } from 'node:crypto';
import { connect as connectTcp, isIP, type Socket } from 'node:net';
import { connect as connectTls } from 'node:tls';
import { describeCertificate, type CertificateDescription } from './certificates.js';
import { observed, unavailable, type Observed } from './control.js';
import type { ProbeOutcome } from './facts.js';

export const probeTimeoutMs = 3000;
const probeReplyBytesMax = 64;

/** The HTTP/2 client preface and an empty SETTINGS frame: what a gRPC client sends first. */
const http2Hello = Buffer.concat([Buffer.from('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n'), Buffer.from([0, 0, 0, 4, 0, 0, 0, 0, 0])]);

/** Whether bytes from a server are an HTTP answer (an HTTP/2 frame header of type SETTINGS, or an HTTP/1 status line). */
export function looksLikeHttp(reply: Buffer): boolean {
  if (reply.subarray(0, 5).toString('latin1') === 'HTTP/') return true;
  return reply.length >= 9 && reply[3] === 0x04;
}

export interface TlsMaterial {
  readonly ca: Buffer;
  readonly certificate?: Buffer;
  readonly key?: Buffer;
}

function hostAndPort(url: string): { host: string; port: number } {
  const parsed = new URL(url.includes('://') ? url : `https://${url}`);
  const host = parsed.hostname.replace(/^\[|\]$/g, '');
  return { host, port: Number(parsed.port || (parsed.protocol === 'http:' ? 80 : 443)) };
}

/** Sends the HTTP/2 hello on a connected socket and reports whether an HTTP answer came back. */
function answered(socket: Socket, onReady: (send: () => void) => void): Promise<Observed<ProbeOutcome>> {
  return new Promise((resolve) => {
    let reply = Buffer.alloc(0);
    let settled = false;
    const finish = (outcome: Observed<ProbeOutcome>): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      socket.destroy();
      resolve(outcome);
    };
    const timer = setTimeout(() => finish(observed('refused')), probeTimeoutMs);
    socket.on('data', (chunk: Buffer) => {
      reply = Buffer.concat([reply, chunk]).subarray(0, probeReplyBytesMax);
      if (looksLikeHttp(reply)) finish(observed('accepted'));
      else if (reply.length >= 9) finish(observed('refused'));
    });
    socket.on('error', (error: NodeJS.ErrnoException) => {
      // Nothing listening is not a refusal of plaintext: the probe could not be made.
      finish(error.code === 'ECONNREFUSED' || error.code === 'EHOSTUNREACH' ? unavailable(`cannot connect: ${error.code}`) : observed('refused'));
    });
    socket.on('close', () => finish(observed('refused')));
    onReady(() => socket.write(http2Hello));
  });
}

/** Plaintext HTTP/2 to a listener: `accepted` when it answers (a plaintext listener). */
export function probePlaintext(url: string): Promise<Observed<ProbeOutcome>> {
  const { host, port } = hostAndPort(url);
  const socket = connectTcp({ host, port });
  return answered(socket, (send) => socket.once('connect', send));
}

/** TLS without a client certificate (the CA verifies the server): `accepted` when the server still talks. */
export function probeWithoutClientCertificate(url: string, ca: Buffer): Promise<Observed<ProbeOutcome>> {
  const { host, port } = hostAndPort(url);
  const socket = connectTls({ host, port, ca, ALPNProtocols: ['h2'], ...(isIP(host) === 0 ? { servername: host } : {}) });
  return answered(socket, (send) => socket.once('secureConnect', send));
}

/** The certificate a TLS listener presents, verified against the CA (a client certificate offered when given). */
export function presentedCertificate(url: string, material: TlsMaterial): Promise<Observed<CertificateDescription>> {
  const { host, port } = hostAndPort(url);
  const ca = new X509Certificate(material.ca);
  return new Promise((resolve) => {
    let settled = false;
    const finish = (outcome: Observed<CertificateDescription>): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      socket.destroy();
      resolve(outcome);
    };
    const socket = connectTls({
      host, port, ALPNProtocols: ['h2'], ...(isIP(host) === 0 ? { servername: host } : {}),
      // Verified below against the CA ourselves, so a certificate of another CA is still described.
      rejectUnauthorized: false,
      ...(material.certificate === undefined || material.key === undefined ? {} : { cert: material.certificate, key: material.key }),
    });
    const timer = setTimeout(() => finish(unavailable(`no TLS handshake within ${probeTimeoutMs} ms`)), probeTimeoutMs);
    socket.once('secureConnect', () => {
      const peer = socket.getPeerX509Certificate();
      finish(peer === undefined ? unavailable('the listener presented no certificate') : observed(describeCertificate(peer, ca)));
    });
    socket.on('error', (error: NodeJS.ErrnoException) => finish(unavailable(`TLS handshake failed: ${error.code ?? error.message}`)));
  });
}
