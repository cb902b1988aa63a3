/**
 * `rampart compliance check|export|verify`: CIS and Rampart controls against a live cluster and its
 * hosts' files, and the evidence bundle an auditor can check offline.
 *
 * Exit status: 0 when no control failed (warnings and skips do not fail a gate), 1 when one did,
 * 2 when the check could not run at all (no CA, no cluster reachable for anything).
 */
import { writeFile } from 'node:fs/promises';
import type { Command } from 'commander';
import { InvalidArgumentError } from 'commander';
import { anyFailed } from '../compliance/control.js';
import { evaluateControls, expiryWarningDaysDefault } from '../compliance/check.js';
import { formatReport, reportFormats, type ReportFormat } from '../compliance/report.js';
import { gatherFacts, type GatherOptions } from './compliance-facts.js';
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
      process.exitCode = anyFailed(results) ? 1 : 0;
    });
}
