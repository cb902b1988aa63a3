/**
 * `rampart audit tail [PATH]`: a member's audit events as they are written. Without PATH, from the
 * running member over gRPC (`rampart.Audit/Stream`, root only). With PATH (a member's audit
 * directory or one of its files), offline, from the files — sealed ones opened with the member's
 * KEK as `audit verify|export` do (`trailKeyForReading`) — the last `--lines` events, then, with
 * `--follow`, each new one as the member writes it, across rotation, compression and retention.
 *
 * It reads, it does not verify: `rampart audit verify` checks the chain. Memory is bounded by
 * `--lines` whatever the trail holds: files are read newest first, only as far back as needed.
 */
import path from 'node:path';
import type { Command } from 'commander';
import { InvalidArgumentError } from 'commander';
import { eventsOfFile, readEventsAfter, type TrailCursor } from '../audit/cursor.js';
import { eventLine, type AuditEvent } from '../audit/event.js';
import { listTrailFiles, trailNameOf, type TrailFile } from '../audit/records.js';
import type { TrailKey } from '../audit/sealed-trail.js';
import { trailKeyForReading, type TrailKeyFlags } from './audit-keys.js';
import { PolicyConnection, type ConnectionOptions } from './policy.js';

/** Largest `--lines`: the events held in memory before printing. */
export const tailLinesMax = 100_000;
/** How often `--follow` looks for new events in the files. */
const followPollMs = 500;

function lines(value: string): number {
  const parsed = Number(value);
  if (!Number.isSafeInteger(parsed) || parsed < 0 || parsed > tailLinesMax) throw new InvalidArgumentError(`a number of events from 0 to ${tailLinesMax}: ${value}`);
  return parsed;
}

interface TailFlags extends ConnectionOptions, TrailKeyFlags {
  readonly lines: number;
  readonly follow: boolean;
}

/** The trail a PATH names: its directory, and the one file when PATH is a file. */
function trailOf(target: string): { directory: string; only?: string } {
  return /\.jsonl(\.gz)?$/.test(target) ? { directory: path.dirname(target), only: trailNameOf(target) } : { directory: target };
}

/**
 * The last `count` events of the files (newest file first, as far back as needed), oldest first,
 * and where the trail ends now (the newest file's last complete event: `--follow` goes on from there).
 */
async function lastEvents(files: readonly TrailFile[], count: number, key: TrailKey | undefined): Promise<{ kept: AuditEvent[]; end: TrailCursor }> {
  const kept: AuditEvent[] = [];
  const newest = files[files.length - 1] as TrailFile;
  let end: TrailCursor = { file: newest.name, seq: -1 };
  for (let index = files.length - 1; index >= 0 && (kept.length < count || index === files.length - 1); index--) {
    const file = files[index] as TrailFile;
    const ofFile: AuditEvent[] = [];
    for await (const event of eventsOfFile(file, key, { tornEnd: 'stop' })) {
      if (file === newest) end = { file: file.name, seq: event.seq };
      ofFile.push(event);
      if (ofFile.length > count - kept.length) ofFile.shift();
    }
    kept.unshift(...ofFile);
  }
  return { kept, end };
}

async function tailFiles(target: string, flags: TailFlags, print: (line: string) => void, note: (line: string) => void): Promise<void> {
  const { directory, only } = trailOf(target);
  const key = await trailKeyForReading(target, flags);
  const files = (await listTrailFiles(directory)).filter((file) => only === undefined || file.name === only);
  if (files.length === 0) throw new Error(only === undefined ? `${directory}: no audit files (audit-*.jsonl) here` : `${target}: no such audit file`);
  const { kept, end } = await lastEvents(files, flags.lines, key);
  for (const event of kept) print(eventLine(event));
  if (!flags.follow) return;
  // From where the trail ended when read on, across the files the member adds.
  let cursor = end;
  note(`following ${directory} from ${cursor.file} event ${cursor.seq + 1} (interrupt to stop)`);
  for (;;) {
    for await (const { file, event } of readEventsAfter(directory, cursor, key, { tornEnd: 'stop' })) {
      print(eventLine(event));
      cursor = { file, seq: event.seq };
    }
    await new Promise((resolve) => setTimeout(resolve, followPollMs));
  }
}

export function registerAuditTail(audit: Command, connectionOptions: (command: Command) => Command, print: (line: string) => void, fail: (error: unknown) => never): void {
  connectionOptions(audit.command('tail [path]'))
    .description('a member\'s audit events as they are written: from the running member (root only), or with PATH (its audit directory or one file) offline from the files, the last --lines then, with --follow, new ones')
    .option('-n, --lines <count>', 'with PATH: how many of the last events to print first', lines, 10)
    .option('-f, --follow', 'with PATH: keep printing events as the member writes them (across rotation)', false)
    .option('--encryption-key-file <file>', 'with PATH: the member\'s key-encryption key, to open a sealed trail (default: beside its data directory)')
    .option('--encryption-kms-socket <path>', 'with PATH: the member\'s KMS v2 plugin, to open a sealed trail')
    .action(async (target: string | undefined, flags: TailFlags, command: Command) => {
      if (target === undefined) {
        for (const option of ['lines', 'follow', 'encryptionKeyFile', 'encryptionKmsSocket']) {
          if (command.getOptionValueSource(option) === 'cli') fail(`--${option.replace(/[A-Z]/g, (letter) => `-${letter.toLowerCase()}`)} goes with PATH (a member's audit directory or file); without it tail follows the running member`);
        }
        await PolicyConnection.using(flags, (connection) => connection.tailAudit(print)).catch(fail);
        return;
      }
      await tailFiles(target, flags, print, (line) => process.stderr.write(`rampart: ${line}\n`)).catch(fail);
    });
}
