/**
 * A TLS member's audit trail as the refusal tests read it: exported (or verified) with the
 * `rampart` CLI and the member's encryption key, and read again until what a test waits for is in
 * it (a refusal is recorded after its connection ends, a count at the end of its window).
 */
import path from 'node:path';
import type { AuditEvent } from '../../src/audit/event.js';
import { rampartBin, run, type CommandResult } from './processes.js';
import { sleep } from './retry.js';
import type { TlsMember } from './tls-member.js';

function trailArguments(member: TlsMember): string[] {
  return [path.join(member.directory, 'data', 'audit'), '--encryption-key-file', path.join(member.directory, 'a', 'encryption.key')];
}

/** Every event of the member's trail, in order (`rampart audit export`); throws with its stderr when the export fails. */
export async function trailOf(member: TlsMember): Promise<AuditEvent[]> {
  const exported = await run(process.execPath, [rampartBin, 'audit', 'export', ...trailArguments(member)], { timeoutMs: 60_000 });
  if (exported.code !== 0) throw new Error(`rampart audit export exited ${exported.code}: ${exported.stderr}`);
  return exported.stdout.split('\n').filter((line) => line !== '').map((line) => JSON.parse(line) as AuditEvent);
}

/**
 * Reads the trail until `done` accepts it, every 250 ms for up to `timeoutMs` (default 30 s: an
 * export is a process of its own, slow on a loaded machine), and returns the last read either way:
 * the test's own expectations then say what is missing.
 */
export async function trailWhen(member: TlsMember, done: (all: AuditEvent[]) => boolean, timeoutMs = 30_000): Promise<AuditEvent[]> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const all = await trailOf(member);
    if (done(all) || Date.now() > deadline) return all;
    await sleep(250);
  }
}

/** `rampart audit verify` of the member's trail. */
export function verifyTrail(member: TlsMember): Promise<CommandResult> {
  return run(process.execPath, [rampartBin, 'audit', 'verify', ...trailArguments(member)]);
}
