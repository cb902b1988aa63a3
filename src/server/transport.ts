/**
 * Peer transport: Raft messages between members over gRPC (service rampart.Peer).
 *
 * Each peer gets one long-lived client stream; messages are batched per event-loop turn. Queues are
 * bounded: when a peer's stream is congested or down, further messages to it are dropped and the
 * peer is reported unreachable, which Raft handles (it probes again). Snapshots travel on their own
 * call in chunks. Owns: connections and framing. Never: interprets messages (the Raft core does).
 */
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import type { PeerCertificate, Server as TlsServer } from 'node:tls';
import type { IncomingHttpHeaders, ServerHttp2Stream } from 'node:http2';
import type { Logger } from 'pino';
import { rateLimitedWarning } from '../pki/handshake-log.js';
import { logRefusedHandshakes } from '../pki/handshake-log.js';
import { grpcServersOf, limitConnections } from '../pki/connection-limit.js';
import { limitHandshakeTime, tlsHandshakeTimeoutMs } from '../pki/handshake-deadline.js';
import { OpenConnections, closeGraceMs } from '../pki/open-connections.js';
import type { PeerRefusal } from '../audit/peer-refusals.js';
import type { Entry, Message, NodeId } from '../raft/types.js';
import { instruments } from '../instruments.js';
import { decodeOptions, protoDirectory } from '../api/proto.js';
import { RequestBytesBudget, boundGrpcStream } from '../api/request-bytes-budget.js';
import { OpenStreamBudget, boundOpenStream, openStreamsMax, openStreamsPerSourceMax } from '../api/open-streams.js';
import { decodeMessageBatch, encodeMessageBatch, type MessageBatchFields, type RaftMessageFields } from './peer-codec.js';
import { WireFormatError } from '../wire/protobuf.js';
import { clusterMembersMax, clusterReplyBytesMax, decodeClusterReply, type ClusterView } from './cluster-view.js';

export type { ClusterView } from './cluster-view.js';

/**
 * How long a snapshot transfer may go without a message from its sender before the receiver gives
 * up on it (and may take the next): a stalled leader or link must not keep a member busy for good.
 * The sender waits only for the receiver's flow control, so a live transfer is never this quiet.
 */
export const snapshotIdleTimeoutMsDefault = 10_000;
/** Messages waiting for one peer's stream; beyond this they are dropped. */
export const peerQueueMessagesMax = 4096;
/**
 * What a member answers a removed member's message stream with (as etcd's peers answer 410 Gone):
 * the leader stops replicating to a member as soon as it applies its removal, so a member that
 * missed the commit (paused, slow, or the last append lost with its connection) would otherwise
 * wait for a leader forever. Its sender sees this and the member stops.
 */
export const memberRemovedDetails = 'rampart: the member has been permanently removed from the cluster';
/** What a stopping member answers a snapshot transfer it stops or refuses. */
const stoppingDetails = 'rampart: the member is stopping';
/**
 * A member that has received no Raft message for this long sends each peer an empty batch naming
 * itself: a removed learner never campaigns, so without it nothing would carry the answer above.
 */
export const removalProbeIntervalMsDefault = 5_000;
/**
 * Peer messages can carry many entries (snapshots are chunked, see state-snapshot.ts), and at least
 * one entry each: one entry may hold the largest request a client may send (--max-request-bytes,
 * at most 64 MiB) with its proposal's and the batch's framing around it. At exactly 64 MiB such an
 * entry could never be sent, and replication would stall on it; the 8 MiB above leave room for the
 * framing.
 */
export const peerMessageBytesMax = 72 * 1024 * 1024;

/**
 * Bytes of peer messages received and not yet whole, held at once on the peer port: from one source
 * address, two of the largest batches (a member has one Messages stream and at most one snapshot
 * in flight; members sharing a host share it), and four in all. gRPC holds a message until it is
 * whole, so before this bound one peer certificate held 60 MiB per stream on as many streams as it
 * opened (8 streams: +440 MiB) before any of its messages was read. A stream that would pass it is
 * reset (ENHANCE_YOUR_CALM) and reported as a peer refusal.
 */
export const peerRequestBytesPerSourceMax = 2 * peerMessageBytesMax;
export const peerRequestBytesMax = 4 * peerMessageBytesMax;

/**
 * gRPC streams open at once on the peer port, in two budgets, each counted per source address and
 * in all (api/open-streams.ts): each stream holds ~11-14 KB of grpc-js and HTTP/2 state however
 * little it sends. Before these bounds one peer certificate could open idle streams, or leave
 * forwarded keep-alives waiting on the leader, without limit. A stream past them is reset
 * (ENHANCE_YOUR_CALM), logged (rate limited) and audited (`peer.refused`, stage `bounds`).
 *
 * Raft's own streams (Messages, Snapshot) have a budget of their own, so that calls never take
 * Raft's room: a follower forwards a unary call per lease keep-alive or TimeToLive, login report or
 * cluster question in flight, and a slow leader holding ~4,096 of them from one follower (one
 * budget, as before) refused that follower's Messages stream when it reconnected, cutting it off
 * from Raft until the calls drained. A member opens one Messages stream to each peer and at most
 * one Snapshot at a time; members sharing a host share their address, so one address may hold
 * Raft streams for every member of the largest cluster (clusterMembersMax) twice over, reconnects
 * overlapping the streams they replace. A follower whose forwarded call is refused asks again
 * until its request deadline. Both budgets together bound the port: 17,408 streams (~245 MB).
 */
export const peerOpenStreamsMax = openStreamsMax;
export const peerOpenStreamsPerSourceMax = openStreamsPerSourceMax;
/** Raft streams (Messages, Snapshot) from one source address: two per member of the largest cluster, twice over. */
export const peerRaftStreamsPerSourceMax = 4 * clusterMembersMax;
/** Raft streams open at once on the peer port (four addresses' worth, as the other budgets). */
export const peerRaftStreamsMax = 4 * peerRaftStreamsPerSourceMax;
/** The HTTP/2 paths of Raft's own streams, counted against `peerRaftStreamsMax`; every other call against `peerOpenStreamsMax`. */
const raftStreamPaths: ReadonlySet<string> = new Set(['/rampart.Peer/Messages', '/rampart.Peer/Snapshot']);

type RaftMessageWire = RaftMessageFields;

const num = (value: string | number | undefined): number => Number(value ?? 0);

export function toWire(message: Message): RaftMessageWire {
  const wire: RaftMessageWire = { type: message.type, from: message.from, to: message.to, term: message.term };
  switch (message.type) {
    case 'preVote':
    case 'vote':
      return { ...wire, last_index: message.lastIndex, last_term: message.lastTerm, transfer: message.transfer };
    case 'preVoteResponse':
    case 'voteResponse':
      return { ...wire, reject: message.reject };
    case 'append':
      return { ...wire, prev_index: message.prevIndex, prev_term: message.prevTerm, commit: message.commit, entries: message.entries.map(entryToWire), commit_only: message.commitOnly === true };
    case 'appendResponse':
      return { ...wire, reject: message.reject, index: message.index, reject_hint: message.rejectHint };
    case 'heartbeat':
      return { ...wire, commit: message.commit, context: message.context };
    case 'heartbeatResponse':
      return { ...wire, context: message.context };
    case 'snapshot': {
      const { metadata } = message.snapshot;
      return { ...wire, snapshot_index: metadata.index, snapshot_term: metadata.term, snapshot_voters: [...metadata.configuration.voters], snapshot_learners: [...metadata.configuration.learners] };
    }
    case 'timeoutNow':
      return wire;
    case 'propose':
      return { ...wire, entries: message.entries.map((entry) => ({ index: 0, term: 0, configuration_change: entry.type === 'configurationChange', data: entry.data })) };
    case 'readIndex':
      return { ...wire, context: message.context };
    case 'readIndexResponse':
      return { ...wire, context: message.context, index: message.index };
  }
}

function entryToWire(entry: Entry): { index: number; term: number; configuration_change: boolean; data: Buffer } {
  return { index: entry.index, term: entry.term, configuration_change: entry.type === 'configurationChange', data: entry.data };
}

function entryFromWire(entry: NonNullable<RaftMessageWire['entries']>[number]): Entry {
  return { index: num(entry.index), term: num(entry.term), type: entry.configuration_change ? 'configurationChange' : 'normal', data: Buffer.from(entry.data) };
}

/** Decodes a wire message; undefined for anything malformed (it is dropped, never trusted). */
export function fromWire(wire: RaftMessageWire, snapshotData?: Buffer): Message | undefined {
  const envelope = { from: wire.from, to: wire.to, term: num(wire.term) };
  switch (wire.type) {
    case 'preVote':
    case 'vote':
      return { ...envelope, type: wire.type, lastIndex: num(wire.last_index), lastTerm: num(wire.last_term), transfer: wire.transfer === true };
    case 'preVoteResponse':
    case 'voteResponse':
      return { ...envelope, type: wire.type, reject: wire.reject === true };
    case 'append':
      return {
        ...envelope,
        type: 'append',
        prevIndex: num(wire.prev_index),
        prevTerm: num(wire.prev_term),
        commit: num(wire.commit),
        entries: (wire.entries ?? []).map(entryFromWire),
        ...(wire.commit_only === true ? { commitOnly: true } : {}),
      };
    case 'appendResponse':
      return { ...envelope, type: 'appendResponse', reject: wire.reject === true, index: num(wire.index), rejectHint: num(wire.reject_hint) };
    case 'heartbeat':
      return { ...envelope, type: 'heartbeat', commit: num(wire.commit), context: wire.context ?? '' };
    case 'heartbeatResponse':
      return { ...envelope, type: 'heartbeatResponse', context: wire.context ?? '' };
    case 'snapshot':
      if (snapshotData === undefined) return undefined;
      return {
        ...envelope,
        type: 'snapshot',
        snapshot: {
          metadata: { index: num(wire.snapshot_index), term: num(wire.snapshot_term), configuration: { voters: wire.snapshot_voters ?? [], learners: wire.snapshot_learners ?? [] } },
          data: snapshotData,
        },
      };
    case 'timeoutNow':
      return { ...envelope, type: 'timeoutNow' };
    case 'propose':
      return { ...envelope, type: 'propose', entries: (wire.entries ?? []).map((entry) => ({ type: entry.configuration_change ? ('configurationChange' as const) : ('normal' as const), data: Buffer.from(entry.data) })) };
    case 'readIndex':
      return { ...envelope, type: 'readIndex', context: wire.context ?? '' };
    case 'readIndexResponse':
      return { ...envelope, type: 'readIndexResponse', context: wire.context ?? '', index: num(wire.index) };
    default:
      return undefined;
  }
}

type SnapshotMessage = Extract<Message, { type: 'snapshot' }>;

interface SnapshotChunkWire {
  cluster_id: string;
  header?: RaftMessageWire | null;
  data: Buffer;
  /** Sent once, after the last chunk: the sender read the whole snapshot. */
  last?: boolean;
}

/** A refusal with the gRPC status the sender sees. */
class PeerCallError extends Error {
  constructor(
    readonly code: grpc.status,
    message: string,
  ) {
    super(message);
  }
}

export interface LeaseAnswer {
  readonly found: boolean;
  readonly ttl: number;
  readonly grantedTtl: number;
  readonly keys: Buffer[];
}

/** How long a joining member waits for one existing member's answer. */
const clusterFetchTimeoutMs = 3_000;

/**
 * Asks the member at `url` for the cluster's id and members, over the peer credentials: with TLS
 * the answer comes only from a server whose certificate the peer CA signed for that host, and the
 * server answers only a certificate it accepts as a member's (so neither side learns anything from
 * a stranger). Rejects when the member cannot be reached or refuses.
 */
export function fetchCluster(url: string, credentials: grpc.ChannelCredentials): Promise<ClusterView> {
  // The reply is read within cluster-view.ts's bounds (clusterMethod's deserializer below); gRPC
  // refuses a longer one from its frame header, before buffering it.
  const client = new peerPackage.rampart.Peer(hostPort(url), credentials, { 'grpc.use_local_subchannel_pool': 1, 'grpc.max_receive_message_length': clusterReplyBytesMax }) as unknown as PeerClient;
  return new Promise<ClusterView>((resolve, reject) => {
    client.Cluster({}, { deadline: Date.now() + clusterFetchTimeoutMs }, (error, reply) => {
      client.close();
      if (error !== null) {
        reject(error);
        return;
      }
      resolve(reply as unknown as ClusterView);
    });
  });
}

export interface TransportOptions {
  readonly selfId: NodeId;
  /**
   * With TLS: whether a connecting certificate may act as a member (checked on every peer call).
   * Undefined: plaintext, no identity to check.
   */
  readonly authorizePeer?: (certificate: PeerCertificate) => string | undefined;
  /**
   * With TLS: whether a connection with this certificate may carry messages from member `from`.
   * A message claiming another sender is dropped: one member's certificate must not speak for another.
   */
  readonly mayActAs?: (certificate: PeerCertificate, from: NodeId) => boolean;
  readonly clusterId: string;
  readonly logger: Logger;
  readonly serverCredentials: grpc.ServerCredentials;
  readonly clientCredentials: grpc.ChannelCredentials;
  readonly onMessage: (message: Message) => void;
  readonly onUnreachable: (peer: NodeId) => void;
  /** Whether member `id` was removed from the cluster: its messages are answered `memberRemovedDetails`. */
  readonly isRemoved?: (id: NodeId) => boolean;
  /** A peer answered this member's messages with `memberRemovedDetails`: this member was removed. */
  readonly onRemoved?: (peer: NodeId) => void;
  /** Tests only: a shorter silence before probing than `removalProbeIntervalMsDefault`. */
  readonly removalProbeIntervalMs?: number;
  /** The records of a snapshot Raft sends, in chunks, read while they are sent. */
  readonly snapshotChunks: (message: SnapshotMessage) => AsyncIterable<Buffer>;
  /**
   * Takes a snapshot's chunks as they arrive; resolves once it is staged and handed to Raft. The
   * chunks end in an error when the sender cancels, the call fails, or nothing arrives for
   * `snapshotIdleTimeoutMs`: the receiver is never left waiting on a transfer that will not finish.
   */
  readonly receiveSnapshot: (message: SnapshotMessage, chunks: AsyncIterable<Buffer>) => Promise<void>;
  /** Tests only: a shorter idle timeout than `snapshotIdleTimeoutMsDefault`. */
  readonly snapshotIdleTimeoutMs?: number;
  /** Tests only: smaller bounds than `peerOpenStreamsMax` and `peerOpenStreamsPerSourceMax` (every call but Raft's streams). */
  readonly openStreams?: OpenStreamBudget;
  /** Tests only: smaller bounds than `peerRaftStreamsMax` and `peerRaftStreamsPerSourceMax` (Messages and Snapshot streams). */
  readonly raftStreams?: OpenStreamBudget;
  readonly onLeaseRenew: (id: bigint) => Promise<LeaseAnswer>;
  readonly onLeaseTimeToLive: (id: bigint) => Promise<LeaseAnswer>;
  readonly onCluster: () => ClusterView;
  readonly onLoginAttempt: (attempt: LoginAttempt) => Promise<number>;
  /** Hears of each connection or call the peer port refuses (TLS handshake, certificate), for the audit trail. */
  readonly onPeerRefused?: (refusal: PeerRefusal) => void;
}

/** A login event a follower reports to the leader, whose records decide lockouts (member.ts). */
export interface LoginAttempt {
  readonly user: string;
  readonly source: string;
  readonly outcome: 'check' | 'failed' | 'succeeded';
  readonly known: boolean;
}

const loginOutcomes = ['check', 'failed', 'succeeded'] as const;

type PeerClient = grpc.Client & {
  Messages(callback: (error: grpc.ServiceError | null) => void): grpc.ClientWritableStream<object>;
  Snapshot(callback: (error: grpc.ServiceError | null) => void): grpc.ClientWritableStream<object>;
  LeaseRenew(request: object, options: grpc.CallOptions, callback: (error: grpc.ServiceError | null, reply: Record<string, unknown>) => void): void;
  LeaseTimeToLive(request: object, options: grpc.CallOptions, callback: (error: grpc.ServiceError | null, reply: Record<string, unknown>) => void): void;
  Cluster(request: object, options: grpc.CallOptions, callback: (error: grpc.ServiceError | null, reply: Record<string, unknown>) => void): void;
  LoginAttempt(request: object, options: grpc.CallOptions, callback: (error: grpc.ServiceError | null, reply: Record<string, unknown>) => void): void;
};

const peerDefinition = protoLoader.loadSync(['raft.proto'], { ...decodeOptions, includeDirs: [protoDirectory] });
// The hot stream's batches go through the hand-written codec (same wire format, see peer-codec.ts).
const messagesMethod = (peerDefinition['rampart.Peer'] as protoLoader.ServiceDefinition | undefined)?.Messages;
if (messagesMethod === undefined) throw new Error('raft.proto: no Peer.Messages');
messagesMethod.requestSerialize = (batch: object): Buffer => encodeMessageBatch(batch as MessageBatchFields);
/**
 * Bytes the peer codec refuses reach the stream handler as this, so it can say which member sent
 * them (audit trail) before failing the stream; thrown, gRPC failed the call with INTERNAL unseen.
 */
interface MalformedBatch {
  readonly malformed: string;
}
messagesMethod.requestDeserialize = (bytes: Buffer): object => {
  try {
    return decodeMessageBatch(bytes);
  } catch (error) {
    if (error instanceof WireFormatError) return { malformed: error.message } satisfies MalformedBatch;
    throw error;
  }
};
// A joining member reads the Cluster answer by hand, within bounds (a member's answer is otherwise unbounded).
const clusterMethod = (peerDefinition['rampart.Peer'] as protoLoader.ServiceDefinition | undefined)?.Cluster;
if (clusterMethod === undefined) throw new Error('raft.proto: no Peer.Cluster');
clusterMethod.responseDeserialize = (bytes: Buffer): object => decodeClusterReply(bytes);
const peerPackage = grpc.loadPackageDefinition(peerDefinition) as unknown as { rampart: { Peer: grpc.ServiceClientConstructor } };

/** The subject and fingerprint of a presented certificate, for the audit trail. */
function certificateNames(certificate: PeerCertificate | undefined): { subject?: string; fingerprint?: string } {
  if (certificate === undefined) return {};
  const subject = Object.entries(certificate.subject ?? {}).map(([name, value]) => `${name}=${Array.isArray(value) ? value.join('+') : String(value)}`).join(', ');
  return { ...(subject === '' ? {} : { subject }), ...(certificate.fingerprint256 === undefined ? {} : { fingerprint: certificate.fingerprint256 }) };
}

function hostPort(url: string): string {
  const parsed = new URL(url);
  return `${parsed.hostname}:${parsed.port}`;
}

/** At most one warning per peer in this interval; the cause repeats with every reconnect. */
const unreachableWarningIntervalMs = 10_000;
/** At most one warning about messages with a forged sender in this interval (the rest are counted). */
const forgedSenderWarningIntervalMs = 10_000;

class PeerSender {
  private client: PeerClient;
  private lastWarningMs = 0;
  private stream: grpc.ClientWritableStream<object> | undefined;
  private queue: RaftMessageWire[] = [];
  private scheduled = false;
  private congested = false;
  /** Set once the peer left (or moved): grpc-js throws on every call of a closed channel. */
  private closed = false;

  constructor(
    readonly id: NodeId,
    readonly url: string,
    private readonly transport: Transport,
    private readonly options: TransportOptions,
  ) {
    this.client = new peerPackage.rampart.Peer(hostPort(url), options.clientCredentials, {
      'grpc.max_send_message_length': peerMessageBytesMax,
      'grpc.max_receive_message_length': peerMessageBytesMax,
      'grpc.initial_reconnect_backoff_ms': 100,
      'grpc.max_reconnect_backoff_ms': 1000,
      'grpc.use_local_subchannel_pool': 1,
      'grpc.enable_channelz': 0,
    }) as unknown as PeerClient;
  }

  send(message: Message): void {
    if (this.closed) return;
    if (message.type === 'snapshot') {
      void this.sendSnapshot(message);
      return;
    }
    if (this.congested || this.queue.length >= peerQueueMessagesMax) {
      instruments.peerSendFailed.record(1, String(this.id));
      if (message.type === 'heartbeat') instruments.heartbeatSendFailed.record(1);
      this.options.onUnreachable(this.id);
      return;
    }
    if (message.type === 'heartbeat') this.transport.heartbeatSent(this.id);
    this.queue.push(toWire(message));
    if (!this.scheduled) {
      this.scheduled = true;
      setImmediate(() => this.flush());
    }
  }

  private openStream(): grpc.ClientWritableStream<object> {
    const stream = this.client.Messages((error) => {
      if (this.stream === stream) {
        this.stream = undefined;
        // A stream that ends with writes still buffered (its connection cut while the peer was slow
        // or paused) never emits 'drain': the next message opens a new stream instead of being
        // dropped for good.
        this.congested = false;
      }
      if (error !== null && error.code === grpc.status.FAILED_PRECONDITION && error.details === memberRemovedDetails) {
        this.options.onRemoved?.(this.id);
        return;
      }
      if (error !== null && error.code !== grpc.status.CANCELLED) {
        const now = Date.now();
        if (now - this.lastWarningMs > unreachableWarningIntervalMs) {
          this.lastWarningMs = now;
          this.options.logger.warn({ peer: this.id, url: this.url, err: error.details }, 'cannot reach peer');
        }
        instruments.peerSendFailed.record(1, String(this.id));
        this.options.onUnreachable(this.id);
      }
    });
    stream.on('drain', () => {
      if (this.stream === stream) this.congested = false;
    });
    return stream;
  }

  private flush(): void {
    this.scheduled = false;
    // A flush scheduled before the peer was removed: its channel is shut down, drop what was queued.
    if (this.closed || this.queue.length === 0) return;
    const messages = this.queue;
    this.queue = [];
    this.write(messages);
  }

  /** An empty batch naming this member: a peer that removed it answers `memberRemovedDetails`. */
  probe(): void {
    if (this.closed || this.congested) return;
    this.write([]);
  }

  private write(messages: RaftMessageWire[]): void {
    this.stream ??= this.openStream();
    const accepted = this.stream.write({ cluster_id: this.options.clusterId, from: this.options.selfId, messages });
    if (!accepted) this.congested = true;
  }

  /** Streams a snapshot's records chunk by chunk, waiting for the peer to take each (flow control). */
  private async sendSnapshot(message: SnapshotMessage): Promise<void> {
    let finished = false;
    let wake: () => void = () => undefined;
    const delivered = await new Promise<boolean>((resolve) => {
      const call = this.client.Snapshot((error) => {
        finished = true;
        wake();
        if (error !== null) {
          this.options.logger.warn({ peer: this.id, err: error.details }, 'sending snapshot failed');
          this.options.onUnreachable(this.id);
        }
        resolve(error === null);
      });
      void (async () => {
        try {
          call.write({ cluster_id: this.options.clusterId, header: toWire(message), data: Buffer.alloc(0) });
          for await (const chunk of this.options.snapshotChunks(message)) {
            if (finished) return;
            if (!call.write({ cluster_id: this.options.clusterId, data: chunk })) {
              await new Promise<void>((drained) => {
                wake = drained;
                call.once('drain', drained);
              });
              call.removeAllListeners('drain');
            }
          }
          if (finished) return;
          call.write({ cluster_id: this.options.clusterId, data: Buffer.alloc(0), last: true });
          call.end();
        } catch (error) {
          this.options.logger.warn({ peer: this.id, err: String(error) }, 'reading snapshot to send failed');
          call.cancel();
        }
      })();
    });
    if (delivered) this.transport.snapshotsSent += 1;
  }

  lease(method: 'LeaseRenew' | 'LeaseTimeToLive', id: bigint, timeoutMs: number): Promise<LeaseAnswer> {
    return new Promise((resolve, reject) => {
      this.client[method]({ id: id.toString() }, { deadline: Date.now() + timeoutMs }, (error, reply) => {
        if (error !== null) {
          reject(error);
          return;
        }
        resolve({ found: reply.found === true, ttl: Number(reply.ttl ?? 0), grantedTtl: Number(reply.granted_ttl ?? 0), keys: (reply.keys as Buffer[] | undefined) ?? [] });
      });
    });
  }

  loginAttempt(attempt: LoginAttempt, timeoutMs: number): Promise<number> {
    return new Promise((resolve, reject) => {
      const request = { user: attempt.user, source: attempt.source, outcome: loginOutcomes.indexOf(attempt.outcome), known: attempt.known };
      this.client.LoginAttempt(request, { deadline: Date.now() + timeoutMs }, (error, reply) => {
        if (error !== null) reject(error);
        else resolve(Number(reply.blocked_ms ?? 0));
      });
    });
  }

  close(): void {
    this.closed = true;
    this.queue = [];
    this.stream?.end();
    this.client.close();
  }
}

export class Transport {
  private readonly server: grpc.Server;
  private readonly peers = new Map<NodeId, PeerSender>();
  snapshotsSent = 0;
  snapshotsReceived = 0;
  /** Messages dropped because their sender is not the member the connection's certificate names. */
  forgedSenderDrops = 0;
  private forgedSenderWarnedMs = 0;
  private forgedSenderUnreported = 0;
  /** When a peer last sent this member a batch (see `removalProbeIntervalMsDefault`). */
  private lastReceivedMs = performance.now();
  private probeTimer: NodeJS.Timeout | undefined;

  /** Peer message bytes received and not yet whole (peerRequestBytesMax). */
  private readonly requestBytes = new RequestBytesBudget(peerRequestBytesMax, peerRequestBytesPerSourceMax);
  /** Streams open on the peer port but Raft's own (peerOpenStreamsMax). */
  private readonly openStreams: OpenStreamBudget;
  /** Raft's Messages and Snapshot streams open on the peer port (peerRaftStreamsMax). */
  private readonly raftStreams: OpenStreamBudget;

  /**
   * Every connection the peer port accepted and that is still open: close() ends those left after
   * its grace (open-connections.ts). The other members' message streams stay open as long as they
   * run, so a closing member waited for them (the soak's failed members were still in close() when
   * failedCloseGraceMs ended them, ~10 s before it finished).
   */
  private readonly connections = new OpenConnections();
  /** Open Messages calls from other members; close() answers each (the sender opens a new one when it next sends). */
  private readonly messageCalls = new Set<() => void>();
  /** Snapshots being received: close() stops each at its next read and waits until its receiver has finished. */
  private readonly snapshotReceptions = new Set<{ stop(): void; readonly done: Promise<void> }>();
  private closing = false;

  constructor(private readonly options: TransportOptions) {
    this.openStreams = options.openStreams ?? new OpenStreamBudget(peerOpenStreamsMax, peerOpenStreamsPerSourceMax);
    this.raftStreams = options.raftStreams ?? new OpenStreamBudget(peerRaftStreamsMax, peerRaftStreamsPerSourceMax);
    this.server = new grpc.Server({ 'grpc.max_receive_message_length': peerMessageBytesMax, 'grpc.max_send_message_length': peerMessageBytesMax, 'grpc.enable_channelz': 0 });
    const service = peerPackage.rampart.Peer.service;
    const warnRefusedPeer = rateLimitedWarning(options.logger, 'refused a peer connection');
    const warnOtherCluster = rateLimitedWarning(options.logger, 'refused raft messages from another cluster');
    const warnMalformed = rateLimitedWarning(options.logger, 'refused a malformed raft message batch from a peer');
    /** Refuses a call whose TLS certificate may not act as a member; returns whether it was refused. */
    const refuse = (call: { getAuthContext(): { sslPeerCertificate?: PeerCertificate }; getPeer(): string }, callback: grpc.sendUnaryData<object>): boolean => {
      if (options.authorizePeer === undefined) return false;
      const certificate = call.getAuthContext().sslPeerCertificate;
      const problem = certificate === undefined ? 'no client certificate' : options.authorizePeer(certificate);
      if (problem === undefined) return false;
      warnRefusedPeer({ peer: call.getPeer(), reason: problem });
      options.onPeerRefused?.({ remote: call.getPeer(), stage: 'certificate', reason: problem, ...certificateNames(certificate) });
      callback({ code: grpc.status.PERMISSION_DENIED, details: `not a cluster peer: ${problem}` });
      return true;
    };
    /** Whether `message` may be taken from this call; a forged sender is dropped and (rate-limited) logged. */
    const senderBound = (call: { getAuthContext(): { sslPeerCertificate?: PeerCertificate }; getPeer(): string }, message: Message, certificateOf?: () => PeerCertificate | undefined): boolean => {
      if (options.mayActAs === undefined) return true;
      const certificate = certificateOf === undefined ? call.getAuthContext().sslPeerCertificate : certificateOf();
      if (certificate !== undefined && options.mayActAs(certificate, message.from)) return true;
      this.forgedSenderDrops += 1;
      this.forgedSenderUnreported += 1;
      const now = Date.now();
      if (now - this.forgedSenderWarnedMs >= forgedSenderWarningIntervalMs) {
        this.forgedSenderWarnedMs = now;
        options.logger.warn(
          { peer: call.getPeer(), certificate: certificate?.subject?.CN, claimedSender: message.from, type: message.type, dropped: this.forgedSenderUnreported },
          'dropped raft messages whose sender is not the member named by the peer certificate',
        );
        this.forgedSenderUnreported = 0;
      }
      return false;
    };
    this.server.addService(service, {
      Messages: (call: grpc.ServerReadableStream<{ cluster_id: string; from?: string; messages: RaftMessageWire[] } | MalformedBatch, object>, callback: grpc.sendUnaryData<object>) => {
        if (refuse(call, callback)) {
          call.on('data', () => undefined);
          call.on('error', () => undefined);
          return;
        }
        let answered = false;
        const finish = (): void => {
          if (!answered) callback(null, {});
          answered = true;
          this.messageCalls.delete(finish);
        };
        if (this.closing) {
          call.on('data', () => undefined);
          call.on('error', () => undefined);
          finish();
          return;
        }
        this.messageCalls.add(finish);
        // A stream's certificate never changes, and reading it parses it again: read it once per stream
        // (whether it may speak for the sender is still decided for every message: membership changes).
        let certificate: { value: PeerCertificate | undefined } | undefined;
        const certificateOf = (): PeerCertificate | undefined => (certificate ??= { value: call.getAuthContext().sslPeerCertificate }).value;
        call.on('data', (batch: { cluster_id: string; from?: string; messages: RaftMessageWire[] } | MalformedBatch) => {
          if (answered) return;
          if ('malformed' in batch) {
            answered = true;
            warnMalformed({ peer: call.getPeer(), reason: batch.malformed });
            options.onPeerRefused?.({ remote: call.getPeer(), stage: 'message', reason: batch.malformed, ...certificateNames(certificateOf()) });
            callback({ code: grpc.status.INVALID_ARGUMENT, details: 'rampart: malformed raft message batch' });
            return;
          }
          if (batch.cluster_id !== options.clusterId) {
            warnOtherCluster({ clusterId: batch.cluster_id });
            answered = true;
            callback({ code: grpc.status.FAILED_PRECONDITION, details: 'rampart: cluster id mismatch' });
            return;
          }
          // Before the sender check: a removed member's certificate may no longer act as a member.
          const senders = [batch.from ?? '', ...batch.messages.map((wire) => String(wire.from))];
          if (options.isRemoved !== undefined && senders.some((sender) => sender !== '' && options.isRemoved?.(sender) === true)) {
            answered = true;
            callback({ code: grpc.status.FAILED_PRECONDITION, details: memberRemovedDetails });
            return;
          }
          this.lastReceivedMs = performance.now();
          for (const wire of batch.messages) {
            const message = fromWire(wire);
            if (message === undefined || message.to !== options.selfId || !senderBound(call, message, certificateOf)) continue;
            if (message.type === 'heartbeatResponse') this.heartbeatAnswered(message.from);
            options.onMessage(message);
          }
        });
        call.on('end', finish);
        call.on('error', () => this.messageCalls.delete(finish));
        call.on('cancelled', () => this.messageCalls.delete(finish));
      },
      Snapshot: (call: grpc.ServerReadableStream<SnapshotChunkWire, object>, callback: grpc.sendUnaryData<object>) => {
        if (refuse(call, callback)) {
          call.on('data', () => undefined);
          call.on('error', () => undefined);
          return;
        }
        call.on('error', () => undefined);
        if (this.closing) {
          callback({ code: grpc.status.UNAVAILABLE, details: stoppingDetails });
          call.destroy();
          return;
        }
        const stream = abandonableReader(call, this.options.snapshotIdleTimeoutMs ?? snapshotIdleTimeoutMsDefault);
        const done = this.receiveSnapshot(stream, (message) => senderBound(call, message)).then(
          () => callback(null, {}),
          (error: unknown) => {
            if (error instanceof PeerCallError) callback({ code: error.code, details: error.message });
            else callback({ code: grpc.status.UNAVAILABLE, details: `rampart: snapshot not taken: ${error instanceof Error ? error.message : String(error)}` });
            // Stop reading: the rest of the stream is not wanted.
            call.destroy();
          },
        );
        const reception = { stop: () => stream.abandon(new PeerCallError(grpc.status.UNAVAILABLE, stoppingDetails)), done };
        this.snapshotReceptions.add(reception);
        void done.finally(() => this.snapshotReceptions.delete(reception));
      },
      LeaseRenew: (call: grpc.ServerUnaryCall<{ id: string }, object>, callback: grpc.sendUnaryData<object>) => {
        if (refuse(call, callback)) return;
        respondLease(() => options.onLeaseRenew(BigInt(call.request.id)), callback);
      },
      LeaseTimeToLive: (call: grpc.ServerUnaryCall<{ id: string }, object>, callback: grpc.sendUnaryData<object>) => {
        if (refuse(call, callback)) return;
        respondLease(() => options.onLeaseTimeToLive(BigInt(call.request.id)), callback);
      },
      LoginAttempt: (call: grpc.ServerUnaryCall<{ user: string; source: string; outcome: number; known: boolean }, object>, callback: grpc.sendUnaryData<object>) => {
        if (refuse(call, callback)) return;
        const outcome = loginOutcomes[call.request.outcome];
        if (outcome === undefined) {
          callback({ code: grpc.status.INVALID_ARGUMENT, details: 'unknown login outcome' });
          return;
        }
        options.onLoginAttempt({ user: call.request.user, source: call.request.source, outcome, known: call.request.known }).then(
          (blockedMs) => callback(null, { blocked_ms: blockedMs }),
          () => callback({ code: grpc.status.UNAVAILABLE, details: 'etcdserver: not leader' }),
        );
      },
      Cluster: (call: grpc.ServerUnaryCall<object, object>, callback: grpc.sendUnaryData<object>) => {
        if (refuse(call, callback)) return;
        const view = options.onCluster();
        callback(null, {
          cluster_id: view.clusterId,
          members: view.members.map((member) => ({ id: member.id, name: member.name, peer_urls: [...member.peerUrls], is_learner: member.isLearner })),
        });
      },
    });
  }

  async listen(urls: readonly string[]): Promise<void> {
    for (const url of urls) {
      await new Promise<void>((resolve, reject) =>
        this.server.bindAsync(hostPort(url), this.options.serverCredentials, (error) => (error === null ? resolve() : reject(error))),
      );
    }
    const refused = this.options.onPeerRefused;
    if (this.options.serverCredentials._isSecure()) logRefusedHandshakes(this.server, this.options.logger, 'peer', refused === undefined ? undefined : (refusal) => refused({ remote: refusal.remote, stage: 'handshake', reason: refusal.reason }));
    const warnTooManyBytes = rateLimitedWarning(this.options.logger, 'reset a peer stream: too many request bytes in flight');
    const warnTooManyStreams = rateLimitedWarning(this.options.logger, 'reset a peer stream: too many open streams');
    for (const listening of grpcServersOf(this.server)) {
      if (this.options.serverCredentials._isSecure()) {
        limitHandshakeTime(listening as TlsServer, {
          logger: this.options.logger,
          port: 'peer',
          ...(refused === undefined ? {} : { onTimeout: (remote: string) => refused({ remote, stage: 'handshake', reason: `not finished in ${tlsHandshakeTimeoutMs / 1000} s` }) }),
        });
      }
      limitConnections(listening, { logger: this.options.logger, port: 'peer' });
      this.connections.track(listening);
      // After grpc-js's own 'stream' listener (added at bind), as on the client port.
      listening.on('stream', (stream: ServerHttp2Stream, headers: IncomingHttpHeaders) => boundOpenStream(stream, headers, raftStreamPaths.has(String(headers[':path'])) ? this.raftStreams : this.openStreams, (method, socket) => {
        warnTooManyStreams({ peer: `${socket?.remoteAddress ?? ''}:${socket?.remotePort ?? 0}`, method });
        refused?.({ remote: `${socket?.remoteAddress ?? ''}:${socket?.remotePort ?? 0}`, stage: 'bounds', reason: 'too many open streams' });
      }));
      listening.on('stream', (stream: ServerHttp2Stream, headers: IncomingHttpHeaders) => boundGrpcStream(stream, headers, this.requestBytes, (method, socket) => {
        warnTooManyBytes({ peer: `${socket?.remoteAddress ?? ''}:${socket?.remotePort ?? 0}`, method });
        refused?.({ remote: `${socket?.remoteAddress ?? ''}:${socket?.remotePort ?? 0}`, stage: 'bounds', reason: 'too many request bytes in flight' });
      }));
    }
    const probeIntervalMs = this.options.removalProbeIntervalMs ?? removalProbeIntervalMsDefault;
    this.probeTimer = setInterval(() => {
      if (performance.now() - this.lastReceivedMs < probeIntervalMs) return;
      for (const peer of this.peers.values()) peer.probe();
    }, probeIntervalMs);
    this.probeTimer.unref();
  }

  /** Keeps one sender per other member, with its current peer URL. */
  setPeers(peers: readonly { id: NodeId; peerUrls: readonly string[] }[]): void {
    const wanted = new Map(peers.filter((peer) => peer.id !== this.options.selfId && peer.peerUrls.length > 0).map((peer) => [peer.id, peer.peerUrls[0] as string]));
    for (const [id, sender] of this.peers) {
      if (wanted.get(id) !== sender.url) {
        sender.close();
        this.peers.delete(id);
      }
    }
    for (const [id, url] of wanted) {
      if (this.peers.has(id)) continue;
      this.peers.set(id, new PeerSender(id, url, this, this.options));
      instruments.peerSendFailed.declare(String(id)); // the peer's series exists (at 0) before any failure
    }
  }

  /** When the oldest unanswered heartbeat to each peer left: its response gives the round trip. */
  private readonly heartbeatsSentMs = new Map<NodeId, number>();

  /** @internal A heartbeat to `peer` is on its way (PeerSender). */
  heartbeatSent(peer: NodeId): void {
    if (!this.heartbeatsSentMs.has(peer)) this.heartbeatsSentMs.set(peer, performance.now());
  }

  private heartbeatAnswered(peer: NodeId): void {
    const sent = this.heartbeatsSentMs.get(peer);
    if (sent === undefined) return;
    this.heartbeatsSentMs.delete(peer);
    instruments.peerRoundTripSeconds.recordSince(sent, String(peer));
  }

  send(messages: readonly Message[]): void {
    for (const message of messages) {
      const peer = this.peers.get(message.to);
      if (peer === undefined) {
        if (message.to !== this.options.selfId) this.options.onUnreachable(message.to);
        continue;
      }
      peer.send(message);
    }
  }

  lease(leader: NodeId, method: 'LeaseRenew' | 'LeaseTimeToLive', id: bigint, timeoutMs: number): Promise<LeaseAnswer> {
    const peer = this.peers.get(leader);
    if (peer === undefined) return Promise.reject(new Error(`no connection to leader ${leader}`));
    return peer.lease(method, id, timeoutMs);
  }

  loginAttempt(leader: NodeId, attempt: LoginAttempt, timeoutMs: number): Promise<number> {
    const peer = this.peers.get(leader);
    if (peer === undefined) return Promise.reject(new Error(`no connection to leader ${leader}`));
    return peer.loginAttempt(attempt, timeoutMs);
  }

  /** Reads a snapshot stream: the header first, then chunks handed on as they arrive (never all at once). */
  private async receiveSnapshot(stream: AbandonableReader, senderBound: (message: Message) => boolean): Promise<void> {
    const first = await stream.next();
    const clusterId = this.options.clusterId;
    if (first.done === true) throw new PeerCallError(grpc.status.INVALID_ARGUMENT, 'malformed snapshot');
    if (first.value.cluster_id !== clusterId) throw new PeerCallError(grpc.status.FAILED_PRECONDITION, 'rampart: cluster id mismatch');
    const header = first.value.header;
    const message = header === undefined || header === null ? undefined : fromWire(header, Buffer.alloc(0));
    if (message === undefined || message.type !== 'snapshot' || message.to !== this.options.selfId) throw new PeerCallError(grpc.status.INVALID_ARGUMENT, 'malformed snapshot');
    if (!senderBound(message)) throw new PeerCallError(grpc.status.PERMISSION_DENIED, 'rampart: snapshot sender is not the member named by the peer certificate');
    async function* chunks(): AsyncGenerator<Buffer> {
      let last = false;
      for (;;) {
        const next = await stream.next();
        if (next.done === true) {
          // A call the sender cancelled (its read failed: the leader took a newer snapshot) ends
          // here just as a complete one does (gRPC reports the end before the cancel): without
          // the sender's last marker, the records so far are only part of the snapshot.
          if (!last) throw new PeerCallError(grpc.status.CANCELLED, 'rampart: snapshot stream ended before its last chunk');
          return;
        }
        if (next.value.cluster_id !== clusterId) throw new PeerCallError(grpc.status.FAILED_PRECONDITION, 'rampart: cluster id mismatch');
        if (last) throw new PeerCallError(grpc.status.INVALID_ARGUMENT, 'malformed snapshot: data after the last chunk');
        if (next.value.last === true) {
          last = true;
          continue;
        }
        yield Buffer.from(next.value.data);
      }
    }
    await this.options.receiveSnapshot(message, chunks());
    this.snapshotsReceived += 1;
  }

  /**
   * Stops serving the peer port and sending to peers. Returns once no call of the port runs: a
   * snapshot being received is stopped at its next read and waited for (it must not still write
   * into the data directory while the member closes its log and database), the other members'
   * message streams are answered, and whatever is still open after `closeGraceMs` (a connection
   * in its TLS handshake, a call the peer does not end) is cut.
   */
  async close(): Promise<void> {
    this.closing = true;
    clearInterval(this.probeTimer);
    for (const peer of this.peers.values()) peer.close();
    this.peers.clear();
    for (const reception of this.snapshotReceptions) reception.stop();
    for (const finish of [...this.messageCalls]) finish();
    const shutdown = new Promise<void>((resolve) => this.server.tryShutdown(() => resolve()));
    await this.connections.endAfterGrace(shutdown, closeGraceMs, () => this.server.forceShutdown());
    // A transfer whose connection was cut still has its receiver finishing.
    await Promise.all([...this.snapshotReceptions].map((reception) => reception.done));
  }
}

interface AbandonableReader {
  next(): Promise<IteratorResult<SnapshotChunkWire>>;
  /** Fails the read waiting now and every later one with `error` (the first error given stays). */
  abandon(error: PeerCallError): void;
}

/**
 * Reads a snapshot call's messages one at a time; a read fails (never waits forever) once the
 * sender cancelled, the call failed, or `idleMs` passed without a message. grpc-js reports a
 * client's cancel as 'cancelled' on the server call and then stops reading it: a cancel that
 * arrives while messages are still queued is never followed by 'end' or 'error'.
 */
function abandonableReader(call: grpc.ServerReadableStream<SnapshotChunkWire, object>, idleMs: number): AbandonableReader {
  const iterator = call[Symbol.asyncIterator]() as AsyncIterator<SnapshotChunkWire>;
  let abandoned: PeerCallError | undefined = call.cancelled ? new PeerCallError(grpc.status.CANCELLED, 'rampart: snapshot transfer cancelled by its sender') : undefined;
  let failWaiting: ((error: PeerCallError) => void) | undefined;
  const abandon = (error: PeerCallError): void => {
    abandoned ??= error;
    failWaiting?.(abandoned);
  };
  call.once('cancelled', () => abandon(new PeerCallError(grpc.status.CANCELLED, 'rampart: snapshot transfer cancelled by its sender')));
  call.once('error', (error: Error) => abandon(new PeerCallError(grpc.status.UNAVAILABLE, `rampart: snapshot stream failed: ${error.message}`)));
  return {
    abandon,
    async next() {
      if (abandoned !== undefined) throw abandoned;
      let timer: NodeJS.Timeout | undefined;
      try {
        return await new Promise<IteratorResult<SnapshotChunkWire>>((resolve, reject) => {
          failWaiting = reject;
          timer = setTimeout(() => abandon(new PeerCallError(grpc.status.DEADLINE_EXCEEDED, `rampart: snapshot stream idle for ${idleMs} ms`)), idleMs);
          iterator.next().then(resolve, (error: unknown) => abandon(new PeerCallError(grpc.status.UNAVAILABLE, `rampart: snapshot stream failed: ${error instanceof Error ? error.message : String(error)}`)));
        });
      } finally {
        clearTimeout(timer);
        failWaiting = undefined;
      }
    },
  };
}

function respondLease(answer: () => Promise<LeaseAnswer>, callback: grpc.sendUnaryData<object>): void {
  answer().then(
    (result) => callback(null, { found: result.found, ttl: result.ttl, granted_ttl: result.grantedTtl, keys: result.keys }),
    () => callback({ code: grpc.status.UNAVAILABLE, details: 'etcdserver: not leader' }),
  );
}
