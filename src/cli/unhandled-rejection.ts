/**
 * The serve command's last resort: a promise rejection that nothing handled (a write whose failure
 * no caller awaits, as a compaction's once was on a full disk) would kill the process with Node's
 * own message, past the member's failure path. Instead it is logged (the error's name, code,
 * message and stack: no keys or values) and the member stops as after any failed write: closed,
 * exit 1. Every such rejection is a bug to fix where it happens; this keeps the stop orderly.
 */
import type { Logger } from 'pino';

export interface Abortable {
  abort(error: unknown): void;
}

/** Installs the handler; returns it (and a way to remove it). */
export function stopOnUnhandledRejection(member: Abortable, logger: Logger): { listener: (reason: unknown) => void; remove: () => void } {
  const listener = (reason: unknown): void => {
    const details = reason instanceof Error
      ? { err: String(reason), code: (reason as { code?: unknown }).code, stack: reason.stack }
      : { err: typeof reason };
    logger.fatal(details, 'unhandled promise rejection; stopping');
    member.abort(reason);
  };
  process.on('unhandledRejection', listener);
  return { listener, remove: () => process.off('unhandledRejection', listener) };
}
