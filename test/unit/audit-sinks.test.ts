/**
 * Streaming audit sinks, without a network: RFC 5424/5425 framing, `--audit-sink` parsing, the
 * OCSF mapping validated against the API Activity schema fixture, and the delivery loop (queue
 * bound, catch-up from the trail files, durable cursor, retries, confirmation) against a real
 * trail and a scripted receiver.
 */
import { readFileSync } from 'node:fs';
import { mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { Ajv2020 } from 'ajv/dist/2020.js';
import addFormats from 'ajv-formats';
import { createServer as createHttpsServer, type Server as HttpsServer } from 'node:https';
import type { AddressInfo } from 'node:net';
import { createServer as createTlsServer, type Server as TlsServer } from 'node:tls';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { AuditEvent } from '../../src/audit/event.js';
import { AuditLog } from '../../src/audit/log.js';
import { activityOf, endpointOf, ocsfApiActivity } from '../../src/audit/ocsf.js';
import { readRecords } from '../../src/audit/records.js';
import { SinkCursor } from '../../src/audit/sinks/cursor.js';
import { formatEvent } from '../../src/audit/sinks/format.js';
import { AuditSink, type SinkLimits } from '../../src/audit/sinks/sink.js';
import { parseSinkSpec, parseSinkSpecs } from '../../src/audit/sinks/spec.js';
import { octetCountedFrame, parseOctetCountedFrames, syslogMessage } from '../../src/audit/sinks/syslog-message.js';
import { SyslogTlsTransport } from '../../src/audit/sinks/syslog.js';
import type { SinkRecord, SinkTransport } from '../../src/audit/sinks/transport.js';
import { WebhookTransport } from '../../src/audit/sinks/webhook.js';
import { createAuthority, issueCertificate } from '../../src/pki/authority.js';
import { trailFiles } from '../../src/audit/verify.js';
import { collectSinks } from '../../src/cli/audit-sinks.js';
import { projectRoot, removeDirectory, temporaryDirectory } from '../helpers/processes.js';

const event = (fields: Partial<AuditEvent> = {}): AuditEvent => ({
  action: 'Put', user: 'alice', via: 'certificate', source: '127.0.0.1:50312', targets: ['/registry/secrets/a', '/app/x..'], outcome: 'allowed', code: 'OK',
  seq: 7, time: '2026-11-26T07:00:00.123Z', member: '8e9e05c52164694d', prev: '0'.repeat(64), hash: 'a'.repeat(64), ...fields,
});

describe('syslog framing (RFC 5424 message, RFC 5425 octet counting)', () => {
  it('frames by byte length, so newlines and multibyte text survive, and splits a stream back', () => {
    const messages = ['<109>1 - - - - - - one\nline two', 'ünïcödé ✓', 'x'];
    const stream = Buffer.concat(messages.map(octetCountedFrame));
    expect(stream.subarray(0, 3).toString()).toBe('31 ');
    const half = parseOctetCountedFrames(stream.subarray(0, stream.length - 1));
    expect(half.messages).toEqual(messages.slice(0, 2));
    expect(half.rest.length).toBeGreaterThan(0);
    expect(parseOctetCountedFrames(stream).messages).toEqual(messages);
    expect(() => parseOctetCountedFrames(Buffer.from('abc def'))).toThrow(/not an octet-counted frame/);
  });

  it('writes PRI, version, time, host, app, procid, msgid, the event id as structured data, then the payload', () => {
    const message = syslogMessage(event({ user: 'x"]\\' }), { file: 'audit-1.jsonl', seq: 7 }, '{"a":1}', { hostname: 'host one', procId: '42' });
    expect(message).toBe('<109>1 2026-11-26T07:00:00.123Z host_one rampart 42 Put [rampart@32473 member="8e9e05c52164694d" file="audit-1.jsonl" seq="7"] {"a":1}');
    const denied = syslogMessage(event({ outcome: 'denied', action: 'Watch create', member: 'a"b]' }), { file: 'f', seq: 1 }, '{}', { hostname: '', procId: '1' });
    expect(denied).toBe('<108>1 2026-11-26T07:00:00.123Z - rampart 1 Watch_create [rampart@32473 member="a\\"b\\]" file="f" seq="1"] {}');
  });
});

describe('--audit-sink', () => {
  it('parses stdout, syslog+tls and https with their options; https keeps the receiver\'s own query', () => {
    expect(parseSinkSpec('stdout')).toMatchObject({ kind: 'stdout', name: 'stdout', format: 'rampart' });
    expect(parseSinkSpec('stdout?format=ocsf&name=collector')).toMatchObject({ kind: 'stdout', name: 'collector', format: 'ocsf' });
    expect(parseSinkSpec('syslog+tls://siem.example:10514?format=ocsf&ca=/etc/ca.pem&cert=/c.pem&key=/k.pem')).toMatchObject({
      kind: 'syslog', host: 'siem.example', port: 10514, format: 'ocsf', caFile: '/etc/ca.pem', certFile: '/c.pem', keyFile: '/k.pem', name: 'syslog+tls://siem.example:10514',
    });
    expect(parseSinkSpec('syslog+tls://[::1]')).toMatchObject({ host: '::1', port: 6514 });
    const webhook = parseSinkSpec('https://hec.example/services/collector?channel=abc&token-file=/t&format=ocsf');
    expect(webhook).toMatchObject({ kind: 'webhook', tokenFile: '/t', format: 'ocsf', name: 'https://hec.example/services/collector' });
    expect(webhook.kind === 'webhook' ? webhook.url.href : '').toBe('https://hec.example/services/collector?channel=abc');
    // The cursor id follows the destination, not the options: changing the format resumes where it was.
    expect(parseSinkSpec('syslog+tls://h:1?format=ocsf').id).toBe(parseSinkSpec('syslog+tls://h:1').id);
    expect(parseSinkSpec('syslog+tls://h:1').id).not.toBe(parseSinkSpec('syslog+tls://h:2').id);
  });

  it('collects repeated flags, and a --config-file list (joined by commas) split per sink', () => {
    expect(collectSinks('https://h/x?a=1,2', ['stdout'])).toEqual(['stdout', 'https://h/x?a=1,2']);
    expect(collectSinks('stdout?format=ocsf,syslog+tls://h:1?ca=/c,https://h/p?q=a,b', undefined)).toEqual(['stdout?format=ocsf', 'syslog+tls://h:1?ca=/c', 'https://h/p?q=a,b']);
  });

  it('refuses what would leak or cannot work, naming the flag and why', () => {
    expect(() => parseSinkSpec('http://hook.example/x')).toThrow(/--audit-sink http:\/\/hook.example\/x: a webhook must be https/);
    expect(() => parseSinkSpec('syslog://h:514')).toThrow(/over TLS only/);
    expect(() => parseSinkSpec('syslog+tls://h:1?formt=ocsf')).toThrow(/unknown option formt=/);
    expect(() => parseSinkSpec('syslog+tls://h:1?format=cef')).toThrow(/format=cef: one of rampart, ocsf/);
    expect(() => parseSinkSpec('syslog+tls://h:1?cert=/c.pem')).toThrow(/cert= and key=/);
    expect(() => parseSinkSpec('https://user:secret@h/x')).toThrow(/credentials do not go in the URL/);
    expect(() => parseSinkSpec('kafka://h')).toThrow(/unknown sink kafka/);
    expect(() => parseSinkSpecs(['stdout', 'stdout?format=ocsf'])).toThrow(/two sinks named stdout/);
    expect(() => parseSinkSpecs(['syslog+tls://h:1', 'syslog+tls://h:1?name=b'])).toThrow(/same destination/);
  });
});

describe('OCSF API Activity', () => {
  const schema = JSON.parse(readFileSync(path.join(projectRoot, 'test/fixtures/ocsf/api_activity-1.3.0.schema.json'), 'utf8')) as object;
  const ajv = new Ajv2020({ allErrors: true, strict: true, strictRequired: false });
  addFormats.default(ajv);
  const validate = ajv.compile(schema);
  const valid = (value: unknown): string => (validate(value) ? 'valid' : ajv.errorsText(validate.errors));

  it('maps every kind of event to an object the schema accepts', () => {
    const events = [
      event(),
      event({ action: 'Range', outcome: 'denied', code: 'PERMISSION_DENIED', detail: 'etcdserver: permission denied', user: '', via: 'none' }),
      event({ action: 'Authenticate', outcome: 'failed', code: 'INVALID_ARGUMENT', detail: 'etcdserver: authentication failed', via: 'password', source: '[::1]:4000' }),
      event({ action: 'LeaseGrant', targets: ['lease:694d7a1f2e3c4b5a'] }),
      event({ action: 'DeleteRange', targets: ['/a..', '…[90 more targets sha256:ab]'] }),
      { action: 'audit.start', targets: [], outcome: 'allowed' as const, seq: 0, time: '2026-11-26T07:00:00.000Z', member: 'ab', prev: '0'.repeat(64), hash: 'b'.repeat(64) },
      event({ action: 'MysteryCall', source: 'unix:/run/x.sock' }),
    ];
    for (const input of events) {
      const mapped = ocsfApiActivity(input, { file: 'audit-2026.jsonl', productVersion: '0.1.0' });
      expect(valid(mapped), `${input.action}: ${JSON.stringify(mapped)}`).toBe('valid');
      expect(mapped.metadata).toMatchObject({ uid: `${input.member}:audit-2026.jsonl:${input.seq}`, sequence: input.seq, version: '1.3.0' });
      // The event as a sink writes it parses back to the same object (one JSON text, one line).
      const text = formatEvent('ocsf', input, '', 'audit-2026.jsonl', '0.1.0');
      expect(text).not.toContain('\n');
      expect(JSON.parse(text)).toEqual(mapped);
    }
  });

  it('carries the facts an auditor reads: who, what, which keys, from where, the outcome', () => {
    const mapped = ocsfApiActivity(event({ outcome: 'denied', code: 'PERMISSION_DENIED' }), { file: 'f', productVersion: '1' });
    expect(mapped).toMatchObject({
      class_uid: 6003, category_uid: 6, activity_id: 3, type_uid: 600303, status_id: 2, status: 'Failure', status_code: 'PERMISSION_DENIED', severity_id: 3, time: Date.parse('2026-11-26T07:00:00.123Z'),
      actor: { user: { name: 'alice' } }, api: { operation: 'Put', service: { name: 'etcdserverpb' } }, src_endpoint: { ip: '127.0.0.1', port: 50312 },
      resources: [{ name: '/registry/secrets/a', type: 'etcd key' }, { name: '/app/x..', type: 'etcd key range' }],
    });
    expect([activityOf('Range'), activityOf('LeaseGrant'), activityOf('DeleteRange'), activityOf('Txn'), activityOf('Nope')]).toEqual([2, 1, 4, 3, 99]);
    expect(endpointOf('ipv6:[::1]:9')).toEqual({ ip: '::1', port: 9 });
    expect(endpointOf(undefined)).toEqual({ name: 'unknown' });
  });

  it('the schema is not vacuous: it refuses what the class forbids', () => {
    const good = ocsfApiActivity(event(), { file: 'f', productVersion: '1' });
    expect(valid(good)).toBe('valid');
    const { actor: _actor, ...noActor } = good;
    expect(valid(noActor)).toMatch(/must have required property 'actor'/);
    expect(valid({ ...good, type_uid: 600302 })).toMatch(/oneOf/);
    expect(valid({ ...good, class_uid: 3002 })).toMatch(/class_uid must be equal to constant/);
    expect(valid({ ...good, time: '2026-11-26' })).toMatch(/time must be integer/);
    expect(valid({ ...good, actor: { user: { name: '' } } })).not.toBe('valid');
    expect(valid({ ...good, src_endpoint: { port: 1 } })).not.toBe('valid');
    expect(valid({ ...good, value: 'secret' })).toMatch(/must NOT have additional properties/);
  });
});

/** A receiver scripted by the test: it records what it acknowledged, and can be down. */
class ScriptedReceiver implements SinkTransport {
  down = false;
  /** Without acknowledgement (syslog-like): sent events are held until `confirm`. */
  constructor(private readonly acknowledges = true, private readonly delayMs = 0) {}
  readonly received: SinkRecord[] = [];
  readonly batches: string[] = [];
  private unconfirmed: SinkRecord[] = [];
  /** Lose the unconfirmed part when the connection breaks (what a receiver had not read). */
  async send(batch: readonly SinkRecord[]): Promise<boolean> {
    if (this.delayMs > 0) await new Promise((resolve) => setTimeout(resolve, this.delayMs));
    if (this.down) throw new Error('connection refused');
    this.batches.push(`${batch[0]?.position.seq}-${batch[batch.length - 1]?.position.seq}`);
    if (this.acknowledges) {
      this.received.push(...batch);
      return true;
    }
    if (this.confirmsOnSend) {
      this.received.push(...this.unconfirmed, ...batch);
      this.unconfirmed = [];
      return true;
    }
    this.unconfirmed.push(...batch);
    return false;
  }
  confirmsOnSend = false;
  async confirm(): Promise<void> {
    if (this.down) throw new Error('connection reset');
    this.received.push(...this.unconfirmed);
    this.unconfirmed = [];
  }
  close(): void {
    // Half of what was sent unconfirmed did arrive (the receiver read it before the break): duplicates, never loss.
    this.received.push(...this.unconfirmed.slice(0, Math.floor(this.unconfirmed.length / 2)));
    this.unconfirmed = [];
  }
}

describe('audit sink delivery', () => {
  const directories: string[] = [];
  afterAll(async () => {
    for (const directory of directories) await removeDirectory(directory);
  });
  const fail = (error: unknown): never => {
    throw error;
  };
  const fast: Partial<SinkLimits> = { retryDelayMinMs: 5, retryDelayMaxMs: 20, confirmIdleMs: 20 };

  async function setup(): Promise<{ trailDirectory: string; stateDirectory: string }> {
    const root = await temporaryDirectory('sinks');
    directories.push(root);
    return { trailDirectory: path.join(root, 'audit'), stateDirectory: path.join(root, 'state') };
  }

  async function sinkOn(log: AuditLog, directories: { trailDirectory: string; stateDirectory: string }, receiver: SinkTransport, limits: Partial<SinkLimits> = {}, logLines: string[] = []): Promise<AuditSink> {
    const cursor = await SinkCursor.open(directories.stateDirectory, 'test', 'test', fail);
    const sink = new AuditSink({
      name: 'test', transport: receiver, cursor, format: (_event, line) => line,
      trail: { files: () => trailFiles(directories.trailDirectory), records: (file) => readRecords(file), head: () => log.head },
      log: { warn: (_fields, message) => logLines.push(`warn ${message}`), info: (_fields, message) => logLines.push(`info ${message}`) },
      limits: { ...fast, ...limits },
    });
    log.subscribe((line, file) => sink.offer(line, file));
    sink.start();
    return sink;
  }

  const until = async (condition: () => boolean, what: string, timeoutMs = 30_000): Promise<void> => {
    const deadline = Date.now() + timeoutMs;
    while (!condition()) {
      if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
      await new Promise((resolve) => setTimeout(resolve, 5));
    }
  };
  /** Every event of the trail, as file#seq, in order. */
  const trailOrder = async (directory: string): Promise<string[]> => {
    const order: string[] = [];
    for (const file of await trailFiles(directory)) {
      for await (const record of readRecords(file)) if (record.kind === 'record') order.push(`${path.basename(file)}#${(JSON.parse(record.text) as AuditEvent).seq}`);
    }
    return order;
  };
  const seen = (receiver: ScriptedReceiver): string[] => receiver.received.map((record) => `${record.position.file}#${record.position.seq}`);
  const distinctInOrder = (ids: string[]): string[] => ids.filter((id, index) => ids.indexOf(id) === index);

  it('delivers every durable event once, in order, and resumes after its cursor when the member restarts', async () => {
    const places = await setup();
    const receiver = new ScriptedReceiver();
    const first = await AuditLog.open(places.trailDirectory, 'm1', fail);
    const sink = await sinkOn(first, places, receiver);
    for (let index = 0; index < 50; index++) await first.record({ action: 'Put', targets: [`/k/${index}`], outcome: 'allowed' });
    await until(() => receiver.received.length === 51, '51 events');
    await sink.stop();
    // While the sink is stopped (the member restarting), events are written that only the trail holds.
    for (let index = 0; index < 20; index++) await first.record({ action: 'Put', targets: [`/late/${index}`], outcome: 'allowed' });
    await first.close();
    const second = await AuditLog.open(places.trailDirectory, 'm1', fail);
    const again = await sinkOn(second, places, receiver);
    for (let index = 0; index < 30; index++) await second.record({ action: 'Put', targets: [`/after/${index}`], outcome: 'allowed' });
    const expected = await trailOrder(places.trailDirectory);
    expect(expected).toHaveLength(51 + 20 + 31);
    await until(() => receiver.received.length >= expected.length, 'every event');
    await again.stop();
    expect(seen(receiver)).toEqual(expected);
    expect(again.status()).toMatchObject({ up: true, pending: 0, failures: 0 });
    await second.close();
  });

  it('keeps its queue bounded when the receiver is slow: it falls back to the trail and still loses nothing', async () => {
    const places = await setup();
    const receiver = new ScriptedReceiver(true, 2);
    const log = await AuditLog.open(places.trailDirectory, 'm1', fail);
    const sink = await sinkOn(log, places, receiver, { queueEventsMax: 8, batchEventsMax: 3 });
    let queuedMax = 0;
    const sampler = setInterval(() => (queuedMax = Math.max(queuedMax, sink.status().queued)), 1);
    await Promise.all(Array.from({ length: 300 }, (_unused, index) => log.record({ action: 'Put', targets: [`/k/${index}`], outcome: 'allowed' })));
    const expected = await trailOrder(places.trailDirectory);
    await until(() => receiver.received.length >= expected.length, 'every event');
    clearInterval(sampler);
    await sink.stop();
    expect(seen(receiver)).toEqual(expected);
    expect(queuedMax).toBeLessThanOrEqual(8);
    expect(sink.status().catchUps).toBeGreaterThan(1); // fell behind at least once after the start
    await log.close();
  });

  it('while the receiver is down: counts, logs once, retries the same batch, and delivers everything when it returns', async () => {
    const places = await setup();
    const receiver = new ScriptedReceiver();
    const log = await AuditLog.open(places.trailDirectory, 'm1', fail);
    const lines: string[] = [];
    const sink = await sinkOn(log, places, receiver, {}, lines);
    await until(() => receiver.received.length === 1, 'the start event');
    receiver.down = true;
    for (let index = 0; index < 40; index++) await log.record({ action: 'Put', targets: [`/k/${index}`], outcome: 'allowed' });
    await until(() => !sink.status().up && sink.status().failures >= 3, 'failures');
    expect(sink.status()).toMatchObject({ up: false, pending: 40 });
    expect(sink.accepting(60_000)).toBe(true);
    expect(sink.accepting(0)).toBe(false);
    expect(lines.filter((line) => line.startsWith('warn audit sink down'))).toHaveLength(1); // rate-limited
    receiver.down = false;
    const expected = await trailOrder(places.trailDirectory);
    await until(() => receiver.received.length >= expected.length && sink.status().up, 'recovery');
    await sink.stop();
    expect(seen(receiver)).toEqual(expected);
    expect(lines).toContain('info audit sink recovered; delivering the events that waited in the trail');
    expect(sink.status()).toMatchObject({ up: true, pending: 0 });
    await log.close();
  });

  it('skips a tampered trail line once, saying so, instead of reading it again forever', async () => {
    const places = await setup();
    const first = await AuditLog.open(places.trailDirectory, 'm1', fail);
    for (let index = 0; index < 5; index++) await first.record({ action: 'Put', targets: [`/k/${index}`], outcome: 'allowed' });
    await first.close();
    const [file] = await trailFiles(places.trailDirectory);
    const lines = (await readFile(file as string, 'utf8')).split('\n');
    lines[3] = '{"tampered": true}';
    await writeFile(file as string, lines.join('\n'));
    const second = await AuditLog.open(places.trailDirectory, 'm1', fail);
    const receiver = new ScriptedReceiver();
    const logLines: string[] = [];
    const sink = await sinkOn(second, places, receiver, {}, logLines);
    for (let index = 0; index < 5; index++) await second.record({ action: 'Put', targets: [`/after/${index}`], outcome: 'allowed' });
    await until(() => receiver.received.length >= 4 + 6, 'the readable events');
    await new Promise((resolve) => setTimeout(resolve, 200));
    await second.record({ action: 'Put', targets: ['/last'], outcome: 'allowed' });
    const expected = (await trailOrder(places.trailDirectory)).filter((id) => !id.endsWith('#undefined'));
    expect(expected).toHaveLength(5 + 7);
    await until(() => receiver.received.length >= expected.length, 'the last event');
    await sink.stop();
    expect(seen(receiver)).toEqual(expected);
    expect(seen(receiver)).not.toContain(`${path.basename(file as string)}#3`);
    expect(logLines.filter((line) => line.includes('not an event') || line.includes('unreadable'))).toHaveLength(1);
    expect(sink.status().catchUps).toBeLessThanOrEqual(3);
    await second.close();
  });

  it('a cursor that cannot be saved (full disk) is a failure: said, retried with the same batch, nothing lost', async () => {
    const places = await setup();
    const receiver = new ScriptedReceiver();
    const log = await AuditLog.open(places.trailDirectory, 'm1', fail);
    const lines: string[] = [];
    const sink = await sinkOn(log, places, receiver, {}, lines);
    await until(() => sink.status().delivered === 1, 'the start event');
    const obstacle = path.join(places.stateDirectory, 'test.cursor.tmp');
    await mkdir(obstacle); // the cursor's temporary file cannot be written
    await Promise.all(Array.from({ length: 5 }, (_unused, index) => log.record({ action: 'Put', targets: [`/k/${index}`], outcome: 'allowed' })));
    await until(() => sink.status().failures >= 2, 'failed saves');
    expect(sink.status()).toMatchObject({ up: false, delivered: 1 });
    expect(lines.some((line) => line.startsWith('warn audit sink down'))).toBe(true);
    await rm(obstacle, { recursive: true });
    const expected = await trailOrder(places.trailDirectory);
    await until(() => sink.status().delivered === expected.length, 'every event');
    await sink.stop();
    expect(distinctInOrder(seen(receiver))).toEqual(expected);
    // The receiver saw the unsaved batch again byte for byte (same idempotency key for a webhook).
    expect(receiver.batches.slice(1).every((batch) => batch === receiver.batches[1])).toBe(true);
    await log.close();
  });

  it('without acknowledgements (syslog): the cursor moves only on confirmation; a break resends from it, in order', async () => {
    const places = await setup();
    const receiver = new ScriptedReceiver(false);
    const log = await AuditLog.open(places.trailDirectory, 'm1', fail);
    const sink = await sinkOn(log, places, receiver, { confirmIdleMs: 60_000 });
    for (let index = 0; index < 30; index++) await log.record({ action: 'Put', targets: [`/k/${index}`], outcome: 'allowed' });
    await until(() => sink.status().delivering?.seq === 30, 'all sent');
    expect(sink.status()).toMatchObject({ delivered: 0, pending: 31 }); // sent, not confirmed: the cursor has not moved
    receiver.down = true; // the connection breaks: half of what it carried had arrived
    await log.record({ action: 'Put', targets: ['/break'], outcome: 'allowed' });
    await until(() => sink.status().failures > 0, 'the break');
    receiver.confirmsOnSend = true; // as a transport past its confirmEventsMax
    receiver.down = false;
    const expected = await trailOrder(places.trailDirectory);
    await until(() => sink.status().delivered === expected.length, 'every event confirmed');
    await sink.stop();
    const ids = seen(receiver);
    expect(distinctInOrder(ids)).toEqual(expected);
    // The copies are a replay from the cursor: the first 15 events twice, then the rest.
    expect(ids).toEqual([...expected.slice(0, 15), ...expected]);
    await log.close();
  });
});

describe('sink transports over real TLS on 127.0.0.1', () => {
  const records = (count: number): SinkRecord[] => Array.from({ length: count }, (_unused, seq) => {
    const input = event({ seq });
    return { position: { file: 'audit-1.jsonl', seq }, event: input, payload: JSON.stringify({ seq }) };
  });
  let pki: { ca: Buffer; otherCa: Buffer; cert: Buffer; key: Buffer; clientCert: Buffer; clientKey: Buffer };
  const servers: { close(): unknown }[] = [];
  beforeAll(async () => {
    const authority = await createAuthority('receivers');
    const other = await createAuthority('someone else');
    const server = await issueCertificate(authority, { kind: 'server', commonName: 'receiver', subjectAltNames: ['127.0.0.1'] });
    const client = await issueCertificate(authority, { kind: 'client', commonName: 'member' });
    pki = {
      ca: Buffer.from(authority.certificatePem), otherCa: Buffer.from(other.certificatePem), cert: Buffer.from(server.certificatePem), key: Buffer.from(server.keyPem),
      clientCert: Buffer.from(client.certificatePem), clientKey: Buffer.from(client.keyPem),
    };
  });
  afterAll(() => {
    for (const server of servers) server.close();
  });
  const listening = async <T extends HttpsServer | TlsServer>(server: T): Promise<number> => {
    servers.push(server);
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    return (server.address() as AddressInfo).port;
  };

  it('webhook: one JSON array a batch, the idempotency key and bearer token; non-2xx and an untrusted certificate fail', async () => {
    const seen: { headers: Record<string, unknown>; body: string }[] = [];
    let status = 200;
    const port = await listening(createHttpsServer({ cert: pki.cert, key: pki.key }, (request, response) => {
      let body = '';
      request.on('data', (chunk: Buffer) => (body += chunk.toString()));
      request.on('end', () => {
        seen.push({ headers: request.headers, body });
        response.writeHead(status).end('x'.repeat(200_000)); // an answer is read and dropped, bounded
      });
    }));
    const webhook = (ca: Buffer): WebhookTransport => new WebhookTransport({ url: new URL(`https://127.0.0.1:${port}/hook?channel=1`), ca, token: 'sekrit', member: 'm1', userAgent: 'rampart/test', timeoutMs: 5_000 });
    const good = webhook(pki.ca);
    expect(await good.send(records(3))).toBe(true);
    expect(JSON.parse(seen[0]?.body ?? '')).toEqual([{ seq: 0 }, { seq: 1 }, { seq: 2 }]);
    expect(seen[0]?.headers).toMatchObject({ 'idempotency-key': 'm1:audit-1.jsonl:0:audit-1.jsonl:2', authorization: 'Bearer sekrit', 'content-type': 'application/json' });
    status = 503;
    await expect(good.send(records(1))).rejects.toThrow('the receiver answered HTTP 503');
    good.close();
    const untrusted = webhook(pki.otherCa);
    const refused = await untrusted.send(records(1)).then(() => 'sent', (error: Error) => error.message);
    expect(refused).toMatch(/certificate/);
    expect(refused).not.toContain('sekrit');
    untrusted.close();
    expect(seen).toHaveLength(2); // the untrusted connection never reached the receiver
  });

  it('syslog: octet-counted RFC 5424 frames, confirmed by an orderly close; a reset is a failure; mutual TLS when asked', async () => {
    const received: string[] = [];
    let goAway = false;
    const port = await listening(createTlsServer({ cert: pki.cert, key: pki.key, ca: pki.ca, requestCert: true, rejectUnauthorized: true }, (socket) => {
      let buffered: Buffer = Buffer.alloc(0);
      socket.on('data', (chunk: Buffer) => {
        if (goAway) {
          socket.end(); // a receiver shutting down: it ends the session before the member asked
          return;
        }
        const { messages, rest } = parseOctetCountedFrames(Buffer.concat([buffered, chunk]));
        received.push(...messages);
        buffered = rest;
      });
      socket.on('end', () => socket.end()); // as rsyslog: end of stream, end of session
      socket.on('error', () => undefined);
    }));
    const syslog = (withCertificate: boolean, confirmEventsMax = 100): SyslogTlsTransport => new SyslogTlsTransport({
      host: '127.0.0.1', port, ca: pki.ca, timeoutMs: 5_000, confirmEventsMax, confirmIntervalMs: 60_000,
      ...(withCertificate ? { cert: pki.clientCert, key: pki.clientKey } : {}),
    });
    const transport = syslog(true);
    expect(await transport.send(records(3))).toBe(false); // written, not yet confirmed
    await transport.confirm();
    expect(received).toHaveLength(3);
    expect(received[2]).toMatch(/^<109>1 2026-11-26T07:00:00\.123Z \S+ rampart \d+ Put \[rampart@32473 member="8e9e05c52164694d" file="audit-1\.jsonl" seq="2"\] \{"seq":2\}$/);
    expect(await syslog(true, 2).send(records(2))).toBe(true); // confirmed at once past confirmEventsMax
    expect(received).toHaveLength(5);
    goAway = true;
    const leaving = syslog(true);
    await leaving.send(records(2));
    await new Promise((resolve) => setTimeout(resolve, 100));
    await expect(leaving.confirm()).rejects.toThrow('the receiver ended the connection');
    leaving.close();
    goAway = false;
    const anonymous = syslog(false);
    await expect(anonymous.send(records(1)).then(() => anonymous.confirm())).rejects.toThrow();
    anonymous.close();
    expect(received).toHaveLength(5);
  });
});
