/**
 * Observability as shipped: the alert rules load in promtool, and every metric the rules and the
 * Grafana dashboard use is served by a live `rampart up` cluster (metrics on by default, over TLS
 * with a client certificate required). Needs promtool (Debian `prometheus`, installed by
 * scripts/test-dependencies.sh).
 */
import { readFile } from 'node:fs/promises';
import { request } from 'node:https';
import path from 'node:path';
import { parse } from 'yaml';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { cleanEnvironment, freeBasePort, projectRoot, rampartBin, removeDirectory, run, temporaryDirectory } from '../helpers/processes.js';

const alertsFile = path.join(projectRoot, 'deploy/prometheus/alerts.yaml');
const dashboardFile = path.join(projectRoot, 'deploy/grafana/rampart.json');

/** Metric names in PromQL: label matchers and by/without lists removed, then the names that remain. */
export function metricNames(expressions: readonly string[]): Set<string> {
  const names = new Set<string>();
  for (const expression of expressions) {
    const bare = expression.replace(/\{[^}]*\}/g, ' ').replace(/\b(by|without)\s*\([^)]*\)/g, ' ').replace(/"[^"]*"/g, ' ');
    for (const match of bare.matchAll(/\b(etcd_[a-z0-9_]+|grpc_[a-z0-9_]+|rampart_[a-z0-9_]+)\b/g)) names.add(match[1] as string);
  }
  return names;
}

interface Answer { status: number; body: string }

describe('metrics, alerts and dashboard', () => {
  let home: string;
  let basePort: number;
  const pki = (): string => path.join(home, 'pki');
  const scrape = async (port: number, route: string, withCertificate = true): Promise<Answer> => {
    const [ca, cert, key] = await Promise.all(['ca.crt', 'admin.crt', 'admin.key'].map((name) => readFile(path.join(pki(), name))));
    return new Promise((resolve, reject) => {
      const call = request({ host: '127.0.0.1', port, path: route, ca, ...(withCertificate ? { cert, key } : {}), timeout: 10_000 }, (response) => {
        let body = '';
        response.on('data', (chunk: Buffer) => {
          body += chunk.toString();
        });
        response.on('end', () => resolve({ status: response.statusCode ?? 0, body }));
      });
      call.on('error', reject);
      call.end();
    });
  };

  beforeAll(async () => {
    home = path.join(await temporaryDirectory('observability'), 'cluster');
    basePort = await freeBasePort();
    const result = await run(process.execPath, [rampartBin, 'up', '--dir', home, '--base-port', String(basePort)], { timeoutMs: 90_000 });
    expect(result.code, result.stderr).toBe(0);
    expect(result.stdout).toContain(`metrics https://127.0.0.1:${basePort + 2}/metrics`);
  }, 120_000);

  afterAll(async () => {
    if (home !== undefined) {
      await run(process.execPath, [rampartBin, 'down', '--dir', home]);
      await removeDirectory(path.dirname(home));
    }
  }, 120_000);

  it('promtool accepts the alert rules', async () => {
    const result = await run('promtool', ['check', 'rules', alertsFile]);
    expect(result.code, `${result.stdout}${result.stderr} (promtool: Debian package prometheus; scripts/test-dependencies.sh installs it)`).toBe(0);
    expect(result.stdout).toMatch(/SUCCESS: \d+ rules found/);
  });

  it('serves metrics and health over TLS only to a client certificate from the cluster CA; probes to anyone', async () => {
    const port = basePort + 2;
    expect(await scrape(port, '/livez')).toEqual({ status: 200, body: 'ok\n' });
    expect((await scrape(port, '/readyz')).status).toBe(200);
    expect(JSON.parse((await scrape(port, '/health')).body)).toEqual({ health: 'true', reason: '' });
    // Probes need no certificate (an orchestrator has none); metrics and health do.
    expect(await scrape(port, '/livez', false)).toEqual({ status: 200, body: 'ok\n' });
    expect((await scrape(port, '/readyz', false)).status).toBe(200);
    expect(await scrape(port, '/metrics', false)).toMatchObject({ status: 401 });
    expect(await scrape(port, '/health', false)).toMatchObject({ status: 401 });
    const plaintext = await run('curl', ['-s', '-o', '/dev/null', '-w', '%{http_code}', `http://127.0.0.1:${port}/metrics`]);
    expect(plaintext.stdout).not.toBe('200');
  });

  it('serves every metric the alert rules and the dashboard use', async () => {
    // Traffic so that per-method and per-peer series exist: a write, a read and a denied request.
    const etcdctl = (args: string[]) => run('etcdctl', ['--endpoints', `https://127.0.0.1:${basePort}`, '--cacert', path.join(pki(), 'ca.crt'), '--cert', path.join(pki(), 'admin.crt'), '--key', path.join(pki(), 'admin.key'), ...args], { env: cleanEnvironment() });
    expect((await etcdctl(['put', '/observed', 'yes'])).stdout).toBe('OK\n');
    expect((await etcdctl(['get', '/observed', '--print-value-only'])).stdout).toBe('yes\n');
    await new Promise((resolve) => setTimeout(resolve, 1000)); // heartbeats answered: peer round trips

    const rules = parse(await readFile(alertsFile, 'utf8')) as { groups: { rules: { expr: string }[] }[] };
    const dashboard = JSON.parse(await readFile(dashboardFile, 'utf8')) as { panels: { targets: { expr: string }[] }[]; templating: { list: { query?: unknown }[] } };
    const used = metricNames([
      ...rules.groups.flatMap((group) => group.rules.map((rule) => rule.expr)),
      ...dashboard.panels.flatMap((panel) => panel.targets.map((target) => target.expr)),
      ...dashboard.templating.list.map((variable) => (typeof variable.query === 'string' ? variable.query : '')),
    ]);
    expect(used.size).toBeGreaterThan(25);

    const scraped = await Promise.all([0, 10_000, 20_000].map((offset) => scrape(basePort + offset + 2, '/metrics')));
    for (const answer of scraped) expect(answer.status).toBe(200);
    const series = new Set(scraped.flatMap((answer) => answer.body.split('\n').filter((line) => line !== '' && !line.startsWith('#')).map((line) => line.split(/[{ ]/)[0] as string)));
    // Round trips are measured by the leader (it sends the heartbeats), so the union of the members counts.
    // Audit sink series exist only on members started with --audit-sink: test/e2e/audit-sinks.test.ts scrapes them.
    const missing = [...used].filter((name) => !series.has(name) && !name.startsWith('rampart_audit_sink_')).sort();
    expect(missing).toEqual([]);
    // The etcd names every member serves, whatever its role.
    for (const answer of scraped) {
      for (const name of ['etcd_server_has_leader', 'etcd_disk_wal_fsync_duration_seconds_bucket', 'etcd_disk_backend_commit_duration_seconds_bucket', 'etcd_network_peer_sent_failures_total', 'etcd_server_proposals_pending', 'etcd_debugging_mvcc_keys_total']) {
        expect(answer.body, name).toMatch(new RegExp(`^${name}[{ ]`, 'm'));
      }
      expect(answer.body).not.toContain('PRIVATE');
      expect(answer.body).not.toContain('/observed');
    }
    expect(scraped.map((answer) => answer.body).join('')).toMatch(/^grpc_server_handled_total\{grpc_type="unary",grpc_method="Put",grpc_code="OK"\} 1$/m);
    // The put's time by stage (the member that took it proposed, answered and audited it).
    for (const stage of ['authorize', 'commit', 'persist', 'apply', 'answer', 'audit']) {
      expect(scraped.map((answer) => answer.body).join(''), stage).toMatch(new RegExp(`^rampart_write_stage_duration_seconds_count\\{stage="${stage}"\\} [1-9]`, 'm'));
    }
  });
});
