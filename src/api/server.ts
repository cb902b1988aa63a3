/**
 * The etcd v3 gRPC services over a member. Owns: message translation, streams and their cleanup,
 * mapping every error through `errors.ts`. Never: state of its own beyond a stream's lifetime.
 */
import * as grpc from '@grpc/grpc-js';
import type { PeerCertificate } from 'node:tls';
import { createHash } from 'node:crypto';
import type { Logger } from 'pino';
import { RampartError, isRampartError } from '../errors.js';
import type { Member } from '../server/member.js';
import { int64Out, parseBigInt64, parseInt64, toKeyValueMessage } from '../server/kv.js';
import { alarmType } from '../server/applier.js';
import { leaseTtlMaxSeconds } from '../server/lessor.js';
import type { StoreEvent } from '../storage/mvcc/store.js';
import type { Watcher, WatchSink } from '../server/watch-hub.js';
import { isMemberLocalKey } from '../storage/schema.js';
import { toServiceError } from './errors.js';
import type {
  AlarmRequest,
  CompactionRequest,
  DeleteRangeRequest,
  EventMessage,
  Int64In,
  PutRequest,
  RangeRequest,
  TxnRequest,
  WatchCreateRequest,
  WatchRequest,
  WatchResponse,
} from './messages.js';
import { packageDefinition } from './proto.js';
import { Authenticator, type CallContext } from './identity.js';
import { authorizeRange, requireAdmin } from '../server/authorize.js';
import { serveAuth } from './auth-service.js';
import type { Caller } from './messages.js';
import { decodePolicy, encodePolicy, policyStateOf } from '../auth/policy.js';
import { Concurrency, type LeaderKey } from '../server/concurrency.js';
import type { ServerMetrics } from '../server/metrics.js';
import type { AuditLog } from '../audit/log.js';
import { outcomeOf, targetsOf } from './audit-events.js';

/** gRPC's own framing allowance above the largest request etcd accepts (etcd uses the same). */
const grpcOverheadBytes = 512 * 1024;
/** Snapshot stream chunk size. */
const snapshotChunkBytes = 32 * 1024;

export type Handler<Request, Response> = (request: Request, call: grpc.ServerUnaryCall<Request, Response>) => Promise<Response> | Response;

interface ServiceDefinitionMap {
  [name: string]: grpc.ServiceDefinition;
}

export interface ApiServerOptions {
  readonly member: Member;
  readonly logger: Logger;
  readonly credentials: grpc.ServerCredentials;
  /** With TLS: why a client certificate may not be used (revoked), or undefined when it may. */
  readonly refuseCertificate?: (certificate: PeerCertificate) => string | undefined;
  /** Lifetime of tokens from Authenticate. */
  readonly tokenTtlSeconds?: number;
  readonly metrics?: ServerMetrics;
  /** Where every client request and its decision is recorded (hash-chained). */
  readonly audit?: AuditLog;
}

interface CallWithAuth {
  getAuthContext(): { sslPeerCertificate?: PeerCertificate };
  getPeer(): string;
}

export function createGrpcServer(options: ApiServerOptions): grpc.Server {
  const { member, logger } = options;
  const server = new grpc.Server({
    'grpc.max_receive_message_length': member.options.maxRequestBytes + grpcOverheadBytes,
    'grpc.max_send_message_length': -1,
    'grpc.keepalive_permit_without_calls': 1,
    'grpc.http2.min_ping_interval_without_data_ms': 5000,
  });
  const services = loadServices();
  const authenticator = new Authenticator(member.auth, options.tokenTtlSeconds);
  /** The identity each call was served as, for its audit event. */
  const callers = new WeakMap<object, Caller>();
  /** A call's client certificate, read once: both the revocation check and the identity need it. */
  const certificates = new WeakMap<object, PeerCertificate | undefined>();
  const certificateOf = (call: CallWithAuth): PeerCertificate | undefined => {
    if (!certificates.has(call)) certificates.set(call, call.getAuthContext().sslPeerCertificate);
    return certificates.get(call);
  };
  const who = async (call: CallContext): Promise<Caller> => {
    const caller = await authenticator.identify(call.metadata, certificateOf(call));
    callers.set(call, caller);
    return caller;
  };
  const audit = (call: CallContext, action: string, request: Record<string, unknown>, code: grpc.status, detail: string): void => {
    if (options.audit === undefined) return;
    const caller = callers.get(call);
    const password = action === 'Authenticate';
    options.audit.record({
      action,
      user: password ? String(request.name ?? '') : caller?.user ?? '',
      via: password ? 'password' : caller === undefined || caller.user === '' ? 'none' : caller.token ? 'token' : 'certificate',
      source: call.getPeer(),
      targets: targetsOf(action, request),
      outcome: outcomeOf(code, detail),
      code: grpc.status[code] ?? String(code),
      ...(detail === '' ? {} : { detail }),
    });
  };
  /** Root only (while auth is enabled): compaction, maintenance, membership and auth administration. */
  const admin = async (call: CallContext): Promise<Caller> => {
    const caller = await who(call);
    requireAdmin(member.auth.decider, caller);
    return caller;
  };

  /**
   * A root-only server stream: the check, then its audit event, then `serve`; a refusal (or a
   * failure to start) is audited and ends the stream with its status.
   */
  const adminStream = (call: CallContext & { emit(event: 'error', error: Error): boolean }, action: string, serve: () => unknown): void => {
    admin(call)
      .then(() => {
        audit(call, action, {}, grpc.status.OK, '');
        return serve();
      })
      .catch((error: unknown) => {
        const mapped = toServiceError(error);
        audit(call, action, {}, mapped.code ?? grpc.status.UNKNOWN, mapped.details ?? '');
        failStream(call, mapped);
      });
  };

  /** A refused certificate is refused on every call, also on connections opened before. */
  const refusal = (call: CallWithAuth, rpc: string): Partial<grpc.ServiceError> | undefined => {
    const certificate = certificateOf(call);
    const problem = options.refuseCertificate === undefined || certificate === undefined ? undefined : options.refuseCertificate(certificate);
    if (problem === undefined) return undefined;
    logger.warn({ rpc, peer: call.getPeer(), subject: certificate?.subject?.CN, reason: problem }, 'refused a client certificate');
    return { code: grpc.status.UNAUTHENTICATED, details: `rampart: ${problem}`, metadata: new grpc.Metadata() };
  };
  const guardStream = <Call extends CallWithAuth & { emit(event: 'error', error: Error): boolean }>(rpc: string, serve: (call: Call) => void): ((call: Call) => void) => (call) => {
    const refused = refusal(call, rpc);
    if (refused !== undefined) {
      audit(call as unknown as CallContext, rpc, {}, grpc.status.UNAUTHENTICATED, refused.details ?? '');
      failStream(call, refused);
      return;
    }
    serve(call);
  };

  const unary = <Request, Response>(name: string, handler: Handler<Request, Response>): grpc.handleUnaryCall<Request, Response> =>
    (call, callback) => {
      const refused = refusal(call, name);
      if (refused !== undefined) {
        options.metrics?.handled(name, 'UNAUTHENTICATED');
        audit(call, name, call.request as Record<string, unknown>, grpc.status.UNAUTHENTICATED, refused.details ?? '');
        callback(refused);
        return;
      }
      Promise.resolve()
        .then(() => handler(call.request, call))
        .then(
          (response) => {
            options.metrics?.handled(name, 'OK');
            audit(call, name, call.request as Record<string, unknown>, grpc.status.OK, '');
            callback(null, response);
          },
          (error: unknown) => {
            if (!isRampartError(error)) {
              logger.error({ rpc: name, err: describe(error) }, 'request failed unexpectedly');
            }
            const mapped = toServiceError(error);
            options.metrics?.handled(name, grpc.status[mapped.code ?? grpc.status.UNKNOWN] ?? 'UNKNOWN');
            if (mapped.code === grpc.status.PERMISSION_DENIED) options.metrics?.permissionDenied();
            if (isRampartError(error) && (error.code === 'AuthFailed' || (error.code === 'TooManyRequests' && name === 'Authenticate'))) options.metrics?.loginFailed();
            audit(call, name, call.request as Record<string, unknown>, mapped.code ?? grpc.status.UNKNOWN, mapped.details ?? '');
            callback(mapped);
          },
        );
    };

  const kv = (result: Promise<{ revision: number; response: object }>): Promise<object> =>
    result.then(({ revision, response }) => ({ header: member.header(revision), ...response }));

  server.addService(service(services, 'etcdserverpb.KV'), {
    Range: unary('Range', async (request: RangeRequest, call) => {
      const { revision: _revision, ...result } = await member.range(request, await who(call));
      return { header: member.header(), ...result };
    }),
    Put: unary('Put', async (request: PutRequest, call) => kv(member.put(request, await who(call)))),
    DeleteRange: unary('DeleteRange', async (request: DeleteRangeRequest, call) => kv(member.deleteRange(request, await who(call)))),
    Txn: unary('Txn', async (request: TxnRequest, call) => kv(member.txn(request, await who(call)))),
    Compact: unary('Compact', async (request: CompactionRequest, call) => kv(member.compact(request, await admin(call)))),
  });

  server.addService(service(services, 'etcdserverpb.Watch'), {
    Watch: guardStream('Watch', (call: grpc.ServerDuplexStream<WatchRequest, WatchResponse>) => serveWatch(member, logger, call, who, (request, allowed) =>
      audit(call, 'Watch.create', { key: request.key, range_end: request.range_end }, allowed ? grpc.status.OK : grpc.status.PERMISSION_DENIED, allowed ? '' : 'etcdserver: permission denied'))),
  });

  server.addService(service(services, 'etcdserverpb.Lease'), {
    LeaseGrant: unary('LeaseGrant', async (request: { TTL: Int64In; ID: Int64In }) => {
      const ttl = parseInt64(request.TTL);
      if (ttl > leaseTtlMaxSeconds) {
        throw new RampartError('LeaseTtlTooLarge');
      }
      const { revision, response } = await member.leaseGrant(ttl, parseBigInt64(request.ID));
      return { header: member.header(revision), ...response };
    }),
    LeaseRevoke: unary('LeaseRevoke', async (request: { ID: Int64In }, call) => kv(member.leaseRevoke(parseBigInt64(request.ID), await who(call)))),
    LeaseKeepAlive: guardStream('LeaseKeepAlive', (call: grpc.ServerDuplexStream<{ ID: Int64In }, object>) => serveKeepAlive(member, call)),
    LeaseTimeToLive: unary('LeaseTimeToLive', async (request: { ID: Int64In; keys: boolean }, call) => {
      const id = parseBigInt64(request.ID);
      const caller = await who(call);
      const answer = await member.leaseTimeToLive(id);
      if (!answer.found) {
        return { header: member.header(), ID: int64Out(id), TTL: -1, grantedTTL: 0, keys: [] };
      }
      if (request.keys) {
        for (const key of answer.keys) authorizeRange(member.auth.decider, caller, { key, range_end: Buffer.alloc(0) });
      }
      return { header: member.header(), ID: int64Out(id), TTL: answer.ttl, grantedTTL: answer.grantedTtl, keys: request.keys ? answer.keys : [] };
    }),
    LeaseLeases: unary('LeaseLeases', () => ({
      header: member.header(),
      leases: member.lessor.ids().map((id) => ({ ID: int64Out(id) })),
    })),
  });

  const memberMessage = (info: { id: bigint; name: string; peerUrls: readonly string[]; clientUrls: readonly string[]; isLearner: boolean }): object => ({
    ID: int64Out(info.id),
    name: info.name,
    peerURLs: info.peerUrls,
    clientURLs: info.clientUrls,
    isLearner: info.isLearner,
  });
  const memberMessages = (): object[] => member.members().map(memberMessage);
  const hexId = (id: Int64In): string => BigInt(id || '0').toString(16);
  const notYet = (): never => {
    throw new RampartError('Unimplemented');
  };
  server.addService(service(services, 'etcdserverpb.Cluster'), {
    MemberList: unary('MemberList', async (request: { linearizable: boolean }) => {
      if (request.linearizable) await member.readBarrier();
      return { header: member.headerWithoutRevision(), members: memberMessages() };
    }),
    MemberAdd: unary('MemberAdd', async (request: { peerURLs: string[]; isLearner: boolean }, call) => {
      await admin(call);
      const added = await member.memberAdd(request.peerURLs, request.isLearner);
      return {
        header: member.headerWithoutRevision(),
        member: memberMessage({ ...added, id: BigInt(`0x${added.id}`) }),
        members: memberMessages(),
      };
    }),
    MemberRemove: unary('MemberRemove', async (request: { ID: Int64In }, call) => {
      await admin(call);
      await member.memberRemove(hexId(request.ID));
      return { header: member.headerWithoutRevision(), members: memberMessages() };
    }),
    MemberUpdate: unary('MemberUpdate', async (request: { ID: Int64In; peerURLs: string[] }, call) => {
      await admin(call);
      await member.memberUpdate(hexId(request.ID), request.peerURLs);
      return { header: member.headerWithoutRevision(), members: memberMessages() };
    }),
    MemberPromote: unary('MemberPromote', async (request: { ID: Int64In }, call) => {
      await admin(call);
      await member.memberPromote(hexId(request.ID));
      return { header: member.headerWithoutRevision(), members: memberMessages() };
    }),
  });

  server.addService(service(services, 'etcdserverpb.Maintenance'), {
    Status: unary('Status', () => ({
      header: member.header(),
      version: serverVersionString(),
      dbSize: member.dbSize,
      leader: int64Out(member.leaderId),
      raftIndex: member.raftIndex,
      raftTerm: member.term,
      raftAppliedIndex: member.appliedIndex,
      errors: member.alarmList().map((alarm) => `memberID:${BigInt(alarm.memberID).toString()} alarm:${alarmName(alarm.alarm)} `),
      dbSizeInUse: member.dbSize,
      isLearner: member.isLearner,
    })),
    Alarm: unary('Alarm', async (request: AlarmRequest, call) => {
      const { response } = await member.alarm(request, await who(call));
      return { header: member.headerWithoutRevision(), ...response };
    }),
    Defragment: unary('Defragment', async (_request: object, call) => {
      await admin(call);
      await member.defragment();
      return { header: member.headerWithoutRevision() };
    }),
    Hash: unary('Hash', async (_request: object, call) => {
      await admin(call);
      const { hash } = await member.store.hashKv(0);
      return { header: member.header(), hash };
    }),
    HashKV: unary('HashKV', async (request: { revision: Int64In }, call) => {
      await admin(call);
      const result = await member.store.hashKv(parseInt64(request.revision));
      return { header: member.header(), hash: result.hash, compact_revision: result.compactRevision, hash_revision: result.hashRevision };
    }),
    Snapshot: guardStream('Snapshot', (call: grpc.ServerWritableStream<object, object>) => adminStream(call, 'Snapshot', () => serveSnapshot(member, logger, call))),
    MoveLeader: unary('MoveLeader', async (request: { targetID: Int64In }, call) => {
      await admin(call);
      await member.moveLeader(hexId(request.targetID));
      return { header: member.headerWithoutRevision() };
    }),
    Downgrade: unary('Downgrade', notYet),
  });

  server.addService(service(services, 'etcdserverpb.Auth'), serveAuth({ member, authenticator, who, admin, unary }));

  const concurrency = new Concurrency(member);
  /** Aborted when the client goes away: waiting for a lock or leadership stops, and its key is removed. */
  const cancellation = (call: { on(event: 'cancelled', listener: () => void): unknown }): AbortSignal => {
    const controller = new AbortController();
    call.on('cancelled', () => controller.abort());
    return controller.signal;
  };
  type LeaderKeyMessage = { name: Buffer; key: Buffer; rev: Int64In; lease: Int64In };
  const leaderKey = (message: LeaderKeyMessage | null | undefined): LeaderKey => {
    if (message === null || message === undefined) throw new RampartError('ElectionNotLeader');
    return { name: Buffer.from(message.name), key: Buffer.from(message.key), rev: parseInt64(message.rev), lease: parseBigInt64(message.lease) };
  };
  server.addService(service(services, 'v3lockpb.Lock'), {
    Lock: unary('Lock', async (request: { name: Buffer; lease: Int64In }, call) => {
      if (request.name.length === 0) throw new RampartError('EmptyKey');
      const key = await concurrency.lock(Buffer.from(request.name), parseBigInt64(request.lease), await who(call), cancellation(call));
      return { header: member.header(), key };
    }),
    Unlock: unary('Unlock', async (request: { key: Buffer }, call) => {
      if (request.key.length === 0) throw new RampartError('EmptyKey');
      return { header: member.header(await concurrency.unlock(Buffer.from(request.key), await who(call))) };
    }),
  });
  server.addService(service(services, 'v3electionpb.Election'), {
    Campaign: unary('Campaign', async (request: { name: Buffer; lease: Int64In; value: Buffer }, call) => {
      if (request.name.length === 0) throw new RampartError('EmptyKey');
      const leader = await concurrency.campaign(Buffer.from(request.name), parseBigInt64(request.lease), Buffer.from(request.value), await who(call), cancellation(call));
      return { header: member.header(), leader: { name: leader.name, key: leader.key, rev: leader.rev, lease: int64Out(leader.lease) } };
    }),
    Proclaim: unary('Proclaim', async (request: { leader?: LeaderKeyMessage | null; value: Buffer }, call) => ({
      header: member.header(await concurrency.proclaim(leaderKey(request.leader), Buffer.from(request.value), await who(call))),
    })),
    Resign: unary('Resign', async (request: { leader?: LeaderKeyMessage | null }, call) => ({
      header: member.header(await concurrency.resign(leaderKey(request.leader), await who(call))),
    })),
    Leader: unary('Leader', async (request: { name: Buffer }, call) => {
      const { kv } = await concurrency.leader(Buffer.from(request.name), await who(call));
      if (kv === undefined) throw new RampartError('ElectionNoLeader');
      return { header: member.header(), kv };
    }),
    Observe: guardStream('Observe', (call: grpc.ServerWritableStream<{ name: Buffer }, object>) => {
      const signal = cancellation(call);
      who(call)
        .then((caller) => concurrency.observe(Buffer.from(call.request.name), caller, signal, (kv) => call.write({ header: member.header(), kv })))
        .then(
          () => call.end(),
          (error: unknown) => {
            if (!signal.aborted) failStream(call, toServiceError(error));
          },
        );
    }),
  });

  /** Events a slow audit subscriber may fall behind by before its stream is ended. */
  const auditBacklogMax = 10_000;
  server.addService(service(services, 'rampart.Audit'), {
    Stream: guardStream('AuditStream', (call: grpc.ServerWritableStream<object, { json: string }>) => {
      const trail = options.audit;
      adminStream(call, 'Audit.Stream', () => {
        if (trail === undefined) throw new RampartError('Unimplemented', 'this member keeps no audit trail');
        let backlog = 0;
        let congested = false;
        let ended = false;
        const unsubscribe = trail.subscribe((json) => {
          if (ended) return;
          if (backlog >= auditBacklogMax) {
            ended = true;
            unsubscribe();
            failStream(call, { code: grpc.status.RESOURCE_EXHAUSTED, details: 'rampart: audit stream fell too far behind; reconnect and read the trail files for the gap' });
            return;
          }
          if (congested) backlog += 1;
          if (!call.write({ json }) && !congested) {
            congested = true;
            call.once('drain', () => {
              congested = false;
              backlog = 0;
            });
          }
        });
        const stop = (): void => {
          ended = true;
          unsubscribe();
        };
        call.on('cancelled', stop);
        call.on('close', stop);
      });
    }),
  });

  server.addService(service(services, 'rampart.Policy'), {
    Export: unary('PolicyExport', async (_request: object, call) => {
      await admin(call);
      await member.readBarrier();
      const state = member.auth.state;
      return { policy_json: encodePolicy(policyStateOf(state)), auth_revision: state.revision, auth_enabled: state.enabled };
    }),
    Apply: unary('PolicyApply', async (request: { policy_json: string; expect_revision: Int64In }, call) => {
      const caller = await admin(call);
      let policy;
      try {
        policy = decodePolicy(request.policy_json);
      } catch {
        throw new RampartError('InvalidArgument', 'malformed policy');
      }
      const before = member.auth.state.revision;
      await member.authChange({ op: 'policyApply', policy, expectRevision: parseInt64(request.expect_revision) }, caller);
      const after = member.auth.state.revision;
      return { changed: after !== before, auth_revision: after };
    }),
  });

  return server;
}

/**
 * Ends a server stream with an error status. (`destroy(error)` would tear the stream down before
 * grpc-js sends the status, leaving the client waiting.)
 */
function failStream(call: { emit(event: 'error', error: Error): boolean }, status: Partial<grpc.ServiceError>): void {
  call.emit('error', Object.assign(new Error(status.details), status));
}

function serverVersionString(): string {
  return '3.5.17';
}

function alarmName(alarm: number): string {
  return alarm === alarmType.noSpace ? 'NOSPACE' : alarm === alarmType.corrupt ? 'CORRUPT' : 'NONE';
}

function loadServices(): ServiceDefinitionMap {
  const loaded = grpc.loadPackageDefinition(packageDefinition);
  const result: ServiceDefinitionMap = {};
  for (const name of ['etcdserverpb.KV', 'etcdserverpb.Watch', 'etcdserverpb.Lease', 'etcdserverpb.Cluster', 'etcdserverpb.Maintenance', 'etcdserverpb.Auth', 'v3lockpb.Lock', 'v3electionpb.Election', 'rampart.Policy', 'rampart.Audit']) {
    const [pkg, svc] = name.split('.') as [string, string];
    const constructor = (loaded[pkg] as grpc.GrpcObject)[svc] as grpc.ServiceClientConstructor;
    result[name] = constructor.service;
  }
  return result;
}

function service(services: ServiceDefinitionMap, name: string): grpc.ServiceDefinition {
  const definition = services[name];
  if (definition === undefined) {
    throw new Error(`unknown service ${name}`);
  }
  return definition;
}

function describe(error: unknown): string {
  return error instanceof Error ? `${error.name}: ${error.message}` : String(error);
}

// ---- Watch ----

/** etcd puts the whole gRPC error text into a watch's cancel_reason. */
const permissionDeniedReason = 'rpc error: code = PermissionDenied desc = etcdserver: permission denied';

function eventMessage(event: StoreEvent, withPrevKv: boolean): EventMessage {
  const message: EventMessage = { type: event.type === 'put' ? 0 : 1, kv: toKeyValueMessage(event.kv) };
  if (withPrevKv && event.prevKv !== undefined) {
    message.prev_kv = toKeyValueMessage(event.prevKv);
  }
  return message;
}

function eventBytes(event: EventMessage): number {
  return event.kv.key.length + event.kv.value.length + (event.prev_kv === undefined ? 0 : event.prev_kv.key.length + event.prev_kv.value.length) + 64;
}

function serveWatch(member: Member, logger: Logger, call: grpc.ServerDuplexStream<WatchRequest, WatchResponse>, who: (call: CallContext) => Promise<Caller>, onCreate: (request: WatchCreateRequest, allowed: boolean) => void): void {
  const watchers = new Map<number, Watcher>();
  const fragmentById = new Set<number>();
  let nextWatchId = 0;
  let congested = false;
  let closed = false;
  let drainWaiters: (() => void)[] = [];

  const write = (response: WatchResponse): boolean => {
    if (closed) return true;
    const accepted = call.write(response);
    if (!accepted) congested = true;
    return accepted;
  };
  const releaseDrainWaiters = (): void => {
    const waiting = drainWaiters;
    drainWaiters = [];
    for (const resolve of waiting) resolve();
  };
  call.on('drain', () => {
    congested = false;
    releaseDrainWaiters();
  });

  const sink: WatchSink = {
    sendEvents(watchId, events, withPrevKv) {
      const messages = events.map((event) => eventMessage(event, withPrevKv));
      const limit = member.options.maxRequestBytes;
      if (!fragmentById.has(watchId) || messages.reduce((sum, message) => sum + eventBytes(message), 0) <= limit) {
        return write({ header: member.header(), watch_id: watchId, events: messages });
      }
      let accepted = true;
      let chunk: EventMessage[] = [];
      let chunkBytes = 0;
      for (const message of messages) {
        if (chunk.length > 0 && chunkBytes + eventBytes(message) > limit) {
          accepted = write({ header: member.header(), watch_id: watchId, events: chunk, fragment: true }) && accepted;
          chunk = [];
          chunkBytes = 0;
        }
        chunk.push(message);
        chunkBytes += eventBytes(message);
      }
      return write({ header: member.header(), watch_id: watchId, events: chunk }) && accepted;
    },
    sendCompacted(watchId, compactRevision) {
      watchers.delete(watchId);
      write({ header: member.header(), watch_id: watchId, canceled: true, compact_revision: compactRevision, events: [] });
    },
    sendProgress(watchId) {
      write({ header: member.header(), watch_id: watchId, events: [] });
    },
    drained() {
      if (!congested || closed) return Promise.resolve();
      return new Promise((resolve) => drainWaiters.push(resolve));
    },
    get closed() {
      return closed;
    },
  };

  // Requests are handled in order; identifying the caller may wait (token verification).
  let queue: Promise<void> = Promise.resolve();
  let identity: Promise<Caller> | undefined;
  const permitted = async (request: WatchCreateRequest): Promise<boolean> => {
    try {
      identity ??= who(call);
      const caller = await identity;
      authorizeRange(member.auth.decider, caller, { key: request.key, range_end: request.range_end });
      return true;
    } catch {
      return !member.auth.state.enabled;
    }
  };

  const create = async (request: WatchCreateRequest): Promise<void> => {
    const allowed = await permitted(request);
    onCreate(request, allowed);
    if (!allowed) {
      write({ header: member.header(), watch_id: parseInt64(request.watch_id), created: true, canceled: true, cancel_reason: permissionDeniedReason, events: [] });
      return;
    }
    if (closed) return;
    let id = parseInt64(request.watch_id);
    if (id !== 0 && watchers.has(id)) {
      write({ header: member.header(), watch_id: -1, created: true, canceled: true, cancel_reason: 'mvcc: duplicate watch ID provided on the WatchStream', events: [] });
      return;
    }
    if (id === 0) {
      while (watchers.has(nextWatchId)) nextWatchId += 1;
      id = nextWatchId++;
    }
    const currentRevision = member.store.currentRevision;
    const start = parseInt64(request.start_revision);
    const watcher: Watcher = {
      id,
      range: { key: request.key, rangeEnd: request.range_end },
      filters: { noPut: request.filters.includes(0), noDelete: request.filters.includes(1) },
      prevKv: request.prev_kv,
      progressNotify: request.progress_notify,
      sink,
      nextRevision: start > 0 ? start : currentRevision + 1,
      synced: false,
      canceled: false,
    };
    watchers.set(id, watcher);
    if (request.fragment) fragmentById.add(id);
    write({ header: member.header(currentRevision), watch_id: id, created: true, events: [] });
    member.watchHub.add(watcher);
  };

  const handle = async (request: WatchRequest): Promise<void> => {
    try {
      switch (request.request_union) {
        case 'create_request':
          if (request.create_request !== undefined) await create(request.create_request);
          break;
        case 'cancel_request': {
          const id = parseInt64(request.cancel_request?.watch_id);
          const watcher = watchers.get(id);
          if (watcher !== undefined) {
            watchers.delete(id);
            fragmentById.delete(id);
            member.watchHub.remove(watcher);
            write({ header: member.header(), watch_id: id, canceled: true, events: [] });
          }
          break;
        }
        case 'progress_request': {
          // Every event up to the reported revision has been sent to every watcher of this stream.
          let revision = member.store.currentRevision;
          for (const watcher of watchers.values()) {
            if (!watcher.synced) revision = Math.min(revision, watcher.nextRevision - 1);
          }
          write({ header: member.header(revision), watch_id: -1, events: [] });
          break;
        }
        default:
          break;
      }
    } catch (error) {
      logger.warn({ err: describe(error) }, 'watch request rejected');
      failStream(call, toServiceError(error));
    }
  };
  call.on('data', (request: WatchRequest) => {
    queue = queue.then(() => handle(request));
  });

  const cleanup = (): void => {
    if (closed) return;
    closed = true;
    for (const watcher of watchers.values()) member.watchHub.remove(watcher);
    watchers.clear();
    releaseDrainWaiters();
  };
  call.on('end', () => {
    cleanup();
    call.end();
  });
  call.on('error', cleanup);
  call.on('cancelled', cleanup);
  call.on('close', cleanup);
}

// ---- Lease keep-alive ----

function serveKeepAlive(member: Member, call: grpc.ServerDuplexStream<{ ID: Int64In }, object>): void {
  // Answers go out in request order even when some are forwarded to the leader.
  let previous: Promise<void> = Promise.resolve();
  call.on('data', (request: { ID: Int64In }) => {
    const id = parseBigInt64(request.ID);
    const answer = member.leaseKeepAlive(id);
    answer.catch(() => undefined); // handled in order below
    previous = previous.then(async () => {
      try {
        const ttl = await answer;
        call.write({ header: member.header(), ID: int64Out(id), TTL: ttl });
      } catch (error) {
        failStream(call, toServiceError(error));
      }
    });
  });
  call.on('end', () => call.end());
  call.on('error', () => undefined);
}

// ---- Snapshot ----

/**
 * Snapshot stream format (version 1): the magic line `RAMPART-SNAPSHOT 1\n`, then records
 * `u32 key length, key, u32 value length, value` for every state-machine record, then an end marker
 * (a u32 key length of 0: no stored key is empty), zero bytes up to a multiple of 512, then a 32-byte
 * SHA-256 of everything before it. etcdctl checks for exactly that shape (size % 512 == 32), which
 * etcd's page-aligned database plus its appended SHA-256 has.
 */
export const snapshotMagic = Buffer.from('RAMPART-SNAPSHOT 1\n');
export const snapshotAlignmentBytes = 512;

async function serveSnapshot(member: Member, logger: Logger, call: grpc.ServerWritableStream<object, object>): Promise<void> {
  const hash = createHash('sha256');
  let pending: Buffer[] = [];
  let pendingBytes = 0;
  let cancelled = false;
  let bodyBytes = 0;
  call.on('cancelled', () => {
    cancelled = true;
  });
  const flush = async (final: boolean): Promise<void> => {
    const blob = Buffer.concat(pending);
    pending = [];
    pendingBytes = 0;
    const accepted = call.write({ header: member.header(), remaining_bytes: final ? 0 : 1, blob, version: serverVersionString() });
    if (!accepted) {
      await new Promise<void>((resolve) => call.once('drain', resolve));
    }
  };
  const push = async (buffer: Buffer): Promise<void> => {
    hash.update(buffer);
    pending.push(buffer);
    pendingBytes += buffer.length;
    if (pendingBytes >= snapshotChunkBytes) await flush(false);
  };
  try {
    await push(snapshotMagic);
    for await (const [key, value] of member.snapshotIterator()) {
      if (cancelled) return;
      if (isMemberLocalKey(key)) continue; // the log and the member's identity are not state
      bodyBytes += 8 + key.length + value.length;
      const lengths = Buffer.allocUnsafe(4);
      lengths.writeUInt32BE(key.length);
      await push(lengths);
      await push(key);
      const valueLength = Buffer.allocUnsafe(4);
      valueLength.writeUInt32BE(value.length);
      await push(valueLength);
      await push(value);
    }
    const written = snapshotMagic.length + bodyBytes + 4;
    await push(Buffer.concat([Buffer.alloc(4), Buffer.alloc((snapshotAlignmentBytes - (written % snapshotAlignmentBytes)) % snapshotAlignmentBytes)]));
    const digest = hash.digest();
    pending.push(digest);
    await flush(true);
    call.end();
  } catch (error) {
    logger.error({ err: describe(error) }, 'snapshot stream failed');
    failStream(call, toServiceError(error));
  }
}

export { parseInt64 };
