/**
 * Scheduled rotation of the token signing key: the leader replaces it every interval through the
 * log (rotateSigningKey), so a key copied from one member's disk or a snapshot mints tokens for one
 * interval (plus one token TTL, while members accept the previous key) at most. Rotation does not
 * bump the auth revision: tokens signed with the previous key stay valid until they expire.
 */
import type { Logger } from 'pino';
import { newSigningKey } from '../auth/token.js';
import type { Member } from './member.js';

/** How often the leader looks at the key's age, at most. */
const checkIntervalMsMax = 60_000;

export function rotateSigningKeys(member: Member, intervalMs: number, logger: Logger): () => void {
  // A key from before scheduled rotation existed (or from auth enable) has no rotation time: its age
  // counts from when this member first saw it.
  let unknownSinceMs = Date.now();
  let running = false;
  const check = async (): Promise<void> => {
    const state = member.auth.state;
    if (!state.enabled || !member.isLeader) return;
    const rotatedAtMs = state.signingKeyRotatedAtMs ?? 0;
    const ageFromMs = rotatedAtMs > 0 ? rotatedAtMs : unknownSinceMs;
    if (Date.now() - ageFromMs < intervalMs) return;
    try {
      await member.authChange({ op: 'rotateSigningKey', signingKey: newSigningKey(), atMs: Date.now() });
      unknownSinceMs = Date.now();
      logger.info('rotated the token signing key');
    } catch (error) {
      logger.warn({ err: error instanceof Error ? error.message : String(error) }, 'could not rotate the token signing key; retrying');
    }
  };
  const timer = setInterval(() => {
    if (running) return;
    running = true;
    void check().finally(() => (running = false));
  }, Math.max(100, Math.min(checkIntervalMsMax, Math.floor(intervalMs / 10))));
  timer.unref();
  return () => clearInterval(timer);
}
