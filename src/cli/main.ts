/**
 * The `rampart` command. commander parses flags (a well-kept library beats hand-written parsing:
 * help text, validation and subcommands for free).
 */
import { Command, InvalidArgumentError } from 'commander';
import { readFile } from 'node:fs/promises';
import * as grpc from '@grpc/grpc-js';
import { pino, type Logger } from 'pino';
import { createGrpcServer } from '../api/server.js';
import { Member, defaultMaxRequestBytes, defaultQuotaBackendBytes } from '../server/member.js';
import { LogCorruptionError } from '../storage/log.js';
import { restoreSnapshot } from './snapshot.js';

const program = new Command();
program.name('rampart').description('An etcd-compatible key-value store, secure by default').showHelpAfterError();

function integer(value: string): number {
  const parsed = Number(value);
  if (!Number.isSafeInteger(parsed) || parsed < 0) {
    throw new InvalidArgumentError(`not a non-negative integer: ${value}`);
  }
  return parsed;
}

function list(value: string): string[] {
  return value.split(',').map((item) => item.trim()).filter((item) => item.length > 0);
}

interface ServeFlags {
  name: string;
  dataDir: string;
  listenClientUrls: string[];
  advertiseClientUrls?: string[];
  initialAdvertisePeerUrls: string[];
  initialClusterToken: string;
  quotaBackendBytes: number;
  maxRequestBytes: number;
  watchProgressNotifyIntervalMs: number;
  requestTimeoutMs: number;
  insecure: boolean;
  certFile?: string;
  keyFile?: string;
  trustedCaFile?: string;
  logLevel: string;
}

program
  .command('serve')
  .description('run one member')
  .option('--name <name>', 'member name', 'default')
  .option('--data-dir <dir>', 'where the member keeps its data', 'default.rampart')
  .option('--listen-client-urls <urls>', 'client URLs to listen on', list, ['https://127.0.0.1:2379'])
  .option('--advertise-client-urls <urls>', 'client URLs to advertise (default: the listen URLs)', list)
  .option('--initial-advertise-peer-urls <urls>', 'peer URLs of this member', list, ['https://127.0.0.1:2380'])
  .option('--initial-cluster-token <token>', 'cluster token, part of the member and cluster ids', 'rampart-cluster')
  .option('--quota-backend-bytes <bytes>', 'raise the NOSPACE alarm past this database size', integer, defaultQuotaBackendBytes)
  .option('--max-request-bytes <bytes>', 'largest request accepted', integer, defaultMaxRequestBytes)
  .option('--watch-progress-notify-interval-ms <ms>', 'interval of watch progress notifications', integer, 10 * 60 * 1000)
  .option('--request-timeout-ms <ms>', 'how long a write may wait to be applied', integer, 7000)
  .option('--cert-file <file>', 'server certificate (PEM)')
  .option('--key-file <file>', 'server private key (PEM)')
  .option('--trusted-ca-file <file>', 'CA bundle that client certificates must chain to (PEM)')
  .option('--insecure', 'serve plaintext without client certificates (development only)', false)
  .option('--log-level <level>', 'log level', 'info')
  .action(async (flags: ServeFlags) => {
    const logger = pino({ level: flags.logLevel, base: { member: flags.name } }, pino.destination(2));
    try {
      await serve(flags, logger);
    } catch (error) {
      logger.fatal({ err: error instanceof Error ? error.message : String(error) }, 'cannot start');
      process.stderr.write(`rampart: ${error instanceof Error ? error.message : String(error)}\n`);
      process.exit(error instanceof LogCorruptionError ? 3 : 1);
    }
  });

async function credentialsFor(flags: ServeFlags, logger: Logger): Promise<grpc.ServerCredentials> {
  const tlsFlags = [flags.certFile, flags.keyFile, flags.trustedCaFile];
  if (flags.insecure) {
    if (tlsFlags.some((flag) => flag !== undefined)) {
      throw new Error('--insecure cannot be combined with --cert-file, --key-file or --trusted-ca-file');
    }
    logger.warn('serving PLAINTEXT without client authentication (--insecure): for development only');
    return grpc.ServerCredentials.createInsecure();
  }
  if (flags.certFile === undefined || flags.keyFile === undefined || flags.trustedCaFile === undefined) {
    throw new Error('TLS is required: pass --cert-file, --key-file and --trusted-ca-file (or run `rampart up`); --insecure serves plaintext for development');
  }
  const [cert, key, ca] = await Promise.all([readFile(flags.certFile), readFile(flags.keyFile), readFile(flags.trustedCaFile)]);
  return grpc.ServerCredentials.createSsl(ca, [{ cert_chain: cert, private_key: key }], true);
}

function hostPort(url: string): string {
  const parsed = new URL(url);
  if (parsed.port === '') {
    throw new Error(`listen URL needs a port: ${url}`);
  }
  return `${parsed.hostname}:${parsed.port}`;
}

async function serve(flags: ServeFlags, logger: Logger): Promise<void> {
  const credentials = await credentialsFor(flags, logger);
  const scheme = flags.insecure ? 'http:' : 'https:';
  for (const url of flags.listenClientUrls) {
    if (new URL(url).protocol !== scheme) {
      throw new Error(`listen URL ${url} must use ${scheme}// ${flags.insecure ? 'with --insecure' : 'when TLS is on'}`);
    }
  }
  const member = await Member.open({
    dataDir: flags.dataDir,
    name: flags.name,
    clientUrls: flags.advertiseClientUrls ?? flags.listenClientUrls,
    peerUrls: flags.initialAdvertisePeerUrls,
    initialClusterToken: flags.initialClusterToken,
    quotaBackendBytes: flags.quotaBackendBytes,
    maxRequestBytes: flags.maxRequestBytes,
    watchProgressNotifyIntervalMs: flags.watchProgressNotifyIntervalMs,
    requestTimeoutMs: flags.requestTimeoutMs,
    logger,
  });
  const server = createGrpcServer({ member, logger, credentials });
  for (const url of flags.listenClientUrls) {
    await new Promise<void>((resolve, reject) =>
      server.bindAsync(hostPort(url), credentials, (error) => (error === null ? resolve() : reject(error))),
    );
  }
  logger.info({ clientUrls: flags.listenClientUrls, memberId: member.memberId.toString(16), revision: member.store.currentRevision }, 'serving');
  let stopping = false;
  const stop = (signal: string): void => {
    if (stopping) return;
    stopping = true;
    logger.info({ signal }, 'stopping');
    server.tryShutdown(() => undefined);
    setTimeout(() => server.forceShutdown(), 2000).unref();
    void member.close().then(
      () => process.exit(0),
      () => process.exit(1),
    );
  };
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGINT', () => stop('SIGINT'));
}

const snapshot = program.command('snapshot').description('snapshot files');
snapshot
  .command('restore <file>')
  .description('create a new data directory from a snapshot saved with `etcdctl snapshot save`')
  .requiredOption('--data-dir <dir>', 'the data directory to create (must not exist)')
  .action(async (file: string, flags: { dataDir: string }) => {
    try {
      const records = await restoreSnapshot(file, flags.dataDir);
      process.stdout.write(`restored ${records} records into ${flags.dataDir}\n`);
    } catch (error) {
      process.stderr.write(`rampart: ${error instanceof Error ? error.message : String(error)}\n`);
      process.exit(1);
    }
  });

await program.parseAsync(process.argv);
