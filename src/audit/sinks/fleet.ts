/**
 * A member's streaming audit sinks (`--audit-sink`): builds each from its spec, feeds each the
 * events its trail makes durable, and answers for them all — their status for the metrics, and
 * whether any still takes events (`--audit-fail-closed`).
 *
 * Owns: the sinks' cursor files under `<data-dir>/audit-sinks/`. Never touches the trail files:
 * it reads them with the trail's own readers (`verify.ts`, `records.ts`).
 */
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import type { Logger } from 'pino';
import type { AuditLog } from '../log.js';
import { readRecords } from '../records.js';
import { trailFiles } from '../verify.js';
import { SinkCursor } from './cursor.js';
import { formatEvent } from './format.js';
import { AuditSink, type SinkLimits, type SinkStatus } from './sink.js';
import type { SinkSpec } from './spec.js';
import { StreamTransport } from './stdout.js';
import { RelpTlsTransport } from './relp.js';
import { SyslogTlsTransport } from './syslog.js';
import type { SinkTransport } from './transport.js';
import { WebhookTransport } from './webhook.js';

/** How long every sink may fail before `--audit-fail-closed` refuses requests. */
export const failClosedGraceMsDefault = 2_000;
const receiverTimeoutMs = 10_000;
/** How long a stopping member waits for a RELP receiver to answer the messages in flight. */
const relpCloseGraceMs = 2_000;

export interface AuditSinksOptions {
  readonly specs: readonly SinkSpec[];
  readonly trail: AuditLog;
  readonly trailDirectory: string;
  /** Where the sinks' cursors live. */
  readonly stateDirectory: string;
  readonly member: string;
  readonly productVersion: string;
  readonly logger: Logger;
  readonly limits?: Partial<SinkLimits>;
  readonly failClosedGraceMs?: number;
}

async function readOptional(file: string | undefined, what: string, sink: string): Promise<Buffer | undefined> {
  if (file === undefined) return undefined;
  return readFile(file).catch((error: NodeJS.ErrnoException) => {
    throw new Error(`--audit-sink ${sink}: cannot read its ${what} ${file} (${error.code ?? error.message})`);
  });
}

/** What a sink's spec names on disk (receiver CA, client certificate and key, bearer token), read as it starts. */
export interface SinkFiles {
  readonly ca?: Buffer;
  readonly cert?: Buffer;
  readonly key?: Buffer;
  readonly token?: string;
}

/**
 * Reads the files a sink's spec names, refusing one it cannot read or an empty token. Exported so
 * `rampart up` can refuse a spec the members would refuse before it starts any of them.
 */
export async function readSinkFiles(spec: SinkSpec): Promise<SinkFiles> {
  if (spec.kind === 'stdout') return {};
  const ca = await readOptional(spec.caFile, 'CA file', spec.name);
  const cert = await readOptional(spec.certFile, 'certificate file', spec.name);
  const key = await readOptional(spec.keyFile, 'key file', spec.name);
  const token = spec.kind === 'webhook' ? (await readOptional(spec.tokenFile, 'token file', spec.name))?.toString('utf8').trim() : undefined;
  if (token === '') throw new Error(`--audit-sink ${spec.name}: its token file ${spec.kind === 'webhook' ? spec.tokenFile ?? '' : ''} is empty`);
  return { ...(ca === undefined ? {} : { ca }), ...(cert === undefined ? {} : { cert }), ...(key === undefined ? {} : { key }), ...(token === undefined ? {} : { token }) };
}

async function transportFor(spec: SinkSpec, options: AuditSinksOptions): Promise<SinkTransport> {
  const files = await readSinkFiles(spec);
  const tls = { ...(files.ca === undefined ? {} : { ca: files.ca }), ...(files.cert === undefined ? {} : { cert: files.cert }), ...(files.key === undefined ? {} : { key: files.key }) };
  switch (spec.kind) {
    case 'stdout':
      return new StreamTransport(process.stdout);
    case 'syslog':
      return new SyslogTlsTransport({ host: spec.host, port: spec.port, timeoutMs: receiverTimeoutMs, confirmEventsMax: 2_000, confirmIntervalMs: 2_000, ...tls });
    case 'relp':
      return new RelpTlsTransport({
        host: spec.host, port: spec.port, timeoutMs: receiverTimeoutMs, windowFramesMax: spec.windowFrames, closeGraceMs: relpCloseGraceMs,
        software: `rampart,${options.productVersion}`, ...tls,
      });
    case 'webhook':
      return new WebhookTransport({
        url: spec.url, member: options.member, userAgent: `rampart/${options.productVersion}`, timeoutMs: receiverTimeoutMs,
        ...tls, ...(files.token === undefined ? {} : { token: files.token }),
      });
  }
}

export class AuditSinks {
  private constructor(private readonly sinks: readonly AuditSink[], private readonly graceMs: number, private readonly unsubscribe: () => void) {}

  static async start(options: AuditSinksOptions): Promise<AuditSinks> {
    const { trail, logger } = options;
    const sinks: AuditSink[] = [];
    for (const spec of options.specs) {
      const transport = await transportFor(spec, options);
      const cursor = await SinkCursor.open(options.stateDirectory, spec.id, spec.name, (message) => logger.warn({ sink: spec.name }, message));
      sinks.push(new AuditSink({
        name: spec.name,
        transport,
        cursor,
        format: (event, line, file) => formatEvent(spec.format, event, line, file, options.productVersion),
        trail: {
          files: () => trailFiles(options.trailDirectory),
          records: (file) => readRecords(file, trail.key), // sealed files open with the trail's key
          head: () => ({ file: trail.head.file, seq: trail.head.seq }),
        },
        log: logger,
        ...(options.limits === undefined ? {} : { limits: options.limits }),
      }));
      logger.info({ sink: spec.name, kind: spec.kind, format: spec.format, resumeAfter: cursor.delivered === undefined ? 'the start of the trail' : `${cursor.delivered.file}#${cursor.delivered.seq}` }, 'streaming the audit trail');
    }
    const unsubscribe = trail.subscribe((line, file) => {
      for (const sink of sinks) sink.offer(line, path.basename(file));
    });
    for (const sink of sinks) sink.start();
    return new AuditSinks(sinks, options.failClosedGraceMs ?? failClosedGraceMsDefault, unsubscribe);
  }

  statuses(): SinkStatus[] {
    return this.sinks.map((sink) => sink.status());
  }

  /** Whether some sink takes events (up, or down for less than the grace period). */
  accepting(): boolean {
    return this.sinks.some((sink) => sink.accepting(this.graceMs));
  }

  async stop(): Promise<void> {
    this.unsubscribe();
    await Promise.all(this.sinks.map((sink) => sink.stop()));
  }
}
