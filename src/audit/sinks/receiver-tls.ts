/**
 * The TLS connection a stream sink (syslog over TLS, RELP over TLS) opens to its receiver: TLS 1.2
 * at least, the receiver's name checked against its certificate (SNI only for names, never for an
 * IP address), and the sink's own CA and client certificate when given.
 */
import { isIP } from 'node:net';
import { connect, type TLSSocket } from 'node:tls';

export interface ReceiverTlsOptions {
  readonly host: string;
  readonly port: number;
  readonly ca?: Buffer;
  readonly cert?: Buffer;
  readonly key?: Buffer;
}

export function connectReceiver({ host, port, ca, cert, key }: ReceiverTlsOptions): TLSSocket {
  return connect({
    host, port, minVersion: 'TLSv1.2',
    ...(isIP(host) === 0 ? { servername: host } : {}),
    ...(ca === undefined ? {} : { ca }), ...(cert === undefined ? {} : { cert }), ...(key === undefined ? {} : { key }),
  });
}
