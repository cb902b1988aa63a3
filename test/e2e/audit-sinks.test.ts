/**
 * Streaming the audit trail to real receivers: rsyslog listening on TLS (mutual TLS, RFC 5425
 * framing) and an HTTPS webhook, both restarted under a put load on a 3-member `rampart up`
 * cluster (TLS, auth, encryption at rest) while one member restarts; then every
 * event of every member's trail is at each receiver, in order — once at the webhook (2xx acks; the
 * receiver keeps every batch and drops a copy by member, file and seq, counting it), once after
 * dropping the copies that a broken syslog connection resends. And
 * `--audit-fail-closed`: refused while no sink takes events, served again when one returns, and
 * nothing lost. Needs rsyslogd with its GnuTLS driver (Debian rsyslog, rsyslog-gnutls; installed
 * by scripts/test-dependencies.sh).
 */
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { byMember, distinct, gnutlsDriver, makePki, rsyslogd, Rsyslog, sleep, trailOf, until, Webhook, type Pki } from '../helpers/audit-receivers.js';
import { call, callError, connect, type RawClient } from '../helpers/client.js';
import { freeBasePort, freePort, projectRoot, rampartBin, removeDirectory, run, startRampart, temporaryDirectory, type CommandResult, type ServerProcess } from '../helpers/processes.js';

const alive = (pid: number): boolean => {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
};

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
    expect(webhook.received).toBe(webhook.events.length + webhook.copies);
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
    console.log(`audit sinks e2e: ${total} events from 3 members (${acknowledged} puts); webhook events received again and dropped by (member, file, seq) ${webhook.copies}; syslog copies resent after broken connections ${syslogIds.length - distinct(syslogIds).length}`);
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
