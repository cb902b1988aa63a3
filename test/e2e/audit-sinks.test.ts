/**
 * Streaming the audit trail to real receivers: rsyslog listening on TLS (mutual TLS, RFC 5425
 * framing) and an HTTPS webhook, both restarted under a put load on a 3-member `rampart up`
 * cluster (TLS, auth, encryption at rest) while one member restarts; then every
 * event of every member's trail is at each receiver, in order — once at the webhook (2xx acks and
 * idempotency keys), once after dropping the copies that a broken syslog connection resends. And
 * `--audit-fail-closed`: refused while no sink takes events, served again when one returns, and
 * nothing lost. Needs rsyslogd with its GnuTLS driver (Debian rsyslog, rsyslog-gnutls; installed
 * by scripts/test-dependencies.sh).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { createServer, type Server } from 'node:https';
import path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseEventLine, type AuditEvent } from '../../src/audit/event.js';
import { verifyAudit } from '../../src/audit/verify.js';
import { trailKeyForReading } from '../../src/cli/audit-keys.js';
import { createAuthority, issueCertificate } from '../../src/pki/authority.js';
import { call, callError, connect, type RawClient } from '../helpers/client.js';
import { freeBasePort, freePort, projectRoot, rampartBin, removeDirectory, run, startRampart, temporaryDirectory, type CommandResult, type ServerProcess } from '../helpers/processes.js';

const rsyslogd = ['/usr/sbin/rsyslogd', '/sbin/rsyslogd'].find((file) => existsSync(file));
const gnutlsDriver = ['/usr/lib/x86_64-linux-gnu/rsyslog/lmnsd_gtls.so', '/usr/lib/aarch64-linux-gnu/rsyslog/lmnsd_gtls.so', '/usr/lib/rsyslog/lmnsd_gtls.so'].some((file) => existsSync(file));

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));
async function until(condition: () => Promise<boolean> | boolean, what: string, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await condition())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(100);
  }
}

interface Pki {
  readonly caFile: string;
  readonly serverCert: string;
  readonly serverKey: string;
  readonly clientCert: string;
  readonly clientKey: string;
}

async function makePki(directory: string): Promise<Pki> {
  const authority = await createAuthority('audit receivers test CA');
  const server = await issueCertificate(authority, { kind: 'server', commonName: 'receiver', subjectAltNames: ['127.0.0.1'] });
  const client = await issueCertificate(authority, { kind: 'client', commonName: 'rampart-member' });
  const file = async (name: string, text: string): Promise<string> => {
    const target = path.join(directory, name);
    await writeFile(target, text, { mode: 0o600 });
    return target;
  };
  return {
    caFile: await file('ca.pem', authority.certificatePem),
    serverCert: await file('server.pem', server.certificatePem),
    serverKey: await file('server.key', server.keyPem),
    clientCert: await file('client.pem', client.certificatePem),
    clientKey: await file('client.key', client.keyPem),
  };
}

/** rsyslogd in the foreground with its own config, pid file and work directory; TLS with client certificates required. */
class Rsyslog {
  private child: ChildProcess | undefined;
  private output = '';
  readonly received: string;
  constructor(private readonly directory: string, readonly port: number, private readonly pki: Pki) {
    this.received = path.join(directory, 'received.log');
  }

  async start(): Promise<void> {
    const work = path.join(this.directory, 'work');
    await mkdir(work, { recursive: true });
    const config = path.join(this.directory, 'rsyslog.conf');
    await writeFile(config, [
      `global(workDirectory="${work}" defaultNetstreamDriver="gtls" defaultNetstreamDriverCAFile="${this.pki.caFile}"`,
      `       defaultNetstreamDriverCertFile="${this.pki.serverCert}" defaultNetstreamDriverKeyFile="${this.pki.serverKey}")`,
      'module(load="imtcp" streamDriver.name="gtls" streamDriver.mode="1" streamDriver.authMode="x509/certvalid")',
      `input(type="imtcp" port="${this.port}" address="127.0.0.1")`,
      'template(name="audit" type="string" string="%structured-data% %msg%\\n")',
      `action(type="omfile" file="${this.received}" template="audit")`,
      '',
    ].join('\n'));
    this.child = spawn(rsyslogd as string, ['-n', '-f', config, '-i', path.join(this.directory, 'rsyslogd.pid')], { stdio: ['ignore', 'pipe', 'pipe'] });
    this.child.stdout?.on('data', (chunk: Buffer) => (this.output += chunk.toString()));
    this.child.stderr?.on('data', (chunk: Buffer) => (this.output += chunk.toString()));
    await until(async () => {
      if (this.child?.exitCode !== null) throw new Error(`rsyslogd exited: ${this.output}`);
      const { connect: tcp } = await import('node:net');
      return new Promise<boolean>((resolve) => {
        const socket = tcp(this.port, '127.0.0.1');
        socket.once('connect', () => {
          socket.destroy();
          resolve(true);
        });
        socket.once('error', () => resolve(false));
      });
    }, 'rsyslogd to listen', 10_000);
  }

  async stop(): Promise<void> {
    const child = this.child;
    if (child === undefined || child.exitCode !== null) return;
    const exited = new Promise((resolve) => child.once('exit', resolve));
    child.kill('SIGTERM');
    await exited;
  }

  /** What rsyslog wrote: the event id from the structured data, and the event. */
  async messages(): Promise<{ id: string; event: AuditEvent }[]> {
    const text = await readFile(this.received, 'utf8').catch(() => '');
    const messages: { id: string; event: AuditEvent }[] = [];
    for (const line of text.split('\n')) {
      if (line === '') continue;
      const match = /^\[rampart@32473 member="([0-9a-f]+)" file="([^"]+)" seq="(\d+)"\] (.*)$/.exec(line);
      if (match === null) throw new Error(`rsyslog wrote an unexpected line: ${line.slice(0, 200)}`);
      const event = parseEventLine(match[4] as string);
      if (typeof event === 'string') throw new Error(`not a canonical event (${event}): ${line.slice(0, 200)}`);
      expect(String(event.seq)).toBe(match[3]);
      messages.push({ id: `${event.member}:${event.hash}`, event });
    }
    return messages;
  }
}

/** An HTTPS receiver honouring Idempotency-Key (a batch it acknowledged is acknowledged again, not kept twice). */
class Webhook {
  private server: Server | undefined;
  readonly events: Record<string, unknown>[] = [];
  readonly keys = new Set<string>();
  repeatedBatches = 0;
  authorization = new Set<string>();
  constructor(readonly port: number, private readonly pki: Pki) {}

  async start(): Promise<void> {
    const [cert, key] = await Promise.all([readFile(this.pki.serverCert), readFile(this.pki.serverKey)]);
    const server = createServer({ cert, key }, (request, response) => {
      const chunks: Buffer[] = [];
      request.on('data', (chunk: Buffer) => chunks.push(chunk));
      request.on('end', () => {
        this.authorization.add(String(request.headers.authorization));
        const idempotencyKey = String(request.headers['idempotency-key']);
        if (this.keys.has(idempotencyKey)) {
          this.repeatedBatches += 1;
        } else {
          this.keys.add(idempotencyKey);
          this.events.push(...(JSON.parse(Buffer.concat(chunks).toString('utf8')) as Record<string, unknown>[]));
        }
        response.writeHead(200).end();
      });
    });
    await new Promise<void>((resolve) => server.listen(this.port, '127.0.0.1', resolve));
    this.server = server;
  }

  async stop(): Promise<void> {
    const server = this.server;
    if (server === undefined) return;
    this.server = undefined;
    server.closeAllConnections();
    await new Promise((resolve) => server.close(resolve));
  }

  /** Event ids (member:hash) in the order received. */
  ids(): string[] {
    return this.events.map((event) => {
      const chain = (event.unmapped as { rampart: { member: string; hash: string } }).rampart;
      return `${chain.member}:${chain.hash}`;
    });
  }
}

/** Every event of a member's trail (verified), as member:hash, in trail order, and how many files hold it. */
async function trailOf(directory: string): Promise<{ member: string; ids: string[]; files: number }> {
  const ids: string[] = [];
  let member = '';
  // Sealed at rest: opened with the member's KEK, found beside its data directory.
  const key = await trailKeyForReading(directory, {});
  const result = await verifyAudit(directory, {
    ...(key === undefined ? {} : { key }),
    onEvent: (event) => {
      member = event.member;
      ids.push(`${event.member}:${event.hash}`);
    },
  });
  expect(result.ok, result.problem).toBe(true);
  return { member, ids, files: result.files };
}

const alive = (pid: number): boolean => {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
};
const byMember = (ids: readonly string[], member: string): string[] => ids.filter((id) => id.startsWith(`${member}:`));
const distinct = (ids: readonly string[]): string[] => [...new Set(ids)];

describe.skipIf(rsyslogd === undefined || !gnutlsDriver)('streaming audit sinks to rsyslog over TLS and an HTTPS webhook', () => {
  let directory: string;
  let pki: Pki;
  const cleanups: (() => Promise<unknown>)[] = [];
  beforeAll(async () => {
    directory = await temporaryDirectory('audit-sinks');
    pki = await makePki(directory);
    await writeFile(path.join(directory, 'token'), 'test-bearer-token\n', { mode: 0o600 });
  });
  afterAll(async () => {
    for (const cleanup of cleanups.reverse()) await cleanup().catch(() => undefined);
    await removeDirectory(directory);
  });

  it('every event of every member of a `rampart up` cluster arrives in order after both receivers restart under load; copies only where syslog must resend', async () => {
    const rsyslog = new Rsyslog(directory, await freePort(), pki);
    const webhook = new Webhook(await freePort(), pki);
    await rsyslog.start();
    await webhook.start();
    cleanups.push(() => rsyslog.stop(), () => webhook.stop());
    const syslogSink = `syslog+tls://127.0.0.1:${rsyslog.port}?ca=${pki.caFile}&cert=${pki.clientCert}&key=${pki.clientKey}`;
    const webhookSink = `https://127.0.0.1:${webhook.port}/audit?format=ocsf&ca=${pki.caFile}&token-file=${path.join(directory, 'token')}`;
    const home = path.join(directory, 'cluster');
    const basePort = await freeBasePort();
    const up = (): Promise<CommandResult> => run(process.execPath, [rampartBin, 'up', '--dir', home, '--base-port', String(basePort), '--audit-sink', syslogSink, '--audit-sink', webhookSink], { timeoutMs: 90_000 });
    const started = await up();
    expect(started.code, started.stderr).toBe(0);
    cleanups.push(() => run(process.execPath, [rampartBin, 'down', '--dir', home], { timeoutMs: 30_000 }));
    const [ca, cert, key] = await Promise.all(['ca.crt', 'admin.crt', 'admin.key'].map((name) => readFile(path.join(home, 'pki', name))));
    const credentials = grpc.credentials.createSsl(ca, key, cert);
    const clients: RawClient[] = [0, 1, 2].map((index) => connect(`127.0.0.1:${basePort + index * 10_000}`, {}, credentials));
    cleanups.push(async () => clients.forEach((client) => client.close()));

    // A put load on every member; the receivers go away and come back in the middle, and one
    // member restarts meanwhile (its sinks resume from their cursors, across its trail files).
    let loading = true;
    let acknowledged = 0;
    const load = Promise.all(clients.map(async (client, member) => {
      for (let index = 0; loading; index++) {
        const answered = await call(client.kv, 'Put', { key: Buffer.from(`/load/${member}/${index}`), value: Buffer.from('never-in-the-trail') }).then(() => true, () => false);
        if (answered) acknowledged += 1;
        else await sleep(50); // the restarting member
      }
    }));
    await sleep(1_500);
    await Promise.all([rsyslog.stop(), webhook.stop()]);
    const whileDown = acknowledged;
    const pid = Number(await readFile(path.join(home, 'm3', 'pid'), 'utf8'));
    process.kill(pid, 'SIGTERM');
    await until(() => !alive(pid), 'm3 to stop', 15_000);
    const restarted = await up();
    expect(restarted.code, restarted.stderr).toBe(0);
    expect(acknowledged, 'the members kept serving while no sink took events (fail-open is the default)').toBeGreaterThan(whileDown);
    await Promise.all([rsyslog.start(), webhook.start()]);
    await sleep(1_500);
    loading = false;
    await load;

    const members = await Promise.all(['m1', 'm2', 'm3'].map((name) => trailOf(path.join(home, name, 'data', 'audit'))));
    const total = members.reduce((sum, trail) => sum + trail.ids.length, 0);
    expect(total).toBeGreaterThan(acknowledged);
    expect(members[2]?.files, 'the restarted member has two trail files').toBe(2);
    await until(async () => distinct(webhook.ids()).length >= total && distinct((await rsyslog.messages()).map((message) => message.id)).length >= total, `${total} events at both receivers`, 30_000);
    const syslogIds = (await rsyslog.messages()).map((message) => message.id);
    for (const { member, ids } of members) {
      // The webhook: each event once, in trail order.
      expect(byMember(webhook.ids(), member)).toEqual(ids);
      // rsyslog: in trail order once copies are dropped, and a copy only ever replays from an earlier point.
      const received = byMember(syslogIds, member);
      expect(distinct(received)).toEqual(ids);
      let highest = -1;
      for (const id of received) {
        const index = ids.indexOf(id);
        expect(index <= highest + 1, `${id} skips ahead`).toBe(true);
        highest = Math.max(highest, index);
      }
    }
    console.log(`audit sinks e2e: ${total} events from 3 members (${acknowledged} puts); webhook batches acknowledged again ${webhook.repeatedBatches}; syslog copies resent after broken connections ${syslogIds.length - distinct(syslogIds).length}`);
    expect(webhook.authorization).toEqual(new Set(['Bearer test-bearer-token']));
    const everything = `${await readFile(rsyslog.received, 'utf8')}${JSON.stringify(webhook.events)}`;
    expect(everything).not.toContain('never-in-the-trail');
    expect(everything).not.toContain('test-bearer-token');
    for (const name of ['m1', 'm2', 'm3']) expect(await readFile(path.join(home, name, 'log'), 'utf8')).not.toContain('test-bearer-token');
  }, 90_000);

  it('--audit-fail-closed: refuses requests while no sink takes events, serves again when one returns, and loses nothing', async () => {
    const webhook = new Webhook(await freePort(), pki);
    await webhook.start();
    cleanups.push(() => webhook.stop());
    const rsyslogDirectory = path.join(directory, 'fail-closed-rsyslog');
    await mkdir(rsyslogDirectory);
    const rsyslog = new Rsyslog(rsyslogDirectory, await freePort(), pki);
    await rsyslog.start();
    cleanups.push(() => rsyslog.stop());
    const metricsPort = await freePort();
    const server: ServerProcess = await startRampart({
      args: [
        '--audit-fail-closed',
        '--audit-sink', `https://127.0.0.1:${webhook.port}/audit?format=ocsf&ca=${pki.caFile}&name=siem`,
        '--audit-sink', `syslog+tls://127.0.0.1:${rsyslog.port}?ca=${pki.caFile}&cert=${pki.clientCert}&key=${pki.clientKey}&name=syslog`,
        '--listen-metrics-urls', `http://127.0.0.1:${metricsPort}`, '--log-level', 'info',
      ],
    });
    const metrics = async (): Promise<Map<string, number>> => {
      const body = await (await fetch(`http://127.0.0.1:${metricsPort}/metrics`)).text();
      return new Map([...body.matchAll(/^(rampart_audit_sink_[a-z_]+)\{sink="siem"\} (\S+)$/gm)].map((match) => [match[1] as string, Number(match[2])]));
    };
    cleanups.push(async () => {
      await server.stop();
      await removeDirectory(server.dataDir);
    });
    const client = connect(server.endpoint);
    cleanups.push(async () => client.close());
    await call(client.kv, 'Put', { key: Buffer.from('/before'), value: Buffer.from('v') });

    // Every sink down: refused (one down is not enough, see below).
    await Promise.all([webhook.stop(), rsyslog.stop()]);
    let refused: { code: number; details: string } | undefined;
    let attempt = 0;
    await until(async () => {
      attempt += 1;
      const result = await call(client.kv, 'Put', { key: Buffer.from(`/during/${attempt}`), value: Buffer.from('v') }).then(() => undefined, (error: grpc.ServiceError) => ({ code: error.code, details: error.details }));
      refused = result;
      return result !== undefined;
    }, 'a refusal', 20_000);
    expect(refused).toEqual({ code: grpc.status.UNAVAILABLE, details: 'rampart: no audit sink takes events (--audit-fail-closed); the request was not applied, retry when a sink is back' });
    // Refused before anything was applied: the key is not there.
    const refusedKey = `/during/${attempt}`;
    expect(await callError(client.kv, 'Range', { key: Buffer.from('/before') })).toMatchObject({ code: grpc.status.UNAVAILABLE });
    const down = await metrics();
    expect(down.get('rampart_audit_sink_up')).toBe(0);
    expect(down.get('rampart_audit_sink_pending_events')).toBeGreaterThan(0);
    expect(down.get('rampart_audit_sink_failures_total')).toBeGreaterThan(0);
    expect(down.get('rampart_audit_sink_down_seconds')).toBeGreaterThan(1);
    // Every sink series the alert rules use is served (the observability test's cluster has no sinks).
    const rules = await readFile(path.join(projectRoot, 'deploy/prometheus/alerts.yaml'), 'utf8');
    for (const name of new Set(rules.match(/rampart_audit_sink_[a-z_]+/g))) expect(down.has(name), name).toBe(true);
    expect(server.output()).toMatch(/"sink":"siem".*"msg":"audit sink down: events wait in the trail and are delivered when it returns"/);

    // One sink back (syslog) is enough to serve again, while the other (the webhook) is still down.
    await rsyslog.start();
    await until(() => call(client.kv, 'Put', { key: Buffer.from('/after'), value: Buffer.from('v') }).then(() => true, () => false), 'serving again', 20_000);
    expect((await metrics()).get('rampart_audit_sink_up')).toBe(0);
    await webhook.start();
    const range = await call(client.kv, 'Range', { key: Buffer.from('/during/'), range_end: Buffer.from('/during0') });
    expect((range.kvs as { key: Buffer }[]).map((kv) => kv.key.toString())).not.toContain(refusedKey);

    const { ids } = await trailOf(path.join(server.dataDir, 'audit'));
    await until(() => webhook.ids().length >= ids.length, 'every event at the webhook', 20_000);
    expect(webhook.ids()).toEqual((await trailOf(path.join(server.dataDir, 'audit'))).ids);
    await until(async () => distinct((await rsyslog.messages()).map((message) => message.id)).length >= ids.length, 'every event at rsyslog', 20_000);
    expect(distinct((await rsyslog.messages()).map((message) => message.id))).toEqual(webhook.ids());
    const refusals = webhook.events.filter((event) => (event.status_detail as string | undefined)?.startsWith('rampart: no audit sink takes events') === true);
    expect(refusals.length).toBeGreaterThan(0); // the refusals themselves are audited, and delivered afterwards
    await until(async () => (await metrics()).get('rampart_audit_sink_pending_events') === 0, 'nothing pending', 10_000);
    const after = await metrics();
    expect(after.get('rampart_audit_sink_up')).toBe(1);
    expect(after.get('rampart_audit_sink_events_delivered_total')).toBe(webhook.ids().length);
    expect(server.output()).toMatch(/"sink":"siem".*"msg":"audit sink recovered; delivering the events that waited in the trail"/);
  }, 60_000);
});
