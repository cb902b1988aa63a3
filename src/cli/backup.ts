/**
 * `rampart backup`: a snapshot of the cluster into a backup directory as
 * `rampart-<UTC time>.snapshot` (0600 in a 0700 directory), read back and checked before it counts,
 * then only the newest `--retention` kept. `--every` repeats it for as long as the command runs (a
 * failed round is reported and the next one still runs); deploy/systemd/rampart-backup.timer runs
 * it hourly instead. Backups are sealed (AES-256-GCM, src/encryption/sealed-file.ts) under a snapshot
 * key file, by default `<dir>/pki/backup.key` (0600), kept apart from the backup directory, or
 * to a recipient's public key (`--recipient-cert`): then the backup host cannot read them back,
 * and a backup counts once the snapshot checked before sealing is on disk byte for byte.
 * `--no-seal` writes plaintext. `rampart backup verify FILE` opens a backup (with its
 * `--snapshot-key-file` or `--recipient-key` when sealed), checks its framing and SHA-256, and
 * counts its keys.
 */
import { createHash, type KeyObject } from 'node:crypto';
import { mkdir, readFile, readdir, rm } from 'node:fs/promises';
import path from 'node:path';
import type { ConnectionOptions } from './policy.js';
import { startProgress } from './progress.js';
import { readSnapshot, saveSnapshot, type SnapshotSummary } from './snapshot.js';
import type { SnapshotOpenKey } from '../encryption/sealed-file.js';

const backupPattern = /^rampart-\d{8}T\d{6}(\d{3})?Z\.snapshot$/;

export interface BackupOptions {
  readonly outDirectory: string;
  /** Backups kept, newest first; older ones are removed after a new one is verified. */
  readonly retention: number;
  readonly connection: ConnectionOptions;
  /** The snapshot key, or recipient public key, backups are sealed to; absent only with an explicit --no-seal. */
  readonly sealKey?: Buffer | KeyObject;
}

/** The backup file name for a moment: sortable UTC time, milliseconds included. */
export function backupName(now: Date): string {
  return `rampart-${now.toISOString().replace(/[-:]/g, '').replace('.', '')}.snapshot`;
}

export function describeSummary(summary: SnapshotSummary): string {
  return `${summary.keys} keys (${summary.keyRevisions} key revisions, ${summary.leases} leases) at revision ${summary.revision}, ${summary.bytes} bytes, sha256 ${summary.sha256}`;
}

/** One backup: save, verify what was written, prune to the retention. Returns the new file. */
export async function backupOnce(options: BackupOptions, print: (line: string) => void, now = new Date()): Promise<string> {
  await mkdir(options.outDirectory, { recursive: true, mode: 0o700 });
  const file = path.join(options.outDirectory, backupName(now));
  const saved = await saveSnapshot(options.connection, file, 'rampart', startProgress(`receiving the snapshot for ${file}`, 'bytes'), options.sealKey);
  // A backup counts only once it reads back whole (opened with its key): only then may older ones go.
  // Sealed to a recipient, this host cannot open it: what it checked before sealing must be on disk unchanged.
  let summary: SnapshotSummary;
  if (options.sealKey === undefined || Buffer.isBuffer(options.sealKey)) {
    summary = (await readSnapshot(file, undefined, options.sealKey)).summary;
  } else {
    const onDisk = createHash('sha256').update(await readFile(file)).digest('hex');
    if (onDisk !== saved.writtenSha256) throw new Error(`${file} does not read back as written (SHA-256 ${onDisk}, wrote ${saved.writtenSha256})`);
    summary = saved.summary;
  }
  const sealing = options.sealKey === undefined ? 'not sealed' : Buffer.isBuffer(options.sealKey) ? 'sealed' : 'sealed to a recipient';
  print(`backup ${file} (${sealing}): ${describeSummary(summary)}`);
  const backups = (await readdir(options.outDirectory)).filter((name) => backupPattern.test(name)).sort();
  for (const old of backups.slice(0, Math.max(0, backups.length - options.retention))) {
    await rm(path.join(options.outDirectory, old), { force: true });
    print(`removed ${path.join(options.outDirectory, old)} (--retention ${options.retention})`);
  }
  return file;
}

/** Backs up every `intervalMs` until `stopped()`; a failed round is reported, not fatal. */
export async function backupEvery(options: BackupOptions, intervalMs: number, print: (line: string) => void, report: (line: string) => void, stopped: () => boolean): Promise<void> {
  while (!stopped()) {
    try {
      await backupOnce(options, print);
    } catch (error) {
      report(`backup failed: ${error instanceof Error ? error.message : String(error)}; next attempt in ${intervalMs / 1000} s`);
    }
    const deadline = Date.now() + intervalMs;
    while (!stopped() && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, Math.min(1000, deadline - Date.now())));
  }
}

/** `90s`, `30m`, `1h`, `1d` as milliseconds. */
export function parseInterval(text: string): number {
  const match = /^(\d+)(s|m|h|d)$/.exec(text);
  if (match === null) throw new Error(`--every expects a number and a unit (s, m, h, d), e.g. 1h; got "${text}"`);
  const unitMs = { s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 }[match[2] as 's' | 'm' | 'h' | 'd'];
  const value = Number(match[1]) * unitMs;
  if (value < 10_000) throw new Error('--every must be at least 10s');
  return value;
}

export async function verifyBackup(file: string, snapshotKey?: SnapshotOpenKey): Promise<SnapshotSummary> {
  return (await readSnapshot(file, startProgress(`reading ${file}`, 'bytes'), snapshotKey)).summary;
}
