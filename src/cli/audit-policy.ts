/**
 * `rampart audit policy validate|apply|show` and `rampart audit hmac`: the audit policy file
 * checked offline (every problem as file:line, nothing sent), put in force on the live cluster as
 * one log entry, shown as a policy file; and the HMAC a trail records for a known value.
 */
import * as grpc from '@grpc/grpc-js';
import type { Command } from 'commander';
import { packageDefinition } from '../api/proto.js';
import { AuditPolicyError, auditPolicyDigest, auditPolicyFile, encodeAuditPolicy, loadAuditPolicy, parseAuditPolicy, type AuditPolicy } from '../audit/policy.js';
import { connectionTarget, type ConnectionOptions } from './policy.js';

type Callback<T> = (error: grpc.ServiceError | null, response: T) => void;
interface AuditPolicyClient extends grpc.Client {
  Show(request: object, options: grpc.CallOptions, callback: Callback<{ policy_json: string; digest: string; shipped_default: boolean; hmac_key: boolean }>): void;
  Apply(request: object, options: grpc.CallOptions, callback: Callback<{ changed: boolean; digest: string }>): void;
  Hmac(request: object, options: grpc.CallOptions, callback: Callback<{ hmac: string }>): void;
}

/** Largest value `rampart audit hmac -` reads from stdin. */
const hmacValueBytesMax = 1.5 * 1024 * 1024;

async function withClient<T>(options: ConnectionOptions, work: (client: AuditPolicyClient) => Promise<T>): Promise<T> {
  const { target, credentials } = await connectionTarget(options);
  const loaded = grpc.loadPackageDefinition(packageDefinition) as unknown as { rampart: { AuditPolicy: grpc.ServiceClientConstructor } };
  const client = new loaded.rampart.AuditPolicy(target, credentials) as unknown as AuditPolicyClient;
  try {
    return await work(client);
  } finally {
    client.close();
  }
}

function ask<T>(method: (request: object, options: grpc.CallOptions, callback: Callback<T>) => void, request: object): Promise<T> {
  return new Promise((resolve, reject) => {
    method(request, { deadline: Date.now() + 15_000 }, (error, response) => (error === null ? resolve(response) : reject(new Error(error.details))));
  });
}

/** A file's policy, or an error listing every problem as file:line. */
async function checkedFile(file: string): Promise<AuditPolicy> {
  return loadAuditPolicy(file).catch((error: unknown) => {
    if (error instanceof AuditPolicyError) {
      throw new Error(`${error.problems.length} problem${error.problems.length === 1 ? '' : 's'} in the audit policy (nothing was changed):\n${error.problems.join('\n')}`);
    }
    throw error;
  });
}

/** The audit policy in force on a cluster, as a policy file with a header naming its digest (what `show` prints; for evidence bundles too). */
export async function liveAuditPolicy(options: ConnectionOptions): Promise<{ file: string; digest: string; shippedDefault: boolean; hmacKey: boolean }> {
  const answer = await withClient(options, (client) => ask(client.Show.bind(client), {}));
  const live = parseAuditPolicy('(live audit policy)', answer.policy_json);
  const header = [
    `# The audit policy in force${answer.shipped_default ? ' (the shipped default: none applied)' : ''}: sha256:${answer.digest}`,
    ...(answer.hmac_key ? [] : ['# The cluster has no audit HMAC key yet: applying a policy makes one.']),
  ];
  return { file: `${header.join('\n')}\n${auditPolicyFile(live)}`, digest: answer.digest, shippedDefault: answer.shipped_default, hmacKey: answer.hmac_key };
}

const describe = (policy: AuditPolicy): string => `${policy.rules.length} rule${policy.rules.length === 1 ? '' : 's'}, sha256:${auditPolicyDigest(encodeAuditPolicy(policy))}`;

export function registerAuditPolicyCommands(audit: Command, connectionOptions: (command: Command) => Command, print: (line: string) => void, fail: (error: unknown) => never): void {
  const policy = audit.command('policy').description('the audit policy (policies/audit.yaml): which requests the trail records, and how much');
  policy.command('validate [file]')
    .description('check an audit policy file; problems are reported as file:line')
    .action(async (file: string | undefined) => {
      const checked = await checkedFile(file ?? 'policies/audit.yaml').catch(fail);
      print(`audit policy is valid: ${describe(checked)}`);
    });
  connectionOptions(policy.command('apply [file]').description('put an audit policy file in force on every member (one log entry, recorded in the trail)'))
    .action(async (file: string | undefined, flags: ConnectionOptions) => {
      const checked = await checkedFile(file ?? 'policies/audit.yaml').catch(fail);
      const answer = await withClient(flags, (client) => ask(client.Apply.bind(client), { policy_json: encodeAuditPolicy(checked) })).catch(fail);
      print(`audit policy ${answer.changed ? 'applied' : 'unchanged (already in force)'}: ${checked.rules.length} rules, sha256:${answer.digest}`);
    });
  connectionOptions(policy.command('show').description('the audit policy in force, as a policy file'))
    .action(async (flags: ConnectionOptions) => {
      process.stdout.write((await liveAuditPolicy(flags).catch(fail)).file);
    });
  connectionOptions(audit.command('hmac <value>').description('the HMAC the trail records for VALUE under `values: hmac` rules (`-`: read the value from stdin), to grep for it'))
    .action(async (value: string, flags: ConnectionOptions) => {
      const bytes = value === '-' ? await readStdin().catch(fail) : Buffer.from(value);
      const answer = await withClient(flags, (client) => ask(client.Hmac.bind(client), { value: bytes })).catch((error: unknown) => {
        fail(error instanceof Error && error.message === 'etcdserver: not implemented'
          ? 'the cluster has no audit HMAC key yet (a cluster made without bootstrap auth gets one with its first `rampart audit policy apply`)'
          : error);
      });
      print(answer.hmac);
    });
}

async function readStdin(): Promise<Buffer> {
  const chunks: Buffer[] = [];
  let bytes = 0;
  for await (const chunk of process.stdin as AsyncIterable<Buffer>) {
    bytes += chunk.length;
    if (bytes > hmacValueBytesMax) throw new Error(`the value on stdin is larger than ${hmacValueBytesMax} bytes`);
    chunks.push(chunk);
  }
  return Buffer.concat(chunks);
}

