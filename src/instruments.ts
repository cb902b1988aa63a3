/**
 * Measurement points inside the storage, server and transport layers, for the metrics endpoint.
 * A layer records into an instrument here; `server/metrics.ts` binds each instrument to a Prometheus
 * metric when metrics are served, and until then recording is a no-op (nothing is kept for nobody).
 * This module imports nothing, so every layer may use it. One member per process: instruments are
 * process-wide, as Prometheus' default registry is.
 */

/** Receives one observation (seconds for durations, 1 for an event) and an optional label (a peer id). */
export type InstrumentSink = (value: number, label?: string) => void;

export class Instrument {
  private sink: InstrumentSink | undefined;
  private declareSink: ((label: string) => void) | undefined;
  /** Labels (peer ids) whose series should exist at zero before anything is recorded; at most one per member. */
  private readonly declared = new Set<string>();

  /** A label whose series exists from now on, also if the instrument is bound later (a new peer). */
  declare(label: string): void {
    this.declared.add(label);
    this.declareSink?.(label);
  }

  record(value: number, label?: string): void {
    this.sink?.(value, label);
  }

  /** Seconds since `startedMs` (from `performance.now()`). */
  recordSince(startedMs: number, label?: string): void {
    this.sink?.((performance.now() - startedMs) / 1000, label);
  }

  bind(sink: InstrumentSink | undefined, declareSink?: (label: string) => void): void {
    this.sink = sink;
    this.declareSink = declareSink;
    for (const label of this.declared) declareSink?.(label);
  }
}

/** etcd's threshold for a slow apply ("apply request took too long"). */
export const slowApplyMs = 100;

export const instruments = {
  /** An fsynced write of the Raft log (etcd_disk_wal_fsync_duration_seconds). */
  walFsyncSeconds: new Instrument(),
  /** The write of one applied batch to the database (etcd_disk_backend_commit_duration_seconds). */
  backendCommitSeconds: new Instrument(),
  /** Applying committed entries took longer than `slowApplyMs` (etcd_server_slow_apply_total). */
  slowApply: new Instrument(),
  /** A proposal that failed to commit: timed out or no leader (etcd_server_proposals_failed_total). */
  proposalFailed: new Instrument(),
  /** A committed entry skipped because its proposal could not be decoded (rampart_apply_skipped_entries_total). */
  applySkipped: new Instrument(),
  /** Heartbeat to heartbeat-response time per peer (etcd_network_peer_round_trip_time_seconds). */
  peerRoundTripSeconds: new Instrument(),
  /** A message to a peer that could not be sent (etcd_network_peer_sent_failures_total{To}). */
  peerSendFailed: new Instrument(),
  /** A heartbeat the leader could not send (etcd_server_heartbeat_send_failures_total). */
  heartbeatSendFailed: new Instrument(),
  /**
   * Where the time of a write goes, by stage (rampart_write_stage_duration_seconds{stage}):
   * `authorize` (check and encode before proposing), `commit` (proposed until its entry is applied:
   * waiting for the loop, persisting, replicating), `persist` (one Ready's log write and fsync),
   * `apply` (one batch applied in memory), `answer` (proposed until the caller is answered),
   * `audit` (the call's event made durable before its answer).
   */
  writeStageSeconds: new Instrument(),
} as const;
