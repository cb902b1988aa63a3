/**
 * Key-encryption key (KEK) providers: they wrap and unwrap data-encryption keys (DEKs) and never
 * see a record. `kek-file.ts` keeps the KEK in a local file; `kms.ts` asks a Kubernetes KMS v2
 * plugin, which keeps it in an HSM or a cloud KMS.
 *
 * A provider is asked only when the member starts (to unwrap every DEK), when it creates a DEK,
 * and when DEKs are re-wrapped under a new KEK; the unwrapped DEKs stay in memory, so a provider
 * that goes away while the member serves stops nothing but rotations.
 */

/** A DEK as its provider wrapped it; stored as is in the key store. */
export interface WrappedKey {
  /** The KEK that wrapped it (file: its fingerprint; kms: the plugin's key_id). */
  readonly kekId: string;
  readonly ciphertext: Buffer;
  /** KMS v2 annotations returned by Encrypt, handed back to Decrypt. */
  readonly annotations: ReadonlyMap<string, Buffer>;
}

export interface KekHealth {
  readonly reachable: boolean;
  /** The KEK the provider uses now; a change means DEKs should be re-wrapped. */
  readonly kekId: string;
  readonly detail: string;
}

export interface KekProvider {
  /** 'file' or 'kms'. */
  readonly kind: string;
  /** What to name in errors: the key file or the plugin socket. */
  readonly source: string;
  wrap(plaintext: Buffer): Promise<WrappedKey>;
  unwrap(wrapped: WrappedKey): Promise<Buffer>;
  /** Asks the provider whether it works and which KEK it uses now. */
  health(): Promise<KekHealth>;
  /**
   * KEK rotation, in three steps around the re-wrap of every DEK: `beginRotation` makes `wrap` use
   * the new KEK (file: a new key in `<file>.next`; kms: the plugin's current key_id),
   * `completeRotation` makes it the only one (file: renames it over the old file).
   */
  beginRotation(): Promise<void>;
  completeRotation(): Promise<void>;
  /** After the key store was loaded: finishes or discards a rotation a crash interrupted. */
  settle(): Promise<void>;
  close(): void;
}

export class KeyProviderError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'KeyProviderError';
  }
}
