/**
 * Source addresses for the soak's members: a test-only LD_PRELOAD shim (source-address.c, compiled
 * here with the system C compiler) binds each member's outgoing connections to an address of its
 * own on loopback, so the fault proxies know who sends without reading the (TLS) bytes. Reported
 * unavailable, with why, when this machine cannot compile it.
 */
import { execFile } from 'node:child_process';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const shimSource = path.join(path.dirname(fileURLToPath(import.meta.url)), 'source-address.c');

export interface SourceAddresses {
  readonly library: string;
  /** The address member `index` (0-based) connects from. */
  address(index: number): string;
  /** Environment for member `index`. */
  env(index: number): Record<string, string>;
}

export async function prepareSourceAddresses(directory: string): Promise<SourceAddresses | string> {
  const library = path.join(directory, 'source-address.so');
  const problem = await new Promise<string | undefined>((resolve) => {
    execFile('cc', ['-shared', '-fPIC', '-O2', '-o', library, shimSource, '-ldl'], { timeout: 60_000 }, (error, _stdout, stderr) => resolve(error === null ? undefined : `cc: ${stderr.toString().trim() || error.message}`));
  });
  if (problem !== undefined) return problem;
  // 127.0.0.1 stays the soak's own (its clients and the proxies' upstream connections).
  const address = (index: number): string => `127.0.0.${11 + index}`;
  return { library, address, env: (index) => ({ LD_PRELOAD: library, RAMPART_TEST_SOURCE_ADDRESS: address(index) }) };
}
