/**
 * Prometheus metrics and health endpoints on their own HTTP listener (`--listen-metrics-urls`, as
 * etcd's flag). Metric names follow etcd's where etcd has one, so existing dashboards and alerts
 * work; Rampart's own are prefixed `rampart_`. Nothing here carries keys, values or secrets.
 *
 *   /metrics  Prometheus text format
 *   /health   {"health":"true"} with 200 when the member has a leader and no alarm, else 503 (as etcd)
 *   /livez    200 while the process serves; /readyz 200 once it serves clients and has a leader
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { Counter, Gauge, Registry, collectDefaultMetrics } from 'prom-client';
import type { X509Certificate } from 'node:crypto';
import { remainingLifetime } from '../pki/reloading-provider.js';
import type { Member } from './member.js';

export interface CertificateSource {
  readonly use: 'client' | 'peer';
  readonly certificate: () => X509Certificate;
}

export interface ServerMetrics {
  readonly registry: Registry;
  /** Counts a finished gRPC call (method and status code name, as grpc-prometheus). */
  handled(method: string, code: string): void;
  loginFailed(): void;
  permissionDenied(): void;
}

export function createMetrics(member: Member, certificates: readonly CertificateSource[], quotaBytes: number): ServerMetrics {
  const registry = new Registry();
  collectDefaultMetrics({ register: registry });
  const gauge = (name: string, help: string, read: () => number): void => {
    new Gauge({ name, help, registers: [registry], collect() { this.set(read()); } });
  };
  gauge('etcd_server_has_leader', 'Whether a leader exists (1) or not (0).', () => (member.leaderId === 0n ? 0 : 1));
  gauge('etcd_server_is_leader', 'Whether this member is the leader.', () => (member.isLeader ? 1 : 0));
  gauge('etcd_server_is_learner', 'Whether this member is a learner.', () => (member.isLearner ? 1 : 0));
  gauge('etcd_server_proposals_committed_total', 'The last log index this member knows of.', () => member.raftIndex);
  gauge('etcd_server_proposals_applied_total', 'The last log index applied to the state machine.', () => member.appliedIndex);
  gauge('etcd_server_term', 'The current Raft term.', () => member.term);
  gauge('etcd_mvcc_db_total_size_in_bytes', 'Size of the database on disk.', () => member.dbSize);
  gauge('etcd_server_quota_backend_bytes', 'The storage quota (NOSPACE past it).', () => quotaBytes);
  gauge('etcd_debugging_mvcc_current_revision', 'The current store revision.', () => member.store.currentRevision);
  gauge('etcd_debugging_mvcc_watcher_total', 'Active watchers.', () => member.watchHub.watcherCount);
  gauge('etcd_server_alarms', 'Active alarms.', () => member.alarmList().length);
  gauge('rampart_auth_enabled', 'Whether authentication is enabled.', () => (member.auth.state.enabled ? 1 : 0));
  gauge('rampart_auth_revision', 'The auth revision (bumped by every user, role or policy change).', () => member.auth.state.revision);
  new Counter({
    name: 'etcd_server_leader_changes_seen_total', help: 'Leader changes seen by this member.', registers: [registry],
    collect() { this.reset(); this.inc(member.leaderChangesSeen); },
  });
  new Gauge({
    name: 'rampart_certificate_expiry_seconds', help: 'Seconds until the certificate in use expires.', labelNames: ['use'], registers: [registry],
    collect() { for (const source of certificates) this.set({ use: source.use }, remainingLifetime(source.certificate()).seconds); },
  });
  new Gauge({
    name: 'rampart_certificate_lifetime_remaining_ratio', help: 'Share of the certificate lifetime left (renew below 0.3).', labelNames: ['use'], registers: [registry],
    collect() { for (const source of certificates) this.set({ use: source.use }, Math.max(0, remainingLifetime(source.certificate()).share)); },
  });
  const handled = new Counter({ name: 'grpc_server_handled_total', help: 'gRPC calls completed, by method and status code.', labelNames: ['grpc_method', 'grpc_code'], registers: [registry] });
  const loginFailures = new Counter({ name: 'rampart_auth_failed_logins_total', help: 'Authenticate calls refused (wrong password, unknown user, or locked out).', registers: [registry] });
  const denied = new Counter({ name: 'rampart_auth_permission_denied_total', help: 'Requests refused for lack of permission.', registers: [registry] });
  return {
    registry,
    handled: (method, code) => handled.inc({ grpc_method: method, grpc_code: code }),
    loginFailed: () => loginFailures.inc(),
    permissionDenied: () => denied.inc(),
  };
}

function healthOf(member: Member): { healthy: boolean; reason: string } {
  if (member.leaderId === 0n) return { healthy: false, reason: 'RAFT NO LEADER' };
  const alarms = member.alarmList();
  if (alarms.length > 0) return { healthy: false, reason: 'ALARM ACTIVE' };
  return { healthy: true, reason: '' };
}

export async function serveMetrics(urls: readonly string[], member: Member, metrics: ServerMetrics, ready: () => boolean): Promise<Server[]> {
  const handler = (request: IncomingMessage, response: ServerResponse): void => {
    const reply = (status: number, type: string, body: string): void => {
      response.writeHead(status, { 'content-type': type, 'cache-control': 'no-store' });
      response.end(body);
    };
    const path = (request.url ?? '/').split('?')[0];
    if (request.method !== 'GET') return reply(405, 'text/plain', 'method not allowed\n');
    switch (path) {
      case '/metrics':
        metrics.registry.metrics().then((text) => reply(200, metrics.registry.contentType, text), () => reply(500, 'text/plain', 'metrics unavailable\n'));
        return;
      case '/health': {
        const { healthy, reason } = healthOf(member);
        return reply(healthy ? 200 : 503, 'application/json', `${JSON.stringify({ health: String(healthy), reason })}\n`);
      }
      case '/livez':
        return reply(200, 'text/plain', 'ok\n');
      case '/readyz':
        return ready() && member.leaderId !== 0n ? reply(200, 'text/plain', 'ok\n') : reply(503, 'text/plain', 'not ready\n');
      default:
        return reply(404, 'text/plain', 'not found\n');
    }
  };
  const servers: Server[] = [];
  for (const url of urls) {
    const parsed = new URL(url);
    if (parsed.protocol !== 'http:') throw new Error(`--listen-metrics-urls: only http:// is served (got ${url}); metrics carry no secrets, keep the port local or firewalled`);
    const server = createServer(handler);
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(Number(parsed.port), parsed.hostname.replace(/^\[|\]$/g, ''), () => resolve());
    });
    servers.push(server);
  }
  return servers;
}
