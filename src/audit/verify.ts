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
import path from 'node:path';
import { genesisHash, hashEvent, parseEventLine, type AuditEvent } from './event.js';
import { listTrailFiles, readRecords, trailFileAt } from './records.js';
import type { TrailKey } from './sealed-trail.js';

/** The action of the event a member records before deleting files past their retention. */
export const retentionAction = 'audit.retention';

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
  /** Opens sealed files (`trail-key.ts`); without it a sealed file is reported as needing the key. */
  readonly key?: TrailKey;
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

/**
 * The trail files of a directory, oldest first (names sort in creation order), as `directory/<trail
 * name>`: a compressed file is named without its `.gz` (`readRecords` finds it), so the base name
 * is always the name events and checkpoints use.
 */
export async function trailFiles(directory: string): Promise<string[]> {
  return (await listTrailFiles(directory)).map((file) => path.join(directory, file.name));
}

/**
 * Checks a member's audit directory (or, given a `.jsonl` or `.jsonl.gz` path, that one file on its
 * own: its start is then not required to be the genesis).
 *
 * Retention: a member deletes its oldest files once past `--audit-retention`, after recording an
 * `audit.retention` event whose first target is the oldest file it keeps. A trail whose oldest file
 * does not start at the genesis is accepted only when such an event in the trail names that file;
 * checkpoints of files before it are then of files deleted on time. With checkpoints given, the
 * retention event must itself be witnessed (a matching checkpoint at or after it), so one forged at
 * the unwitnessed end of the trail does not excuse a deletion.
 */
export async function verifyAudit(target: string, options: VerifyOptions = {}): Promise<VerifyResult> {
  const single = /\.jsonl(\.gz)?$/.test(target);
  const files = single ? [trailFileAt(target)] : await listTrailFiles(target);
  let previous: string | undefined;
  let events = 0;
  let member: string | undefined;
  let anchorSeen = false;
  let checkpointsMatched = 0;
  /** The oldest file, when it links to an earlier file (deleted): the retention must explain it. */
  let startsAfter: { name: string; where: string; prev: string } | undefined;
  /** The latest retention record: the oldest file kept, where it was recorded, whether witnessed. */
  let retention: { first: string; where: string; witnessed: boolean } | undefined;
  const pendingCheckpoints = new Map<string, TrailCheckpoint[]>();
  const present = new Set(files.map((file) => file.name));
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
    const name = file.name;
    let seq = 0;
    for await (const record of readRecords(file, options.key)) {
      const where = `${file.path}:${record.number}`;
      if (record.kind === 'oversized') return broken(`${where}: a line of ${record.bytes} bytes, longer than any event (altered)`);
      if (record.kind === 'torn') return broken(`${where}: ${record.bytes} bytes after the last complete line (torn or altered)`);
      if (record.kind === 'damaged') return broken(record.detail);
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
        const named = event.targets?.[0];
        if (previous === undefined) {
          if (!single && event.prev !== genesisHash) {
            if (named === undefined || named >= name) return broken(`${where}: the trail does not start at the member's genesis (the first file links to ${event.prev})`);
            startsAfter = { name, where, prev: event.prev };
          }
        } else if (event.prev !== previous) {
          return broken(`${where}: does not continue the previous file (a file was removed or altered)`);
        }
        const expected = fileIndex === 0 ? startsAfter === undefined ? undefined : named : files[fileIndex - 1]?.name;
        if (!single && named !== expected) {
          return broken(`${where}: begins after ${named ?? 'nothing'}, but the file before it is ${expected ?? 'none'} (a file was removed or renamed)`);
        }
      } else if (event.prev !== previous) {
        return broken(`${where}: does not follow the line before it (a line was removed, inserted or moved)`);
      }
      if (event.seq !== seq) return broken(`${where}: sequence ${event.seq}, expected ${seq}`);
      if (event.action === retentionAction && event.targets?.[0] !== undefined) {
        if (retention !== undefined && event.targets[0] < retention.first) return broken(`${where}: a retention record keeps ${event.targets[0]}, older than ${retention.first} kept before (altered)`);
        retention = { first: event.targets[0], where, witnessed: false };
      }
      const witnessed = pendingCheckpoints.get(name)?.filter((checkpoint) => checkpoint.seq === seq) ?? [];
      for (const checkpoint of witnessed) {
        if (checkpoint.hash !== hash) {
          return broken(`${where}: differs from the checkpoint of ${checkpoint.time} (event ${seq} of ${name} had hash ${checkpoint.hash}): the trail was rewritten`);
        }
        checkpointsMatched += 1;
        if (retention !== undefined) retention.witnessed = true;
      }
      seq += 1;
      previous = hash;
      events += 1;
      if (hash === options.anchor) anchorSeen = true;
      options.onEvent?.(event);
    }
    for (const checkpoint of pendingCheckpoints.get(name) ?? []) {
      if (checkpoint.seq >= seq) {
        return broken(`${file.path}: ends at event ${seq - 1}, but the checkpoint of ${checkpoint.time} saw event ${checkpoint.seq} (hash ${checkpoint.hash}): events were removed from its end`);
      }
    }
  }
  if (startsAfter !== undefined) {
    if (retention === undefined || retention.first !== startsAfter.name) {
      return broken(`${startsAfter.where}: the trail does not start at the member's genesis (its oldest files were removed; the first file links to ${startsAfter.prev}), ` +
        (retention === undefined ? 'and no retention record says they were deleted' : `and the last retention record (${retention.where}) kept ${retention.first} onwards`));
    }
    if (pendingCheckpoints.size > 0 && !retention.witnessed) {
      return broken(`${retention.where}: the retention record that deleted the files before ${retention.first} is not witnessed by any checkpoint (forged at the trail's end, or recorded seconds ago: verify again after the next checkpoint)`);
    }
  }
  if (!single) {
    for (const [name, list] of pendingCheckpoints) {
      if (!present.has(name) && !(startsAfter !== undefined && name < startsAfter.name)) {
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
export async function readAudit(directory: string, onEvent: (event: AuditEvent) => void, checkpoints: readonly TrailCheckpoint[] = [], key?: TrailKey): Promise<void> {
  const keyed = key === undefined ? {} : { key };
  const first = await verifyAudit(directory, { checkpoints, ...keyed });
  if (!first.ok) throw new Error(`the audit trail is broken: ${first.problem}`);
  const second = await verifyAudit(directory, { checkpoints, onEvent, ...keyed });
  if (!second.ok) throw new Error(`the audit trail changed while being read: ${second.problem}`);
}
