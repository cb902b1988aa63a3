/**
 * A committed entry's proposal, decoded for the applier, or the verdict that it cannot be.
 *
 * Every member applies the same committed entries, so an entry whose bytes do not decode (a bug in
 * an encoder, or a peer that forwarded crafted bytes) must not stop the member applying it: every
 * member would stop on the same entry, and the cluster with them, for good (a restart applies it
 * again). Such an entry is skipped, deterministically (the verdict depends on its bytes alone):
 * it changes nothing but the applied index, as an empty entry, and the store's revision does not
 * move (as etcd for an entry that changes nothing).
 *
 * Owns: the line between an entry that is skipped and a failure that stops the member. Skipped:
 * what decoding the proposal's bytes refuses (malformed protobuf, counts past the decoder's bounds,
 * an auth change that is not JSON, is nested absurdly deep, or is not an AuthChange field by field:
 * an unknown op, a field missing or of the wrong type, auth/store.ts decodeAuthChange). An auth
 * change that decodes but that applying refuses is a refused request (applier.ts).
 * Never skipped: a failed write or read of the log or the database, a broken invariant (`assert`),
 * or an applier that throws something other than a domain error on a decoded request (its state
 * may be half changed): those still stop the member (raft-loop.ts `onFatal`).
 */
import { decodeInternalRequest } from '../api/proto.js';
import { ProposalBoundsError } from '../api/schema-codec.js';
import type { InternalRequest } from '../api/messages.js';
import { decodeAuthChange } from '../auth/store.js';
import { WireFormatError, WireReader, fieldKey, wireVarint } from '../wire/protobuf.js';

export type CommittedProposal =
  | { readonly ok: true; readonly request: InternalRequest }
  /** `id`: the request id the bytes carry, when one can be read (its waiter is failed); `reason`: an error class name, never bytes of the entry. */
  | { readonly ok: false; readonly id: string | undefined; readonly reason: string };

export function decodeCommittedProposal(data: Buffer): CommittedProposal {
  try {
    const request = decodeInternalRequest(data);
    // An auth change travels as JSON inside the proposal: not JSON, nested past what parsing it
    // (recursive where it revives values) surely handles, or not of its op's types, is undecodable too.
    if (request.request === 'auth_change') {
      const text = request.auth_change ?? '';
      if (jsonDepth(text) > authChangeDepthMax) throw new ProposalBoundsError(`auth change: JSON nested more than ${authChangeDepthMax} deep`);
      decodeAuthChange(text);
    }
    return { ok: true, request };
  } catch (error) {
    // Whatever decoding throws is about these bytes (its bounds keep it from running out of stack:
    // see schema-codec.ts proposalBounds), so every member reaches the same verdict.
    return { ok: false, id: requestIdOf(data), reason: error instanceof Error ? error.name : typeof error };
  }
}

/** JSON nesting an auth change may have (a policy is 5 levels deep). */
const authChangeDepthMax = 64;

/** The deepest nesting of arrays and objects in JSON text (brackets inside strings not counted). */
export function jsonDepth(text: string): number {
  let depth = 0;
  let deepest = 0;
  let inString = false;
  for (let index = 0; index < text.length; index++) {
    const code = text.charCodeAt(index);
    if (inString) {
      if (code === 0x5c) index++;
      else if (code === 0x22) inString = false;
    } else if (code === 0x22) {
      inString = true;
    } else if (code === 0x5b || code === 0x7b) {
      depth += 1;
      if (depth > deepest) deepest = depth;
    } else if (code === 0x5d || code === 0x7d) {
      depth -= 1;
    }
  }
  return deepest;
}

const idKey = fieldKey(1, wireVarint);

/** InternalRequest.id (field 1) as far as the bytes can be read, the last one seen winning as in protobuf. */
export function requestIdOf(data: Buffer): string | undefined {
  const reader = new WireReader(data, 0, data.length);
  let id: string | undefined;
  try {
    while (!reader.done) {
      const key = reader.key();
      if (key === idKey) id = String(reader.varint64());
      else reader.skip(key & 7);
    }
  } catch (error) {
    if (!(error instanceof WireFormatError)) throw error;
  }
  return id;
}
