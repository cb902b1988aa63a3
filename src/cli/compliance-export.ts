/**
 * `rampart compliance export --from --to --out FILE`: the evidence bundle. Gathers the live facts
 * (as `compliance check`), verifies every audit trail given against the cluster's checkpoints and
 * their signatures (a broken or untrusted trail stops the export: evidence is only what verified),
 * takes each member's events in the window, and writes one ustar archive with a signed manifest.
 *
 * A member's events in the window are the contiguous stretch of its chain from its first event at
 * or after --from to its last event before --to, so the bundle's events still link one to the next
 * (a clock step inside the window cannot leave a hole). Memory stays bounded: events go through
 * temporary files (mode 0600 in a private directory, removed at the end).
 */
import { X509Certificate } from 'node:crypto';
import { closeSync, openSync, writeSync } from 'node:fs';
import { mkdtemp, readFile, rm, stat, truncate } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { eventLine, parseEventLine } from '../audit/event.js';
import { readAudit } from '../audit/verify.js';
import { trailKeyForReading } from './audit-keys.js';
import { readRecords } from '../audit/records.js';
import { auditPolicyFile, parseAuditPolicy } from '../audit/policy.js';
import { evaluateControls } from '../compliance/check.js';
import { daysLeft, fingerprintOf } from '../compliance/certificates.js';
import { bundleCaName, bundleCheckpointsName, bundleEventsName } from '../compliance/bundle-verify.js';
import { EvidenceSummary, evidenceCsvColumns, evidenceCsvRow } from '../compliance/evidence-events.js';
import { signManifest } from '../compliance/manifest.js';
import { writeBundle } from '../compliance/bundle-write.js';
import { formatJson, formatJunit, formatTable } from '../compliance/report.js';
import { renderSummary } from '../compliance/summary-html.js';
import { isPermissionError, unreadable } from '../compliance/read-error.js';
import { caValidityDays, issueCertificate, readKeyPair, writeKeyPair } from '../pki/authority.js';
import { gatherFacts, type GatherOptions } from './compliance-facts.js';

export interface ExportOptions {
  readonly gather: GatherOptions;
  readonly from: Date;
  readonly to: Date;
  readonly out: string;
  readonly signingCertificate?: string | undefined;
  readonly signingKey?: string | undefined;
}

/** The name of the signing certificate `export` issues in a rampart up PKI directory. */
export const exportSigningName = 'compliance-signing';

/** The signing key: given, or (in a rampart up directory with its CA) issued once, as long-lived as the CA. */
async function signingMaterial(options: ExportOptions): Promise<{ certificatePem: string; keyPem: string }> {
  if ((options.signingCertificate === undefined) !== (options.signingKey === undefined)) throw new Error('--signing-cert and --signing-key go together');
  if (options.signingCertificate !== undefined && options.signingKey !== undefined) {
    return { certificatePem: await readFile(options.signingCertificate, 'utf8'), keyPem: await readFile(options.signingKey, 'utf8') };
  }
  const pki = path.join(options.gather.connection.dir, 'pki');
  try {
    return await readKeyPair(pki, exportSigningName);
  } catch (error) {
    if (isPermissionError(error)) throw new Error(`the signing key: ${unreadable((error as NodeJS.ErrnoException).path ?? pki, error)}`);
    const authority = await readKeyPair(path.join(pki, 'ca'), 'ca').catch((caError: unknown) => {
      if (isPermissionError(caError)) throw new Error(`no signing key, and the CA to issue one: ${unreadable((caError as NodeJS.ErrnoException).path ?? pki, caError)}`);
      throw new Error(`no signing key: give --signing-cert and --signing-key (a certificate of kind audit from the cluster CA: rampart cert issue audit ${exportSigningName}), or --dir of a rampart up cluster whose pki/ca holds the CA`);
    });
    // A bundle must stay checkable as long as it is kept: the signing certificate lives as long as the CA.
    const pair = await issueCertificate(authority, { kind: 'audit', commonName: exportSigningName, validityDays: caValidityDays });
    await writeKeyPair(pki, exportSigningName, pair);
    return pair;
  }
}

/**
 * Appends lines to a file, synchronously: the trail reader calls back synchronously for each
 * event, and the writes must keep its order and know the length at once.
 */
class LineFile {
  bytes = 0;
  private constructor(private readonly descriptor: number, readonly file: string) {}
  static create(file: string): LineFile {
    return new LineFile(openSync(file, 'wx', 0o600), file);
  }
  append(line: string): void {
    const data = Buffer.from(`${line}\n`, 'utf8');
    writeSync(this.descriptor, data);
    this.bytes += data.length;
  }
  close(): void {
    closeSync(this.descriptor);
  }
}

export interface ExportResult {
  readonly file: string;
  readonly events: number;
  readonly members: number;
  readonly files: number;
  readonly caFingerprint: string;
}

export async function exportBundle(options: ExportOptions, progress: (line: string) => void): Promise<ExportResult> {
  if (!(options.from.getTime() < options.to.getTime())) throw new Error('--from must be before --to');
  if (await stat(options.out).then(() => true, () => false)) throw new Error(`${options.out} exists; the bundle is never written over a file`);
  const signing = await signingMaterial(options);
  const gathered = await gatherFacts(options.gather);
  const created = new Date(gathered.facts.now);
  const results = evaluateControls(gathered.facts);
  const caFingerprint = fingerprintOf(new X509Certificate(gathered.caPem).raw);
  // Fail before any work if the key cannot sign for this cluster.
  signManifest(Buffer.from('probe'), signing.certificatePem, signing.keyPem, gathered.caPem, created.getTime());

  const trails = gathered.facts.trails;
  // Without the cluster's checkpoints no trail can be shown witnessed: say why they are missing.
  if ('unavailable' in gathered.facts.checkpoints) throw new Error(`the cluster's audit checkpoints could not be read, so no trail can be checked against them: ${gathered.facts.checkpoints.unavailable}`);
  if (trails.length === 0) throw new Error('no audit trail given: --dir of a rampart up cluster on this host, or --audit-dir NAME=DIR for each member');
  for (const trail of trails) {
    if ('unavailable' in trail.outcome) throw new Error(`the audit trail of ${trail.member} (${trail.directory}): ${trail.outcome.unavailable}`);
    const outcome = trail.outcome.value;
    if (!outcome.ok) throw new Error(`the audit trail of ${trail.member} is broken, so it is not evidence: ${outcome.problem ?? ''}`);
    if (outcome.checkpointsMatched === 0) throw new Error(`the audit trail of ${trail.member} is not witnessed by any checkpoint of the cluster yet (members propose one every few seconds): try again shortly`);
    if (!outcome.signatures.startsWith('signatures verified')) throw new Error(`the audit trail of ${trail.member}: ${outcome.signatures}`);
  }

  const work = await mkdtemp(path.join(tmpdir(), 'rampart-evidence-'));
  try {
    const from = options.from.getTime();
    const to = options.to.getTime();
    const events = LineFile.create(path.join(work, 'events.jsonl'));
    const csv = LineFile.create(path.join(work, 'events.csv'));
    csv.append(evidenceCsvColumns.join(','));
    const summary = new EvidenceSummary();
    const trailReport: { member: string; memberId: string; directory: string; events: number; files: number; checkpointsMatched: number; inWindow: number; first?: { seq: number; hash: string }; last?: { seq: number; hash: string } }[] = [];
    for (const [index, trail] of trails.entries()) {
      if (!('value' in trail.outcome)) continue;
      progress(`reading the audit trail of ${trail.member} (${trail.outcome.value.events} events)`);
      // Pass 1: from the first event in the window on, cut after the last one in it.
      const segment = LineFile.create(path.join(work, `member-${index}.jsonl`));
      let keepBytes = 0;
      try {
        const key = await trailKeyForReading(trail.directory, {});
        await readAudit(trail.directory, (event) => {
          const at = Date.parse(event.time);
          const inside = at >= from && at < to;
          if (segment.bytes === 0 && !inside) return;
          segment.append(eventLine(event));
          if (inside) keepBytes = segment.bytes;
        }, gathered.checkpoints, key);
      } finally {
        segment.close();
      }
      await truncate(segment.file, keepBytes);
      // Pass 2: the kept stretch into the bundle's files and the summary.
      let inWindow = 0;
      let first: { seq: number; hash: string } | undefined;
      let last: { seq: number; hash: string } | undefined;
      let memberId = trail.outcome.value.memberId ?? '';
      for await (const record of readRecords(segment.file)) {
        if (record.kind !== 'record') throw new Error(`${segment.file}: a damaged line (the temporary copy changed)`);
        const event = parseEventLine(record.text);
        if (typeof event === 'string') throw new Error(`${segment.file}: ${event} (the temporary copy changed)`);
        events.append(record.text);
        csv.append(evidenceCsvRow(event));
        summary.add(event);
        inWindow += 1;
        first ??= { seq: event.seq, hash: event.hash };
        last = { seq: event.seq, hash: event.hash };
        memberId = event.member;
      }
      await rm(segment.file);
      trailReport.push({
        member: trail.member, memberId, directory: trail.directory, events: trail.outcome.value.events, files: trail.outcome.value.files,
        checkpointsMatched: trail.outcome.value.checkpointsMatched, inWindow, ...(first === undefined ? {} : { first }), ...(last === undefined ? {} : { last }),
      });
    }
    events.close();
    csv.close();

    const inventory = [
      { source: 'CA', file: gathered.facts.ca.file, ...gathered.facts.ca.description, daysLeft: daysLeft(gathered.facts.ca.description, created.getTime()) },
      ...gathered.facts.endpoints.flatMap((endpoint) => ('value' in endpoint.certificate ? [{ source: `${endpoint.member} ${endpoint.role} listener ${endpoint.url}`, ...endpoint.certificate.value, daysLeft: daysLeft(endpoint.certificate.value, created.getTime()) }] : [])),
      ...gathered.facts.certificateFiles.flatMap((entry) => ('value' in entry.certificate ? [{ source: 'file', file: entry.file, ...entry.certificate.value, daysLeft: daysLeft(entry.certificate.value, created.getTime()) }] : [])),
    ];
    const members = 'value' in gathered.facts.members ? gathered.facts.members.value.map(({ name, id, clientUrls, peerUrls }) => ({ name, id, clientUrls, peerUrls })) : [];
    const window = { from: options.from.toISOString(), to: options.to.toISOString() };
    const memory: [string, string][] = [
      [bundleCaName, gathered.caPem],
      [bundleCheckpointsName, gathered.checkpointLines.map((line) => `${line}\n`).join('')],
      ['audit/trails.json', `${JSON.stringify({ window, trails: trailReport }, null, 2)}\n`],
      ['cluster.json', `${JSON.stringify({ members }, null, 2)}\n`],
      ['certificates.json', `${JSON.stringify({ expiryWarningDays: gathered.facts.expiryWarningDays, certificates: inventory }, null, 2)}\n`],
      ['encryption.json', `${JSON.stringify(gathered.encryption, null, 2)}\n`],
      ['compliance/check.json', formatJson(results, created.toISOString())],
      ['compliance/check.txt', formatTable(results)],
      ['compliance/check.junit.xml', formatJunit(results, created.toISOString())],
      ['index.html', renderSummary({ created: created.toISOString(), window, caFingerprint, controls: results, trails: trailReport, summary })],
    ];
    if (gathered.policyYaml !== undefined) memory.push(['policies/rbac.yaml', gathered.policyYaml]);
    const auditPolicy = gathered.facts.auditPolicy;
    if ('value' in auditPolicy) {
      const header = `# The audit policy in force when this bundle was made${auditPolicy.value.shippedDefault ? ' (the shipped default: none applied)' : ''}: sha256:${auditPolicy.value.digest}\n`;
      memory.push(['policies/audit.yaml', header + auditPolicyFile(parseAuditPolicy('(audit policy in force)', auditPolicy.value.json))]);
    }
    const written = await writeBundle({
      out: options.out, created, window, caPem: gathered.caPem, signing,
      files: [
        ...memory.map(([name, content]) => ({ path: name, content })),
        { path: bundleEventsName, source: events.file },
        { path: 'audit/events.csv', source: csv.file },
      ],
    });
    return { file: options.out, events: summary.total, members: trailReport.length, files: written.files, caFingerprint };
  } finally {
    await rm(work, { recursive: true, force: true });
  }
}
