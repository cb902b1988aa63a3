/**
 * Verification of a member's audit trail, as a stream: every record of every file in order, in
 * bounded memory, whatever the files hold.
 *
 * A trail is intact when every line is a canonical event whose hash matches, each event links to
 * the one before it, sequence numbers count up from 0 in each file, every file begins with
 * `audit.start` naming the file before it, the oldest file begins at the genesis hash (the trail
 * was not cut at its start), and every checkpoint given (a chain head witnessed elsewhere: an
 * anchor from the member's log, or the cluster's quorum-witnessed checkpoints) is in it.
 */
import { readdir } from 'node:fs/promises';
import path from 'node:path';
import { genesisHash, hashEvent, parseEventLine, type AuditEvent } from './event.js';
import { readRecords } from './records.js';

/** A chain head witnessed outside the trail: event `seq` of `file` has hash `hash`. */
export interface TrailCheckpoint {
  readonly member: string;
  readonly file: string;
  readonly seq: number;
  readonly hash: string;
  readonly time: string;
  /** SHA-256 fingerprint of the member's audit signing certificate (see `checkpoint.ts`). */
  readonly signer?: string;
  /** Base64 ECDSA signature over the fields above. */
  readonly signature?: string;
}

export interface VerifyOptions {
  /** The hash of an event that must be in the trail. */
  readonly anchor?: string;
  /** Witnessed chain heads; those of this trail's member must all be found, file and position. */
  readonly checkpoints?: readonly TrailCheckpoint[];
  readonly onEvent?: (event: AuditEvent) => void;
}

export interface VerifyResult {
  readonly ok: boolean;
  readonly events: number;
  readonly files: number;
  readonly head: string;
  /** Member id of the trail (from its events), when it has any. */
  readonly member?: string;
  /** Checkpoints of this member that were found in the trail. */
  readonly checkpointsMatched: number;
  readonly problem?: string;
}

const fileName = /^audit-.*\.jsonl$/;

/** The trail files of a directory, oldest first (names sort in creation order). */
export async function trailFiles(directory: string): Promise<string[]> {
  const names = await readdir(directory).catch((error: NodeJS.ErrnoException) => {
    if (error.code === 'ENOENT') return [] as string[];
    throw error;
  });
  return names.filter((name) => fileName.test(name)).sort().map((name) => path.join(directory, name));
}

/**
 * Checks a member's audit directory (or, given a `.jsonl` path, that one file on its own: its
 * start is then not required to be the genesis).
 */
export async function verifyAudit(target: string, options: VerifyOptions = {}): Promise<VerifyResult> {
  const single = target.endsWith('.jsonl');
  const files = single ? [target] : await trailFiles(target);
  let previous: string | undefined;
  let events = 0;
  let member: string | undefined;
  let anchorSeen = false;
  let checkpointsMatched = 0;
  const pendingCheckpoints = new Map<string, TrailCheckpoint[]>();
  const present = new Set(files.map((file) => path.basename(file)));
  const broken = (problem: string): VerifyResult => ({
    ok: false, events, files: files.length, head: previous ?? genesisHash, checkpointsMatched, problem, ...(member === undefined ? {} : { member }),
  });
  const checkpointsOf = (memberId: string): void => {
    for (const checkpoint of options.checkpoints ?? []) {
      if (checkpoint.member !== memberId) continue;
      const list = pendingCheckpoints.get(checkpoint.file) ?? [];
      list.push(checkpoint);
      pendingCheckpoints.set(checkpoint.file, list);
    }
  };
  if (!single && files.length === 0) return broken(`${target}: no audit files (audit-*.jsonl) here`);
  for (const [fileIndex, file] of files.entries()) {
    const name = path.basename(file);
    let seq = 0;
    for await (const record of readRecords(file)) {
      const where = `${file}:${record.number}`;
      if (record.kind === 'oversized') return broken(`${where}: a line of ${record.bytes} bytes, longer than any event (altered)`);
      if (record.kind === 'torn') return broken(`${where}: ${record.bytes} bytes after the last complete line (torn or altered)`);
      const parsed = parseEventLine(record.text);
      if (typeof parsed === 'string') return broken(`${where}: ${parsed}`);
      const event = parsed;
      const { hash, ...rest } = event;
      if (hashEvent(rest) !== hash) return broken(`${where}: hash does not match the event (altered)`);
      if (member === undefined) {
        member = event.member;
        checkpointsOf(member);
      } else if (event.member !== member) {
        return broken(`${where}: written by member ${event.member}, the trail is member ${member}'s (files of two members mixed)`);
      }
      if (seq === 0) {
        if (event.action !== 'audit.start') return broken(`${where}: a file must begin with audit.start`);
        if (previous === undefined) {
          if (!single && event.prev !== genesisHash) {
            return broken(`${where}: the trail does not start at the member's genesis (its oldest files were removed; the first file links to ${event.prev})`);
          }
        } else if (event.prev !== previous) {
          return broken(`${where}: does not continue the previous file (a file was removed or altered)`);
        }
        const named = event.targets?.[0];
        const expected = fileIndex === 0 ? undefined : path.basename(files[fileIndex - 1] as string);
        if (!single && named !== expected) {
          return broken(`${where}: begins after ${named ?? 'nothing'}, but the file before it is ${expected ?? 'none'} (a file was removed or renamed)`);
        }
      } else if (event.prev !== previous) {
        return broken(`${where}: does not follow the line before it (a line was removed, inserted or moved)`);
      }
      if (event.seq !== seq) return broken(`${where}: sequence ${event.seq}, expected ${seq}`);
      const witnessed = pendingCheckpoints.get(name)?.filter((checkpoint) => checkpoint.seq === seq) ?? [];
      for (const checkpoint of witnessed) {
        if (checkpoint.hash !== hash) {
          return broken(`${where}: differs from the checkpoint of ${checkpoint.time} (event ${seq} of ${name} had hash ${checkpoint.hash}): the trail was rewritten`);
        }
        checkpointsMatched += 1;
      }
      seq += 1;
      previous = hash;
      events += 1;
      if (hash === options.anchor) anchorSeen = true;
      options.onEvent?.(event);
    }
    for (const checkpoint of pendingCheckpoints.get(name) ?? []) {
      if (checkpoint.seq >= seq) {
        return broken(`${file}: ends at event ${seq - 1}, but the checkpoint of ${checkpoint.time} saw event ${checkpoint.seq} (hash ${checkpoint.hash}): events were removed from its end`);
      }
    }
  }
  if (!single) {
    for (const [name, list] of pendingCheckpoints) {
      if (!present.has(name)) {
        const last = list.reduce((a, b) => (a.seq >= b.seq ? a : b));
        return broken(`${name}: missing, but the checkpoint of ${last.time} saw its event ${last.seq} (the file was deleted)`);
      }
    }
  }
  if (options.anchor !== undefined && !anchorSeen) {
    return broken(`the anchored event ${options.anchor} is not in the trail (lines were removed from its end, or it belongs to another trail)`);
  }
  return { ok: true, events, files: files.length, head: previous ?? genesisHash, checkpointsMatched, ...(member === undefined ? {} : { member }) };
}

/**
 * Calls `onEvent` with every event of a directory, oldest first, once the whole trail verified
 * (a first pass), streaming (a second pass, checked again as it goes); a broken trail throws.
 */
export async function readAudit(directory: string, onEvent: (event: AuditEvent) => void, checkpoints: readonly TrailCheckpoint[] = []): Promise<void> {
  const first = await verifyAudit(directory, { checkpoints });
  if (!first.ok) throw new Error(`the audit trail is broken: ${first.problem}`);
  const second = await verifyAudit(directory, { checkpoints, onEvent });
  if (!second.ok) throw new Error(`the audit trail changed while being read: ${second.problem}`);
}
