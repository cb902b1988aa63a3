/**
 * `rampart compliance check|export|verify`: CIS and Rampart controls against a live cluster and its
 * hosts' files, and the evidence bundle an auditor can check offline.
 *
 * Exit status of check: 0 when no control failed (warnings and skips do not fail a gate), 1 when
 * one did, 2 when the check could not run at all (no CA, no cluster reachable for anything).
 * Of verify: 0 intact and signed under the CA the auditor gave; 1 refused (named); 2 intact only
 * against the CA the bundle carries (not authenticated: compare its fingerprint, then pin it).
 */
import { readFile, writeFile } from 'node:fs/promises';
import type { Command } from 'commander';
import { InvalidArgumentError } from 'commander';
import { anyFailed } from '../compliance/control.js';
import { evaluateControls, expiryWarningDaysDefault } from '../compliance/check.js';
import { formatReport, reportFormats, type ReportFormat } from '../compliance/report.js';
import { gatherFacts, type GatherOptions } from './compliance-facts.js';
import { exportBundle } from './compliance-export.js';
import { verifyBundle } from '../compliance/bundle-verify.js';
import type { ConnectionOptions } from './policy.js';

const collect = (value: string, previous: string[]): string[] => [...previous, value];

function days(value: string): number {
  const parsed = Number(value);
  if (!Number.isSafeInteger(parsed) || parsed < 0 || parsed > 36_500) throw new InvalidArgumentError(`not a number of days (0–36500): ${value}`);
  return parsed;
}

function format(value: string): ReportFormat {
  if (!(reportFormats as readonly string[]).includes(value)) throw new InvalidArgumentError(`one of ${reportFormats.join(', ')}`);
  return value as ReportFormat;
}

export interface CheckFlags extends ConnectionOptions {
  readonly output: ReportFormat;
  readonly out?: string;
  readonly expiryWarningDays: number;
  readonly dataDir: string[];
  readonly auditDir: string[];
  readonly crlFile: string[];
  readonly metricsUrl: string[];
  readonly otherCa: string[];
  readonly dataDirOwner?: string;
}

/** The host-file and threshold options shared by check and export. */
function checkOptions(command: Command): Command {
  return command
    .option('--expiry-warning-days <days>', 'a certificate with fewer days left fails RAMPART-CERT-EXPIRY', days, expiryWarningDaysDefault)
    .option('--data-dir <[name=]dir>', 'a member data directory on this host (repeat; a rampart up --dir adds its members\')', collect, [])
    .option('--audit-dir <[name=]dir>', 'a member audit directory on this host, verified against the cluster\'s checkpoints (repeat)', collect, [])
    .option('--crl-file <file>', 'a member\'s CRL file (repeat)', collect, [])
    .option('--metrics-url <name=url>', 'a member\'s metrics URL (repeat; a rampart up --dir knows its members\')', collect, [])
    .option('--other-ca <file>', 'another system\'s CA (e.g. Kubernetes\') that the etcd CA must differ from (CIS 2.7; repeat)', collect, [])
    .option('--data-dir-owner <user>', 'who must own the data directories (CIS 1.1.12; default: the user the member process runs as, or `rampart`)');
}

export function gatherOptions(flags: CheckFlags, command: Command): GatherOptions {
  return {
    connection: flags,
    localCluster: flags.endpoints === undefined || command.getOptionValueSource('dir') === 'cli',
    expiryWarningDays: flags.expiryWarningDays,
    dataDirectories: flags.dataDir,
    auditDirectories: flags.auditDir,
    crlFiles: flags.crlFile,
    metricsUrls: flags.metricsUrl,
    otherAuthorities: flags.otherCa,
    dataDirectoryOwner: flags.dataDirOwner,
  };
}

function time(value: string): Date {
  const parsed = Date.parse(value);
  if (Number.isNaN(parsed) || !/^\d{4}-\d{2}-\d{2}/.test(value)) throw new InvalidArgumentError(`not an ISO 8601 time (2026-01-31 or 2026-01-31T12:00:00Z): ${value}`);
  return new Date(parsed);
}

function cannotRun(error: unknown): never {
  process.stderr.write(`rampart: compliance: ${error instanceof Error ? error.message : String(error)}\n`);
  process.exit(2);
}

export function registerCompliance(program: Command, connectionOptions: (command: Command) => Command): void {
  const compliance = program.command('compliance').description('CIS and Rampart controls against a live cluster; evidence bundles for auditors');
  checkOptions(connectionOptions(compliance.command('check')))
    .description('CIS Kubernetes etcd controls (2.1–2.7, 1.1.11, 1.1.12) and Rampart\'s own, from the live cluster and this host\'s files; exit status 1 if any fails')
    .option('--output <format>', `table, json or junit`, format, 'table')
    .option('--out <file>', 'write the report to this file instead of standard output')
    .action(async (flags: CheckFlags, command: Command) => {
      const gathered = await gatherFacts(gatherOptions(flags, command)).catch(cannotRun);
      const results = evaluateControls(gathered.facts);
      const report = formatReport(results, flags.output, new Date(gathered.facts.now).toISOString());
      if (flags.out === undefined) process.stdout.write(report);
      else await writeFile(flags.out, report).catch(cannotRun);
      // A cluster that cannot be reached leaves nearly every control skipped: never a passing gate.
      if ('unavailable' in gathered.facts.members) cannotRun(`the cluster could not be checked: ${gathered.facts.members.unavailable}`);
      process.exitCode = anyFailed(results) ? 1 : 0;
    });

  checkOptions(connectionOptions(compliance.command('export')))
    .description('an evidence bundle (ustar archive): verified audit events of the window (JSON lines and AU-3 CSV), checkpoints, policies, certificates, encryption status, check results, an HTML summary, and a manifest of SHA-256s signed with a key the cluster CA issued')
    .requiredOption('--from <time>', 'ISO 8601 time: events at or after it', time)
    .requiredOption('--to <time>', 'ISO 8601 time: events before it', time)
    .requiredOption('--out <file>', 'the bundle to write (never over an existing file)')
    .option('--signing-cert <file>', 'certificate of kind audit from the cluster CA that signs the manifest (default, with --dir: <dir>/pki/compliance-signing.crt, issued on first use)')
    .option('--signing-key <file>', 'its key')
    .action(async (flags: CheckFlags & { from: Date; to: Date; out: string; signingCert?: string; signingKey?: string }, command: Command) => {
      const result = await exportBundle({
        gather: gatherOptions(flags, command), from: flags.from, to: flags.to, out: flags.out, signingCertificate: flags.signingCert, signingKey: flags.signingKey,
      }, (line) => process.stderr.write(`rampart: ${line}\n`)).catch(cannotRun);
      process.stdout.write(`wrote ${result.file}: ${result.events} audit events of ${result.members} members, ${result.files} files; cluster CA SHA-256 ${result.caFingerprint}\n`);
    });

  compliance.command('verify <file>')
    .description('check an evidence bundle offline: structure, manifest signature, every file\'s SHA-256, every event\'s hash chain, checkpoint signatures; exit 1 if refused, 2 if the CA was not pinned')
    .option('--cacert <file>', 'the cluster CA certificate you hold (trusting the one inside the bundle proves nothing: a forger ships their own)')
    .option('--ca-fingerprint <sha256>', 'or the SHA-256 fingerprint of the cluster CA (openssl x509 -noout -fingerprint -sha256 -in ca.crt)')
    .action(async (file: string, flags: { cacert?: string; caFingerprint?: string }) => {
      const caPem = flags.cacert === undefined ? undefined : await readFile(flags.cacert, 'utf8').catch(cannotRun);
      const result = await verifyBundle(file, { ...(caPem === undefined ? {} : { caPem }), ...(flags.caFingerprint === undefined ? {} : { caFingerprint: flags.caFingerprint }) });
      if (!result.ok) {
        process.stderr.write(`rampart: compliance: bundle REFUSED: ${result.problem ?? 'unknown problem'}\n`);
        process.exit(1);
      }
      const manifest = result.manifest;
      const described = `${result.files} files, ${result.events} audit events from ${manifest?.window.from ?? '?'} to ${manifest?.window.to ?? '?'}, made ${manifest?.created ?? '?'}`;
      if (!result.pinned) {
        process.stdout.write(`bundle intact: ${described}; signed under the CA it carries, SHA-256 ${result.caFingerprint ?? '?'}\n`);
        process.stderr.write('rampart: compliance: NOT authenticated: anyone can make a bundle that verifies against a CA of their own. Compare that fingerprint with your cluster\'s CA, then pass --ca-fingerprint or --cacert\n');
        process.exit(2);
      }
      process.stdout.write(`bundle verified: ${described}; signed by a key the cluster CA (SHA-256 ${result.caFingerprint ?? '?'}) issued\n`);
    });
}
