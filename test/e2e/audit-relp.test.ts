/**
 * The RELP sink against rsyslog's own RELP input (imrelp, TLS with client certificates required)
 * on a 3-member `rampart up` cluster under a put load: rsyslog is stopped and started again
 * mid-load and a member restarts, and still every event of every member arrives exactly once and
 * in trail order — compared, copies included, with what `rampart audit export` reads from that
 * member's own trail. And `--audit-fail-closed` with RELP as the only sink: writes refused while
 * rsyslog is down, served again when it is back, nothing lost or doubled. Needs Debian rsyslog
 * and rsyslog-relp (scripts/test-dependencies.sh installs them).
 */
import { mkdir, readFile, stat } from 'node:fs/promises';
import path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseEventLine } from '../../src/audit/event.js';
import { imrelp, makePki, Rsyslog, rsyslogd, sleep, until, type Pki, type SyslogReceived } from '../helpers/audit-receivers.js';
import { call, connect, type RawClient } from '../helpers/client.js';
import { freeBasePort, freePort, rampartBin, removeDirectory, run, startRampart, temporaryDirectory, type CommandResult } from '../helpers/processes.js';

/** The member's trail as `rampart audit export` reads it: member:hash in trail order. */
async function exported(auditDirectory: string): Promise<{ member: string; ids: string[] }> {
  const result = await run(process.execPath, [rampartBin, 'audit', 'export', auditDirectory], { timeoutMs: 30_000 });
  expect(result.code, result.stderr).toBe(0);
  const ids: string[] = [];
  let member = '';
  for (const line of result.stdout.split('\n')) {
    if (line === '') continue;
    const event = parseEventLine(line);
    if (typeof event === 'string') throw new Error(`audit export wrote a line that is not an event (${event}): ${line.slice(0, 120)}`);
    member = event.member;
    ids.push(`${event.member}:${event.hash}`);
  }
  return { member, ids };
}

const alive = (pid: number): boolean => {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
};

const receivedBytes = (rsyslog: Rsyslog): Promise<number> => stat(rsyslog.received).then((stats) => stats.size, () => 0);

/** What rsyslog wrote of `member`, copies included, as member:hash in the order written. */
const receivedOf = (messages: readonly SyslogReceived[], member: string): string[] => messages.filter((message) => message.member === member).map((message) => message.id);

describe.skipIf(rsyslogd === undefined || !imrelp)('the RELP sink: exactly once, in order, to rsyslog imrelp over TLS', () => {
  let directory: string;
  let pki: Pki;
  const cleanups: (() => Promise<unknown>)[] = [];
  beforeAll(async () => {
    directory = await temporaryDirectory('audit-relp');
    pki = await makePki(directory);
  });
  afterAll(async () => {
    for (const cleanup of cleanups.reverse()) await cleanup().catch(() => undefined);
    await removeDirectory(directory);
  });
  const sinkOf = (port: number): string => `relp+tls://127.0.0.1:${port}?ca=${pki.caFile}&cert=${pki.clientCert}&key=${pki.clientKey}&name=relp`;

  it('every event of every member arrives exactly once, in trail order, across an rsyslog stop and start and a member restart under load', async () => {
    const receiverDirectory = path.join(directory, 'rsyslog-cluster');
    await mkdir(receiverDirectory);
    const rsyslog = new Rsyslog(receiverDirectory, await freePort(), pki, 'relp');
    await rsyslog.start();
    cleanups.push(() => rsyslog.stop());
    const home = path.join(directory, 'cluster');
    const basePort = await freeBasePort();
    const up = (): Promise<CommandResult> => run(process.execPath, [rampartBin, 'up', '--dir', home, '--base-port', String(basePort), '--audit-sink', sinkOf(rsyslog.port)], { timeoutMs: 90_000 });
    const started = await up();
    expect(started.code, started.stderr).toBe(0);
    cleanups.push(() => run(process.execPath, [rampartBin, 'down', '--dir', home], { timeoutMs: 30_000 }));
    const [ca, cert, key] = await Promise.all(['ca.crt', 'admin.crt', 'admin.key'].map((name) => readFile(path.join(home, 'pki', name))));
    const credentials = grpc.credentials.createSsl(ca, key, cert);
    const clients: RawClient[] = [0, 1, 2].map((index) => connect(`127.0.0.1:${basePort + index * 10_000}`, {}, credentials));
    cleanups.push(async () => clients.forEach((client) => client.close()));

    let loading = true;
    let acknowledged = 0;
    const load = Promise.all(clients.map(async (client, member) => {
      for (let index = 0; loading; index++) {
        const answered = await call(client.kv, 'Put', { key: Buffer.from(`/load/${member}/${index}`), value: Buffer.from('v') }).then(() => true, () => false);
        if (answered) acknowledged += 1;
        else await sleep(50); // the restarting member
      }
    }));
    // rsyslog stops (orderly: it answers what it took) while every member is sending, and returns.
    await sleep(1_500);
    await rsyslog.stop();
    const whileDown = acknowledged;
    await sleep(2_000);
    expect(acknowledged, 'the members kept serving while the sink was down (fail-open is the default)').toBeGreaterThan(whileDown);
    const sizeAtRestart = await receivedBytes(rsyslog);
    await rsyslog.start();
    // And stops again as soon as the members' catch-up is flowing (what waited goes in batches of
    // up to 500, 8 unanswered at a time), so sessions break with part of a batch answered: only
    // the rest may be sent again.
    const resumeDeadline = Date.now() + 15_000;
    while ((await receivedBytes(rsyslog)) === sizeAtRestart && Date.now() < resumeDeadline) await sleep(5);
    await rsyslog.stop();
    await sleep(500);
    await rsyslog.start();
    // A member stops while its sink has messages in flight (an orderly close waits for their
    // answers) and starts again: its sink resumes from its cursor, across two trail files.
    await sleep(1_000);
    const pid = Number(await readFile(path.join(home, 'm3', 'pid'), 'utf8'));
    process.kill(pid, 'SIGTERM');
    await until(() => !alive(pid), 'm3 to stop', 15_000);
    const restarted = await up();
    expect(restarted.code, restarted.stderr).toBe(0);
    await sleep(1_000);
    loading = false;
    await load;

    const trails = await Promise.all(['m1', 'm2', 'm3'].map((name) => exported(path.join(home, name, 'data', 'audit'))));
    const total = trails.reduce((sum, trail) => sum + trail.ids.length, 0);
    expect(total).toBeGreaterThan(acknowledged);
    await until(async () => {
      const messages = await rsyslog.messages();
      return trails.every(({ member, ids }) => receivedOf(messages, member).length >= ids.length);
    }, `${total} events at rsyslog`, 30_000);
    await sleep(500); // a copy sent late would show up now
    const messages = await rsyslog.messages();
    for (const { member, ids } of trails) {
      // Copies included: exactly the member's trail, each event once, in order.
      expect(receivedOf(messages, member)).toEqual(ids);
    }
    expect(messages.length).toBe(total);
    console.log(`audit RELP e2e: ${total} events from 3 members (${acknowledged} puts), each exactly once at rsyslog imrelp after an rsyslog stop/start and a member restart`);
  }, 120_000); // ~35 s alone; the margin is for a loaded CI machine

  it('--audit-fail-closed with RELP as the only sink: writes refused while rsyslog is down, served again when it returns, nothing lost or doubled', async () => {
    const receiverDirectory = path.join(directory, 'rsyslog-fail-closed');
    await mkdir(receiverDirectory);
    const rsyslog = new Rsyslog(receiverDirectory, await freePort(), pki, 'relp');
    await rsyslog.start();
    cleanups.push(() => rsyslog.stop());
    const server = await startRampart({ args: ['--audit-fail-closed', '--audit-sink', sinkOf(rsyslog.port)] });
    cleanups.push(async () => {
      await server.stop();
      await removeDirectory(server.dataDir);
    });
    const client = connect(server.endpoint);
    cleanups.push(async () => client.close());
    await call(client.kv, 'Put', { key: Buffer.from('/before'), value: Buffer.from('v') });

    await rsyslog.stop();
    let attempt = 0;
    let refused: { code: number; details: string } | undefined;
    await until(async () => {
      attempt += 1;
      refused = await call(client.kv, 'Put', { key: Buffer.from(`/during/${attempt}`), value: Buffer.from('v') }).then(() => undefined, (error: grpc.ServiceError) => ({ code: error.code, details: error.details }));
      return refused !== undefined;
    }, 'a refusal', 20_000);
    expect(refused).toEqual({ code: grpc.status.UNAVAILABLE, details: 'rampart: no audit sink takes events (--audit-fail-closed); the request was not applied, retry when a sink is back' });
    const refusedKey = `/during/${attempt}`;

    await rsyslog.start();
    await until(() => call(client.kv, 'Put', { key: Buffer.from('/after'), value: Buffer.from('v') }).then(() => true, () => false), 'serving again', 20_000);
    const range = await call(client.kv, 'Range', { key: Buffer.from('/during/'), range_end: Buffer.from('/during0') });
    expect((range.kvs as { key: Buffer }[]).map((kv) => kv.key.toString())).not.toContain(refusedKey);

    const { member, ids } = await exported(path.join(server.dataDir, 'audit'));
    await until(async () => receivedOf(await rsyslog.messages(), member).length >= ids.length, 'every event at rsyslog', 20_000);
    const messages = await rsyslog.messages();
    expect(receivedOf(messages, member)).toEqual(ids);
    const refusals = messages.filter((message) => message.event.detail?.startsWith('rampart: no audit sink takes events') === true);
    expect(refusals.length, 'the refusals are in the trail and were delivered once rsyslog returned').toBeGreaterThan(0);
  }, 60_000);
});
