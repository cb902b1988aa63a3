/**
 * The `rampart` command. commander parses flags (a well-kept library beats hand-written parsing:
 * help text, validation and subcommands for free).
 */
import { Command, InvalidArgumentError, Option } from 'commander';
import * as grpc from '@grpc/grpc-js';
import { pino, type Logger } from 'pino';
import { createGrpcServer } from '../api/grpc-server.js';
import { createServices } from '../api/services.js';
import { recordRefusal, recordUnrecordedRefusals, type TransportRefusal } from '../api/refusal-audit.js';
import { RefusalLimiter } from '../api/refusal-limit.js';
import { createHttpGateway } from '../api/http-gateway.js';
import { listenClients, type ClientListener } from '../api/client-listener.js';
import { RequestBytesBudget } from '../api/request-bytes-budget.js';
import { OpenStreamBudget } from '../api/open-streams.js';
import { clusterMemberPeerUrlsMax, clusterTextBytesMax } from '../server/cluster-view.js';
import { Member, defaultEncryptionRotationIntervalMs, defaultMaxRequestBytes, defaultQuotaBackendBytes } from '../server/member.js';
import { snapshotChunkBytesDefault } from '../server/state-snapshot.js';
import { LogCorruptionError } from '../storage/log.js';
import { databaseEncrypted, databaseExists, resealRecordsPerSecondDefault } from '../storage/database.js';
import { FileKekProvider, defaultKeyFile } from '../encryption/kek-file.js';
import { KmsKekProvider } from '../encryption/kms.js';
import { rotateDevKey, serveDevPlugin } from '../encryption/kms-dev-plugin.js';
import type { KekProvider } from '../encryption/kek.js';
import { restoreSnapshot, saveSnapshot } from './snapshot.js';
import { startProgress } from './progress.js';
import { encryptionRotate, encryptionStatus, formatStatus, waitForRotation } from './encryption.js';
import { applyConfigFile } from './config-file.js';
import { ReloadingCertificateProvider } from '../pki/reloading-provider.js';
import { RevocationList, crlFileName, crlNumberFileName, revoke } from '../pki/revocation.js';
import { checkPrivate, ensurePrivateDirectory } from '../storage/private-files.js';
import type { PeerCertificate } from 'node:tls';
import { copyFile, readFile as readTextFile, rename } from 'node:fs/promises';
import type { KeyObject } from 'node:crypto';
import { recipientPrivateKey, recipientPublicKey } from '../encryption/sealed-file.js';
import { existsSync, readFileSync } from 'node:fs';
import { parseInitialCluster } from '../server/membership.js';
import { watchQueuedBytesMaxDefault } from '../server/watch-hub.js';
import path from 'node:path';
import { down, rotate, up } from './up.js';
import { cliErrorMessage } from './error-message.js';
import { durationText } from './duration-text.js';
import { initBundles } from './init.js';
import { bashCompletion } from './completion.js';
import { registerCompliance } from './compliance.js';
import { backupEvery, backupOnce, describeSummary, parseInterval, verifyBackup } from './backup.js';
import { certificateListFormats, formatCertificateList, type CertificateListFormat } from './cert-list.js';
import { certificateInventory } from '../pki/inventory.js';
import { backupOpenKey, defaultBackupKeyFile, type BackupKeyOptions } from './backup-key.js';
import { createMetrics, serveMetrics, type CertificateSource, type MetricsTls, type ServerMetrics } from '../server/metrics.js';
import { bootstrapAuth } from '../server/bootstrap-auth.js';
import { rotateSigningKeys } from '../server/signing-key-rotation.js';
import { AuditLog, auditMaxFileAgeMsDefault, auditMaxFileBytesDefault, auditRetentionMsDefault, describeAuditWriteError } from '../audit/log.js';
import { servingTrailKey, trailKeyForReading, type TrailKeyFlags } from './audit-keys.js';
import { readAudit, verifyAudit } from '../audit/verify.js';
import { CheckpointSigningKey, checkSignatures, decodeCheckpoint, decodeSigner, type CheckpointSigner, type TrailCheckpoint } from '../audit/checkpoint.js';
import { csvCell } from '../audit/csv.js';
import { retentionShortfall } from '../audit/retention-minimum.js';
import { PeerRefusalAudit } from '../audit/peer-refusals.js';
import { checkLimitFlags, maxConcurrentStreamsDefault } from './limit-flags.js';
import { collectSinks, startAuditSinks, type AuditSinkFlags } from './audit-sinks.js';
import { registerAuditPolicyCommands } from './audit-policy.js';
import { registerAuditTail } from './audit-tail.js';
import { stopOnUnhandledRejection } from './unhandled-rejection.js';
import { auditPolicyOfDirectory } from '../audit/policy.js';
import { PolicyConnection, applyPolicy, canI, checkedPolicy, diffLive, exportLive, summary as policySummary, type CanIOptions, type ConnectionOptions } from './policy.js';
import { PolicyError, loadPolicy, shippedPolicies } from '../auth/policy.js';
import { initAuthority, issueCertificate, leafValidityDaysDefault, readKeyPair, renewCertificate, writeKeyPair } from '../pki/authority.js';

// grpc-js sets the TLS server name to the peer's address even when it is an IP (the certificate is
// still checked against the IP SAN); Node warns about that on every connection.
process.removeAllListeners('warning');
process.on('warning', (warning: Error & { code?: string }) => {
  if (warning.code !== 'DEP0123') process.stderr.write(`${warning.name}: ${warning.message}\n`);
});

// `rampart … | head` closes the pipe early: that ends the command quietly (status 0), as for any
// Unix tool, instead of an EPIPE stack trace.
for (const stream of [process.stdout, process.stderr]) {
  stream.on('error', (error: NodeJS.ErrnoException) => {
    if (error.code === 'EPIPE') process.exit(0);
    throw error;
  });
}

const packageJson = JSON.parse(readFileSync(new URL('../../../package.json', import.meta.url), 'utf8')) as { version: string };

const program = new Command();
program.name('rampart').description('An etcd-compatible key-value store, secure by default').version(packageJson.version, '-V, --version', 'the Rampart version').showHelpAfterError();

function fail(error: unknown): never {
  process.stderr.write(`rampart: ${cliErrorMessage(error)}\n`);
  process.exit(1);
}

function integer(value: string): number {
  const parsed = Number(value);
  if (!Number.isSafeInteger(parsed) || parsed < 0) {
    throw new InvalidArgumentError(`not a non-negative integer: ${value}`);
  }
  return parsed;
}

/** A duration such as 7d, 12h, 30m or 45s, in milliseconds. */
function duration(value: string): number {
  const match = /^(\d+)(s|m|h|d)$/.exec(value.trim());
  const units = { s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 } as const;
  if (match === null) throw new InvalidArgumentError(`not a duration (like 7d, 12h, 30m, 45s): ${value}`);
  const milliseconds = Number(match[1]) * units[match[2] as keyof typeof units];
  if (milliseconds < 1000) throw new InvalidArgumentError(`at least 1s: ${value}`);
  return milliseconds;
}

function booleanFlag(value: string | boolean): boolean {
  if (value === true || value === 'true') return true;
  if (value === false || value === 'false') return false;
  throw new InvalidArgumentError('must be true or false');
}

function list(value: string): string[] {
  return value.split(',').map((item) => item.trim()).filter((item) => item.length > 0);
}

interface ServeFlags {
  name: string;
  dataDir: string;
  listenClientUrls: string[];
  advertiseClientUrls?: string[];
  listenPeerUrls: string[];
  initialAdvertisePeerUrls?: string[];
  initialCluster?: string;
  initialClusterState: string;
  initialClusterToken: string;
  heartbeatInterval: number;
  electionTimeout: number;
  snapshotCount: number;
  snapshotCatchUpEntries: number;
  snapshotChunkBytes: number;
  peerCertFile?: string;
  peerKeyFile?: string;
  peerTrustedCaFile?: string;
  certificateReloadIntervalMs: number;
  crlFile?: string;
  quotaBackendBytes: number;
  maxRequestBytes: number;
  maxConcurrentStreams: number;
  watchProgressNotifyIntervalMs: number;
  watchQueuedBytesMax: number;
  requestTimeoutMs: number;
  insecure: boolean;
  clientCertAuth: boolean;
  certFile?: string;
  keyFile?: string;
  trustedCaFile?: string;
  logLevel: string;
  authTokenTtl: number;
  listenMetricsUrls?: string[];
  bootstrapAuth: boolean;
  authSigningKeyRotationInterval: number;
  bootstrapPolicies?: string;
  audit: boolean;
  auditDir?: string;
  auditAnchorIntervalMs: number;
  auditSigningCertFile?: string;
  auditSigningKeyFile?: string;
  auditSink: string[];
  auditFailClosed: boolean;
  auditMaxFileBytes: number;
  auditMaxFileAge: number;
  auditRetention: number;
  encryption: boolean;
  encryptionKeyFile?: string;
  encryptionRotationInterval: number;
  encryptionResealRate: number;
  encryptionKmsSocket?: string;
}

program
  .command('serve')
  .description('run one member')
  .option('--name <name>', 'member name', 'default')
  .option('--data-dir <dir>', 'where the member keeps its data', 'default.rampart')
  .option('--listen-client-urls <urls>', 'client URLs to listen on', list, ['https://127.0.0.1:2379'])
  .option('--advertise-client-urls <urls>', 'client URLs to advertise (default: the listen URLs)', list)
  .option('--listen-peer-urls <urls>', 'peer URLs to listen on', list, ['https://127.0.0.1:2380'])
  .option('--initial-advertise-peer-urls <urls>', 'peer URLs of this member (default: the listen peer URLs)', list)
  .option('--initial-cluster <members>', 'founding members, name=peerURL,... (default: this member alone)')
  .option('--initial-cluster-state <state>', 'new: found a cluster; existing: join one (after `etcdctl member add`)', 'new')
  .option('--initial-cluster-token <token>', 'cluster token, part of the member and cluster ids', 'rampart-cluster')
  .option('--heartbeat-interval <ms>', 'leader heartbeat interval', integer, 100)
  .option('--election-timeout <ms>', 'time without a leader before an election', integer, 1000)
  .option('--snapshot-count <entries>', 'applied entries between state snapshots (log compaction)', integer, 10_000)
  .option('--snapshot-catch-up-entries <entries>', 'entries kept after a snapshot for slightly lagging members', integer, 5_000)
  .option('--snapshot-chunk-bytes <bytes>', 'size of the chunks a snapshot is sent and staged in (memory per transfer)', integer, snapshotChunkBytesDefault)
  .option('--peer-cert-file <file>', 'peer certificate (PEM)')
  .option('--peer-key-file <file>', 'peer private key (PEM)')
  .option('--peer-trusted-ca-file <file>', 'CA bundle that peer certificates must chain to (PEM)')
  .option('--quota-backend-bytes <bytes>', 'raise the NOSPACE alarm past this database size', integer, defaultQuotaBackendBytes)
  .option('--max-request-bytes <bytes>', 'largest request accepted', integer, defaultMaxRequestBytes)
  .option('--max-concurrent-streams <streams>', 'streams (calls, watches) one client connection may have open at once (etcd\'s flag and default)', integer, maxConcurrentStreamsDefault)
  .option('--watch-progress-notify-interval-ms <ms>', 'interval of watch progress notifications', integer, 10 * 60 * 1000)
  .option('--watch-queued-bytes-max <bytes>', 'watch responses queued for all streams before watchers fall back to catching up from history', integer, watchQueuedBytesMaxDefault)
  .option('--request-timeout-ms <ms>', 'how long a write may wait to be applied', integer, 7000)
  .option('--cert-file <file>', 'server certificate (PEM)')
  .option('--key-file <file>', 'server private key (PEM)')
  .option('--trusted-ca-file <file>', 'CA bundle that client certificates must chain to (PEM)')
  .option('--insecure', 'serve plaintext without client certificates (development only)', false)
  .option('--client-cert-auth <bool>', 'require a client certificate (mutual TLS); false: TLS still, and a caller without one must log in with a password', booleanFlag, true)
  .option('--certificate-reload-interval-ms <ms>', 'how often certificate files are checked for changes', integer, 1000)
  .option('--crl-file <file>', 'certificate revocation list (PEM) from `rampart cert revoke`; reloaded when it changes')
  .option('--listen-metrics-urls <urls>', 'URLs serving /metrics (Prometheus), /health, /livez and /readyz: https:// with the client port\'s certificate, a client certificate required; http:// for plaintext', list)
  .option('--audit-dir <dir>', 'where the hash-chained audit trail of client requests is written (default: <data-dir>/audit)')
  .option('--no-audit', 'keep no audit trail (not recommended)')
  .option('--audit-signing-cert-file <file>', 'certificate (kind audit, from the cluster CA) of the key that signs this member\'s audit checkpoints')
  .option('--audit-signing-key-file <file>', 'the key that signs this member\'s audit checkpoints')
  .option('--audit-sink <sink>', 'also stream the audit trail to SINK (repeatable): stdout, syslog+tls://HOST:PORT, relp+tls://HOST:PORT or https://HOST/PATH, with ?format=rampart|ocsf&ca=FILE&cert=FILE&key=FILE&token-file=FILE&name=NAME (see README: Streaming the audit trail)', collectSinks, [] as string[])
  .option('--audit-fail-closed', 'refuse client requests while no --audit-sink takes events (after 2 s down); default: keep serving, count the events waiting and deliver them when a sink returns', false)
  .option('--audit-anchor-interval-ms <ms>', 'how often the audit chain head is written to the log and proposed as a quorum-witnessed checkpoint', integer, 5000)
  .option('--audit-max-file-bytes <bytes>', 'start a new audit file once the current one holds this much (closed files are compressed)', integer, auditMaxFileBytesDefault)
  .addOption(new Option('--audit-max-file-age <duration>', 'start a new audit file once the current one is this old (e.g. 1d, 12h)').argParser(duration).default(auditMaxFileAgeMsDefault, durationText(auditMaxFileAgeMsDefault)))
  .addOption(new Option('--audit-retention <duration>', 'delete audit files closed longer ago than this (recorded in the trail first; 400d: PCI DSS 10.5.1\'s year plus margin; below 365d the member warns and compliance check fails)').argParser(duration).default(auditRetentionMsDefault, durationText(auditRetentionMsDefault)))
  .option('--no-bootstrap-auth', 'do not enable auth on a new cluster (by default its first leader applies the default policies and enables auth; never with --insecure)')
  .option('--bootstrap-policies <dir>', 'the policies a new cluster starts with, its audit.yaml the audit policy (default: the shipped policies/)')
  .option('--auth-token-ttl <seconds>', 'lifetime of tokens from Authenticate (etcdctl --user)', integer, 300)
  .option('--auth-signing-key-rotation-interval <seconds>', 'the leader replaces the token signing key this often (also on every auth enable and disable)', integer, 86_400)
  .option('--encryption-key-file <file>', 'the 32-byte key-encryption key (mode 0600, outside the data directory) sealing the member\'s data at rest; created for a new member (default: <data-dir>.encryption-key; with --insecure: encrypt only if given or if that default file exists)')
  .option('--encryption-kms-socket <path>', 'wrap the data keys with a Kubernetes KMS v2 plugin on this unix socket instead of a key file')
  .option('--no-encryption', 'keep the member\'s data in plaintext on disk (not recommended)')
  .addOption(new Option('--encryption-rotation-interval <duration>', 'automatic data key rotation: a new key once the active one is this old (e.g. 7d, 12h, 30m)').argParser(duration).default(defaultEncryptionRotationIntervalMs, durationText(defaultEncryptionRotationIntervalMs)))
  .option('--encryption-reseal-rate <records>', 'records per second a re-seal pass rewrites after a rotation (bounds its cost to the member)', integer, resealRecordsPerSecondDefault)
  .option('--log-level <level>', 'log level', 'info')
  .option('--config-file <file>', 'YAML settings named like these flags; flags given here win')
  .action(async (_flags: ServeFlags, command: Command) => {
    const configFile = command.getOptionValue('configFile') as string | undefined;
    if (configFile !== undefined) await applyConfigFile(command, configFile).catch(fail);
    const flags = command.opts<ServeFlags>();
    const logger = pino({ level: flags.logLevel, base: { member: flags.name } }, pino.destination(2));
    try {
      await serve(flags, logger);
    } catch (error) {
      logger.fatal({ err: error instanceof Error ? error.message : String(error) }, 'cannot start');
      process.stderr.write(`rampart: ${error instanceof Error ? error.message : String(error)}\n`);
      process.exit(error instanceof LogCorruptionError ? 3 : 1);
    }
  });

interface Credentials {
  readonly client: grpc.ServerCredentials;
  readonly peerServer: grpc.ServerCredentials;
  readonly peerClient: grpc.ChannelCredentials;
  /** The certificates in use, for expiry metrics (none over plaintext). */
  readonly certificates: CertificateSource[];
  /** The client port's material, which https:// metrics URLs serve with (none over plaintext). */
  readonly clientTls?: MetricsTls;
  /** The client port's certificates (none over plaintext): its TLS is ours (gRPC and HTTP share it). */
  readonly clientProvider?: ReloadingCertificateProvider;
}

async function credentialsFor(flags: ServeFlags, logger: Logger): Promise<Credentials> {
  const clientFlags = [flags.certFile, flags.keyFile, flags.trustedCaFile];
  const peerFlags = [flags.peerCertFile, flags.peerKeyFile, flags.peerTrustedCaFile];
  if (flags.insecure) {
    if ([...clientFlags, ...peerFlags].some((flag) => flag !== undefined)) {
      throw new Error('--insecure cannot be combined with certificate flags');
    }
    logger.warn('serving PLAINTEXT without client or peer authentication (--insecure): for development only');
    return { client: grpc.ServerCredentials.createInsecure(), peerServer: grpc.ServerCredentials.createInsecure(), peerClient: grpc.credentials.createInsecure(), certificates: [] };
  }
  if (clientFlags.some((flag) => flag === undefined)) {
    throw new Error('TLS is required: pass --cert-file, --key-file and --trusted-ca-file (or run `rampart up`); --insecure serves plaintext for development');
  }
  if (peerFlags.some((flag) => flag === undefined)) {
    throw new Error('peer TLS is required: pass --peer-cert-file, --peer-key-file and --peer-trusted-ca-file; --insecure serves plaintext for development');
  }
  // Certificates, keys and CA bundles reload when their files change (renewal, CA rotation).
  const pollMs = flags.certificateReloadIntervalMs;
  const client = await ReloadingCertificateProvider.open({ certificateFile: flags.certFile as string, keyFile: flags.keyFile as string, caFile: flags.trustedCaFile as string }, logger, 'client port', pollMs);
  const peer = await ReloadingCertificateProvider.open({ certificateFile: flags.peerCertFile as string, keyFile: flags.peerKeyFile as string, caFile: flags.peerTrustedCaFile as string }, logger, 'peer port', pollMs);
  // Members bind each peer connection to the member its certificate's CN names: a certificate
  // naming another member would have every message of this one dropped, so say so now.
  const peerCommonName = /(?:^|\n)CN=([^\n]*)/.exec(peer.certificate.subject)?.[1];
  if (peerCommonName !== flags.name) {
    client.close();
    peer.close();
    throw new Error(`the peer certificate ${flags.peerCertFile as string} names ${JSON.stringify(peerCommonName ?? '')}, not this member (--name ${JSON.stringify(flags.name)}): issue it with \`rampart cert issue peer ${flags.name}\``);
  }
  return {
    client: grpc.experimental.createCertificateProviderServerCredentials(client, client, true),
    peerServer: grpc.experimental.createCertificateProviderServerCredentials(peer, peer, true),
    peerClient: grpc.experimental.createCertificateProviderChannelCredentials(peer, peer),
    certificates: [{ use: 'client', certificate: () => client.certificate }, { use: 'peer', certificate: () => peer.certificate }],
    clientTls: client,
    clientProvider: client,
  };
}

/**
 * Encryption at rest: on for every TLS member unless --no-encryption; with --insecure only when a
 * key file is named. The key file is checked (and created for a new member) before the database is
 * opened, so a missing or unreadable key stops the member having touched nothing.
 */
async function keyProviderFor(flags: ServeFlags, logger: Logger): Promise<KekProvider | undefined> {
  if (flags.encryptionKmsSocket !== undefined) {
    if (!flags.encryption || flags.encryptionKeyFile !== undefined) throw new Error('--encryption-kms-socket cannot be combined with --no-encryption or --encryption-key-file');
    const provider = await KmsKekProvider.open(flags.encryptionKmsSocket);
    logger.info({ socket: provider.source, kekId: (await provider.health()).kekId }, 'encryption at rest is on (KMS v2 plugin)');
    return provider;
  }
  if (!flags.encryption) {
    if (flags.encryptionKeyFile !== undefined) throw new Error('--no-encryption cannot be combined with --encryption-key-file');
    logger.warn('encryption at rest is OFF (--no-encryption): keys, values, users and password hashes are stored in plaintext');
    return undefined;
  }
  const keyFile = path.resolve(flags.encryptionKeyFile ?? defaultKeyFile(flags.dataDir));
  // Development members (--insecure) encrypt when asked to, or when their data already is (a restore).
  if (flags.insecure && flags.encryptionKeyFile === undefined && !existsSync(keyFile)) return undefined;
  // A new member, or one that kept plaintext until now (it is sealed online), gets a new key file;
  // an encrypted member's key file is never created anew: its absence stops the member.
  if (!(await databaseEncrypted(flags.dataDir)) && (await FileKekProvider.ensure(keyFile))) {
    logger.info({ keyFile }, databaseExists(flags.dataDir) ? 'created an encryption key file: sealing this member\'s plaintext data online' : 'created the encryption key file of a new member');
  }
  const provider = await FileKekProvider.open(keyFile);
  logger.info({ keyFile, kekId: provider.kekId }, 'encryption at rest is on');
  return provider;
}

/** Private keys, and the directories holding them, must be the member's alone (as ssh requires). */
async function checkPrivateKeys(flags: ServeFlags): Promise<void> {
  for (const keyFile of new Set([flags.keyFile, flags.peerKeyFile])) {
    if (keyFile === undefined) continue;
    await checkPrivate(path.dirname(path.resolve(keyFile)), 'key directory', 'chmod 700');
    await checkPrivate(keyFile, 'private key', 'chmod 600');
  }
}

async function serve(flags: ServeFlags, logger: Logger): Promise<void> {
  // Everything this process creates (LevelDB files, audit files) is for its owner only.
  process.umask(0o077);
  await checkPrivateKeys(flags);
  checkLimitFlags(flags);
  const credentials = await credentialsFor(flags, logger);
  const scheme = flags.insecure ? 'http:' : 'https:';
  const peerUrls = flags.initialAdvertisePeerUrls ?? flags.listenPeerUrls;
  for (const url of [...flags.listenClientUrls, ...flags.listenPeerUrls, ...peerUrls]) {
    if (new URL(url).protocol !== scheme) {
      throw new Error(`URL ${url} must use ${scheme}// ${flags.insecure ? 'with --insecure' : 'when TLS is on'}`);
    }
  }
  // A joining member reads every member's name and URLs within cluster-view.ts's bounds.
  if (Buffer.byteLength(flags.name) > clusterTextBytesMax) throw new Error(`--name must be at most ${clusterTextBytesMax} bytes`);
  if (peerUrls.length > clusterMemberPeerUrlsMax || peerUrls.some((url) => Buffer.byteLength(url) > clusterTextBytesMax)) {
    throw new Error(`a member advertises at most ${clusterMemberPeerUrlsMax} peer URLs of at most ${clusterTextBytesMax} bytes each`);
  }
  if (flags.initialClusterState !== 'new' && flags.initialClusterState !== 'existing') {
    throw new Error('--initial-cluster-state must be new or existing');
  }
  if (flags.crlFile !== undefined && flags.insecure) throw new Error('--crl-file needs TLS');
  if (!flags.clientCertAuth && flags.insecure) throw new Error('--client-cert-auth=false needs TLS: passwords never travel in plaintext');
  if (!flags.clientCertAuth) logger.warn('client certificates are optional (--client-cert-auth=false): callers without one must log in with a password');
  // Checked before anything starts: a broken bootstrap policy is a configuration error.
  const bootstrapPolicy = flags.bootstrapAuth && !flags.insecure ? (await checkedPolicy(flags.bootstrapPolicies ?? shippedPolicies, () => undefined, false)).state : undefined;
  const bootstrapAuditPolicy = bootstrapPolicy === undefined ? undefined : await auditPolicyOfDirectory(flags.bootstrapPolicies ?? shippedPolicies);
  let revocations: RevocationList | undefined;
  if (flags.crlFile !== undefined) {
    // The highest CRL number accepted lives with the member's data, so a restart keeps refusing older CRLs.
    await ensurePrivateDirectory(flags.dataDir, 'data directory');
    revocations = await RevocationList.open(flags.crlFile, [flags.trustedCaFile as string, flags.peerTrustedCaFile as string], logger, flags.certificateReloadIntervalMs, path.join(flags.dataDir, crlNumberFileName));
  }
  const initialCluster = flags.initialCluster === undefined ? [{ name: flags.name, peerUrls }] : parseInitialCluster(flags.initialCluster);
  const keyProvider = await keyProviderFor(flags, logger);
  // The peer port listens before the audit trail opens: refusals until then are logged only.
  let peerRefusals: PeerRefusalAudit | undefined;
  const member = await Member.open({
    dataDir: flags.dataDir,
    name: flags.name,
    clientUrls: flags.advertiseClientUrls ?? flags.listenClientUrls,
    peerUrls,
    listenPeerUrls: flags.listenPeerUrls,
    initialCluster,
    initialClusterState: flags.initialClusterState,
    initialClusterToken: flags.initialClusterToken,
    quotaBackendBytes: flags.quotaBackendBytes,
    maxRequestBytes: flags.maxRequestBytes,
    watchProgressNotifyIntervalMs: flags.watchProgressNotifyIntervalMs,
    watchQueuedBytesMax: flags.watchQueuedBytesMax,
    requestTimeoutMs: flags.requestTimeoutMs,
    heartbeatMs: flags.heartbeatInterval,
    electionMs: flags.electionTimeout,
    snapshotCount: flags.snapshotCount,
    snapshotCatchUpEntries: flags.snapshotCatchUpEntries,
    snapshotChunkBytes: Math.max(1, flags.snapshotChunkBytes),
    peerServerCredentials: credentials.peerServer,
    peerClientCredentials: credentials.peerClient,
    peerTls: !flags.insecure,
    ...(revocations === undefined ? {} : { isRevoked: (serial: string) => revocations.isRevoked(serial) }),
    onPeerRefused: (refusal) => peerRefusals?.offer(refusal),
    logger,
    keyProvider,
    encryptionRotationIntervalMs: flags.encryptionRotationInterval,
    encryptionResealRecordsPerSecond: Math.max(1, flags.encryptionResealRate),
    onRemoved: () => {
      process.stderr.write('rampart: this member has been permanently removed from the cluster\n');
      void member.close().finally(() => process.exit(0));
    },
  });
  // Last resort: a rejection nothing handled stops the member through its failure path.
  stopOnUnhandledRejection(member, logger);
  // The audit trail: on unless turned off, and a member that cannot write it does not serve.
  const auditDirectory = flags.auditDir ?? path.join(flags.dataDir, 'audit');
  const auditWriteFailed = (error: unknown): never => {
    const message = describeAuditWriteError(error, auditDirectory);
    logger.fatal({ err: message }, 'cannot write the audit trail; stopping');
    process.stderr.write(`rampart: ${message}\n`);
    process.exit(1);
  };
  if (flags.audit) await ensurePrivateDirectory(auditDirectory, 'audit directory');
  const shortRetention = flags.audit ? retentionShortfall(flags.auditRetention) : undefined;
  if (shortRetention !== undefined) logger.warn({ auditRetention: durationText(flags.auditRetention) }, shortRetention);
  // Sealed under a trail key wrapped by the member's KEK when it encrypts at rest (audit-keys.ts).
  const trailKey = flags.audit && keyProvider !== undefined ? await servingTrailKey(auditDirectory, keyProvider, (hook) => member.onKekRewrap(hook)) : undefined;
  const audit = flags.audit
    ? await AuditLog.open(auditDirectory, member.memberHex, auditWriteFailed, {
      ...(trailKey === undefined ? {} : { key: trailKey }),
      maxFileBytes: flags.auditMaxFileBytes, maxFileAgeMs: flags.auditMaxFileAge, retentionMs: flags.auditRetention,
      onMaintenanceError: (error) => logger.warn({ err: error instanceof Error ? error.message : String(error) }, 'audit file compression or retention failed; retried later'),
    }).catch(auditWriteFailed)
    : undefined;
  if (audit !== undefined) peerRefusals = new PeerRefusalAudit({ record: (fields) => void audit.record(fields) });
  const sinks = await startAuditSinks(flags satisfies AuditSinkFlags, audit, auditDirectory, member.memberHex, packageJson.version, logger);
  // Anchors outside the trail: every few seconds the durable chain head goes to the structured log
  // and, through Raft, into the replicated state (a checkpoint a quorum witnesses), so a trail cut
  // short, rewritten or missing a file no longer matches; and once more on shutdown.
  const signingKey = flags.auditSigningCertFile === undefined || flags.auditSigningKeyFile === undefined || audit === undefined
    ? undefined
    : new CheckpointSigningKey(await readTextFile(flags.auditSigningCertFile, 'utf8'), await readTextFile(flags.auditSigningKeyFile, 'utf8'));
  if ((flags.auditSigningCertFile === undefined) !== (flags.auditSigningKeyFile === undefined)) {
    throw new Error('--audit-signing-cert-file and --audit-signing-key-file go together');
  }
  let witnessed = '';
  let signerCommitted = false;
  const checkpointHead = async (): Promise<void> => {
    if (audit === undefined) return;
    const head = audit.head;
    if (head.seq < 0 || head.hash === witnessed) return;
    logger.info({ auditHead: head.hash, auditSeq: head.seq, auditFile: head.file }, 'audit chain head');
    const checkpoint = { member: member.memberHex, file: head.file, seq: head.seq, hash: head.hash, time: new Date().toISOString() };
    if (signingKey === undefined) {
      await member.proposeAuditCheckpoint(checkpoint);
    } else {
      // The certificate travels with the first checkpoint of this process (until one commits).
      await member.proposeAuditCheckpoint({ ...signingKey.sign(checkpoint), ...(signerCommitted ? {} : { certificate: signingKey.certificate }) });
      signerCommitted = true;
    }
    witnessed = head.hash;
  };
  if (audit !== undefined) {
    let proposing = false;
    setInterval(() => {
      if (proposing) return;
      proposing = true;
      checkpointHead()
        .catch((error: unknown) => logger.warn({ err: error instanceof Error ? error.message : String(error) }, 'audit checkpoint not committed; retrying'))
        .finally(() => (proposing = false));
    }, flags.auditAnchorIntervalMs).unref();
  }
  let stopping = false;
  // Whether /readyz may say ready: from serving clients until a stop begins.
  let serving = false;
  const listeners: ClientListener[] = [];
  const stop = (signal: string): void => {
    if (stopping) return;
    stopping = true;
    // Not ready from the first moment of a stop: a load balancer moves on while calls in flight finish.
    serving = false;
    logger.info({ signal }, 'stopping');
    // Calls in flight are answered (a short grace), then every client connection is ended: the
    // member closes after, and the last audit checkpoint covers what those calls recorded.
    const clientsClosed = Promise.all(listeners.map((listener) => listener.close()));
    setTimeout(() => {
      logger.error('shutdown took too long; exiting');
      process.exit(1);
    }, 8000).unref();
    void clientsClosed.then(() => {
      refusals?.close(); // refusals left out of the trail get their summary before it closes
      peerRefusals?.close(); // and the peer port's counted refusals
      server.forceShutdown();
      const lastCheckpoint = audit === undefined ? Promise.resolve() : audit.flush().then(checkpointHead);
      return Promise.race([lastCheckpoint.catch(() => undefined), new Promise((resolve) => setTimeout(resolve, 2000))]);
    })
      .then(() => Promise.all([member.close(), sinks?.stop(), audit?.close()])).then(
      () => process.exit(0),
      () => process.exit(1),
    );
  };
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGINT', () => stop('SIGINT'));
  rotateSigningKeys(member, Math.max(1, flags.authSigningKeyRotationInterval) * 1000, logger);
  const bootstrap = bootstrapPolicy === undefined
    ? undefined
    : bootstrapAuth(member, bootstrapPolicy, logger, (error) => {
      logger.fatal({ err: error.message }, 'cannot secure the new cluster; stopping');
      process.stderr.write(`rampart: ${error.message}\n`);
      process.exit(1);
    }, undefined, bootstrapAuditPolicy);
  // Metrics are counted always: the client port serves /metrics as etcd's does.
  const metrics: ServerMetrics = createMetrics(member, {
    certificates: credentials.certificates,
    quotaBytes: flags.quotaBackendBytes,
    ...(audit === undefined ? {} : { auditQueue: () => audit.queuedEvents, auditRetentionSeconds: flags.auditRetention / 1000 }),
    ...(sinks === undefined ? {} : { auditSinks: () => sinks.statuses() }),
  });
  if (flags.listenMetricsUrls !== undefined && flags.listenMetricsUrls.length > 0) {
    await serveMetrics({
      urls: flags.listenMetricsUrls,
      logger,
      ...(credentials.clientTls === undefined ? {} : { tls: credentials.clientTls }),
      ...(revocations === undefined ? {} : { isRevoked: (serial: string) => revocations.isRevoked(serial) }),
    }, member, metrics, () => serving);
    const plaintext = flags.listenMetricsUrls.filter((url) => url.startsWith('http://'));
    if (plaintext.length > 0 && !flags.insecure) logger.warn({ metricsUrls: plaintext }, 'metrics and health served in plaintext without client certificates (explicit http:// URL)');
    logger.info({ metricsUrls: flags.listenMetricsUrls }, 'serving metrics and health');
  }
  // A certificate revoked or expired after its connection's handshake: refused on every call, and
  // its connections (and so their streams) closed within a reload interval.
  const refuseCertificate = (certificate: PeerCertificate): 'CertificateRevoked' | 'CertificateExpired' | undefined => {
    if (revocations?.isRevoked(certificate.serialNumber) === true) return 'CertificateRevoked';
    if (Date.parse(certificate.valid_to) <= Date.now()) return 'CertificateExpired';
    return undefined;
  };
  const services = createServices({
    member,
    logger,
    metrics,
    ...(audit === undefined ? {} : { audit }),
    ...(sinks !== undefined && flags.auditFailClosed ? { auditSinksAccepting: () => sinks.accepting() } : {}),
    tokenTtlSeconds: Math.max(1, flags.authTokenTtl),
    refuseCertificate,
    anonymousAllowed: flags.insecure,
  });
  // Requests gRPC or the gateway refuse before a handler: audited, one rate for both transports.
  const refusals = audit === undefined ? undefined : new RefusalLimiter<TransportRefusal>({
    record: (refusal) => void recordRefusal(audit, member.auth, refusal),
    recordUnrecorded: (summary) => void recordUnrecordedRefusals(audit, summary),
  });
  const server = createGrpcServer({
    services,
    maxRequestBytes: member.options.maxRequestBytes,
    maxConcurrentStreams: flags.maxConcurrentStreams,
    ...(refusals === undefined ? {} : { onRefusal: refusals.offer }),
  });
  // Request bytes held before anything is authorized, bounded for both transports together.
  const requestBytes = new RequestBytesBudget();
  const openStreams = new OpenStreamBudget();
  const gateway = createHttpGateway({ services, member, logger, metrics, maxRequestBytes: member.options.maxRequestBytes, requestBytes, ...(refusals === undefined ? {} : { onRefusal: refusals.offer }) });
  logger.info({ memberId: member.memberHex, peerUrls }, 'waiting for a leader before serving clients');
  await member.whenReady();
  if (bootstrap !== undefined) {
    // No client is served before auth is enabled here (see bootstrap-auth.ts).
    const waiting = setInterval(() => logger.warn('not serving clients yet: waiting for auth to be enabled (a new cluster\'s leader does it, unless started with --no-bootstrap-auth)'), 10_000);
    await bootstrap.secured;
    clearInterval(waiting);
  }
  for (const url of flags.listenClientUrls) {
    const parsed = new URL(url);
    if (parsed.port === '') throw new Error(`listen URL needs a port: ${url}`);
    const tls = credentials.clientProvider === undefined ? undefined : { provider: credentials.clientProvider, requireClientCertificate: flags.clientCertAuth, refuseCertificate, sweepIntervalMs: flags.certificateReloadIntervalMs };
    listeners.push(await listenClients(parsed.hostname.replace(/^\[|\]$/g, ''), Number(parsed.port), { grpcServer: server, http: gateway, tls, logger, requestBytes, openStreams, ...(refusals === undefined ? {} : { onRefusal: refusals.offer }) }));
  }
  if (!stopping) serving = true;
  logger.info({ clientUrls: flags.listenClientUrls, memberId: member.memberHex, revision: member.store.currentRevision }, 'serving');
}

/** A snapshot key file: 32 bytes, mode 0600 (the checks of a KEK file). */
async function readSnapshotKey(file: string): Promise<Buffer> {
  const checked = await FileKekProvider.open(file);
  checked.close();
  const key = await readTextFile(path.resolve(file));
  return key;
}

/** A snapshot recipient: a certificate or public key (to seal to), or its private key (to open). */
const readRecipientCert = async (file: string) => recipientPublicKey(await readTextFile(file, 'utf8'), file);
const readRecipientKey = async (file: string) => recipientPrivateKey(await readTextFile(file, 'utf8'), file);

const snapshot = program.command('snapshot').description('snapshot files');
snapshot
  .command('restore <file>')
  .description('create a new data directory from a snapshot: Rampart\'s (`etcdctl snapshot save` against Rampart) or etcd\'s (against etcd 3.4)')
  .requiredOption('--data-dir <dir>', 'the data directory to create (must not exist)')
  .option('--encryption-key-file <file>', 'seal the restored data under this key file, created if missing (default: <data-dir>.encryption-key)')
  .option('--no-encryption', 'restore in plaintext (not recommended)')
  .option('--snapshot-key-file <file>', 'the key a sealed snapshot (rampart snapshot save --seal-key-file) was sealed under')
  .option('--recipient-key <file>', 'the private key (PEM) that opens a snapshot sealed to its certificate (--recipient-cert)')
  .action(async (file: string, flags: { dataDir: string; encryptionKeyFile?: string; encryption: boolean; snapshotKeyFile?: string; recipientKey?: string }) => {
    try {
      process.umask(0o077);
      if (databaseExists(flags.dataDir)) throw new Error(`data directory ${flags.dataDir} already exists; restore needs a new one`);
      if (!flags.encryption && flags.encryptionKeyFile !== undefined) throw new Error('--no-encryption cannot be combined with --encryption-key-file');
      // The key file is made only once the snapshot has been verified: a refused file leaves nothing.
      const keyProvider = async (): Promise<FileKekProvider | undefined> => {
        if (!flags.encryption) return undefined;
        const keyFile = path.resolve(flags.encryptionKeyFile ?? defaultKeyFile(flags.dataDir));
        await FileKekProvider.ensure(keyFile);
        return FileKekProvider.open(keyFile);
      };
      const snapshotKey = flags.recipientKey !== undefined ? async () => readRecipientKey(flags.recipientKey as string)
        : flags.snapshotKeyFile === undefined ? undefined : async (): Promise<Buffer> => readSnapshotKey(flags.snapshotKeyFile as string);
      const restored = await restoreSnapshot(file, flags.dataDir, keyProvider, startProgress(`reading ${file}`, 'bytes'), snapshotKey);
      process.stdout.write(`restored ${restored.records} records from ${restored.format === 'etcd' ? 'an etcd' : 'a Rampart'} snapshot into ${flags.dataDir}\n`);
    } catch (error) {
      process.stderr.write(`rampart: ${cliErrorMessage(error)}\n`);
      process.exit(1);
    }
  });
const print = (line: string): void => {
  process.stdout.write(`${line}\n`);
};

program
  .command('up')
  .description('create certificates (once) and start a secure local cluster on 127.0.0.1')
  .option('--dir <dir>', 'where the cluster keeps its CA, certificates, data and logs', '.rampart')
  .option('--size <members>', 'members in a new cluster', integer, 3)
  .option('--base-port <port>', 'client port of the first member (others: +10000 each; peer port: +1)', integer, 2379)
  .option('--timeout-ms <ms>', 'how long to wait for the cluster to become healthy', integer, 60_000)
  .option('--no-auth', 'leave a new cluster without users and with auth disabled (not recommended)')
  .option('--no-encryption', 'keep the members\' data in plaintext on disk (not recommended)')
  .option('--audit-sink <sink>', 'stream every member\'s audit trail to SINK too (repeatable; as `rampart serve --audit-sink`); applies to the members this run starts', collectSinks, [] as string[])
  .option('--audit-fail-closed', 'members refuse requests while no --audit-sink takes events (as `rampart serve --audit-fail-closed`)', false)
  .option('--audit-max-file-bytes <bytes>', 'each member starts a new audit file once the current one holds this much (serve\'s flag)', integer)
  .action(async (flags: { dir: string; size: number; basePort: number; timeoutMs: number; auth: boolean; encryption: boolean; auditSink: string[]; auditFailClosed: boolean; auditMaxFileBytes?: number }) => {
    if (flags.size < 1 || flags.size > 7) fail('--size must be between 1 and 7');
    await up({
      directory: flags.dir, size: flags.size, baseClientPort: flags.basePort, timeoutMs: flags.timeoutMs, auth: flags.auth, encryption: flags.encryption,
      auditSinks: flags.auditSink, auditFailClosed: flags.auditFailClosed,
      ...(flags.auditMaxFileBytes === undefined ? {} : { auditMaxFileBytes: flags.auditMaxFileBytes }),
    }, print).catch(fail);
  });

program
  .command('rotate')
  .description('renew every certificate of a `rampart up` cluster while it serves; --new-ca also rotates the CA')
  .option('--dir <dir>', 'the cluster directory', '.rampart')
  .option('--new-ca', 'create a new CA and move everything to it (old and new trusted during the change)', false)
  .option('--reload-wait-ms <ms>', 'time for members to pick up each change', integer, 3000)
  .action(async (flags: { dir: string; newCa: boolean; reloadWaitMs: number }) => {
    await rotate(flags.dir, flags.newCa, flags.reloadWaitMs, print).catch(fail);
  });

program
  .command('init')
  .description('per-host bundles (certificates and rampart.yaml) for a multi-host cluster')
  .requiredOption('--member <name=host...>', 'a member and the host name or IP it is reached at (repeat)')
  .option('--out <dir>', 'where to write the bundles', 'rampart-bundles')
  .option('--client-port <port>', 'client port on every host', integer, 2379)
  .option('--peer-port <port>', 'peer port on every host', integer, 2380)
  .option('--metrics-port <port>', 'metrics and health port on every host (https, client certificate required)', integer, 2381)
  .option('--data-dir <dir>', 'data directory on every host', '/var/lib/rampart')
  .action(async (flags: { member: string[]; out: string; clientPort: number; peerPort: number; metricsPort: number; dataDir: string }) => {
    await initBundles({ members: flags.member, outDirectory: flags.out, clientPort: flags.clientPort, peerPort: flags.peerPort, metricsPort: flags.metricsPort, dataDir: flags.dataDir }, print).catch(fail);
  });

program
  .command('down')
  .description('stop the local cluster started by `rampart up` (its data stays)')
  .option('--dir <dir>', 'the cluster directory', '.rampart')
  .action(async (flags: { dir: string }) => {
    await down(flags.dir, print).catch(fail);
  });

const ca = program.command('ca').description('the cluster certificate authority');
ca.command('init')
  .description('create a root CA (ECDSA P-256, 10 years) unless one exists')
  .option('--pki-dir <dir>', 'PKI directory (the CA goes in <dir>/ca)', '.rampart/pki')
  .option('--name <name>', 'cluster name for the CA subject', 'rampart')
  .action(async (flags: { pkiDir: string; name: string }) => {
    const { created } = await initAuthority(flags.pkiDir, flags.name).catch(fail);
    print(created ? `created CA in ${path.join(flags.pkiDir, 'ca')}` : `a CA already exists in ${path.join(flags.pkiDir, 'ca')}`);
  });

const cert = program.command('cert').description('certificates issued by the cluster CA');
cert
  .command('issue <kind> <name>')
  .description('issue a server, peer or client certificate (client: NAME is the identity, the CN)')
  .option('--pki-dir <dir>', 'PKI directory', '.rampart/pki')
  .option('--san <names...>', 'DNS names and IP addresses', [])
  .option('--days <days>', 'lifetime in days', integer, leafValidityDaysDefault)
  .option('--out <dir>', 'where to write NAME.crt and NAME.key (default: the PKI directory)')
  .action(async (kind: string, name: string, flags: { pkiDir: string; san: string[]; days: number; out?: string }) => {
    if (kind !== 'server' && kind !== 'peer' && kind !== 'client' && kind !== 'audit') fail(`kind must be server, peer, client or audit, not ${kind}`);
    if (flags.days < 1 || flags.days > 825) fail('--days must be between 1 and 825');
    const authority = await readKeyPair(path.join(flags.pkiDir, 'ca'), 'ca').catch(() => fail(`no CA in ${path.join(flags.pkiDir, 'ca')}; run \`rampart ca init\` first`));
    const pair = await issueCertificate(authority, { kind, commonName: name, subjectAltNames: flags.san, validityDays: flags.days });
    const files = await writeKeyPair(flags.out ?? flags.pkiDir, name, pair);
    print(`issued ${kind} certificate ${files.certificateFile} (key ${files.keyFile}, mode 0600)`);
  });
cert
  .command('renew <name>')
  .description('issue NAME again (same purpose, subject and SANs) with a fresh key; members reload it')
  .option('--pki-dir <dir>', 'PKI directory (the CA is read from <dir>/ca)', '.rampart/pki')
  .option('--dir <dir>', 'where NAME.crt and NAME.key are (default: the PKI directory)')
  .option('--days <days>', 'lifetime in days', integer, leafValidityDaysDefault)
  .action(async (name: string, flags: { pkiDir: string; dir?: string; days: number }) => {
    const authority = await readKeyPair(path.join(flags.pkiDir, 'ca'), 'ca').catch(() => fail(`no CA in ${path.join(flags.pkiDir, 'ca')}`));
    await renewCertificate(authority, flags.dir ?? flags.pkiDir, name, flags.days).catch(fail);
    print(`renewed ${path.join(flags.dir ?? flags.pkiDir, `${name}.crt`)}`);
  });
cert
  .command('revoke <certificate>')
  .description('revoke a certificate (NAME in the PKI directory, or a file); members refuse it from the next call')
  .option('--pki-dir <dir>', 'PKI directory (the CA is read from <dir>/ca)', '.rampart/pki')
  .option('--dir <dir>', 'a `rampart up` cluster directory: use its PKI and hand the CRL to its members (the default when the PKI directory is one\'s pki/)')
  .action(async (certificate: string, flags: { pkiDir: string; dir?: string }) => {
    const pkiDir = flags.dir === undefined ? flags.pkiDir : path.join(flags.dir, 'pki');
    // A PKI directory inside a `rampart up` directory: its members read <dir>/mN/crl.pem, so they get it too.
    const clusterDir = flags.dir ?? (existsSync(path.join(pkiDir, '..', 'cluster.json')) ? path.dirname(path.resolve(pkiDir)) : undefined);
    const file = certificate.endsWith('.crt') || certificate.includes('/') ? certificate : path.join(pkiDir, `${certificate}.crt`);
    const { serialNumber, crlFile } = await revoke(pkiDir, file).catch(fail);
    print(`revoked serial ${serialNumber}; CRL written to ${crlFile}`);
    if (clusterDir !== undefined) {
      const cluster = JSON.parse(await readTextFile(path.join(clusterDir, 'cluster.json'), 'utf8')) as { members: { name: string }[] };
      for (const member of cluster.members) {
        await copyFile(crlFile, path.join(clusterDir, member.name, `${crlFileName}.tmp`));
        await rename(path.join(clusterDir, member.name, `${crlFileName}.tmp`), path.join(clusterDir, member.name, crlFileName));
      }
      print(`handed the CRL to ${cluster.members.map((member) => member.name).join(', ')}`);
    } else {
      print(`copy ${crlFile} to every member's --crl-file`);
    }
  });
cert
  .command('list')
  .description('subject, SANs, expiry, serial and status (valid, EXPIRED, REVOKED and when) of every certificate in the PKI directory, and revoked serials whose file is gone')
  .option('--pki-dir <dir>', 'PKI directory', '.rampart/pki')
  .addOption(new Option('--output <format>', 'table or json').choices(certificateListFormats).default('table'))
  .action(async (flags: { pkiDir: string; output: CertificateListFormat }) => {
    const inventory = await certificateInventory(flags.pkiDir).catch(fail);
    for (const problem of inventory.problems) process.stderr.write(`rampart: warning: ${problem}\n`);
    process.stdout.write(formatCertificateList(inventory, flags.output));
  });

const connectionOptions = (command: Command): Command =>
  command
    .option('--endpoints <url>', 'a client URL of the cluster (default: from the rampart up directory)')
    .option('--cacert <file>', 'CA bundle (default: <dir>/pki/ca.crt)')
    .option('--cert <file>', 'client certificate of a root user (default: <dir>/pki/admin.crt)')
    .option('--key <file>', 'its key (default: <dir>/pki/admin.key)')
    .option('--dir <dir>', 'a rampart up directory', '.rampart');

connectionOptions(snapshot.command('save <file>').description('save a member\'s snapshot; --format etcd writes one that `etcdctl snapshot restore` accepts'))
  .option('--format <format>', 'rampart or etcd', 'rampart')
  .option('--seal-key-file <file>', 'seal the file under this 32-byte snapshot key (created, mode 0600, when missing); restore with --snapshot-key-file')
  .option('--recipient-cert <file>', 'seal the file to this certificate\'s (or PEM public key\'s) RSA, EC or X25519 key: only its private key opens it (restore with --recipient-key)')
  .action(async (file: string, flags: ConnectionOptions & { format: string; sealKeyFile?: string; recipientCert?: string }) => {
    if (flags.format !== 'rampart' && flags.format !== 'etcd') fail(`--format must be rampart or etcd, not ${flags.format}`);
    if (flags.sealKeyFile !== undefined && flags.recipientCert !== undefined) fail('--seal-key-file and --recipient-cert exclude each other');
    let sealKey: Buffer | KeyObject | undefined;
    if (flags.recipientCert !== undefined) sealKey = await readRecipientCert(flags.recipientCert).catch(fail);
    if (flags.sealKeyFile !== undefined) {
      await FileKekProvider.ensure(flags.sealKeyFile).catch(fail);
      sealKey = await readSnapshotKey(flags.sealKeyFile).catch(fail);
    }
    const saved = await saveSnapshot(flags, file, flags.format === 'etcd' ? 'etcd' : 'rampart', startProgress(`receiving the snapshot for ${file}`, 'bytes'), sealKey).catch(fail);
    print(`saved ${flags.format === 'etcd' ? 'an etcd' : 'a Rampart'} snapshot of ${saved.keys} key revisions (${saved.bytes} bytes) to ${file}`);
  });

const backup = connectionOptions(program.command('backup').description('snapshot the cluster into a backup directory, verify it, keep the newest --retention; --every repeats it'))
  .option('--out-dir <dir>', 'the backup directory (created 0700)', 'rampart-backups')
  .option('--retention <count>', 'backups kept (older ones removed once a new one is verified)', integer, 24)
  .option('--every <interval>', 'repeat every interval (90s, 30m, 1h, 1d) until stopped')
  .option('--seal-key-file <file>', 'seal backups under this 32-byte snapshot key, created (0600) when missing (default: <dir>/pki/backup.key)')
  .option('--recipient-cert <file>', 'seal backups to this certificate\'s (or PEM public key\'s) key instead: this host cannot read them (restore with --recipient-key)')
  .option('--no-seal', 'write backups in plaintext (anyone who reads them reads every key and value)')
  .action(async (flags: ConnectionOptions & { outDir: string; retention: number; every?: string; sealKeyFile?: string; recipientCert?: string; seal: boolean }) => {
    if (flags.retention < 1) fail('--retention must be at least 1');
    if (flags.recipientCert !== undefined && (flags.sealKeyFile !== undefined || !flags.seal)) fail('--recipient-cert excludes --seal-key-file and --no-seal');
    let sealKey: Buffer | KeyObject | undefined;
    if (flags.recipientCert !== undefined) {
      sealKey = await readRecipientCert(flags.recipientCert).catch(fail);
    } else if (flags.seal) {
      const keyFile = flags.sealKeyFile ?? defaultBackupKeyFile(flags.dir);
      if (await FileKekProvider.ensure(keyFile).catch(fail)) print(`created the backup key ${path.resolve(keyFile)} (keep it apart from the backups: it opens them)`);
      sealKey = await readSnapshotKey(keyFile).catch(fail);
    } else {
      process.stderr.write('rampart: warning: --no-seal: backups are written in plaintext\n');
    }
    const options = { outDirectory: flags.outDir, retention: flags.retention, connection: flags, ...(sealKey === undefined ? {} : { sealKey }) };
    if (flags.every === undefined) {
      await backupOnce(options, print).catch(fail);
      return;
    }
    let intervalMs = 0;
    try {
      intervalMs = parseInterval(flags.every);
    } catch (error) {
      fail(error);
    }
    let stopped = false;
    for (const signal of ['SIGTERM', 'SIGINT'] as const) process.on(signal, () => { stopped = true; });
    await backupEvery(options, intervalMs, print, (line) => process.stderr.write(`rampart: ${line}\n`), () => stopped);
  });
backup
  .command('verify <file>')
  .description('open a backup, check its framing and SHA-256, count its keys; exit status 1 if it is damaged')
  .option('--snapshot-key-file <file>', 'the key a sealed backup was sealed under (rampart backup --seal-key-file; default: --dir\'s pki/backup.key, where rampart backup creates it)')
  .option('--recipient-key <file>', 'the private key (PEM) that opens a backup sealed to its certificate (rampart backup --recipient-cert)')
  .action(async (file: string, flags: Omit<BackupKeyOptions, 'dir'>, command: Command) => {
    // `--dir` is backup's own option (commander hands it to the parent wherever it is written).
    const opener = await backupOpenKey(file, { ...flags, dir: (command.optsWithGlobals() as { dir: string }).dir }, { snapshotKey: readSnapshotKey, recipientKey: readRecipientKey }).catch(fail);
    const summary = await verifyBackup(file, opener.key).catch((error: unknown) => fail(opener.defaultFile === undefined ? error : `${cliErrorMessage(error)} (the key tried: ${opener.defaultFile}, the default; give --snapshot-key-file)`));
    print(`backup ${file} is intact: ${describeSummary(summary)}`);
  });

const kms = program.command('kms').description('Kubernetes KMS v2 plugins');
kms
  .command('dev-plugin')
  .description('serve a development KMS v2 plugin on a unix socket (keys in a plain file: not for production)')
  .requiredOption('--socket <path>', 'the unix socket to serve on')
  .option('--key-file <file>', 'its keys (created when missing; default: <socket>.keys.json)')
  .action(async (flags: { socket: string; keyFile?: string }) => {
    const keyFile = flags.keyFile ?? `${flags.socket}.keys.json`;
    process.umask(0o077);
    const stop = await serveDevPlugin(path.resolve(flags.socket), path.resolve(keyFile)).catch(fail);
    print(`KMS v2 dev plugin serving on ${path.resolve(flags.socket)} (keys in ${path.resolve(keyFile)})`);
    const shutdown = (): void => void stop().finally(() => process.exit(0));
    process.on('SIGTERM', shutdown);
    process.on('SIGINT', shutdown);
  });
kms
  .command('dev-rotate')
  .description('give the development plugin a new current key (members re-wrap their data keys under it by themselves)')
  .requiredOption('--key-file <file>', 'the dev plugin\'s key file')
  .action(async (flags: { keyFile: string }) => {
    print(`current key_id: ${await rotateDevKey(path.resolve(flags.keyFile)).catch(fail)}`);
  });

const encryptionCommand = program.command('encryption').description('encryption at rest: status and key rotation across the cluster (root only)');
connectionOptions(encryptionCommand.command('status').description('per member: provider, KEK, active DEK, records per DEK, percent re-sealed, last rotation'))
  .option('--json', 'one JSON object per member', false)
  .action(async (flags: ConnectionOptions & { json: boolean }) => {
    const statuses = await encryptionStatus(flags).catch(fail);
    for (const status of statuses) print(flags.json ? JSON.stringify(status) : formatStatus(status));
  });
connectionOptions(encryptionCommand.command('rotate').description('a new data key on every member (older records are re-sealed in the background); --kek: re-wrap the data keys under a new key-encryption key'))
  .option('--kek', 'rotate the key-encryption key instead', false)
  .option('--wait', 'wait until every member has finished (re-sealed everything, deleted the old data key), with progress lines', false)
  .option('--wait-timeout <seconds>', 'give up waiting after this long', integer, 3600)
  .action(async (flags: ConnectionOptions & { kek: boolean; wait: boolean; waitTimeout: number }) => {
    const before = flags.wait ? await encryptionStatus(flags).catch(fail) : [];
    await encryptionRotate(flags, flags.kek).catch(fail);
    if (!flags.wait) {
      print(flags.kek ? 'every member re-wraps its data keys under a new key-encryption key' : 'every member rotated its data key; `rampart encryption status` shows the re-seal progress (or rotate --wait)');
      return;
    }
    const after = await waitForRotation(flags, before, flags.kek, flags.waitTimeout * 1000, (line) => process.stderr.write(`${line}\n`)).catch(fail);
    for (const status of after) print(formatStatus(status));
  });

const policy = program.command('policy').description('RBAC policy files (policies/*.yaml): validate, test, diff, apply, export');
policy
  .command('validate [dir]')
  .description('check the policy files; problems are reported as file:line')
  .action(async (directory: string | undefined) => {
    const loaded = await loadPolicy(directory ?? 'policies').catch((error: unknown) => {
      // Every problem at once, one per line, so a review fixes them in one pass.
      if (error instanceof PolicyError) fail(`${error.problems.length} problem${error.problems.length === 1 ? '' : 's'} in the policy:\n${error.problems.join('\n')}`);
      return fail(error);
    });
    print(`policy is valid: ${policySummary(loaded)}`);
  });
policy
  .command('test [dir]')
  .description('run the tests embedded in the policy files')
  .action(async (directory: string | undefined) => {
    const loaded = await checkedPolicy(directory ?? 'policies', print, true).catch(fail);
    print(`all ${loaded.tests.length} policy tests passed`);
  });
connectionOptions(policy.command('diff [dir]').description('what applying the policy files would change in the live cluster'))
  .action(async (directory: string | undefined, flags: ConnectionOptions) => {
    await diffLive(directory ?? 'policies', flags, print).catch(fail);
  });
connectionOptions(policy.command('apply [dir]').description('make the live users, roles and bindings those of the policy files, as one atomic change'))
  .option('--dry-run', 'show the changes without applying them', false)
  .action(async (directory: string | undefined, flags: ConnectionOptions & { dryRun: boolean }) => {
    await applyPolicy(directory ?? 'policies', flags, flags.dryRun, print).catch(fail);
  });
connectionOptions(policy.command('export').description('the live policy as a policy file'))
  .action(async (flags: ConnectionOptions) => {
    process.stdout.write(await exportLive(flags).catch(fail));
  });

const auditCommand = program.command('audit').description('the hash-chained audit trail of client requests');
connectionOptions(auditCommand.command('verify <path>'))
  .description('check a member\'s audit directory (or one file): every hash, link and sequence number, from the genesis; with --dir/--endpoints or --checkpoints, also against the checkpoints the cluster witnessed')
  .option('--anchor <hash>', 'an "audit chain head" hash from the member\'s log: it must be in the trail (detects removed trailing lines)')
  .option('--checkpoints <file>', 'checkpoints saved with `rampart audit checkpoints` (offline)')
  .option('--encryption-key-file <file>', 'the member\'s key-encryption key, to open a sealed trail (default: beside its data directory, where serve or rampart up keep it)')
  .option('--encryption-kms-socket <path>', 'the member\'s KMS v2 plugin, to open a sealed trail')
  .action(async (target: string, flags: ConnectionOptions & TrailKeyFlags & { anchor?: string; checkpoints?: string }, command: Command) => {
    if (flags.anchor !== undefined && !/^[0-9a-f]{64}$/.test(flags.anchor)) fail('--anchor must be a 64-digit hex hash');
    const fromCluster = flags.endpoints !== undefined || command.getOptionValueSource('dir') === 'cli';
    const encoded = flags.checkpoints !== undefined
      ? (await readTextFile(flags.checkpoints, 'utf8').catch(fail)).split('\n').filter((line) => line.trim() !== '')
      : fromCluster ? await PolicyConnection.using(flags, (connection) => connection.auditCheckpoints()).catch(fail) : undefined;
    const checkpoints: TrailCheckpoint[] = [];
    const signers: CheckpointSigner[] = [];
    for (const [index, line] of (encoded ?? []).entries()) {
      const checkpoint = decodeCheckpoint(line);
      const signer = typeof checkpoint === 'string' ? decodeSigner(line) : undefined;
      if (typeof checkpoint !== 'string') checkpoints.push(checkpoint);
      else if (signer !== undefined && typeof signer !== 'string') signers.push(signer);
      else fail(`checkpoint ${index + 1}: ${checkpoint}`);
    }
    const key = await trailKeyForReading(target, flags).catch(fail);
    const result = await verifyAudit(target, { ...(flags.anchor === undefined ? {} : { anchor: flags.anchor }), checkpoints, ...(key === undefined ? {} : { key }) }).catch(fail);
    if (!result.ok) fail(`audit trail broken: ${result.problem}`);
    if (encoded !== undefined && result.checkpointsMatched === 0) {
      fail(`audit trail not witnessed: the checkpoints hold none of member ${result.member ?? '(none)'}'s events in this trail`);
    }
    // Signatures, when a CA is at hand (--cacert, or the rampart up directory's) and the member signs.
    const caFile = flags.cacert ?? (command.getOptionValueSource('dir') === 'cli' ? path.join(flags.dir, 'pki', 'ca.crt') : undefined);
    let signed = '';
    if (encoded !== undefined && caFile !== undefined && result.member !== undefined) {
      const problem = checkSignatures(checkpoints, signers, await readTextFile(caFile, 'utf8').catch(fail), result.member);
      if (problem !== undefined) fail(`audit checkpoints not trusted: ${problem}`);
      signed = ', each signed by the member\'s audit key (CA-issued)';
    }
    const witness = encoded === undefined ? ' (no checkpoints given: a trail cut short at its end looks whole; pass --dir or --endpoints)' : `; ${result.checkpointsMatched} checkpoints matched${signed}`;
    print(`audit trail intact: ${result.events} events in ${result.files} files; head ${result.head}${witness}`);
  });
connectionOptions(auditCommand.command('checkpoints').description('the audit checkpoints the cluster witnessed, one JSON per line (for `audit verify --checkpoints`)'))
  .action(async (flags: ConnectionOptions) => {
    for (const line of await PolicyConnection.using(flags, (connection) => connection.auditCheckpoints()).catch(fail)) print(line);
  });
auditCommand
  .command('export <dir>')
  .description('events of a verified audit directory for compliance evidence, filtered')
  .option('--since <time>', 'ISO 8601 time: events at or after it')
  .option('--until <time>', 'ISO 8601 time: events before it')
  .option('--user <name>', 'only this user')
  .option('--outcome <outcome>', 'only allowed, denied or failed')
  .option('--format <format>', 'jsonl or csv', 'jsonl')
  .option('--encryption-key-file <file>', 'the member\'s key-encryption key, to open a sealed trail (default: beside its data directory)')
  .option('--encryption-kms-socket <path>', 'the member\'s KMS v2 plugin, to open a sealed trail')
  .action(async (directory: string, flags: TrailKeyFlags & { since?: string; until?: string; user?: string; outcome?: string; format: string }) => {
    const time = (value: string | undefined, name: string): number | undefined => {
      if (value === undefined) return undefined;
      const parsed = Date.parse(value);
      if (Number.isNaN(parsed)) fail(`--${name}: not an ISO 8601 time: ${value}`);
      return parsed;
    };
    const since = time(flags.since, 'since');
    const until = time(flags.until, 'until');
    if (flags.outcome !== undefined && !['allowed', 'denied', 'failed'].includes(flags.outcome)) fail('--outcome must be allowed, denied or failed');
    if (flags.format !== 'jsonl' && flags.format !== 'csv') fail('--format must be jsonl or csv');
    const columns = ['time', 'member', 'seq', 'action', 'user', 'via', 'source', 'outcome', 'code', 'detail', 'targets', 'request', 'hash'] as const;
    if (flags.format === 'csv') print(columns.join(','));
    // Streamed: the trail is verified whole first, then read again event by event.
    const key = await trailKeyForReading(directory, flags).catch(fail);
    const progress = startProgress(`exporting ${directory}`, 'records');
    let read = 0;
    await readAudit(directory, (event) => {
      progress.update(++read);
      const selected = (since === undefined || Date.parse(event.time) >= since) && (until === undefined || Date.parse(event.time) < until) &&
        (flags.user === undefined || event.user === flags.user) && (flags.outcome === undefined || event.outcome === flags.outcome);
      if (!selected) return;
      if (flags.format === 'jsonl') print(JSON.stringify(event));
      else print(columns.map((column) => csvCell((event as unknown as Record<string, unknown>)[column])).join(','));
    }, [], key).catch(fail);
    progress.finish();
  });

registerAuditPolicyCommands(auditCommand, connectionOptions, print, fail);

registerAuditTail(auditCommand, connectionOptions, print, fail);

const auth = program.command('auth').description('authorization questions');
connectionOptions(auth.command('can-i <user> <operation> <key>').description('may USER read|write KEY? prints yes or no; exit status 0 or 1'))
  .option('--prefix', 'every key with KEY as prefix', false)
  .option('--range-end <end>', 'the range [KEY, END)')
  .option('--policy <dir>', 'decide from policy files instead of the live cluster')
  .action(async (user: string, operation: string, key: string, flags: ConnectionOptions & CanIOptions) => {
    const allowed = await canI(user, operation, key, flags, flags).catch(fail);
    print(allowed ? 'yes' : 'no');
    process.exitCode = allowed ? 0 : 1;
  });

program
  .command('completion [shell]')
  .description('a shell completion script: source <(rampart completion bash)')
  .action((shell: string | undefined) => {
    if ((shell ?? 'bash') !== 'bash') fail(`only bash completion is generated (got ${shell}); zsh can load it with bashcompinit`);
    process.stdout.write(bashCompletion(program));
  });

registerCompliance(program, connectionOptions);

await program.parseAsync(process.argv);
