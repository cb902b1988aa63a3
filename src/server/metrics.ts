/**
 * Prometheus metrics and health endpoints on their own listener (`--listen-metrics-urls`, as etcd's
 * flag). Metric names, labels and histogram buckets follow etcd's where etcd has one, so existing
 * dashboards and alerts (the etcd mixin, deploy/prometheus/alerts.yaml) work; Rampart's own are
 * prefixed `rampart_`. Nothing here carries keys, values or secrets, but metrics still describe the
 * cluster: an https:// URL is served with the client port's certificate and requires a client
 * certificate from the cluster CA for /metrics and /health (/livez and /readyz answer probes without
 * one); plaintext needs an explicit http:// URL.
 *
 *   /metrics  Prometheus text format
 *   /health   {"health":"true"} with 200 when the member has a leader and no alarm, else 503 (as etcd)
 *   /livez    200 while the process serves; /readyz 200 once it serves clients and has a leader
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { createServer as createTlsServer } from 'node:https';
import type { TLSSocket } from 'node:tls';
import type { experimental } from '@grpc/grpc-js';
import { Counter, Gauge, Registry, collectDefaultMetrics, exponentialBuckets } from 'prom-client';
import { HotCounter, HotHistogram } from './hot-metrics.js';
import type { X509Certificate } from 'node:crypto';
import { remainingLifetime } from '../pki/reloading-provider.js';
import type { Member } from './member.js';
import { instruments, type Instrument } from '../instruments.js';
import type { SinkStatus } from '../audit/sinks/sink.js';
import type { Logger } from 'pino';
import { boundMetricsServer } from './metrics-listener.js';

export interface CertificateSource {
  readonly use: 'client' | 'peer';
  readonly certificate: () => X509Certificate;
}

export interface ServerMetrics {
  readonly registry: Registry;
  /** Counts a finished unary gRPC call and its duration (method, status code name as in gRPC's spec). */
  handled(method: string, code: string, seconds?: number): void;
  loginFailed(): void;
  permissionDenied(): void;
}

/** What the metrics read from the rest of the member, beyond the Member itself. */
export interface MetricsSources {
  readonly certificates: readonly CertificateSource[];
  readonly quotaBytes: number;
  /** Audit events recorded and not yet written (undefined: no audit trail). */
  readonly auditQueue?: () => number;
  /** How long closed audit files are kept (`--audit-retention`), when there is a trail. */
  readonly auditRetentionSeconds?: number;
  /** The streaming audit sinks (`--audit-sink`), when any: their state, by sink name. */
  readonly auditSinks?: () => readonly SinkStatus[];
}

/** grpc-prometheus' code names (Go's codes.Code.String()), which the etcd mixin's alerts match. */
export function grpcCodeName(statusName: string): string {
  if (statusName === 'OK') return 'OK';
  if (statusName === 'CANCELLED') return 'Canceled';
  return statusName.toLowerCase().split('_').map((word) => word.charAt(0).toUpperCase() + word.slice(1)).join('');
}

export function createMetrics(member: Member, sources: MetricsSources): ServerMetrics {
  const { certificates, quotaBytes } = sources;
  const registry = new Registry();
  collectDefaultMetrics({ register: registry });
  // Histograms recorded per request or per batch are hot-metrics.ts' (same output, a fraction of prom-client's cost per observation).
  const bindHistogram = (instrument: Instrument, histogram: HotHistogram): void => {
    instrument.bind((value, label) => histogram.observe(value, label));
  };
  const bindCounter = (instrument: Instrument, counter: Counter<string>, label?: string): void => {
    if (label === undefined) return instrument.bind((value) => counter.inc(value));
    instrument.bind((value, peer) => counter.inc({ [label]: peer ?? '' }, value), (peer) => counter.inc({ [label]: peer }, 0));
  };
  // etcd's buckets: 1 ms doubling 14 times for disk latencies, 0.1 ms doubling 16 times for peer round trips.
  const diskBuckets = exponentialBuckets(0.001, 2, 14);
  bindHistogram(instruments.walFsyncSeconds, new HotHistogram({ name: 'etcd_disk_wal_fsync_duration_seconds', help: 'Latency of fsynced Raft log writes.', buckets: diskBuckets, registers: [registry] }));
  bindHistogram(instruments.backendCommitSeconds, new HotHistogram({ name: 'etcd_disk_backend_commit_duration_seconds', help: 'Latency of writing an applied batch to the database.', buckets: diskBuckets, registers: [registry] }));
  bindHistogram(instruments.peerRoundTripSeconds, new HotHistogram({ name: 'etcd_network_peer_round_trip_time_seconds', help: 'Heartbeat round-trip time to each peer.', labelNames: ['To'], buckets: exponentialBuckets(0.0001, 2, 16), registers: [registry] }));
  bindHistogram(instruments.writeStageSeconds, new HotHistogram({ name: 'rampart_write_stage_duration_seconds', help: 'Time a write spends in each stage on this member (see instruments.writeStageSeconds).', labelNames: ['stage'], buckets: exponentialBuckets(0.0001, 2, 16), registers: [registry] }));
  bindCounter(instruments.peerSendFailed, new Counter({ name: 'etcd_network_peer_sent_failures_total', help: 'Messages to a peer that could not be sent.', labelNames: ['To'], registers: [registry] }), 'To');
  bindCounter(instruments.heartbeatSendFailed, new Counter({ name: 'etcd_server_heartbeat_send_failures_total', help: 'Heartbeats the leader could not send.', registers: [registry] }));
  bindCounter(instruments.slowApply, new Counter({ name: 'etcd_server_slow_apply_total', help: 'Applies of committed entries that took longer than 100 ms.', registers: [registry] }));
  bindCounter(instruments.applySkipped, new Counter({ name: 'rampart_apply_skipped_entries_total', help: 'Committed entries skipped because their proposal could not be decoded (every member skips the same ones).', registers: [registry] }));
  bindCounter(instruments.proposalFailed, new Counter({ name: 'etcd_server_proposals_failed_total', help: 'Proposals that failed to commit (timed out or no leader).', registers: [registry] }));
  const gauge = (name: string, help: string, read: () => number): void => {
    new Gauge({ name, help, registers: [registry], collect() { this.set(read()); } });
  };
  gauge('etcd_server_has_leader', 'Whether a leader exists (1) or not (0).', () => (member.leaderId === 0n ? 0 : 1));
  gauge('etcd_server_is_leader', 'Whether this member is the leader.', () => (member.isLeader ? 1 : 0));
  gauge('etcd_server_is_learner', 'Whether this member is a learner.', () => (member.isLearner ? 1 : 0));
  gauge('etcd_server_proposals_committed_total', 'The last log index this member knows of.', () => member.raftIndex);
  gauge('etcd_server_proposals_applied_total', 'The last log index applied to the state machine.', () => member.appliedIndex);
  gauge('etcd_server_term', 'The current Raft term.', () => member.term);
  gauge('etcd_server_proposals_pending', 'Proposals waiting to be applied.', () => member.pendingProposals);
  gauge('etcd_mvcc_db_total_size_in_bytes', 'Size of the database on disk.', () => member.dbSize);
  // The database keeps no free pages to reuse (compaction deletes records), so all of it is in use.
  gauge('etcd_mvcc_db_total_size_in_use_in_bytes', 'Size of the database in use.', () => member.dbSize);
  gauge('etcd_debugging_mvcc_keys_total', 'Keys in the store index.', () => member.store.keyCount);
  gauge('etcd_server_quota_backend_bytes', 'The storage quota (NOSPACE past it).', () => quotaBytes);
  gauge('etcd_debugging_mvcc_current_revision', 'The current store revision.', () => member.store.currentRevision);
  gauge('etcd_debugging_mvcc_watcher_total', 'Active watchers.', () => member.watchHub.watcherCount);
  gauge('etcd_server_alarms', 'Active alarms.', () => member.alarmList().length);
  gauge('rampart_auth_enabled', 'Whether authentication is enabled.', () => (member.auth.state.enabled ? 1 : 0));
  gauge('rampart_auth_revision', 'The auth revision (bumped by every user, role or policy change).', () => member.auth.state.revision);
  gauge('rampart_encryption_enabled', 'Whether this member seals its data at rest.', () => (member.encryptionStatus() === undefined ? 0 : 1));
  gauge('rampart_encryption_last_rotation_timestamp_seconds', 'When the active data key became active.', () => (member.encryptionStatus()?.lastRotationMs ?? 0) / 1000);
  gauge('rampart_encryption_active_dek', 'The id of the data key new records are sealed under.', () => member.encryptionStatus()?.activeDekId ?? 0);
  gauge('rampart_encryption_kek_provider_reachable', 'Whether the key-encryption key provider answered its last health check.', () => (member.kekProviderReachable ? 1 : 0));
  gauge('rampart_encryption_resealed_ratio', 'Share of the records a re-seal pass had to rewrite that it has rewritten (1 when none is due).', () => {
    const progress = member.encryptionProgress;
    return progress.running && progress.toReseal > 0 ? progress.resealed / progress.toReseal : member.encryptionResealDue ? 0 : 1;
  });
  new Gauge({
    name: 'rampart_encryption_records', help: 'Sealed records per data key, as of the last full scan.', labelNames: ['dek'], registers: [registry],
    collect() {
      this.reset();
      for (const [dek, count] of member.encryptionProgress.recordsByDek) this.set({ dek: String(dek) }, count);
    },
  });
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
  if (sources.auditQueue !== undefined) {
    const queue = sources.auditQueue;
    gauge('rampart_audit_queue_events', 'Audit events recorded and not yet written.', () => queue());
  }
  if (sources.auditRetentionSeconds !== undefined) {
    const seconds = sources.auditRetentionSeconds;
    gauge('rampart_audit_retention_seconds', 'How long closed audit files are kept before deletion (--audit-retention; PCI DSS 10.5.1 asks for a year).', () => seconds);
  }
  if (sources.auditSinks !== undefined) {
    const sinks = sources.auditSinks;
    const perSink = (name: string, help: string, type: 'gauge' | 'counter', read: (status: SinkStatus) => number): void => {
      const collect = function (this: Gauge | Counter): void {
        this.reset();
        for (const status of sinks()) {
          if (this instanceof Gauge) this.set({ sink: status.name }, read(status));
          else this.inc({ sink: status.name }, read(status));
        }
      };
      if (type === 'gauge') new Gauge({ name, help, labelNames: ['sink'], registers: [registry], collect });
      else new Counter({ name, help, labelNames: ['sink'], registers: [registry], collect });
    };
    perSink('rampart_audit_sink_up', 'Whether the audit sink\'s receiver took the last delivery (1) or is failing (0).', 'gauge', (status) => (status.up ? 1 : 0));
    perSink('rampart_audit_sink_pending_events', 'Audit events durable in the trail that the sink\'s receiver does not hold yet (delivered when it can take them; a lower bound while the sink lags across trail files).', 'gauge', (status) => status.pending);
    perSink('rampart_audit_sink_events_delivered_total', 'Audit events the sink\'s receiver acknowledged (or confirmed).', 'counter', (status) => status.delivered);
    perSink('rampart_audit_sink_failures_total', 'Failed deliveries to the sink\'s receiver (each is retried).', 'counter', (status) => status.failures);
    perSink('rampart_audit_sink_catch_ups_total', 'Times the sink read the trail files to catch up (start, receiver outage, queue full).', 'counter', (status) => status.catchUps);
    perSink('rampart_audit_sink_down_seconds', 'How long the sink\'s receiver has been failing (0 while up).', 'gauge', (status) => (status.downSinceMs === undefined ? 0 : (Date.now() - status.downSinceMs) / 1000));
  }
  const unary = { grpc_type: 'unary' };
  const handled = new HotCounter({ name: 'grpc_server_handled_total', help: 'gRPC calls completed, by method and status code.', constantLabels: unary, labelNames: ['grpc_method', 'grpc_code'], registers: [registry] });
  const handling = new HotHistogram({ name: 'grpc_server_handling_seconds', help: 'Time to answer a unary gRPC call.', constantLabels: unary, labelNames: ['grpc_method'], buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10], registers: [registry] });
  const codeNames = new Map<string, string>();
  const loginFailures = new Counter({ name: 'rampart_auth_failed_logins_total', help: 'Authenticate calls refused (wrong password, unknown user, or locked out).', registers: [registry] });
  const denied = new Counter({ name: 'rampart_auth_permission_denied_total', help: 'Requests refused for lack of permission.', registers: [registry] });
  return {
    registry,
    handled: (method, code, seconds) => {
      let codeName = codeNames.get(code);
      if (codeName === undefined) {
        codeName = grpcCodeName(code);
        codeNames.set(code, codeName);
      }
      handled.inc(method, codeName);
      if (seconds !== undefined) handling.observe(seconds, method);
    },
    loginFailed: () => loginFailures.inc(),
    permissionDenied: () => denied.inc(),
  };
}

/** etcd's health verdict: a leader and no alarm. */
export function healthOf(member: Member): { healthy: boolean; reason: string } {
  if (member.leaderId === 0n) return { healthy: false, reason: 'RAFT NO LEADER' };
  const alarms = member.alarmList();
  if (alarms.length > 0) return { healthy: false, reason: 'ALARM ACTIVE' };
  return { healthy: true, reason: '' };
}

/** The client port's certificate material, reloaded as it changes (the reloading provider). */
export type MetricsTls = experimental.CertificateProvider;

export interface MetricsServing {
  readonly urls: readonly string[];
  /** Required for https:// URLs: the server certificate and the CA client certificates must chain to. */
  readonly tls?: MetricsTls;
  /** A revoked client certificate is refused (the CRL of the client port). */
  readonly isRevoked?: (serialNumber: string) => boolean;
  /** Where refused and timed-out connections are logged (rate limited). */
  readonly logger: Logger;
}

export async function serveMetrics(serving: MetricsServing, member: Member, metrics: ServerMetrics, ready: () => boolean): Promise<Server[]> {
  const handler = (request: IncomingMessage, response: ServerResponse): void => {
    const reply = (status: number, type: string, body: string): void => {
      response.writeHead(status, { 'content-type': type, 'cache-control': 'no-store' });
      response.end(body);
    };
    const path = (request.url ?? '/').split('?')[0];
    const socket = request.socket as Partial<TLSSocket>;
    // Over TLS, /livez and /readyz answer anyone (orchestrators probe without client certificates;
    // they say only "ok" or "not ready"); /metrics and /health need a valid, unrevoked certificate.
    if (socket.encrypted === true && path !== '/livez' && path !== '/readyz') {
      if (socket.authorized !== true) return reply(401, 'text/plain', 'a client certificate from the cluster CA is required\n');
      const serial = socket.getPeerCertificate?.().serialNumber;
      if (serving.isRevoked !== undefined && (serial === undefined || serving.isRevoked(serial))) return reply(403, 'text/plain', 'certificate revoked\n');
    }
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
        // As kube-apiserver's kms-providers check: a member whose KEK provider is gone still serves
        // (its data keys are unwrapped) but cannot rotate or restart; readiness says so.
        if (!member.kekProviderReachable) return reply(503, 'text/plain', 'not ready: key-encryption key provider unreachable\n');
        return ready() && member.leaderId !== 0n ? reply(200, 'text/plain', 'ok\n') : reply(503, 'text/plain', 'not ready\n');
      default:
        return reply(404, 'text/plain', 'not found\n');
    }
  };
  const servers: Server[] = [];
  for (const url of serving.urls) {
    const parsed = new URL(url);
    let server: Server;
    if (parsed.protocol === 'https:') {
      if (serving.tls === undefined) throw new Error(`--listen-metrics-urls ${url}: https needs the client port's TLS (not with --insecure); give an explicit http:// URL for plaintext`);
      server = await tlsServer(serving.tls, handler);
    } else if (parsed.protocol === 'http:') {
      server = createServer(handler);
    } else {
      throw new Error(`--listen-metrics-urls: ${url} is neither https:// (client certificate required) nor http:// (plaintext)`);
    }
    if (parsed.port === '') throw new Error(`--listen-metrics-urls: ${url} needs a port`);
    boundMetricsServer(server, { logger: serving.logger, tls: parsed.protocol === 'https:' });
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(Number(parsed.port), parsed.hostname.replace(/^\[|\]$/g, ''), () => resolve());
    });
    servers.push(server);
  }
  return servers;
}

/**
 * An HTTPS server with the client port's certificate that requires a client certificate from the
 * same CA; both follow the provider's reloads (renewal, CA rotation) without a restart.
 */
async function tlsServer(tls: MetricsTls, handler: (request: IncomingMessage, response: ServerResponse) => void): Promise<Server> {
  let ca: Buffer | undefined;
  let identity: { certificate: Buffer; privateKey: Buffer } | undefined;
  let server: ReturnType<typeof createTlsServer> | undefined;
  let first: () => void = () => undefined;
  const loaded = new Promise<void>((resolve) => {
    first = resolve;
  });
  const update = (): void => {
    if (ca === undefined || identity === undefined) return;
    const context = { ca, cert: identity.certificate, key: identity.privateKey };
    if (server === undefined) {
      // The certificate is checked per path (health probes carry none), so the handshake lets it through.
      server = createTlsServer({ ...context, requestCert: true, rejectUnauthorized: false, minVersion: 'TLSv1.2' }, handler);
      first();
    } else {
      server.setSecureContext(context);
    }
  };
  tls.addCaCertificateListener((caUpdate) => {
    if (caUpdate === null) return;
    ca = caUpdate.caCertificate;
    update();
  });
  tls.addIdentityCertificateListener((identityUpdate) => {
    if (identityUpdate === null) return;
    identity = identityUpdate;
    update();
  });
  await loaded;
  return server as unknown as Server;
}
