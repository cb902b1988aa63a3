/**
 * `--audit-sink` values, parsed:
 *
 *   stdout[?format=rampart|ocsf][&name=N]
 *   syslog+tls://HOST[:PORT][?format=…][&ca=FILE][&cert=FILE&key=FILE][&name=N]   (port 6514)
 *   relp+tls://HOST[:PORT][?format=…][&ca=FILE][&cert=FILE&key=FILE][&window=N][&name=N]   (port 2514)
 *   https://HOST[:PORT]/PATH[?format=…][&ca=FILE][&cert=FILE&key=FILE][&token-file=FILE][&name=N]
 *
 * For https, those parameters are Rampart's and are removed from the URL; any other query
 * parameter is the receiver's and stays. `name` labels the sink in metrics and logs (default:
 * the URL without its query). Files are read when the member starts; secrets never appear in a
 * sink's name or in a log line.
 */
import { createHash } from 'node:crypto';
import { sinkFormats, type SinkFormat } from './format.js';

interface SpecBase {
  readonly name: string;
  /** Stable across restarts: names the sink's cursor file (the destination, not its options). */
  readonly id: string;
  readonly format: SinkFormat;
}

export type SinkSpec =
  | (SpecBase & { readonly kind: 'stdout' })
  | (SpecBase & { readonly kind: 'syslog'; readonly host: string; readonly port: number; readonly caFile?: string; readonly certFile?: string; readonly keyFile?: string })
  | (SpecBase & { readonly kind: 'relp'; readonly host: string; readonly port: number; readonly caFile?: string; readonly certFile?: string; readonly keyFile?: string; readonly windowFrames: number })
  | (SpecBase & { readonly kind: 'webhook'; readonly url: URL; readonly caFile?: string; readonly certFile?: string; readonly keyFile?: string; readonly tokenFile?: string });

const syslogTlsPortDefault = 6514;
/** imrelp's port in rsyslog's documentation (RELP has no registered port). */
const relpTlsPortDefault = 2514;
/**
 * RELP messages unanswered at a time. Small on purpose: rsyslog, stopped with more than a few
 * dozen messages in flight, closes its side with some unread, and the answers it had already
 * written can then be lost (a reset) — those events would come again. At 8 every orderly stop
 * measured here answered all it took; locally that is still thousands of events a second.
 */
const relpWindowFramesDefault = 8;
const relpWindowFramesMax = 128;
const ownParameters = ['format', 'name', 'ca', 'cert', 'key', 'token-file'] as const;

function idOf(destination: string): string {
  const label = destination.replace(/^[a-z+]+:\/\//, '').replace(/[^A-Za-z0-9.-]+/g, '_').slice(0, 48);
  return `${label}-${createHash('sha256').update(destination).digest('hex').slice(0, 12)}`;
}

export function parseSinkSpec(text: string): SinkSpec {
  const problem = (why: string): Error => new Error(`--audit-sink ${text}: ${why}`);
  if (text === 'stdout' || text.startsWith('stdout?')) {
    const parameters = new URLSearchParams(text.slice('stdout'.length + 1));
    const { format, name } = common(parameters, problem, ['format', 'name']);
    return { kind: 'stdout', name: name ?? 'stdout', id: idOf('stdout'), format };
  }
  let url: URL;
  try {
    url = new URL(text);
  } catch {
    throw problem('not stdout, syslog+tls://HOST:PORT, relp+tls://HOST:PORT or https://HOST/PATH');
  }
  if (url.username !== '' || url.password !== '') throw problem('credentials do not go in the URL (use token-file= for a bearer token)');
  const files = (parameters: URLSearchParams): { caFile?: string; certFile?: string; keyFile?: string } => {
    const caFile = parameters.get('ca') ?? undefined;
    const certFile = parameters.get('cert') ?? undefined;
    const keyFile = parameters.get('key') ?? undefined;
    if ((certFile === undefined) !== (keyFile === undefined)) throw problem('cert= and key= (mutual TLS) go together');
    return { ...(caFile === undefined ? {} : { caFile }), ...(certFile === undefined ? {} : { certFile }), ...(keyFile === undefined ? {} : { keyFile }) };
  };
  switch (url.protocol) {
    case 'syslog+tls:':
    case 'relp+tls:': {
      const kind = url.protocol === 'relp+tls:' ? 'relp' : 'syslog';
      if (url.hostname === '') throw problem('needs a host');
      if ((url.pathname !== '' && url.pathname !== '/') || url.hash !== '') throw problem(`a ${kind} destination is HOST:PORT only`);
      const { format, name } = common(url.searchParams, problem, kind === 'relp' ? ['format', 'name', 'ca', 'cert', 'key', 'window'] : ['format', 'name', 'ca', 'cert', 'key']);
      const host = url.hostname.replace(/^\[|\]$/g, '');
      const port = url.port === '' ? (kind === 'relp' ? relpTlsPortDefault : syslogTlsPortDefault) : Number(url.port);
      const destination = `${url.protocol}//${url.host === '' ? host : url.host}${url.port === '' ? `:${port}` : ''}`;
      const base = { name: name ?? destination, id: idOf(destination), format, host, port, ...files(url.searchParams) };
      if (kind === 'syslog') return { kind, ...base };
      const window = url.searchParams.get('window') ?? String(relpWindowFramesDefault);
      if (!/^[1-9][0-9]{0,2}$/.test(window) || Number(window) > relpWindowFramesMax) throw problem(`window=${window}: 1–${relpWindowFramesMax} messages unanswered at a time`);
      return { kind, ...base, windowFrames: Number(window) };
    }
    case 'https:': {
      const { format, name } = common(url.searchParams, problem, ownParameters);
      const tokenFile = url.searchParams.get('token-file') ?? undefined;
      const target = new URL(url.href);
      for (const parameter of ownParameters) target.searchParams.delete(parameter);
      target.hash = '';
      const destination = target.href;
      const shown = `${target.origin}${target.pathname}`; // the receiver's query may carry a secret: not shown
      return { kind: 'webhook', name: name ?? shown, id: idOf(destination), format, url: target, ...files(url.searchParams), ...(tokenFile === undefined ? {} : { tokenFile }) };
    }
    case 'http:':
      throw problem('a webhook must be https:// (audit events leave the host)');
    case 'syslog:':
    case 'syslog+tcp:':
    case 'syslog+udp:':
    case 'relp:':
      throw problem('syslog is sent over TLS only: syslog+tls://HOST:PORT or relp+tls://HOST:PORT');
    default:
      throw problem(`unknown sink ${url.protocol.replace(/:$/, '')} (stdout, syslog+tls://, relp+tls://, https://)`);
  }
}

function common(parameters: URLSearchParams, problem: (why: string) => Error, allowed: readonly string[]): { format: SinkFormat; name?: string } {
  for (const key of parameters.keys()) {
    if (!allowed.includes(key) && !(allowed === ownParameters)) throw problem(`unknown option ${key}= (${allowed.join('=, ')}=)`);
  }
  const format = parameters.get('format') ?? 'rampart';
  if (!(sinkFormats as readonly string[]).includes(format)) throw problem(`format=${format}: one of ${sinkFormats.join(', ')}`);
  const name = parameters.get('name') ?? undefined;
  if (name !== undefined && !/^[A-Za-z0-9_.:/@-]{1,64}$/.test(name)) throw problem('name= is 1–64 letters, digits and _ . : / @ -');
  return { format: format as SinkFormat, ...(name === undefined ? {} : { name }) };
}

/** All sinks of a member; names must differ (they label metrics). */
export function parseSinkSpecs(texts: readonly string[]): SinkSpec[] {
  const specs = texts.map(parseSinkSpec);
  const names = new Set<string>();
  const ids = new Set<string>();
  for (const spec of specs) {
    if (names.has(spec.name)) throw new Error(`--audit-sink: two sinks named ${spec.name}; give one a name= of its own`);
    if (ids.has(spec.id)) throw new Error(`--audit-sink: ${spec.name} is the same destination as another sink`);
    names.add(spec.name);
    ids.add(spec.id);
  }
  return specs;
}
