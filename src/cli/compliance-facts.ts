/**
 * Gathers what `rampart compliance check` evaluates: live facts through the cluster's own RPCs
 * (member list, the policy and auth state, encryption status, audit checkpoints), TLS and
 * plaintext probes of every listener, each member's /metrics, and — on a host that has them — the
 * data directories, audit trails, CRLs and certificate files. What cannot be gathered is recorded
 * with the reason (a control then skips), never guessed.
 */
import { X509Certificate } from 'node:crypto';
import { readFile, readdir, stat } from 'node:fs/promises';
import { request as httpsRequest } from 'node:https';
import path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import * as x509 from '@peculiar/x509';
import { packageDefinition } from '../api/proto.js';
import { checkSignatures, decodeCheckpoint, decodeSigner, type CheckpointSigner, type TrailCheckpoint } from '../audit/checkpoint.js';
import { verifyAudit } from '../audit/verify.js';
import { trailKeyForReading } from './audit-keys.js';
import { crlNumberOf } from '../pki/revocation.js';
import { describeCertificate, fingerprintOf } from '../compliance/certificates.js';
import { observed, unavailable, type Observed } from '../compliance/control.js';
import type { AuditPolicyFacts, AuthFacts, CertificateFileFacts, CheckpointSummary, ComplianceFacts, CrlFacts, DataDirectoryFacts, EncryptionFacts, EndpointFacts, MemberFacts, MetricsFacts, OtherAuthority, TrailFacts } from '../compliance/facts.js';
import { accountNames, inspectDataDirectory, processUid, type ExpectedOwner } from '../compliance/host-files.js';
import { isPermissionError, unreadable } from '../compliance/read-error.js';
import { metricsBodyBytesMax, parseMetrics } from '../compliance/metrics-text.js';
import { presentedCertificate, probePlaintext, probeWithoutClientCertificate, probeTimeoutMs, type TlsMaterial } from '../compliance/probe.js';
import { encryptionStatus, type MemberEncryptionStatus } from './encryption.js';
import { PolicyConnection, connectionTarget, type ConnectionOptions, type LivePolicy } from './policy.js';
import { exportPolicy } from '../auth/policy.js';
import { metricsUrl } from './up.js';
import { callFailure, socketErrorText } from './unreachable.js';

export interface GatherOptions {
  readonly connection: ConnectionOptions;
  /** Whether --dir names a rampart up cluster on this host (its files are read too). */
  readonly localCluster: boolean;
  readonly expiryWarningDays: number;
  /** NAME=DIR or DIR. */
  readonly dataDirectories: readonly string[];
  readonly auditDirectories: readonly string[];
  readonly crlFiles: readonly string[];
  /** NAME=URL. */
  readonly metricsUrls: readonly string[];
  readonly otherAuthorities: readonly string[];
  readonly dataDirectoryOwner?: string | undefined;
}

/** What the evidence bundle keeps besides the facts: the raw answers. */
export interface Gathered {
  readonly facts: ComplianceFacts;
  readonly caPem: string;
  readonly checkpointLines: readonly string[];
  readonly checkpoints: readonly TrailCheckpoint[];
  readonly signers: readonly CheckpointSigner[];
  readonly policy: Observed<LivePolicy>;
  readonly policyYaml: string | undefined;
  readonly encryption: readonly MemberEncryptionStatus[];
  /** Trails verified, by directory, with their member id (hex). */
  readonly trailDirectories: readonly { member: string; directory: string; memberId?: string; ok: boolean }[];
}

interface ClusterFile {
  readonly members: { name: string; clientPort: number; peerPort: number }[];
}

interface MemberListResponse {
  members: { ID: string; name: string; peerURLs: string[]; clientURLs: string[] }[];
}

const errorText = (error: unknown): string => (error instanceof Error ? error.message : String(error));

async function memberList(connection: ConnectionOptions, endpoint: string): Promise<Observed<MemberListResponse['members']>> {
  try {
    const { target, credentials } = await connectionTarget(connection);
    const loaded = grpc.loadPackageDefinition(packageDefinition) as unknown as { etcdserverpb: { Cluster: grpc.ServiceClientConstructor } };
    const client = new loaded.etcdserverpb.Cluster(target, credentials) as unknown as grpc.Client & { MemberList(request: object, options: grpc.CallOptions, callback: (error: grpc.ServiceError | null, response: MemberListResponse) => void): void };
    try {
      // By name: evidence lines come out in the same order on every run (MemberList's order is the leader's map's).
      return observed(await new Promise<MemberListResponse['members']>((resolve, reject) => {
        client.MemberList({ linearizable: true }, { deadline: Date.now() + 10_000 }, (error, response) => (error === null ? resolve(response.members) : reject(new Error(error.details))));
      }).then((members) => [...members].sort((a, b) => a.name.localeCompare(b.name) || a.ID.localeCompare(b.ID))));
    } finally {
      client.close();
    }
  } catch (error) {
    return unavailable(callFailure('MemberList', error, endpoint));
  }
}

async function liveAuditPolicy(connection: ConnectionOptions, endpoint: string): Promise<Observed<AuditPolicyFacts>> {
  try {
    const { target, credentials } = await connectionTarget(connection);
    const loaded = grpc.loadPackageDefinition(packageDefinition) as unknown as { rampart: { AuditPolicy: grpc.ServiceClientConstructor } };
    type ShowResponse = { policy_json: string; digest: string; shipped_default: boolean; hmac_key: boolean };
    const client = new loaded.rampart.AuditPolicy(target, credentials) as unknown as grpc.Client & { Show(request: object, options: grpc.CallOptions, callback: (error: grpc.ServiceError | null, response: ShowResponse) => void): void };
    try {
      const answer = await new Promise<ShowResponse>((resolve, reject) => {
        client.Show({}, { deadline: Date.now() + 10_000 }, (error, response) => (error === null ? resolve(response) : reject(new Error(error.details))));
      });
      return observed({ json: answer.policy_json, digest: answer.digest, shippedDefault: answer.shipped_default, hmacKey: answer.hmac_key });
    } finally {
      client.close();
    }
  } catch (error) {
    return unavailable(callFailure('AuditPolicy.Show', error, endpoint));
  }
}

function fetchMetrics(url: string, material: TlsMaterial): Promise<Observed<MetricsFacts>> {
  return new Promise((resolve) => {
    const target = new URL('/metrics', url);
    if (target.protocol !== 'https:') {
      resolve(unavailable(`${url} is not https:// (metrics over plaintext are not read)`));
      return;
    }
    const request = httpsRequest(target, { ca: material.ca, ...(material.certificate === undefined ? {} : { cert: material.certificate, key: material.key }), timeout: probeTimeoutMs * 2 }, (response) => {
      const chunks: Buffer[] = [];
      let bytes = 0;
      response.on('data', (chunk: Buffer) => {
        bytes += chunk.length;
        if (bytes > metricsBodyBytesMax) {
          request.destroy();
          resolve(unavailable(`${target.href}: more than ${metricsBodyBytesMax} bytes`));
          return;
        }
        chunks.push(chunk);
      });
      response.on('end', () => {
        resolve(response.statusCode === 200 ? observed(parseMetrics(Buffer.concat(chunks).toString('utf8'))) : unavailable(`${target.href}: HTTP ${response.statusCode ?? '?'}`));
      });
    });
    request.on('timeout', () => request.destroy(new Error('timed out')));
    request.on('error', (error: NodeJS.ErrnoException) => resolve(unavailable(`cannot reach ${target.href}: ${socketErrorText(error)}`)));
    request.end();
  });
}

const named = (entries: readonly string[]): { name: string | undefined; value: string }[] => entries.map((entry) => {
  const match = /^([^=/]+)=(.+)$/.exec(entry);
  return match === null ? { name: undefined, value: entry } : { name: match[1], value: match[2] as string };
});

/** The `rampart up` cluster file; none there is no cluster, but one this user may not read is an error. */
async function readCluster(directory: string): Promise<ClusterFile | undefined> {
  const file = path.join(directory, 'cluster.json');
  return readFile(file, 'utf8').then((text) => JSON.parse(text) as ClusterFile, (error: unknown) => {
    if (isPermissionError(error)) throw new Error(unreadable(file, error));
    return undefined;
  });
}

async function readCrl(holder: string, file: string, ca: x509.X509Certificate, numberFile: string | undefined): Promise<CrlFacts> {
  const enforcedNumber = numberFile === undefined ? undefined : await readFile(numberFile, 'utf8').then((text) => text.trim(), () => undefined);
  const text = await readFile(file, 'utf8').catch((error: NodeJS.ErrnoException) => error);
  const withEnforced = enforcedNumber === undefined ? {} : { enforcedNumber };
  if (text instanceof Error) {
    return { holder, file, crl: unavailable(text.code === 'ENOENT' ? 'no CRL file (no certificate has been revoked with `rampart cert revoke` yet)' : `cannot read: ${text.code ?? text.message}`), ...withEnforced };
  }
  try {
    const crl = new x509.X509Crl(text);
    const verified = crl.issuer === ca.subject && (await crl.verify({ publicKey: ca.publicKey }).catch(() => false));
    const number = crlNumberOf(crl);
    return {
      holder, file, ...withEnforced,
      crl: observed({ number: number?.toString(), thisUpdate: crl.thisUpdate.toISOString(), nextUpdate: crl.nextUpdate?.toISOString(), revoked: crl.entries.length, verified }),
    };
  } catch (error) {
    return { holder, file, crl: unavailable(`not a CRL: ${errorText(error)}`), ...withEnforced };
  }
}

async function certificateFilesOf(directories: readonly string[], ca: X509Certificate): Promise<CertificateFileFacts[]> {
  const files: CertificateFileFacts[] = [];
  for (const directory of directories) {
    const names = await readdir(directory).catch(() => [] as string[]);
    for (const name of names.filter((entry) => entry.endsWith('.crt')).sort()) {
      const file = path.join(directory, name);
      try {
        files.push({ file, certificate: observed(describeCertificate(new X509Certificate(await readFile(file)), ca)) });
      } catch (error) {
        files.push({ file, certificate: unavailable(`not a certificate: ${errorText(error)}`) });
      }
    }
  }
  return files;
}

/** Reads one checkpoint export (the Checkpoints RPC's lines) into checkpoints and signers. */
export function parseCheckpointLines(lines: readonly string[]): { checkpoints: TrailCheckpoint[]; signers: CheckpointSigner[] } {
  const checkpoints: TrailCheckpoint[] = [];
  const signers: CheckpointSigner[] = [];
  for (const line of lines) {
    const checkpoint = decodeCheckpoint(line);
    if (typeof checkpoint !== 'string') {
      checkpoints.push(checkpoint);
      continue;
    }
    const signer = decodeSigner(line);
    if (typeof signer !== 'string') signers.push(signer);
  }
  return { checkpoints, signers };
}

function summarise(checkpoints: readonly TrailCheckpoint[]): CheckpointSummary[] {
  const byMember = new Map<string, { count: number; signed: number; latestTime: string }>();
  for (const checkpoint of checkpoints) {
    const summary = byMember.get(checkpoint.member) ?? { count: 0, signed: 0, latestTime: '' };
    summary.count += 1;
    if (checkpoint.signature !== undefined) summary.signed += 1;
    if (checkpoint.time > summary.latestTime) summary.latestTime = checkpoint.time;
    byMember.set(checkpoint.member, summary);
  }
  return [...byMember].map(([member, summary]) => ({ member, ...summary }));
}

export async function gatherFacts(options: GatherOptions): Promise<Gathered> {
  const connection = options.connection;
  const pki = path.join(connection.dir, 'pki');
  const caFile = connection.cacert ?? path.join(pki, 'ca.crt');
  const caPem = await readFile(caFile, 'utf8').catch((error: unknown) => {
    throw new Error(`the cluster CA certificate: ${unreadable(caFile, error)}${isPermissionError(error) ? '' : ' (give --cacert, or --dir of a rampart up cluster)'}`);
  });
  const caCertificate = new X509Certificate(caPem);
  const material: TlsMaterial = {
    ca: Buffer.from(caPem),
    ...await Promise.all([readFile(connection.cert ?? path.join(pki, 'admin.crt')), readFile(connection.key ?? path.join(pki, 'admin.key'))]).then(([certificate, key]) => ({ certificate, key }), () => ({})),
  };
  const cluster = options.localCluster ? await readCluster(connection.dir) : undefined;
  // Where the calls below go (connectionTarget takes the first --endpoints, or a rampart up cluster's first member), for their failures.
  const firstPort = connection.endpoints === undefined ? (await readCluster(connection.dir).catch(() => undefined))?.members[0]?.clientPort : undefined;
  const endpoint: string = connection.endpoints?.split(',')[0] ?? (firstPort === undefined ? `the rampart up cluster in ${connection.dir}` : `https://127.0.0.1:${firstPort}`);
  const members = await memberList(connection, endpoint);

  const metricsByName = new Map<string, string>();
  for (const entry of cluster?.members ?? []) metricsByName.set(entry.name, metricsUrl(entry.clientPort));
  for (const { name, value } of named(options.metricsUrls)) {
    if (name === undefined) throw new Error(`--metrics-url wants NAME=URL (the member's name), got ${value}`);
    metricsByName.set(name, value);
  }

  const endpointPlan: { member: string; role: EndpointFacts['role']; url: string }[] = [];
  if ('value' in members) {
    for (const member of members.value) {
      for (const url of member.clientURLs) endpointPlan.push({ member: member.name, role: 'client', url });
      for (const url of member.peerURLs) endpointPlan.push({ member: member.name, role: 'peer', url });
      const metrics = metricsByName.get(member.name);
      if (metrics !== undefined) endpointPlan.push({ member: member.name, role: 'metrics', url: metrics });
    }
  }
  const endpoints = await Promise.all(endpointPlan.map(async (plan): Promise<EndpointFacts> => {
    const tls = !plan.url.startsWith('http://');
    const [certificate, withoutClientCertificate, plaintext] = await Promise.all([
      tls ? presentedCertificate(plan.url, material) : Promise.resolve(unavailable<never>('plaintext URL')),
      tls ? probeWithoutClientCertificate(plan.url, material.ca) : Promise.resolve(observed<'accepted'>('accepted')),
      probePlaintext(plan.url),
    ]);
    return { ...plan, certificate, withoutClientCertificate, plaintext };
  }));

  const memberFacts: Observed<MemberFacts[]> = 'value' in members
    ? observed(await Promise.all(members.value.map(async (member): Promise<MemberFacts> => {
      const url = metricsByName.get(member.name);
      return {
        name: member.name,
        id: BigInt(member.ID).toString(16),
        clientUrls: member.clientURLs,
        peerUrls: member.peerURLs,
        metrics: url === undefined ? unavailable('no metrics URL known (give --metrics-url NAME=URL)') : await fetchMetrics(url, material),
      };
    })))
    : unavailable(members.unavailable);

  const policy: Observed<LivePolicy> = await PolicyConnection.using(connection, (client) => client.export()).then(observed, (error: unknown) => unavailable<LivePolicy>(callFailure('policy export', error, endpoint)));
  const auth: Observed<AuthFacts> = 'value' in policy
    ? observed({
      enabled: policy.value.enabled,
      revision: policy.value.revision,
      users: policy.value.state.users.map((user) => user.name).sort(),
      passwordUsers: policy.value.passwordUsers,
      rootBindings: [...policy.value.state.bindings].filter(([, user]) => user === 'root').map(([cn]) => cn).sort(),
    })
    : policy;

  const clientUrls = 'value' in members ? members.value.flatMap((member) => member.clientURLs.slice(0, 1)) : [];
  let encryptionRaw: MemberEncryptionStatus[] = [];
  const encryption: Observed<EncryptionFacts[]> = await encryptionStatus({ ...connection, ...(clientUrls.length > 0 ? { endpoints: clientUrls.join(',') } : {}) }).then((statuses) => {
    encryptionRaw = statuses;
    return observed(statuses.map((status) => ({
      member: status.member, encrypted: status.encrypted, provider: status.provider, providerReachable: status.provider_reachable,
      kekId: status.kek_id, activeDek: status.active_dek, percentResealed: status.percent_resealed,
    })));
  }, (error: unknown) => unavailable<EncryptionFacts[]>(callFailure('encryption status', error, clientUrls.length > 0 ? clientUrls.join(',') : endpoint)));

  const auditPolicy = await liveAuditPolicy(connection, endpoint);
  const checkpointAnswer = await PolicyConnection.using(connection, (client) => client.auditCheckpoints()).then(observed, (error: unknown) => unavailable<string[]>(callFailure('audit checkpoints', error, endpoint)));
  const checkpointLines = 'value' in checkpointAnswer ? checkpointAnswer.value : [];
  const { checkpoints, signers } = parseCheckpointLines(checkpointLines);

  // Host files: a rampart up cluster's, and those given.
  const names = await accountNames();
  const ownerFromFlag: Observed<ExpectedOwner> | undefined = options.dataDirectoryOwner === undefined ? undefined : (() => {
    const uid = names.uidOf(options.dataDirectoryOwner);
    return uid === undefined ? unavailable(`no user ${options.dataDirectoryOwner} on this host`) : observed({ user: options.dataDirectoryOwner, uid, source: '--data-dir-owner' });
  })();
  const serviceUser = names.uidOf('rampart');
  const defaultOwner: Observed<ExpectedOwner> = serviceUser !== undefined
    ? observed({ user: 'rampart', uid: serviceUser, source: 'the rampart service user' })
    : unavailable('the member\'s process is not known here and there is no rampart user: give --data-dir-owner');
  const directories: { member: string; directory: string; owner: Promise<Observed<ExpectedOwner>> }[] = [];
  const trails: { member: string; directory: string }[] = [];
  const crlPlan: { holder: string; file: string; numberFile?: string }[] = [];
  const certificateDirectories: string[] = [];
  if (cluster !== undefined) {
    crlPlan.push({ holder: 'pki', file: path.join(pki, 'crl.pem') });
    certificateDirectories.push(path.join(pki, 'ca'), pki);
    for (const member of cluster.members) {
      const home = path.join(connection.dir, member.name);
      const owner = async (): Promise<Observed<ExpectedOwner>> => {
        if (ownerFromFlag !== undefined) return ownerFromFlag;
        const pid = Number((await readFile(path.join(home, 'pid'), 'utf8').catch(() => '')).trim());
        if (!Number.isSafeInteger(pid) || pid <= 0) return defaultOwner;
        const uid = await processUid(pid);
        return 'value' in uid ? observed({ user: names.user(uid.value), uid: uid.value, source: `the user member process ${pid} runs as` }) : defaultOwner;
      };
      directories.push({ member: member.name, directory: path.join(home, 'data'), owner: owner() });
      trails.push({ member: member.name, directory: path.join(home, 'data', 'audit') });
      crlPlan.push({ holder: member.name, file: path.join(home, 'crl.pem'), numberFile: path.join(home, 'data', 'crl-number') });
      certificateDirectories.push(home);
    }
  }
  for (const { name, value } of named(options.dataDirectories)) directories.push({ member: name ?? value, directory: value, owner: Promise.resolve(ownerFromFlag ?? defaultOwner) });
  for (const { name, value } of named(options.auditDirectories)) trails.push({ member: name ?? value, directory: value });
  for (const file of options.crlFiles) crlPlan.push({ holder: 'given', file });

  const dataDirectories: DataDirectoryFacts[] = await Promise.all(directories.map(async (entry) => inspectDataDirectory(entry.member, entry.directory, await entry.owner)));
  const trailDirectories: { member: string; directory: string; memberId?: string; ok: boolean }[] = [];
  const trailFacts: TrailFacts[] = [];
  for (const trail of trails) {
    const present = await stat(trail.directory).then(() => true, (error: unknown) => (isPermissionError(error) ? error : false));
    if (present !== true) {
      trailFacts.push({ ...trail, outcome: unavailable(present === false ? 'no audit directory here' : unreadable(trail.directory, present)) });
      continue;
    }
    try {
      const key = await trailKeyForReading(trail.directory, {}); // a sealed trail: the member's KEK beside its data directory
      // Logins as root with a password, counted as the trail is verified (root should use its certificate).
      let rootPasswordLogins = 0;
      let lastRootPasswordLogin: string | undefined;
      const result = await verifyAudit(trail.directory, {
        checkpoints,
        ...(key === undefined ? {} : { key }),
        onEvent: (event) => {
          if (event.action === 'Authenticate' && event.user === 'root' && event.outcome === 'allowed') {
            rootPasswordLogins += 1;
            lastRootPasswordLogin = event.time;
          }
        },
      });
      let signatures = 'no checkpoints to check';
      if (result.member !== undefined && checkpoints.some((checkpoint) => checkpoint.member === result.member)) {
        const problem = checkSignatures(checkpoints, signers, caPem, result.member);
        signatures = problem === undefined ? 'signatures verified against the cluster CA' : `signatures NOT trusted: ${problem}`;
      }
      trailDirectories.push({ ...trail, ok: result.ok, ...(result.member === undefined ? {} : { memberId: result.member }) });
      trailFacts.push({
        ...trail,
        outcome: observed({ ok: result.ok, events: result.events, files: result.files, checkpointsMatched: result.checkpointsMatched, signatures, rootPasswordLogins, ...(lastRootPasswordLogin === undefined ? {} : { lastRootPasswordLogin }), ...(result.problem === undefined ? {} : { problem: result.problem }), ...(result.member === undefined ? {} : { memberId: result.member }) }),
      });
    } catch (error) {
      const file = (error as NodeJS.ErrnoException).path;
      trailFacts.push({ ...trail, outcome: unavailable(file === undefined ? `cannot read: ${errorText(error)}` : unreadable(file, error)) });
    }
  }
  const x509Ca = new x509.X509Certificate(caPem);
  const crls = await Promise.all(crlPlan.map((plan) => readCrl(plan.holder, plan.file, x509Ca, plan.numberFile)));
  // Copies of the CA certificate (pki/ca.crt, each member's ca.crt) are the CA, reported once.
  const caFingerprint = fingerprintOf(caCertificate.raw);
  const certificateFiles = (await certificateFilesOf(certificateDirectories, caCertificate)).filter((file) => !('value' in file.certificate) || file.certificate.value.fingerprint !== caFingerprint);
  const otherAuthorities: OtherAuthority[] = await Promise.all(options.otherAuthorities.map(async (file) => {
    const other = new X509Certificate(await readFile(file));
    return { file, fingerprint: fingerprintOf(other.raw), samePublicKey: other.publicKey.export({ type: 'spki', format: 'der' }).equals(caCertificate.publicKey.export({ type: 'spki', format: 'der' })) };
  }));

  const facts: ComplianceFacts = {
    now: Date.now(),
    expiryWarningDays: options.expiryWarningDays,
    ca: { file: caFile, description: describeCertificate(caCertificate, caCertificate) },
    otherAuthorities,
    members: memberFacts,
    endpoints,
    auth,
    encryption,
    checkpoints: 'value' in checkpointAnswer ? observed(summarise(checkpoints)) : checkpointAnswer,
    auditPolicy,
    dataDirectories,
    trails: trailFacts,
    crls,
    certificateFiles,
  };
  return {
    facts, caPem, checkpointLines, checkpoints, signers, policy,
    policyYaml: 'value' in policy ? exportPolicy(policy.value.state) : undefined,
    encryption: encryptionRaw, trailDirectories,
  };
}
