/**
 * The `kms` KEK provider: a Kubernetes KMS v2 plugin on a unix socket (`proto/kms-v2.proto`) wraps
 * and unwraps the data keys; the KEK never leaves the plugin's KMS. Stored with each wrapped DEK:
 * the plugin's key_id and annotations, handed back to Decrypt as the API requires.
 *
 * The plugin is needed at start (every DEK is unwrapped then: a socket that is absent or does not
 * answer stops the member, naming the socket) and for rotations. While the member serves, a dead
 * plugin stops nothing: the DEKs are already unwrapped in memory (as KMS v2 in Kubernetes); the
 * member's health check reports it (metric, /readyz) and it recovers by itself. A key_id reported
 * by Status that differs from the one wrapping the DEKs (the KMS rotated its key) makes the member
 * re-wrap its DEKs under it.
 */
import { randomUUID } from 'node:crypto';
import { stat } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { KeyProviderError, type KekHealth, type KekProvider, type WrappedKey } from './kek.js';

export const kmsProtoFile = fileURLToPath(new URL('./proto/kms-v2.proto', import.meta.url));
/** How long one call to the plugin may take. */
const kmsCallTimeoutMs = 5_000;

type Callback<Response> = (error: grpc.ServiceError | null, response: Response) => void;

export interface KmsStatusResponse { version: string; healthz: string; key_id: string }
export interface KmsEncryptResponse { ciphertext: Buffer; key_id: string; annotations: Record<string, Buffer> }

interface KmsClient extends grpc.Client {
  Status(request: object, options: grpc.CallOptions, callback: Callback<KmsStatusResponse>): void;
  Encrypt(request: object, options: grpc.CallOptions, callback: Callback<KmsEncryptResponse>): void;
  Decrypt(request: object, options: grpc.CallOptions, callback: Callback<{ plaintext: Buffer }>): void;
}

/** The v2.KeyManagementService definition, for the client here and the dev plugin. */
export function kmsService(): grpc.ServiceClientConstructor {
  const definition = protoLoader.loadSync(kmsProtoFile, { keepCase: true, longs: String, enums: Number, defaults: true });
  const loaded = grpc.loadPackageDefinition(definition) as unknown as { v2: { KeyManagementService: grpc.ServiceClientConstructor } };
  return loaded.v2.KeyManagementService;
}

function unary<Response>(invoke: (options: grpc.CallOptions, callback: Callback<Response>) => void): Promise<Response> {
  return new Promise((resolve, reject) => {
    invoke({ deadline: Date.now() + kmsCallTimeoutMs }, (error, response) => (error === null ? resolve(response) : reject(new Error(error.details || error.message))));
  });
}

export class KmsKekProvider implements KekProvider {
  readonly kind = 'kms';

  private constructor(readonly source: string, private readonly client: KmsClient) {}

  /** Connects and checks the plugin answers Status healthy; errors name the socket. */
  static async open(socket: string): Promise<KmsKekProvider> {
    const absolute = path.resolve(socket);
    const info = await stat(absolute).catch(() => undefined);
    if (info === undefined) throw new KeyProviderError(`KMS plugin socket ${absolute} does not exist (is the plugin running?)`);
    if (!info.isSocket()) throw new KeyProviderError(`KMS plugin socket ${absolute} is not a unix socket`);
    const Service = kmsService();
    const provider = new KmsKekProvider(absolute, new Service(`unix:${absolute}`, grpc.credentials.createInsecure()) as unknown as KmsClient);
    const health = await provider.health();
    if (!health.reachable) {
      provider.close();
      throw new KeyProviderError(`KMS plugin at ${absolute} does not answer or is unhealthy (is it running?): ${health.detail}`);
    }
    return provider;
  }

  async health(): Promise<KekHealth> {
    try {
      const status = await unary<KmsStatusResponse>((options, callback) => this.client.Status({}, options, callback));
      if (status.version !== 'v2' && status.version !== 'v2beta1') return { reachable: false, kekId: '', detail: `unsupported KMS API version "${status.version}"` };
      if (status.healthz !== 'ok') return { reachable: false, kekId: status.key_id, detail: `plugin reports "${status.healthz}"` };
      if (status.key_id === '') return { reachable: false, kekId: '', detail: 'plugin reports an empty key_id' };
      return { reachable: true, kekId: status.key_id, detail: this.source };
    } catch (error) {
      return { reachable: false, kekId: '', detail: error instanceof Error ? error.message : String(error) };
    }
  }

  async wrap(plaintext: Buffer): Promise<WrappedKey> {
    const response = await unary<KmsEncryptResponse>((options, callback) => this.client.Encrypt({ plaintext, uid: randomUUID() }, options, callback)).catch((error: unknown) => {
      throw new KeyProviderError(`KMS plugin at ${this.source}: Encrypt failed: ${error instanceof Error ? error.message : String(error)}`);
    });
    if (response.key_id === '' || response.ciphertext.length === 0) throw new KeyProviderError(`KMS plugin at ${this.source}: Encrypt returned no key_id or ciphertext`);
    return { kekId: response.key_id, ciphertext: Buffer.from(response.ciphertext), annotations: new Map(Object.entries(response.annotations).map(([name, value]) => [name, Buffer.from(value)])) };
  }

  async unwrap(wrapped: WrappedKey): Promise<Buffer> {
    const request = { ciphertext: wrapped.ciphertext, uid: randomUUID(), key_id: wrapped.kekId, annotations: Object.fromEntries(wrapped.annotations) };
    const response = await unary<{ plaintext: Buffer }>((options, callback) => this.client.Decrypt(request, options, callback)).catch((error: unknown) => {
      throw new KeyProviderError(`KMS plugin at ${this.source}: Decrypt of a data key wrapped by key_id ${wrapped.kekId} failed: ${error instanceof Error ? error.message : String(error)}`);
    });
    return Buffer.from(response.plaintext);
  }

  /** The plugin encrypts with its current key_id: re-wrapping needs nothing more. */
  async beginRotation(): Promise<void> {}

  async completeRotation(): Promise<void> {}

  async settle(): Promise<void> {}

  close(): void {
    this.client.close();
  }
}
