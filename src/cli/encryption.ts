/**
 * `rampart encryption status|rotate`: encryption at rest across a cluster, as root. Status asks
 * every member (each has its own keys): the members the cluster lists (MemberList from the first
 * endpoint that answers), so one endpoint is enough; a rotation goes through the log once and
 * every member rotates its own keys when it applies it.
 */
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { packageDefinition } from '../api/proto.js';
import type { ConnectionOptions } from './policy.js';

export interface MemberEncryptionStatus {
  readonly member: string;
  readonly encrypted: boolean;
  readonly provider: string;
  readonly provider_source: string;
  readonly provider_reachable: boolean;
  readonly kek_id: string;
  readonly active_dek: number;
  readonly deks: { id: number; records: string; kek_id: string; created_unix_ms: string }[];
  readonly percent_resealed: number;
  readonly reseal_running: boolean;
  readonly last_rotation_unix_ms: string;
  readonly records_other: string;
  readonly plaintext_on_disk: boolean;
}

interface ClusterClient extends grpc.Client {
  MemberList(request: object, options: grpc.CallOptions, callback: (error: grpc.ServiceError | null, response: { members?: { clientURLs?: string[] }[] }) => void): void;
}

/** Every member's first client URL as the cluster lists them; the endpoints as given when none answers. */
async function memberEndpoints(endpoints: readonly string[], credentials: grpc.ChannelCredentials): Promise<string[]> {
  const loaded = grpc.loadPackageDefinition(packageDefinition) as unknown as { etcdserverpb: { Cluster: grpc.ServiceClientConstructor } };
  for (const endpoint of endpoints) {
    const client = new loaded.etcdserverpb.Cluster(hostOf(endpoint), credentials) as unknown as ClusterClient;
    try {
      const members = await new Promise<{ clientURLs?: string[] }[]>((resolve, reject) => {
        client.MemberList({}, { deadline: Date.now() + 10_000 }, (error, response) => (error === null ? resolve(response.members ?? []) : reject(error)));
      });
      const listed = members.flatMap((member) => member.clientURLs?.slice(0, 1) ?? []).map(hostOf);
      const given = endpoints.map(hostOf);
      // The endpoints given come first, in their order; a member not yet publishing its URLs is
      // reached only if given (it is listed without them).
      const ordered = [...given.filter((endpoint) => listed.includes(endpoint) || listed.length < members.length), ...listed.filter((endpoint) => !given.includes(endpoint))];
      if (ordered.length > 0) return [...new Set(ordered)];
    } catch {
      // Down or unreachable: try the next endpoint.
    } finally {
      client.close();
    }
  }
  return [...endpoints];
}

function hostOf(endpoint: string): string {
  return endpoint.includes('://') ? new URL(endpoint).host : endpoint;
}

interface EncryptionClient extends grpc.Client {
  Status(request: object, options: grpc.CallOptions, callback: (error: grpc.ServiceError | null, response: MemberEncryptionStatus) => void): void;
  Rotate(request: object, options: grpc.CallOptions, callback: (error: grpc.ServiceError | null) => void): void;
}

async function clients(options: ConnectionOptions): Promise<EncryptionClient[]> {
  const pki = path.join(options.dir, 'pki');
  let endpoints = options.endpoints?.split(',').map((endpoint) => endpoint.trim()).filter((endpoint) => endpoint !== '');
  if (endpoints === undefined || endpoints.length === 0) {
    const cluster = JSON.parse(await readFile(path.join(options.dir, 'cluster.json'), 'utf8').catch(() => {
      throw new Error(`no --endpoints given and no rampart up cluster in ${options.dir}`);
    })) as { members: { clientPort: number }[] };
    endpoints = cluster.members.map((member) => `https://127.0.0.1:${member.clientPort}`);
  }
  const loaded = grpc.loadPackageDefinition(packageDefinition) as unknown as { rampart: { Encryption: grpc.ServiceClientConstructor } };
  // http:// endpoints are development members (--insecure); everything else is mutual TLS.
  const plaintext = endpoints.every((endpoint) => endpoint.startsWith('http://'));
  const credentials = plaintext ? grpc.credentials.createInsecure() : await tlsCredentials(options, pki);
  const members = await memberEndpoints(endpoints, credentials);
  return members.map((endpoint) => new loaded.rampart.Encryption(hostOf(endpoint), credentials) as unknown as EncryptionClient);
}

async function tlsCredentials(options: ConnectionOptions, pki: string): Promise<grpc.ChannelCredentials> {
  const [ca, cert, key] = await Promise.all([
    readFile(options.cacert ?? path.join(pki, 'ca.crt')),
    readFile(options.cert ?? path.join(pki, 'admin.crt')),
    readFile(options.key ?? path.join(pki, 'admin.key')),
  ]);
  return grpc.credentials.createSsl(ca, key, cert);
}

export async function encryptionStatus(options: ConnectionOptions): Promise<MemberEncryptionStatus[]> {
  const connected = await clients(options);
  try {
    return await Promise.all(connected.map((client) => new Promise<MemberEncryptionStatus>((resolve, reject) => {
      client.Status({}, { deadline: Date.now() + 30_000 }, (error, response) => (error === null ? resolve(response) : reject(new Error(error.details))));
    })));
  } finally {
    for (const client of connected) client.close();
  }
}

export async function encryptionRotate(options: ConnectionOptions, kek: boolean): Promise<void> {
  const connected = await clients(options);
  try {
    const first = connected[0];
    if (first === undefined) throw new Error('no endpoint');
    await new Promise<void>((resolve, reject) => {
      first.Rotate({ kek }, { deadline: Date.now() + 30_000 }, (error) => (error === null ? resolve() : reject(new Error(error.details))));
    });
  } finally {
    for (const client of connected) client.close();
  }
}

/**
 * After a rotation: polls every member until each has finished it — a DEK rotation when every member
 * has a new active DEK, everything re-sealed under it and the old DEKs deleted; a KEK rotation when
 * every member's DEKs are wrapped under a new KEK — printing a progress line every interval.
 */
export async function waitForRotation(options: ConnectionOptions, before: readonly MemberEncryptionStatus[], kek: boolean, timeoutMs: number, progress: (line: string) => void, intervalMs = 2000): Promise<MemberEncryptionStatus[]> {
  const started = Date.now();
  const previous = new Map(before.map((status) => [status.member, status]));
  const finished = (status: MemberEncryptionStatus): boolean => {
    const was = previous.get(status.member);
    if (was === undefined) return false;
    return kek
      ? status.kek_id !== was.kek_id && status.deks.every((dek) => dek.kek_id === status.kek_id)
      : status.active_dek !== was.active_dek && status.percent_resealed >= 100 && !status.reseal_running && status.deks.length === 1;
  };
  let lastLine = started;
  for (;;) {
    // A member that restarts during the pass answers again later: keep asking until the deadline.
    const statuses = await encryptionStatus(options).catch(() => [] as MemberEncryptionStatus[]);
    if (statuses.length === before.length && statuses.every(finished)) return statuses;
    if (Date.now() - started > timeoutMs) throw new Error(`the rotation did not finish on every member within ${Math.round(timeoutMs / 1000)} s; \`rampart encryption status\` shows where it stands`);
    if (Date.now() - lastLine >= intervalMs) {
      lastLine = Date.now();
      const members = statuses.length === 0 ? 'no member answered' : statuses.map((status) => `${status.member} ${kek ? (finished(status) ? 're-wrapped' : 'pending') : `${status.percent_resealed.toFixed(1)}%`}`).join(', ');
      progress(`${kek ? 're-wrapping' : 're-sealing'}: ${members}, ${((Date.now() - started) / 1000).toFixed(0)} s`);
    }
    await new Promise((resolve) => setTimeout(resolve, 500));
  }
}

export function formatStatus(status: MemberEncryptionStatus): string {
  if (!status.encrypted) return `${status.member}: NOT encrypted at rest`;
  const deks = status.deks.map((dek) => `dek ${dek.id}: ${dek.records} records`).join(', ');
  return `${status.member}: provider ${status.provider} (${status.provider_source}, ${status.provider_reachable ? 'reachable' : 'UNREACHABLE'}), kek ${status.kek_id}, active dek ${status.active_dek}; ${deks}; ` +
    `${status.percent_resealed.toFixed(1)}% under the active dek${status.reseal_running ? ' (re-sealing)' : ''}; last rotation ${new Date(Number(status.last_rotation_unix_ms)).toISOString()}` +
    (status.records_other !== '0' ? `; ${status.records_other} records under no known dek` : '') +
    (status.plaintext_on_disk ? '; migrating from plaintext: plaintext may still be on disk' : '');
}
