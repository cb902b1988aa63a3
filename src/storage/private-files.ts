/**
 * Private directories and files: a member's data (its database holds the token signing key and
 * every value), its audit trail and its private keys must be reachable by their owner only.
 *
 * As ssh and PostgreSQL do, a member creates such directories mode 0700 and refuses to start on
 * one that group or others may enter, read or write, naming the command that fixes it. A directory
 * that already exists keeps its mode (mkdir does not change it), hence the check rather than a
 * silent chmod: whoever widened it may rely on that and should decide. Files inside are created
 * 0600 because `rampart serve` runs with umask 077 (LevelDB creates its files with the default
 * 0666 & ~umask).
 */
import { mkdir, stat } from 'node:fs/promises';

/** Permission bits for group and others: any of them set makes a directory or key file shared. */
const sharedModeBits = 0o077;

const octal = (mode: number): string => `0${(mode & 0o777).toString(8)}`;

/** Creates `directory` (and missing parents) mode 0700, or checks that an existing one is private. */
export async function ensurePrivateDirectory(directory: string, what: string): Promise<void> {
  await mkdir(directory, { recursive: true, mode: 0o700 });
  await checkPrivate(directory, what, 'chmod 700');
}

/** Throws, naming the fix, when `file` (a directory or a private key) is open to group or others. */
export async function checkPrivate(file: string, what: string, fix: 'chmod 700' | 'chmod 600'): Promise<void> {
  const info = await stat(file);
  if ((info.mode & sharedModeBits) !== 0) {
    throw new Error(`${what} ${file} is accessible by group or others (mode ${octal(info.mode)}); run: ${fix} ${file}`);
  }
}
