/**
 * Opens batches of sealed records on a worker thread (record-opener-worker.ts), for long scans:
 * the index rebuild at start decrypts every record, and one thread doing both the decryption and
 * the indexing took most of a restart. The DEKs go to the worker (same process, same memory
 * protections); records travel packed in one transferred buffer each way.
 *
 * Owns: the worker and its pending batches. Never: trusts the worker for an error; a record the
 * worker did not open is opened (or refused, with the precise error) on the caller's thread.
 */
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { Worker } from 'node:worker_threads';

export interface OpenRequest {
  readonly id: number;
  /** Every record's LevelDB key then its sealed value, back to back. */
  readonly records: ArrayBuffer;
  /** Per record: key bytes, value bytes. */
  readonly lengths: Uint32Array;
}

export interface OpenResponse {
  readonly id: number;
  /** The opened plaintexts, back to back. */
  readonly plaintexts: ArrayBuffer;
  /** Per record: plaintext bytes, or -1 when the worker did not open it. */
  readonly lengths: Int32Array;
}

const workerFile = fileURLToPath(new URL('./record-opener-worker.js', import.meta.url));

export class ParallelOpener {
  private nextId = 0;
  private readonly pending = new Map<number, { resolve: (response: OpenResponse) => void; reject: (error: Error) => void }>();
  private failure: Error | undefined;

  private constructor(private readonly worker: Worker) {
    worker.unref();
    worker.on('message', (response: OpenResponse) => {
      const waiter = this.pending.get(response.id);
      this.pending.delete(response.id);
      waiter?.resolve(response);
    });
    const fail = (error: Error): void => {
      this.failure = error;
      for (const waiter of this.pending.values()) waiter.reject(error);
      this.pending.clear();
    };
    worker.on('error', fail);
    worker.on('exit', () => fail(new Error('the record opener worker exited')));
  }

  /**
   * A worker holding `deks`, or undefined where the compiled worker is not at hand (running from
   * TypeScript sources, as the unit tests do): the caller then opens records on its own thread.
   */
  static start(deks: ReadonlyMap<number, Buffer>): ParallelOpener | undefined {
    if (!workerFile.endsWith('.js') || !existsSync(workerFile)) return undefined;
    return new ParallelOpener(new Worker(workerFile, { workerData: { deks: [...deks] } }));
  }

  /**
   * Each record's plaintext, or undefined where the worker did not open it (damage, an unknown
   * DEK, plaintext): the caller opens those itself. Rejects when the worker is gone.
   */
  async open(records: readonly (readonly [Buffer, Buffer])[]): Promise<(Buffer | undefined)[]> {
    if (this.failure !== undefined) throw this.failure;
    const lengths = new Uint32Array(records.length * 2);
    let bytes = 0;
    records.forEach(([key, value], position) => {
      lengths[position * 2] = key.length;
      lengths[position * 2 + 1] = value.length;
      bytes += key.length + value.length;
    });
    const packed = new Uint8Array(bytes);
    let offset = 0;
    for (const [key, value] of records) {
      packed.set(key, offset);
      packed.set(value, offset + key.length);
      offset += key.length + value.length;
    }
    const id = this.nextId++;
    const response = await new Promise<OpenResponse>((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      const request: OpenRequest = { id, records: packed.buffer, lengths };
      this.worker.postMessage(request, [packed.buffer, lengths.buffer]);
    });
    const plaintexts: (Buffer | undefined)[] = [];
    let plaintextOffset = 0;
    for (const length of response.lengths) {
      if (length < 0) {
        plaintexts.push(undefined);
        continue;
      }
      plaintexts.push(Buffer.from(response.plaintexts, plaintextOffset, length));
      plaintextOffset += length;
    }
    return plaintexts;
  }

  async close(): Promise<void> {
    await this.worker.terminate();
  }
}
