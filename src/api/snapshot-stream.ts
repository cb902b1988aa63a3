/**
 * The Maintenance.Snapshot stream: the member's state machine as one file, in chunks, with
 * backpressure. The format is documented on `snapshotMagic` (src/cli/snapshot.ts reads it back).
 */
import { createHash } from 'node:crypto';
import type { Logger } from 'pino';
import type { Member } from '../server/member.js';
import { isMemberLocalKey } from '../storage/schema.js';
import type { ResponseStream } from './rpc.js';

/** Snapshot stream chunk size. */
const snapshotChunkBytes = 32 * 1024;

/**
 * Snapshot stream format (version 1): the magic line `RAMPART-SNAPSHOT 1\n`, then records
 * `u32 key length, key, u32 value length, value` for every state-machine record, then an end marker
 * (a u32 key length of 0: no stored key is empty), zero bytes up to a multiple of 512, then a 32-byte
 * SHA-256 of everything before it. etcdctl checks for exactly that shape (size % 512 == 32), which
 * etcd's page-aligned database plus its appended SHA-256 has.
 */
export const snapshotMagic = Buffer.from('RAMPART-SNAPSHOT 1\n');
export const snapshotAlignmentBytes = 512;

export async function serveSnapshot(member: Member, logger: Logger, stream: ResponseStream<object>, version: string): Promise<void> {
  const hash = createHash('sha256');
  let pending: Buffer[] = [];
  let pendingBytes = 0;
  let cancelled = false;
  let bodyBytes = 0;
  stream.onClose(() => {
    cancelled = true;
  });
  const flush = async (final: boolean): Promise<void> => {
    const blob = Buffer.concat(pending);
    pending = [];
    pendingBytes = 0;
    const accepted = stream.write({ header: member.header(), remaining_bytes: final ? 0 : 1, blob, version });
    if (!accepted) await stream.drained();
  };
  const push = async (buffer: Buffer): Promise<void> => {
    hash.update(buffer);
    pending.push(buffer);
    pendingBytes += buffer.length;
    if (pendingBytes >= snapshotChunkBytes) await flush(false);
  };
  try {
    await push(snapshotMagic);
    for await (const [key, value] of member.snapshotIterator()) {
      if (cancelled) return;
      if (isMemberLocalKey(key)) continue; // the log and the member's identity are not state
      bodyBytes += 8 + key.length + value.length;
      const lengths = Buffer.allocUnsafe(4);
      lengths.writeUInt32BE(key.length);
      await push(lengths);
      await push(key);
      const valueLength = Buffer.allocUnsafe(4);
      valueLength.writeUInt32BE(value.length);
      await push(valueLength);
      await push(value);
    }
    const written = snapshotMagic.length + bodyBytes + 4;
    await push(Buffer.concat([Buffer.alloc(4), Buffer.alloc((snapshotAlignmentBytes - (written % snapshotAlignmentBytes)) % snapshotAlignmentBytes)]));
    const digest = hash.digest();
    pending.push(digest);
    await flush(true);
    stream.end();
  } catch (error) {
    logger.error({ err: error instanceof Error ? `${error.name}: ${error.message}` : String(error) }, 'snapshot stream failed');
    stream.fail(error);
  }
}
