/**
 * `rampart policy validate|test|diff|apply|export` and `rampart auth can-i`: policy files as code,
 * checked offline and applied to a live cluster as one atomic log entry.
 */
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { packageDefinition } from '../api/proto.js';
import { AuthDecider, applyAuthChange, emptyAuthState } from '../auth/store.js';
import { RampartError } from '../errors.js';
import { decodePolicy, diffPolicy, encodePolicy, exportPolicy, loadPolicy, prefixRangeEnd, runPolicyTests, stateWithPolicy, type Policy, type TestResult } from '../auth/policy.js';
import type { PolicyState } from '../auth/store.js';

export interface ConnectionOptions {
  readonly endpoints?: string | undefined;
  readonly cacert?: string | undefined;
  readonly cert?: string | undefined;
  readonly key?: string | undefined;
  /** A `rampart up` directory: endpoints from its cluster.json, the admin certificate from its pki/. */
  readonly dir: string;
}

interface PolicyClient extends grpc.Client {
  Export(request: object, options: grpc.CallOptions, callback: (error: grpc.ServiceError | null, response: { policy_json: string; auth_revision: string; auth_enabled: boolean; password_users?: string[] }) => void): void;
  Apply(request: object, options: grpc.CallOptions, callback: (error: grpc.ServiceError | null, response: { changed: boolean; auth_revision: string }) => void): void;
}

export interface LivePolicy {
  readonly state: PolicyState;
  readonly revision: number;
  readonly enabled: boolean;
  /** Users who can log in with a password (names only). */
  readonly passwordUsers: readonly string[];
}

interface AuditClient extends grpc.Client {
  Stream(request: object): grpc.ClientReadableStream<{ json: string }>;
  Checkpoints(request: object, options: grpc.CallOptions, callback: (error: grpc.ServiceError | null, response: { checkpoints: string[] }) => void): void;
}

/** The first endpoint and the TLS credentials of a root connection (flags, or a `rampart up` directory). */
export async function connectionTarget(options: ConnectionOptions): Promise<{ target: string; credentials: grpc.ChannelCredentials }> {
  let endpoint = options.endpoints?.split(',')[0];
  const pki = path.join(options.dir, 'pki');
  if (endpoint === undefined) {
    const cluster = JSON.parse(await readFile(path.join(options.dir, 'cluster.json'), 'utf8').catch(() => {
      throw new Error(`no --endpoints given and no rampart up cluster in ${options.dir}`);
    })) as { members: { clientPort: number }[] };
    endpoint = `https://127.0.0.1:${cluster.members[0]?.clientPort}`;
  }
  const target = endpoint.includes('://') ? new URL(endpoint).host : endpoint;
  const [ca, cert, key] = await Promise.all([
    readFile(options.cacert ?? path.join(pki, 'ca.crt')),
    readFile(options.cert ?? path.join(pki, 'admin.crt')),
    readFile(options.key ?? path.join(pki, 'admin.key')),
  ]);
  return { target, credentials: grpc.credentials.createSsl(ca, key, cert) };
}

/** A root connection to a cluster for Rampart's own services (policy, audit). */
export class PolicyConnection {
  private constructor(private readonly client: PolicyClient, private readonly auditClient: AuditClient) {}

  /** Opens a connection, runs `work` with it, and closes it however `work` ends. */
  static async using<T>(options: ConnectionOptions, work: (connection: PolicyConnection) => Promise<T>): Promise<T> {
    const connection = await PolicyConnection.open(options);
    try {
      return await work(connection);
    } finally {
      connection.close();
    }
  }

  private static async open(options: ConnectionOptions): Promise<PolicyConnection> {
    const { target, credentials } = await connectionTarget(options);
    const loaded = grpc.loadPackageDefinition(packageDefinition) as unknown as { rampart: { Policy: grpc.ServiceClientConstructor; Audit: grpc.ServiceClientConstructor } };
    return new PolicyConnection(
      new loaded.rampart.Policy(target, credentials) as unknown as PolicyClient,
      new loaded.rampart.Audit(target, credentials) as unknown as AuditClient,
    );
  }

  export(): Promise<LivePolicy> {
    return new Promise((resolve, reject) => {
      this.client.Export({}, { deadline: Date.now() + 10_000 }, (error, response) => {
        if (error !== null) return reject(new Error(error.details));
        resolve({ state: decodePolicy(response.policy_json), revision: Number(response.auth_revision), enabled: response.auth_enabled, passwordUsers: response.password_users ?? [] });
      });
    });
  }

  apply(state: PolicyState, expectRevision: number): Promise<{ changed: boolean; revision: number }> {
    return new Promise((resolve, reject) => {
      this.client.Apply({ policy_json: encodePolicy(state), expect_revision: String(expectRevision) }, { deadline: Date.now() + 10_000 }, (error, response) => {
        if (error !== null) {
          return reject(new Error(error.details === 'etcdserver: revision of auth store is old' ? 'the live policy changed since it was read; run the command again' : error.details));
        }
        resolve({ changed: response.changed, revision: Number(response.auth_revision) });
      });
    });
  }

  /** Prints the member's audit events as they are written, until the stream ends. */
  tailAudit(print: (line: string) => void): Promise<void> {
    return new Promise((resolve, reject) => {
      const stream = this.auditClient.Stream({});
      stream.on('data', (event: { json: string }) => print(event.json));
      stream.on('error', (error: grpc.ServiceError) => reject(new Error(error.details)));
      stream.on('end', () => resolve());
    });
  }

  /** Every audit checkpoint the cluster holds, as stored (JSON each). */
  auditCheckpoints(): Promise<string[]> {
    return new Promise((resolve, reject) => {
      this.auditClient.Checkpoints({}, { deadline: Date.now() + 10_000 }, (error, response) => {
        if (error !== null) return reject(new Error(error.details));
        resolve(response.checkpoints);
      });
    });
  }

  close(): void {
    this.client.close();
    this.auditClient.close();
  }
}

/** Validates and runs the embedded tests; throws with every problem when either fails. */
export async function checkedPolicy(directory: string, print: (line: string) => void, verbose: boolean): Promise<Policy> {
  const policy = await loadPolicy(directory);
  const results = runPolicyTests(policy);
  const failures = results.filter((result) => !result.passed);
  // A failure says what the test expected and what the policy decides instead.
  const outcome = (result: TestResult): string => (result.passed ? '' : ` — expected ${result.test.expect}, got ${result.test.expect === 'allow' ? 'deny' : 'allow'}`);
  if (verbose) for (const result of results) print(`${result.passed ? 'ok  ' : 'FAIL'} ${result.test.where} ${result.test.description}${outcome(result)}`);
  if (failures.length > 0) {
    throw new Error(`${failures.length} of ${results.length} policy tests failed:\n${failures.map((failure) => `${failure.test.where}: ${failure.test.description}${outcome(failure)}`).join('\n')}`);
  }
  return policy;
}

export function summary(policy: Policy): string {
  return `${policy.files.length} files, ${policy.state.users.length} users, ${policy.state.roles.length} roles, ${policy.state.bindings.size} certificate bindings, ${policy.tests.length} tests`;
}

/** Applies a policy directory to the live cluster (or only shows what would change). */
export async function applyPolicy(directory: string, connection: ConnectionOptions, dryRun: boolean, print: (line: string) => void): Promise<void> {
  const policy = await checkedPolicy(directory, print, false);
  await PolicyConnection.using(connection, async (client) => {
    const live = await client.export();
    const changes = diffPolicy(live.state, policy.state);
    if (changes.length === 0) {
      print(`no changes (auth revision ${live.revision})`);
      return;
    }
    for (const line of changes) print(line);
    if (dryRun) {
      // The cluster's own check, run here on the live state: a dry run fails where the apply would.
      const refusal = refusalOf(live, policy.state);
      if (refusal !== undefined) throw new Error(`dry run: the cluster would refuse this policy: ${refusal}`);
      print(`dry run: ${changes.length} changes not applied`);
      return;
    }
    const result = await client.apply(policy.state, live.revision);
    print(result.changed ? `applied ${changes.length} changes as one entry; auth revision ${result.revision}` : `no changes (auth revision ${result.revision})`);
  });
}

/** Why the cluster would refuse to apply `wanted` over the live policy, or undefined when it would not. */
export function refusalOf(live: Omit<LivePolicy, 'passwordUsers'>, wanted: PolicyState): string | undefined {
  try {
    applyAuthChange(stateWithPolicy({ ...emptyAuthState, revision: live.revision }, live.state, live.enabled), { op: 'policyApply', policy: wanted, expectRevision: live.revision });
    return undefined;
  } catch (error) {
    if (!(error instanceof RampartError)) throw error;
    switch (error.code) {
      case 'InvalidAuthMgmt': return 'auth is enabled and the policy has no root user with the root role (it would lock every administrator out)';
      case 'RoleNotFound': return 'a user is granted a role the policy does not define';
      case 'UserNotFound': return 'a certificate is bound to a user the policy does not define';
      default: return error.message;
    }
  }
}

export async function diffLive(directory: string, connection: ConnectionOptions, print: (line: string) => void): Promise<number> {
  const policy = await loadPolicy(directory);
  const changes = await PolicyConnection.using(connection, async (client) => diffPolicy((await client.export()).state, policy.state));
  for (const line of changes) print(line);
  if (changes.length === 0) print('no changes');
  return changes.length;
}

export async function exportLive(connection: ConnectionOptions): Promise<string> {
  return PolicyConnection.using(connection, async (client) => exportPolicy((await client.export()).state));
}

export interface CanIOptions {
  readonly prefix: boolean;
  readonly rangeEnd?: string | undefined;
  /** Decide from policy files instead of the live cluster. */
  readonly policy?: string | undefined;
}

/** Whether USER may OP (read|write) KEY (or the prefix, or [KEY, range-end)). */
export async function canI(user: string, operation: string, key: string, options: CanIOptions, connection: ConnectionOptions): Promise<boolean> {
  if (operation !== 'read' && operation !== 'write') throw new Error(`operation must be read or write, got "${operation}"`);
  if (key === '') throw new Error('key must not be empty');
  let state;
  if (options.policy !== undefined) {
    state = stateWithPolicy(emptyAuthState, (await loadPolicy(options.policy)).state);
  } else {
    const live = await PolicyConnection.using(connection, (client) => client.export());
    state = stateWithPolicy(emptyAuthState, live.state, live.enabled);
  }
  // An unknown user is denied everything; say so rather than a bare "no" that reads like a missing
  // grant. A certificate CN bound to a user stands for that user, as on the cluster.
  const subject = state.users.has(user) ? user : state.bindings.get(user);
  if (subject === undefined) throw new Error(`user ${user} does not exist ${options.policy !== undefined ? `in ${options.policy}` : 'in the cluster'} (nor is it a certificate CN bound to a user)`);
  const keyBytes = Buffer.from(key);
  const rangeEnd = options.prefix ? prefixRangeEnd(keyBytes) : Buffer.from(options.rangeEnd ?? '');
  return new AuthDecider(state).isPermitted(subject, keyBytes, rangeEnd, operation);
}
