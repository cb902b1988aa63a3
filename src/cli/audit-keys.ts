/**
 * The audit trail key as the CLI gets it: a serving member opens (or creates) it with its KEK
 * provider and has it re-wrapped at each KEK rotation; `rampart audit verify|export PATH` opens it
 * read-only with the member's KEK, and says what is missing when it cannot.
 */
import { existsSync } from 'node:fs';
import path from 'node:path';
import type { TrailKey } from '../audit/sealed-trail.js';
import { TrailKeyStore } from '../audit/trail-key.js';
import { FileKekProvider, defaultKeyFile } from '../encryption/kek-file.js';
import type { KekProvider } from '../encryption/kek.js';
import { KmsKekProvider } from '../encryption/kms.js';
import type { RewrapHook } from '../storage/database.js';

/** The serving member's trail key; `onKekRewrap` registers the re-wrap at KEK rotations. */
export async function servingTrailKey(auditDirectory: string, provider: KekProvider, onKekRewrap: (hook: RewrapHook) => void): Promise<TrailKey> {
  const store = await TrailKeyStore.openOrCreate(auditDirectory, provider);
  onKekRewrap((wrap) => store.addWrapping(wrap));
  return store.key;
}

export interface TrailKeyFlags {
  encryptionKeyFile?: string;
  encryptionKmsSocket?: string;
}

/** The audit directory a verify/export target belongs to (a directory, or one file's). */
function auditDirectoryOf(target: string): string {
  return /\.jsonl(\.gz)?$/.test(target) ? path.dirname(target) : target;
}

/**
 * The key to read `target` with: undefined for a plaintext trail; otherwise unwrapped with the
 * KEK named by the flags, or found where `serve` (`<data-dir>.encryption-key`) or `rampart up`
 * (`<member>/encryption.key`) keeps it beside the data directory holding `audit/`.
 */
export async function trailKeyForReading(target: string, flags: TrailKeyFlags): Promise<TrailKey | undefined> {
  const directory = auditDirectoryOf(target);
  // No trail key and no KEK named: a plaintext trail (a sealed file read then says what it needs).
  if (flags.encryptionKeyFile === undefined && flags.encryptionKmsSocket === undefined && !(await TrailKeyStore.exists(directory))) return undefined;
  let provider: KekProvider;
  if (flags.encryptionKmsSocket !== undefined) {
    provider = await KmsKekProvider.open(flags.encryptionKmsSocket);
  } else {
    const dataDirectory = path.dirname(path.resolve(directory));
    const candidates = flags.encryptionKeyFile !== undefined
      ? [flags.encryptionKeyFile]
      : [defaultKeyFile(dataDirectory), path.join(path.dirname(dataDirectory), 'encryption.key')];
    const keyFile = candidates.find((candidate) => existsSync(candidate));
    if (keyFile === undefined) {
      throw new Error(`the audit trail in ${directory} is sealed (encryption at rest): give the member's key-encryption key with --encryption-key-file FILE ` +
        `(or --encryption-kms-socket PATH); none found at ${candidates.join(' or ')}`);
    }
    provider = await FileKekProvider.open(keyFile);
  }
  try {
    return (await TrailKeyStore.open(directory, provider)).key;
  } finally {
    provider.close();
  }
}
