/**
 * Loading many keys fast, as the scale tools do: keys 0 to `keyCount` - 1 written as Txns of
 * `putsPerTxn` puts, `loadInFlight` Txns in flight over the clients. Puts are idempotent, so a Txn
 * that failed (a timeout under load) is sent again, up to `attemptsMax` times.
 */
import { unary, type KvClient } from './secure-members.js';

export const putsPerTxn = 16;
export const loadInFlight = 32;
const attemptsMax = 3;

/** Writes the keys; answers the seconds it took. */
export async function loadKeys(clients: readonly KvClient[], keyCount: number, keyOf: (index: number) => Buffer, value: Buffer, timeoutMs?: number): Promise<number> {
  const batches = Math.ceil(keyCount / putsPerTxn);
  let next = 0;
  const worker = async (slot: number): Promise<void> => {
    const client = clients[slot % clients.length] as KvClient;
    for (;;) {
      const batch = next++;
      if (batch >= batches) return;
      const success = [];
      for (let index = batch * putsPerTxn; index < Math.min(keyCount, (batch + 1) * putsPerTxn); index++) success.push({ request_put: { key: keyOf(index), value } });
      for (let attempt = 1; ; attempt++) {
        try {
          await unary(client, 'Txn', { success }, timeoutMs);
          break;
        } catch (error) {
          if (attempt >= attemptsMax) throw new Error(`load: Txn ${batch} failed ${attempt} times: ${(error as Error).message}`);
        }
      }
    }
  };
  const started = performance.now();
  await Promise.all(Array.from({ length: loadInFlight }, (_, slot) => worker(slot)));
  return (performance.now() - started) / 1000;
}
