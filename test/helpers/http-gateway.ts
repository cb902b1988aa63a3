/**
 * Plain HTTP/1.1 requests against a client port, as curl, Patroni or etcd3gw send them: one
 * request (the whole answer) or a stream (its JSON lines, until enough arrived).
 */
import { request as httpRequest, type IncomingHttpHeaders } from 'node:http';
import { request as httpsRequest } from 'node:https';
import type { SecureContextOptions } from 'node:tls';

export interface HttpAnswer {
  readonly status: number;
  readonly contentType: string;
  readonly body: string;
  readonly headers: IncomingHttpHeaders;
}

export interface HttpTarget {
  readonly port: number;
  /** HTTPS with these options (CA, optional client certificate); plain HTTP when absent. */
  readonly tls?: SecureContextOptions & { servername?: string };
}

export interface HttpCallOptions {
  readonly method?: string;
  readonly body?: string | Buffer;
  readonly headers?: Record<string, string>;
  /** Stream: stop after this many lines (or `timeoutMs`), then disconnect. */
  readonly lines?: number;
  readonly timeoutMs?: number;
  /** Called once the first line arrived (e.g. to make a change the stream should report). */
  readonly onFirstLine?: () => unknown;
}

export function httpCall(target: HttpTarget, path: string, options: HttpCallOptions = {}): Promise<HttpAnswer> {
  return new Promise((resolve, reject) => {
    const send = target.tls === undefined ? httpRequest : httpsRequest;
    const request = send({
      host: '127.0.0.1',
      port: target.port,
      path,
      method: options.method ?? 'POST',
      headers: { 'content-type': 'application/json', ...options.headers },
      agent: false,
      ...(target.tls ?? {}),
    }, (response) => {
      let body = '';
      let settled = false;
      let firstLine = false;
      const finish = (): void => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        resolve({ status: response.statusCode ?? 0, contentType: String(response.headers['content-type'] ?? ''), body, headers: response.headers });
        request.destroy();
      };
      const timer = setTimeout(finish, options.timeoutMs ?? 10_000);
      response.setEncoding('utf8');
      response.on('data', (chunk: string) => {
        body += chunk;
        const lines = body.split('\n').filter((line) => line !== '').length;
        if (!firstLine && options.lines !== undefined && lines >= 1 && body.includes('\n')) {
          firstLine = true;
          void Promise.resolve(options.onFirstLine?.()).catch(reject);
        }
        if (options.lines !== undefined && lines >= options.lines && body.endsWith('\n')) finish();
      });
      response.on('end', finish);
      response.on('error', finish);
    });
    request.on('error', reject);
    request.end(options.body);
  });
}
