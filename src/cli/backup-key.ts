/**
 * Which key `rampart backup verify` opens a backup with: `--recipient-key` or `--snapshot-key-file`
 * when given; otherwise, for a backup sealed under a snapshot key, the one `rampart backup` seals
 * under by default, `<dir>/pki/backup.key` of a rampart up directory (never created here: a
 * verify that made a new key would only fail later, naming the wrong key). A sealed backup with no
 * key to be found is refused with what to pass, not read as damage.
 */
import { open } from 'node:fs/promises';
import path from 'node:path';
import { existsSync } from 'node:fs';
import { sealedFileMagic, type SnapshotOpenKey } from '../encryption/sealed-file.js';

/** The sealed-file version byte (src/encryption/sealed-file.ts): 1 under a snapshot key, 2 to a recipient. */
const snapshotKeyVersion = 1;

export interface BackupKeyOptions {
  readonly snapshotKeyFile?: string | undefined;
  readonly recipientKey?: string | undefined;
  /** A rampart up directory (`--dir`, default `.rampart`). */
  readonly dir: string;
}

export interface BackupKeyReaders {
  readonly snapshotKey: (file: string) => Promise<Buffer>;
  readonly recipientKey: (file: string) => Promise<SnapshotOpenKey>;
}

/** The default snapshot key of a rampart up directory (what `rampart backup` creates). */
export function defaultBackupKeyFile(directory: string): string {
  return path.join(directory, 'pki', 'backup.key');
}

/** Whether `file` begins as a file sealed under a snapshot key (the header only; the rest is checked on opening). */
async function sealedUnderSnapshotKey(file: string): Promise<boolean> {
  const handle = await open(file, 'r');
  try {
    const header = Buffer.alloc(sealedFileMagic.length + 1);
    const { bytesRead } = await handle.read(header, 0, header.length, 0);
    return bytesRead === header.length && header.subarray(0, sealedFileMagic.length).equals(sealedFileMagic) && header[sealedFileMagic.length] === snapshotKeyVersion;
  } finally {
    await handle.close();
  }
}

/**
 * The key that opens `file`, and the default key file when that is where it came from (so an error
 * can say which key was tried); undefined when no key is needed, or for a backup sealed to a
 * recipient, which the reader then refuses naming --recipient-key.
 */
export async function backupOpenKey(file: string, options: BackupKeyOptions, readers: BackupKeyReaders): Promise<{ key: SnapshotOpenKey | undefined; defaultFile?: string }> {
  if (options.recipientKey !== undefined) return { key: await readers.recipientKey(options.recipientKey) };
  if (options.snapshotKeyFile !== undefined) return { key: await readers.snapshotKey(options.snapshotKeyFile) };
  if (!(await sealedUnderSnapshotKey(file))) return { key: undefined };
  const defaultFile = defaultBackupKeyFile(options.dir);
  if (!existsSync(defaultFile)) {
    throw new Error(`${file} is a sealed backup and no key was given: pass --snapshot-key-file (rampart backup seals under <dir>/pki/backup.key by default; there is no ${defaultFile}: give --dir of the rampart up directory that made it)`);
  }
  return { key: await readers.snapshotKey(defaultFile), defaultFile };
}
