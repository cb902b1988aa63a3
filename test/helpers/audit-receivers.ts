/**
 * Real audit receivers for the sink e2e tests: rsyslogd in the foreground (RFC 5425 syslog over
 * TLS with `imtcp`, or RELP over TLS with `imrelp`; client certificates required either way) and
 * an HTTPS webhook receiver that keeps every batch it got, copies included, and says how many
 * copies it dropped and by which rule.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { createServer, type Server } from 'node:https';
import { connect as tcp } from 'node:net';
import path from 'node:path';
import { expect } from 'vitest';
import { parseEventLine, type AuditEvent } from '../../src/audit/event.js';
import { verifyAudit } from '../../src/audit/verify.js';
import { trailKeyForReading } from '../../src/cli/audit-keys.js';
import { createAuthority, issueCertificate } from '../../src/pki/authority.js';
import { freePort } from './processes.js';

export const rsyslogd = ['/usr/sbin/rsyslogd', '/sbin/rsyslogd'].find((file) => existsSync(file));
const moduleDirectories = ['/usr/lib/x86_64-linux-gnu/rsyslog', '/usr/lib/aarch64-linux-gnu/rsyslog', '/usr/lib/rsyslog'];
const hasModule = (name: string): boolean => moduleDirectories.some((directory) => existsSync(path.join(directory, name)));
/** rsyslog's GnuTLS driver (Debian rsyslog-gnutls), for imtcp over TLS. */
export const gnutlsDriver = hasModule('lmnsd_gtls.so');
/** rsyslog's RELP input (Debian rsyslog-relp). */
export const imrelp = hasModule('imrelp.so');

export const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));
export async function until(condition: () => Promise<boolean> | boolean, what: string, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await condition())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(100);
  }
}

export interface Pki {
  readonly caFile: string;
  readonly serverCert: string;
  readonly serverKey: string;
  readonly clientCert: string;
  readonly clientKey: string;
}

export async function makePki(directory: string): Promise<Pki> {
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

export interface SyslogReceived {
  /** member:hash of the event. */
  readonly id: string;
  readonly member: string;
  readonly file: string;
  readonly seq: number;
  readonly event: AuditEvent;
}

/**
 * rsyslogd in the foreground with its own config, pid file and work directory, writing every
 * message it takes to one file. `relp`: imrelp with `tls="on"`, and a direct main queue, so a
 * message is in the file before imrelp answers it (an in-memory queue would answer first).
 */
export class Rsyslog {
  private child: ChildProcess | undefined;
  private output = '';
  private started = false;
  readonly received: string;
  constructor(private readonly directory: string, private listenPort: number, private readonly pki: Pki, private readonly input: 'tcp' | 'relp' = 'tcp') {
    this.received = path.join(directory, 'received.log');
  }

  get port(): number {
    return this.listenPort;
  }

  /**
   * Starts rsyslogd. The first start moves to another free port if its port was taken meanwhile
   * (rsyslogd keeps running when it cannot bind; an outgoing connection of a parallel test can
   * hold a port `freePort` just handed out); a restart keeps the port its senders know. Up to
   * 30 s to listen: on a machine shared by parallel suites (load 25 on 2 cores) 10 s was missed.
   */
  async start(): Promise<void> {
    for (let attempt = 1; ; attempt++) {
      try {
        await this.launch();
        this.started = true;
        return;
      } catch (error) {
        await this.stop();
        if (this.started || attempt === 3) throw error;
        this.listenPort = await freePort();
      }
    }
  }

  private async launch(): Promise<void> {
    const work = path.join(this.directory, 'work');
    await mkdir(work, { recursive: true });
    const config = path.join(this.directory, 'rsyslog.conf');
    const { caFile, serverCert, serverKey } = this.pki;
    const input = this.input === 'tcp'
      ? [
        `global(workDirectory="${work}" maxMessageSize="64k" defaultNetstreamDriver="gtls" defaultNetstreamDriverCAFile="${caFile}"`,
        `       defaultNetstreamDriverCertFile="${serverCert}" defaultNetstreamDriverKeyFile="${serverKey}")`,
        'module(load="imtcp" streamDriver.name="gtls" streamDriver.mode="1" streamDriver.authMode="x509/certvalid")',
        `input(type="imtcp" port="${this.port}" address="127.0.0.1")`,
      ]
      : [
        `global(workDirectory="${work}" maxMessageSize="64k")`,
        'main_queue(queue.type="Direct")',
        'module(load="imrelp")',
        `input(type="imrelp" port="${this.port}" address="127.0.0.1" tls="on" tls.caCert="${caFile}" tls.myCert="${serverCert}" tls.myPrivKey="${serverKey}" tls.authMode="certvalid")`,
      ];
    await writeFile(config, [
      ...input,
      'template(name="audit" type="string" string="%structured-data% %msg%\\n")',
      `action(type="omfile" file="${this.received}" template="audit")`,
      '',
    ].join('\n'));
    this.output = '';
    const child = spawn(rsyslogd as string, ['-n', '-f', config, '-i', path.join(this.directory, 'rsyslogd.pid')], { stdio: ['ignore', 'pipe', 'pipe'] });
    this.child = child;
    child.stdout?.on('data', (chunk: Buffer) => (this.output += chunk.toString()));
    child.stderr?.on('data', (chunk: Buffer) => (this.output += chunk.toString()));
    await until(async () => {
      if (child.exitCode !== null) throw new Error(`rsyslogd exited: ${this.output}`);
      return new Promise<boolean>((resolve) => {
        const socket = tcp(this.port, '127.0.0.1');
        socket.once('connect', () => {
          socket.destroy();
          resolve(true);
        });
        socket.once('error', () => resolve(false));
      });
    }, 'rsyslogd to listen', 30_000).catch((error: Error) => {
      throw new Error(`${error.message} on port ${this.port}; rsyslogd said: ${this.output.slice(-2_000)}`);
    });
  }

  /** SIGTERM: rsyslogd's orderly shutdown. */
  async stop(): Promise<void> {
    const child = this.child;
    if (child === undefined || child.exitCode !== null) return;
    const exited = new Promise((resolve) => child.once('exit', resolve));
    child.kill('SIGTERM');
    await exited;
  }

  /** Every message rsyslog wrote, copies included, in the order written. */
  async messages(): Promise<SyslogReceived[]> {
    const text = await readFile(this.received, 'utf8').catch(() => '');
    const messages: SyslogReceived[] = [];
    for (const line of text.split('\n')) {
      if (line === '') continue;
      const match = /^\[rampart@32473 member="([0-9a-f]+)" file="([^"]+)" seq="(\d+)"\] (.*)$/.exec(line);
      if (match === null) throw new Error(`rsyslog wrote an unexpected line: ${line.slice(0, 200)}`);
      const event = parseEventLine(match[4] as string);
      if (typeof event === 'string') throw new Error(`not a canonical event (${event}): ${line.slice(0, 200)}`);
      expect(String(event.seq)).toBe(match[3]);
      messages.push({ id: `${event.member}:${event.hash}`, member: match[1] as string, file: match[2] as string, seq: Number(match[3]), event });
    }
    return messages;
  }
}

/** Ordering of (file, seq): trail file names sort in creation order. */
const after = (file: string, seq: number, last: { file: string; seq: number } | undefined): boolean =>
  last === undefined || file > last.file || (file === last.file && seq > last.seq);

/**
 * An HTTPS receiver that keeps every batch it is sent. It takes an event only if it comes after
 * the last (file, seq) it took from that member (the README's rule for receivers: events arrive
 * in trail order, so anything at or before that point is a copy) and counts the copies it drops.
 */
export class Webhook {
  private server: Server | undefined;
  /** The events taken, in the order taken (OCSF objects). */
  readonly events: Record<string, unknown>[] = [];
  /** Every event received, copies included. */
  received = 0;
  copies = 0;
  /** Batches whose Idempotency-Key had been acknowledged before. */
  repeatedKeys = 0;
  private readonly keys = new Set<string>();
  private readonly last = new Map<string, { file: string; seq: number }>();
  readonly authorization = new Set<string>();
  constructor(readonly port: number, private readonly pki: Pki) {}

  async start(): Promise<void> {
    const [cert, key] = await Promise.all([readFile(this.pki.serverCert), readFile(this.pki.serverKey)]);
    const server = createServer({ cert, key }, (request, response) => {
      const chunks: Buffer[] = [];
      request.on('data', (chunk: Buffer) => chunks.push(chunk));
      request.on('end', () => {
        this.authorization.add(String(request.headers.authorization));
        const idempotencyKey = String(request.headers['idempotency-key']);
        if (this.keys.has(idempotencyKey)) this.repeatedKeys += 1;
        this.keys.add(idempotencyKey);
        for (const event of JSON.parse(Buffer.concat(chunks).toString('utf8')) as Record<string, unknown>[]) {
          this.received += 1;
          const { member, file, seq } = (event.unmapped as { rampart: { member: string; file: string; seq: number } }).rampart;
          if (after(file, seq, this.last.get(member))) {
            this.last.set(member, { file, seq });
            this.events.push(event);
          } else {
            this.copies += 1;
          }
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

  /** Event ids (member:hash) in the order taken. */
  ids(): string[] {
    return this.events.map((event) => {
      const chain = (event.unmapped as { rampart: { member: string; hash: string } }).rampart;
      return `${chain.member}:${chain.hash}`;
    });
  }
}

/** Every event of a member's trail (verified), as member:hash, in trail order, and how many files hold it. */
export async function trailOf(directory: string): Promise<{ member: string; ids: string[]; files: number }> {
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

export const byMember = <T extends { readonly id: string } | string>(items: readonly T[], member: string): T[] =>
  items.filter((item) => (typeof item === 'string' ? item : item.id).startsWith(`${member}:`));
export const distinct = (ids: readonly string[]): string[] => [...new Set(ids)];
