/**
 * The etcd v3 services (and Rampart's Policy and Audit) as transport-neutral handlers, one per RPC,
 * over a call context. Owns: the checks every call goes through whatever carried it — certificate
 * refusal, identity, metrics, the audit event — and the translation between messages and the
 * member. Never: anything of a transport (grpc-server.ts and http-gateway.ts adapt these), state of
 * its own beyond a stream's lifetime.
 */
import type { Logger } from 'pino';
import type { PeerCertificate } from 'node:tls';
import { RampartError, isRampartError, type ErrorCode } from '../errors.js';
import type { Member } from '../server/member.js';
import { int64Out, parseBigInt64, parseInt64 } from '../server/kv.js';
import { alarmType } from '../server/applier.js';
import { leaseTtlMaxSeconds } from '../server/lessor.js';
import { mayUseLease } from '../server/lease-ownership.js';
import { authorizeRange, requireAdmin } from '../server/authorize.js';
import { decodePolicy, encodePolicy, policyStateOf } from '../auth/policy.js';
import { Concurrency, type LeaderKey } from '../server/concurrency.js';
import type { ServerMetrics } from '../server/metrics.js';
import type { AuditLog } from '../audit/log.js';
import { encodeCheckpoint, encodeSigner } from '../audit/checkpoint.js';
import { statusOf, statusName } from './errors.js';
import { instruments } from '../instruments.js';
import type { AlarmRequest, Caller, CompactionRequest, DeleteRangeRequest, Int64In, PutRequest, RangeRequest, TxnRequest, WatchRequest, WatchResponse } from './messages.js';
import { Authenticator, type LoginGate } from './identity.js';
import { rateLimitedWarning } from '../pki/handshake-log.js';
import { checkName } from '../auth/names.js';
import { serveAuth } from './auth-service.js';
import { outcomeOf, singleAuditRanges, targetsOf, txnWrites } from './audit-events.js';
import { auditDecision, namePolicyInForce, valueRecorder } from './audit-decision.js';
import { requestFieldsOf } from './audit-request.js';
import { shippedAuditPolicy } from '../audit/policy.js';
import { serveAuditPolicy } from './audit-policy-service.js';
import { RefusalLimiter } from './refusal-limit.js';
import { recordUnrecordedRefusals } from './refusal-audit.js';
import { serveWatch } from './watch-service.js';
import { serveSnapshot } from './snapshot-stream.js';
import type { CallContext, DuplexRpc, DuplexStream, ResponseStream, Rpc, ServerStreamRpc, ServiceTable, UnaryRpc } from './rpc.js';

/** The version Status and snapshots report (the etcd API level Rampart answers as). */
export const serverVersion = '3.5.17';

/** What a caller without certificate or token may still do (--client-cert-auth=false). */
const anonymousRpcs: ReadonlySet<string> = new Set(['Authenticate', 'Status']);

/**
 * What a learner answers, as in etcd: Status and serializable reads (and, among streams, Snapshot);
 * everything else is refused so that clients go to a voting member.
 */
function learnerServes(rpc: string, request: unknown): boolean {
  if (rpc === 'Status') return true;
  return rpc === 'Range' && (request as { serializable?: boolean } | null)?.serializable === true;
}

/** Events a slow audit subscriber may fall behind by before its stream is ended. */
const auditBacklogMax = 10_000;

/** Calls whose answer is not held until their audit event is durable: they change nothing. */
const readOnlyActions = new Set(['Audit.Checkpoints', 'Range', 'LeaseTimeToLive', 'LeaseLeases', 'MemberList', 'Status', 'Hash', 'HashKV', 'Leader', 'PolicyExport', 'AuthStatus', 'UserGet', 'UserList', 'RoleGet', 'RoleList']);

export type Handler<Request, Response> = (request: Request, call: CallContext) => Promise<Response> | Response;

export interface ServicesOptions {
  readonly member: Member;
  readonly logger: Logger;
  /** With TLS: why a client certificate may not be used any more, or undefined when it may. */
  readonly refuseCertificate?: (certificate: PeerCertificate) => ErrorCode | undefined;
  /** Lifetime of tokens from Authenticate. */
  readonly tokenTtlSeconds?: number;
  /**
   * Whether a caller with neither a client certificate nor a token may call (plaintext development
   * mode only). Otherwise — TLS with --client-cert-auth=false — such a caller may only Authenticate
   * and ask for Status.
   */
  readonly anonymousAllowed?: boolean;
  readonly metrics?: ServerMetrics;
  /** Where every client request and its decision is recorded (hash-chained). */
  readonly audit?: AuditLog;
  /** --audit-fail-closed: false while no audit sink takes events; requests (but Status) are then refused. */
  readonly auditSinksAccepting?: () => boolean;
}

/** What the handlers share: the member, identity, the audit trail, and the RPC wrappers. */
export interface ServiceKit {
  readonly member: Member;
  readonly authenticator: Authenticator;
  /** The caller of this call (and remembered on it for the audit event). */
  readonly who: (call: CallContext) => Promise<Caller>;
  /** Root only (while auth is enabled): compaction, maintenance, membership, auth administration. */
  readonly admin: (call: CallContext) => Promise<Caller>;
  readonly unary: <Request, Response>(name: string, handler: Handler<Request, Response>) => UnaryRpc;
}

function describe(error: unknown): string {
  return error instanceof Error ? `${error.name}: ${error.message}` : String(error);
}

export function createServices(options: ServicesOptions): ServiceTable {
  const { member, logger } = options;
  shippedAuditPolicy(); // a broken shipped audit policy stops the member here, not at its first event
  // Failed logins are counted where the member's leader sees them all (member.loginAttempt).
  const loginGate: LoginGate = {
    check: (user, source) => member.loginAttempt({ user, source, outcome: 'check', known: member.auth.state.users.has(user) }),
    failed: async (user, source, known) => void (await member.loginAttempt({ user, source, outcome: 'failed', known })),
    succeeded: async (user, source) => void (await member.loginAttempt({ user, source, outcome: 'succeeded', known: true })),
  };
  const authenticator = new Authenticator(member.auth, options.tokenTtlSeconds, loginGate, () => member.readBarrier());
  const who = async (call: CallContext): Promise<Caller> => {
    const caller = await authenticator.identify(call.token, call.certificate);
    call.caller = caller;
    return caller;
  };
  const admin = async (call: CallContext): Promise<Caller> => {
    const caller = await who(call);
    requireAdmin(member.auth.decider, caller);
    return caller;
  };
  /**
   * Denials to callers that are no user (a certificate bound to no user, no or a bad token) share
   * the transport refusals' rate: any holder of a CA-signed certificate could otherwise write
   * durable events as fast as it can send, and a full audit disk stops the member. Past the rate
   * they are counted in a summary event; a user's own denials are always recorded one by one.
   */
  const trail = options.audit;
  const unidentifiedDenials = trail === undefined ? undefined : new RefusalLimiter({
    recordUnrecorded: (summary) => void recordUnrecordedRefusals(trail, summary, 'denials'),
  });
  /**
   * Records a call and its decision; resolves once the event is durable (a trail that cannot be
   * written rejects, after stopping the member through the trail's error handler).
   */
  const audit = (call: CallContext, action: string, request: Record<string, unknown>, error: unknown): Promise<void> => {
    if (options.audit === undefined) return Promise.resolve();
    const { code, message } = error === undefined ? { code: 0, message: '' } : statusOf(error);
    const caller = call.caller;
    const password = action === 'Authenticate';
    const user = password ? String(request.name ?? '') : caller?.user ?? '';
    const outcome = outcomeOf(code, message);
    // The audit policy in force decides whether (and how much of) this event is recorded; the
    // targets' text is built only for an event it records.
    const state = member.auth.state;
    const single = singleAuditRanges(action, request);
    const described = single === undefined ? targetsOf(action, request) : undefined;
    const decision = auditDecision(state, { action, writes: action === 'Txn' && txnWrites(request as unknown as TxnRequest), user, outcome, ranges: single ?? described?.ranges ?? [] });
    if (decision.level === 'none') return Promise.resolve();
    const unidentified = !password && (caller === undefined || caller.user === '');
    if (unidentified && outcome !== 'allowed' && unidentifiedDenials?.admit({ code: statusName(code), peer: call.peer }) === false) return Promise.resolve();
    namePolicyInForce(options.audit, state);
    const { targets, named } = described ?? targetsOf(action, request);
    return options.audit.record({
      action,
      user,
      via: password ? 'password' : caller === undefined || caller.user === '' ? 'none' : caller.token ? 'token' : 'certificate',
      source: call.peer,
      targets,
      outcome,
      code: statusName(code),
      // Absent fields as undefined rather than spread in: one shape for every event (the trail leaves them out).
      detail: message === '' ? undefined : message,
      request: decision.level === 'request' ? requestFieldsOf(action, request, valueRecorder(state, decision)) : undefined,
    }, named);
  };
  /**
   * A unary call's event, before its answer: a call that may change something is answered only
   * once its event is durable (reads are not held for it). An event that cannot be written fails
   * the call rather than acknowledging it unrecorded.
   */
  const auditBeforeAnswer = async (call: CallContext, action: string, request: Record<string, unknown>, error: unknown): Promise<void> => {
    const started = performance.now();
    const recorded = audit(call, action, request, error);
    if (readOnlyActions.has(action)) return;
    await recorded.catch(() => {
      throw new RampartError('AuditUnavailable');
    });
    instruments.writeStageSeconds.recordSince(started, 'audit');
  };
  const warnRefusedCertificate = rateLimitedWarning(logger, 'refused a client certificate');
  /** A refused certificate is refused on every call, also on connections opened before. */
  const refusal = (call: CallContext, rpc: string): RampartError | undefined => {
    if (rpc !== 'Status' && options.auditSinksAccepting?.() === false) return new RampartError('AuditSinksDown');
    const certificate = call.certificate;
    const problem = options.refuseCertificate === undefined || certificate === undefined ? undefined : options.refuseCertificate(certificate);
    if (problem === undefined) return undefined;
    warnRefusedCertificate({ rpc, peer: call.peer, subject: certificate?.subject?.CN, reason: problem });
    return new RampartError(problem);
  };

  /**
   * Without a client certificate (TLS with --client-cert-auth=false), only a valid token
   * identifies a caller: everything but logging in and Status needs one.
   */
  const authenticated = async (call: CallContext, rpc: string): Promise<void> => {
    if (options.anonymousAllowed === true || call.certificate !== undefined || anonymousRpcs.has(rpc)) return;
    const caller = await who(call);
    if (!caller.token) throw new RampartError('TokenRequired');
  };

  const unary = <Request, Response>(name: string, handler: Handler<Request, Response>): UnaryRpc => ({
    kind: 'unary',
    async handle(request, call) {
      let response: Response;
      const started = performance.now();
      const seconds = (): number => (performance.now() - started) / 1000;
      const refused = refusal(call, name);
      if (refused !== undefined) {
        options.metrics?.handled(name, statusName(statusOf(refused).code), seconds());
        await auditBeforeAnswer(call, name, request as Record<string, unknown>, refused);
        throw refused;
      }
      try {
        if (member.isLearner && !learnerServes(name, request)) throw new RampartError('NotSupportedForLearner');
        await authenticated(call, name);
        response = await handler(request as Request, call);
      } catch (error) {
        if (!isRampartError(error)) logger.error({ rpc: name, err: describe(error) }, 'request failed unexpectedly');
        const { code } = statusOf(error);
        options.metrics?.handled(name, statusName(code), seconds());
        if (isRampartError(error)) {
          if (error.code === 'PermissionDenied') options.metrics?.permissionDenied();
          if (error.code === 'AuthFailed' || (error.code === 'TooManyRequests' && name === 'Authenticate')) options.metrics?.loginFailed();
        }
        await auditBeforeAnswer(call, name, request as Record<string, unknown>, error);
        throw error;
      }
      options.metrics?.handled(name, 'OK', seconds());
      // LeaseGrant is recorded with the id it granted (the request's is usually 0).
      const subject = name === 'LeaseGrant' ? { ...(request as Record<string, unknown>), ID: (response as { ID?: unknown }).ID } : request as Record<string, unknown>;
      await auditBeforeAnswer(call, name, subject, undefined);
      return response;
    },
  });
  const duplex = <Request, Response>(name: string, serve: (call: CallContext, stream: DuplexStream<Request, Response>) => void): DuplexRpc => ({
    kind: 'duplex',
    handle(call, stream) {
      const refused = refusal(call, name) ?? (member.isLearner ? new RampartError('NotSupportedForLearner') : undefined);
      if (refused !== undefined) {
        void audit(call, name, {}, refused);
        stream.fail(refused);
        return;
      }
      if (options.anonymousAllowed === true || call.certificate !== undefined) {
        serve(call, stream as DuplexStream<Request, Response>);
        return;
      }
      authenticated(call, name).then(
        () => serve(call, stream as DuplexStream<Request, Response>),
        (error: unknown) => {
          void audit(call, name, {}, error);
          stream.fail(error);
        },
      );
    },
  });
  const serverStream = <Request, Response>(name: string, serve: (request: Request, call: CallContext, stream: ResponseStream<Response>) => void): ServerStreamRpc => ({
    kind: 'serverStream',
    handle(request, call, stream) {
      const refused = refusal(call, name) ?? (member.isLearner && name !== 'Snapshot' ? new RampartError('NotSupportedForLearner') : undefined);
      if (refused !== undefined) {
        void audit(call, name, {}, refused);
        stream.fail(refused);
        return;
      }
      authenticated(call, name).then(
        () => serve(request as Request, call, stream as ResponseStream<Response>),
        (error: unknown) => {
          void audit(call, name, {}, error);
          stream.fail(error);
        },
      );
    },
  });
  /**
   * A root-only server stream: the check, then its audit event, then `serve`; a refusal (or a
   * failure to start) is audited and ends the stream with its status.
   */
  const adminStream = <Response>(name: string, action: string, serve: (call: CallContext, stream: ResponseStream<Response>) => unknown): ServerStreamRpc =>
    serverStream<object, Response>(name, (_request, call, stream) => {
      admin(call)
        .then(() => {
          void audit(call, action, {}, undefined);
          return serve(call, stream);
        })
        .catch((error: unknown) => {
          void audit(call, action, {}, error);
          stream.fail(error);
        });
    });

  const kv = (result: Promise<{ revision: number; response: object }>): Promise<object> =>
    result.then(({ revision, response }) => ({ header: member.header(revision), ...response }));

  const services = new Map<string, Record<string, Rpc>>();

  services.set('etcdserverpb.KV', {
    Range: unary('Range', async (request: RangeRequest, call) => {
      const { revision: _revision, ...result } = await member.range(request, await who(call));
      return { header: member.header(), ...result };
    }),
    Put: unary('Put', async (request: PutRequest, call) => kv(member.put(request, await who(call)))),
    DeleteRange: unary('DeleteRange', async (request: DeleteRangeRequest, call) => kv(member.deleteRange(request, await who(call)))),
    Txn: unary('Txn', async (request: TxnRequest, call) => kv(member.txn(request, await who(call)))),
    Compact: unary('Compact', async (request: CompactionRequest, call) => kv(member.compact(request, await admin(call)))),
  });

  services.set('etcdserverpb.Watch', {
    Watch: duplex<WatchRequest, WatchResponse>('Watch', (call, stream) =>
      serveWatch({
        member,
        logger,
        stream,
        identify: () => who(call),
        peer: call.peer,
        onCreate: (request, allowed) => void audit(call, 'Watch.create', request as unknown as Record<string, unknown>, allowed ? undefined : new RampartError('PermissionDenied')),
      })),
  });

  services.set('etcdserverpb.Lease', {
    LeaseGrant: unary('LeaseGrant', async (request: { TTL: Int64In; ID: Int64In }, call) => {
      const caller = await who(call); // the lease's owner (and who its audit event names)
      const ttl = parseInt64(request.TTL);
      if (ttl > leaseTtlMaxSeconds) {
        throw new RampartError('LeaseTtlTooLarge');
      }
      const { revision, response } = await member.leaseGrant(ttl, parseBigInt64(request.ID), caller);
      return { header: member.header(revision), ...response };
    }),
    LeaseRevoke: unary('LeaseRevoke', async (request: { ID: Int64In }, call) => kv(member.leaseRevoke(parseBigInt64(request.ID), await who(call)))),
    LeaseKeepAlive: duplex<{ ID: Int64In }, object>('LeaseKeepAlive', (call, stream) => serveKeepAlive(member, stream, () => who(call))),
    LeaseTimeToLive: unary('LeaseTimeToLive', async (request: { ID: Int64In; keys: boolean }, call) => {
      const id = parseBigInt64(request.ID);
      const caller = await who(call);
      const owner = member.lessor.get(id)?.owner;
      if (owner !== undefined && !mayUseLease(member.auth.decider, caller, owner)) throw new RampartError('PermissionDenied');
      const answer = await member.leaseTimeToLive(id);
      if (!answer.found) {
        return { header: member.header(), ID: int64Out(id), TTL: -1, grantedTTL: 0, keys: [] };
      }
      if (request.keys) {
        for (const key of answer.keys) authorizeRange(member.auth.decider, caller, { key, range_end: Buffer.alloc(0) });
      }
      return { header: member.header(), ID: int64Out(id), TTL: answer.ttl, grantedTTL: answer.grantedTtl, keys: request.keys ? answer.keys : [] };
    }),
    LeaseLeases: unary('LeaseLeases', async (_request: object, call) => {
      // Only the caller's own leases (all of them for root): others' are not theirs to see.
      const caller = await who(call);
      const visible = member.lessor.ids().filter((id) => mayUseLease(member.auth.decider, caller, member.lessor.get(id)?.owner ?? ''));
      return { header: member.header(), leases: visible.map((id) => ({ ID: int64Out(id) })) };
    }),
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
  services.set('etcdserverpb.Cluster', {
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

  services.set('etcdserverpb.Maintenance', {
    Status: unary('Status', () => ({
      header: member.header(),
      version: serverVersion,
      dbSize: member.dbSize,
      leader: int64Out(member.leaderId),
      raftIndex: member.raftIndex,
      raftTerm: member.term,
      raftAppliedIndex: member.appliedIndex,
      errors: member.alarmList().map((alarm) => `memberID:${BigInt(alarm.memberID).toString()} alarm:${alarmName(alarm.alarm)} `),
      dbSizeInUse: member.dbSize,
      isLearner: member.isLearner,
    })),
    // etcd answers Alarm and Defragment without a header.
    Alarm: unary('Alarm', async (request: AlarmRequest, call) => {
      const { response } = await member.alarm(request, await who(call));
      return response;
    }),
    Defragment: unary('Defragment', async (_request: object, call) => {
      await admin(call);
      await member.defragment();
      return {};
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
    Snapshot: adminStream<object>('Snapshot', 'Snapshot', (_call, stream) => serveSnapshot(member, logger, stream, serverVersion)),
    MoveLeader: unary('MoveLeader', async (request: { targetID: Int64In }, call) => {
      await admin(call);
      await member.moveLeader(hexId(request.targetID));
      return { header: member.headerWithoutRevision() };
    }),
    Downgrade: unary('Downgrade', notYet),
  });

  services.set('etcdserverpb.Auth', serveAuth({ member, authenticator, who, admin, unary }));

  const concurrency = new Concurrency(member);
  type LeaderKeyMessage = { name: Buffer; key: Buffer; rev: Int64In; lease: Int64In };
  const leaderKey = (message: LeaderKeyMessage | null | undefined): LeaderKey => {
    if (message === null || message === undefined) throw new RampartError('ElectionNotLeader');
    return { name: Buffer.from(message.name), key: Buffer.from(message.key), rev: parseInt64(message.rev), lease: parseBigInt64(message.lease) };
  };
  services.set('v3lockpb.Lock', {
    Lock: unary('Lock', async (request: { name: Buffer; lease: Int64In }, call) => {
      if (request.name.length === 0) throw new RampartError('EmptyKey');
      const key = await concurrency.lock(Buffer.from(request.name), parseBigInt64(request.lease), await who(call), call.signal);
      return { header: member.header(), key };
    }),
    Unlock: unary('Unlock', async (request: { key: Buffer }, call) => {
      if (request.key.length === 0) throw new RampartError('EmptyKey');
      return { header: member.header(await concurrency.unlock(Buffer.from(request.key), await who(call))) };
    }),
  });
  services.set('v3electionpb.Election', {
    Campaign: unary('Campaign', async (request: { name: Buffer; lease: Int64In; value: Buffer }, call) => {
      if (request.name.length === 0) throw new RampartError('EmptyKey');
      const leader = await concurrency.campaign(Buffer.from(request.name), parseBigInt64(request.lease), Buffer.from(request.value), await who(call), call.signal);
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
    Observe: serverStream<{ name: Buffer }, object>('Observe', (request, call, stream) => {
      // Recorded once: at the first leader sent (its value is a read under name/) or at a refusal.
      let recorded = false;
      const record = (error: unknown): void => {
        if (recorded) return;
        recorded = true;
        void audit(call, 'Observe', request, error);
      };
      who(call)
        .then((caller) =>
          concurrency.observe(Buffer.from(request.name), caller, call.signal, (kv) => {
            record(undefined);
            stream.write({ header: member.header(), kv });
          }),
        )
        .then(
          () => stream.end(),
          (error: unknown) => {
            if (call.signal.aborted) return;
            record(error);
            stream.fail(error);
          },
        );
    }),
  });

  services.set('rampart.Audit', {
    Stream: adminStream<{ json: string }>('AuditStream', 'Audit.Stream', (_call, stream) => {
      const trail = options.audit;
      if (trail === undefined) throw new RampartError('Unimplemented', 'this member keeps no audit trail');
      let backlog = 0;
      let congested = false;
      let ended = false;
      const unsubscribe = trail.subscribe((json) => {
        if (ended) return;
        if (backlog >= auditBacklogMax) {
          ended = true;
          unsubscribe();
          stream.fail(new RampartError('AuditBacklog'));
          return;
        }
        if (congested) backlog += 1;
        if (!stream.write({ json }) && !congested) {
          congested = true;
          void stream.drained().then(() => {
            congested = false;
            backlog = 0;
          });
        }
      });
      stream.onClose(() => {
        ended = true;
        unsubscribe();
      });
    }),
    Checkpoints: unary('Audit.Checkpoints', async (_request: object, call) => {
      await admin(call);
      await member.readBarrier();
      const { checkpoints, signers } = await member.auditCheckpointRecords();
      return { checkpoints: [...signers.map(encodeSigner), ...checkpoints.map(encodeCheckpoint)] };
    }),
  });

  services.set('rampart.Encryption', {
    Status: unary('EncryptionStatus', async (_request: object, call) => {
      await admin(call);
      return encryptionStatusOf(member);
    }),
    Rotate: unary('EncryptionRotate', async (request: { kek: boolean }, call) => {
      const caller = await admin(call);
      await member.rotateEncryption(request.kek, caller);
      return {};
    }),
  });

  services.set('rampart.AuditPolicy', serveAuditPolicy({ member, admin, unary }));

  services.set('rampart.Policy', {
    Export: unary('PolicyExport', async (_request: object, call) => {
      await admin(call);
      await member.readBarrier();
      const state = member.auth.state;
      const passwordUsers = [...state.users.values()].filter((user) => user.passwordHash !== '').map((user) => user.name).sort();
      return { policy_json: encodePolicy(policyStateOf(state)), auth_revision: state.revision, auth_enabled: state.enabled, password_users: passwordUsers };
    }),
    Apply: unary('PolicyApply', async (request: { policy_json: string; expect_revision: Int64In }, call) => {
      const caller = await admin(call);
      let policy;
      try {
        policy = decodePolicy(request.policy_json);
      } catch {
        throw new RampartError('InvalidArgument', 'malformed policy');
      }
      for (const name of [...policy.users.map((user) => user.name), ...policy.roles.map((role) => role.name)]) checkName(name);
      const before = member.auth.state.revision;
      await member.authChange({ op: 'policyApply', policy, expectRevision: parseInt64(request.expect_revision) }, caller);
      const after = member.auth.state.revision;
      return { changed: after !== before, auth_revision: after };
    }),
  });

  return services;
}

/** One member's encryption at rest, as `rampart encryption status` shows it. */
async function encryptionStatusOf(member: Member): Promise<object> {
  const status = member.encryptionStatus();
  if (status === undefined) return { member: member.options.name, encrypted: false };
  const [counts, health] = await Promise.all([member.encryptionRecordCounts(), member.encryptionProviderHealth()]);
  const total = [...counts.values()].reduce((sum, count) => sum + count, 0);
  const known = new Set(status.deks.map((dek) => dek.id));
  const other = [...counts].reduce((sum, [id, count]) => sum + (known.has(id) ? 0 : count), 0);
  return {
    member: member.options.name,
    encrypted: true,
    provider: status.provider,
    provider_source: status.providerSource,
    provider_reachable: health?.reachable ?? false,
    kek_id: status.kekId,
    active_dek: status.activeDekId,
    deks: status.deks.map((dek) => ({ id: dek.id, records: counts.get(dek.id) ?? 0, kek_id: dek.kekId, created_unix_ms: dek.createdAtMs })),
    percent_resealed: total === 0 ? 100 : (100 * (counts.get(status.activeDekId) ?? 0)) / total,
    reseal_running: member.encryptionProgress.running,
    last_rotation_unix_ms: status.lastRotationMs,
    records_other: other,
    plaintext_on_disk: status.migrating,
  };
}

function alarmName(alarm: number): string {
  return alarm === alarmType.noSpace ? 'NOSPACE' : alarm === alarmType.corrupt ? 'CORRUPT' : 'NONE';
}

/**
 * LeaseKeepAlive: answers go out in request order even when some are forwarded to the leader, and
 * all of them before the stream ends. As etcd, a lease that does not exist is answered with TTL 0.
 */
/**
 * Keep-alives of one stream being answered at once (each may be a call to the leader): past it the
 * stream's requests are not read until one is answered. Before, a client sending keep-alives
 * without reading the answers had every one of them in flight at once (4 million: +185 MiB).
 */
export const keepAlivesInFlightPerStreamMax = 64;

function serveKeepAlive(member: Member, stream: DuplexStream<{ ID: Int64In }, object>, identify: () => Promise<Caller>): void {
  let previous: Promise<void> = Promise.resolve();
  let inFlight = 0;
  let release: (() => void) | undefined;
  stream.onRequest((request) => {
    inFlight += 1;
    if (inFlight >= keepAlivesInFlightPerStreamMax && release === undefined) release = stream.holdRequests();
    const id = parseBigInt64(request.ID);
    // Someone else's lease is answered as etcd answers a missing one (TTL 0): the stream, shared by
    // the caller's own leases, goes on.
    const answer = identify().then((caller) => {
      const owner = member.lessor.get(id)?.owner;
      if (owner !== undefined && !mayUseLease(member.auth.decider, caller, owner)) throw new RampartError('LeaseNotFound');
      return member.leaseKeepAlive(id);
    });
    answer.catch(() => undefined); // handled in order below
    previous = previous.then(async () => {
      try {
        const ttl = await answer;
        stream.write({ header: member.header(), ID: int64Out(id), TTL: ttl });
      } catch (error) {
        if (isRampartError(error) && error.code === 'LeaseNotFound') stream.write({ header: member.header(), ID: int64Out(id), TTL: 0 });
        else stream.fail(error);
      }
      inFlight -= 1;
      if (inFlight < keepAlivesInFlightPerStreamMax && release !== undefined) {
        release();
        release = undefined;
      }
    });
  });
  stream.onRequestsEnd(() => {
    void previous.then(() => stream.end());
  });
}
