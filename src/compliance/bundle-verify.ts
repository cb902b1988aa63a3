/**
 * `rampart compliance verify FILE`: checks an evidence bundle offline, refusing it at the first
 * thing that is not as made, and naming it: the archive's structure (tar.ts reads strictly), the
 * manifest and its signature (a key the cluster CA issued for signing), every file against the
 * manifest (size and SHA-256; no file unlisted, none missing), and then what the files say — each
 * audit event's hash and its link to the event before it of the same member, and the checkpoints'
 * signatures.
 *
 * Trust: the CA that vouches for the bundle must come from the auditor, not from the bundle. A
 * bundle carries its CA (`ca.crt`), but whoever forges a bundle forges that too, with a CA and
 * signing key of their own; so the result says whether the CA was pinned (`--cacert`, or
 * `--ca-fingerprint` compared with the bundle's) and the CLI fails an unpinned check.
 */
import { X509Certificate, createHash } from 'node:crypto';
import { checkSignatures } from '../audit/checkpoint.js';
import { auditLineBytesMax, hashEvent, parseEventLine } from '../audit/event.js';
import { fingerprintOf } from './certificates.js';
import { checkManifestSignature, decodeManifest, decodeSignature, manifestBytesMax, manifestName, signatureName, type Manifest } from './manifest.js';
import { TarFormatError, TarReader, type TarEntry } from './tar.js';
import { parseCheckpointExport } from './checkpoint-export.js';

export const bundleCaName = 'ca.crt';
export const bundleEventsName = 'audit/events.jsonl';
export const bundleCheckpointsName = 'audit/checkpoints.jsonl';

export interface VerifyBundleOptions {
  /** The CA certificate the auditor holds (PEM). */
  readonly caPem?: string;
  /** Or the fingerprint of the CA the auditor expects (hex, with or without colons). */
  readonly caFingerprint?: string;
}

export interface BundleVerification {
  readonly ok: boolean;
  /** The first thing that failed, named. */
  readonly problem?: string;
  /** Fingerprint of the CA the bundle was checked against. */
  readonly caFingerprint?: string;
  /** Whether that CA came from the auditor (--cacert or a matching --ca-fingerprint). */
  readonly pinned: boolean;
  readonly manifest?: Manifest;
  readonly files: number;
  readonly events: number;
}

const normalizeFingerprint = (text: string): string => text.replace(/[^0-9a-f]/gi, '').toUpperCase();

async function sha256Of(reader: TarReader, entry: TarEntry): Promise<string> {
  const hash = createHash('sha256');
  for await (const chunk of reader.content(entry)) hash.update(chunk);
  return hash.digest('hex');
}

/** Lines of an entry, streamed; a line longer than `lineBytesMax` is refused. */
async function* linesOf(reader: TarReader, entry: TarEntry, lineBytesMax: number): AsyncGenerator<string> {
  let pending = Buffer.alloc(0);
  for await (const chunk of reader.content(entry)) {
    pending = Buffer.concat([pending, chunk]);
    let newline = pending.indexOf(0x0a);
    while (newline !== -1) {
      yield pending.subarray(0, newline).toString('utf8');
      pending = pending.subarray(newline + 1);
      newline = pending.indexOf(0x0a);
    }
    if (pending.length > lineBytesMax) throw new Error(`${entry.name}: a line longer than ${lineBytesMax} bytes`);
  }
  if (pending.length > 0) throw new Error(`${entry.name}: ends without a newline (truncated)`);
}

export async function verifyBundle(file: string, options: VerifyBundleOptions): Promise<BundleVerification> {
  let reader: TarReader;
  try {
    reader = await TarReader.open(file);
  } catch (error) {
    const problem = error instanceof TarFormatError ? `not an intact bundle: ${error.message}` : `cannot read ${file}: ${error instanceof Error ? error.message : String(error)}`;
    return { ok: false, problem, pinned: false, files: 0, events: 0 };
  }
  let caFingerprint: string | undefined;
  let pinned = false;
  let manifest: Manifest | undefined;
  let events = 0;
  const refuse = (problem: string): BundleVerification => ({
    ok: false, problem, pinned, files: reader.entries.length, events, ...(caFingerprint === undefined ? {} : { caFingerprint }), ...(manifest === undefined ? {} : { manifest }),
  });
  try {
    const manifestEntry = reader.entry(manifestName);
    const signatureEntry = reader.entry(signatureName);
    if (manifestEntry === undefined) return refuse(`${manifestName} is missing`);
    if (signatureEntry === undefined) return refuse(`${signatureName} is missing`);
    const manifestText = await reader.text(manifestEntry, manifestBytesMax);
    const decoded = decodeManifest(manifestText);
    if (typeof decoded === 'string') return refuse(decoded);
    manifest = decoded;
    const signature = decodeSignature(await reader.text(signatureEntry, manifestBytesMax));
    if (typeof signature === 'string') return refuse(signature);

    // The CA: the auditor's, or the bundle's own (then only pinned by a matching fingerprint).
    const bundledCa = reader.entry(bundleCaName);
    let caPem = options.caPem;
    if (caPem === undefined) {
      if (bundledCa === undefined) return refuse(`${bundleCaName} is missing and no --cacert was given`);
      caPem = await reader.text(bundledCa, manifestBytesMax);
    }
    try {
      caFingerprint = fingerprintOf(new X509Certificate(caPem).raw);
    } catch {
      return refuse(options.caPem === undefined ? `${bundleCaName} is not a certificate (altered)` : 'the --cacert file is not a certificate');
    }
    pinned = options.caPem !== undefined || (options.caFingerprint !== undefined && normalizeFingerprint(options.caFingerprint) === normalizeFingerprint(caFingerprint));
    if (options.caFingerprint !== undefined && !pinned) return refuse(`the bundle's CA has fingerprint ${caFingerprint}, not the ${options.caFingerprint} given`);
    if (normalizeFingerprint(manifest.caFingerprint) !== normalizeFingerprint(caFingerprint)) {
      return refuse(`the manifest was made for the CA ${manifest.caFingerprint}, not ${caFingerprint}`);
    }
    const signatureProblem = checkManifestSignature(Buffer.from(manifestText, 'utf8'), signature, caPem, manifest.created);
    if (signatureProblem !== undefined) return refuse(signatureProblem);

    // Every file as listed, and nothing else.
    const listed = new Map(manifest.files.map((entry) => [entry.path, entry]));
    if (listed.size !== manifest.files.length) return refuse('manifest.json lists a file twice (altered)');
    for (const entry of reader.entries) {
      if (entry.name === manifestName || entry.name === signatureName) continue;
      const expected = listed.get(entry.name);
      if (expected === undefined) return refuse(`${entry.name} is not in the manifest (added)`);
      if (expected.bytes !== entry.size) return refuse(`${entry.name}: ${entry.size} bytes, the manifest says ${expected.bytes} (altered)`);
      if ((await sha256Of(reader, entry)) !== expected.sha256) return refuse(`${entry.name}: its SHA-256 does not match the manifest (altered)`);
    }
    for (const expected of manifest.files) if (reader.entry(expected.path) === undefined) return refuse(`${expected.path} is listed in the manifest but missing (removed)`);

    // What the files say: every event whole and chained to the one before it of its member.
    const eventsEntry = reader.entry(bundleEventsName);
    if (eventsEntry !== undefined) {
      const heads = new Map<string, string>();
      let line = 0;
      for await (const text of linesOf(reader, eventsEntry, auditLineBytesMax * 4)) {
        line += 1;
        const event = parseEventLine(text);
        if (typeof event === 'string') return refuse(`${bundleEventsName}:${line}: ${event}`);
        const { hash, ...rest } = event;
        if (hashEvent(rest) !== hash) return refuse(`${bundleEventsName}:${line}: the event's hash does not match it`);
        const previous = heads.get(event.member);
        if (previous !== undefined && event.prev !== previous) return refuse(`${bundleEventsName}:${line}: does not follow member ${event.member}'s event before it (an event was removed or moved)`);
        heads.set(event.member, hash);
        events += 1;
      }
    }
    const checkpointsEntry = reader.entry(bundleCheckpointsName);
    if (checkpointsEntry !== undefined) {
      const { checkpoints, signers, problem } = parseCheckpointExport(await reader.text(checkpointsEntry, 256 * 1024 * 1024));
      if (problem !== undefined) return refuse(`${bundleCheckpointsName}: ${problem}`);
      for (const member of new Set(checkpoints.filter((checkpoint) => checkpoint.signature !== undefined).map((checkpoint) => checkpoint.member))) {
        const signed = checkpoints.filter((checkpoint) => checkpoint.member === member && checkpoint.signature !== undefined);
        const checkpointProblem = checkSignatures(signed, signers, caPem, member);
        if (checkpointProblem !== undefined) return refuse(`${bundleCheckpointsName}: ${checkpointProblem}`);
      }
    }
    return { ok: true, pinned, caFingerprint, manifest, files: reader.entries.length, events };
  } catch (error) {
    return refuse(error instanceof Error ? error.message : String(error));
  } finally {
    await reader.close();
  }
}
