/**
 * What a user or role name may be (Rampart's rule; etcd accepts any bytes): at most nameBytesMax
 * bytes of UTF-8 and no control characters, which would let a name forge or hide log lines, audit
 * fields and terminal output. An empty name keeps etcd's own errors (UserEmpty, RoleEmpty).
 */
import { RampartError } from '../errors.js';

export const nameBytesMax = 256;

// Cc: C0 controls, DEL and C1 controls (tab, newline, escape, ...).
const controlCharacter = /\p{Cc}/u;

/** Why `name` is not acceptable, or undefined when it is. */
export function nameProblem(name: string): string | undefined {
  if (Buffer.byteLength(name) > nameBytesMax) return `longer than ${nameBytesMax} bytes`;
  if (controlCharacter.test(name)) return 'contains a control character';
  return undefined;
}

/** Throws NameInvalid for a name a client may not create. */
export function checkName(name: string): void {
  if (nameProblem(name) !== undefined) throw new RampartError('NameInvalid');
}
