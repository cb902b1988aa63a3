/**
 * What the attack-review e2e tests share: a certificate's files as TLS options, a member's RSS, and
 * a gateway Put from a chosen source address.
 */
import { readFile } from 'node:fs/promises';
import { request } from 'node:https';
import type { TlsMember } from './tls-member.js';

export interface Credentials { readonly ca: Buffer; readonly cert: Buffer; readonly key: Buffer }

export async function credentialsFor(member: TlsMember, commonName: string): Promise<Credentials> {
  const flags = await member.flagsFor(commonName);
  const file = (flag: string): Promise<Buffer> => readFile(flags[flags.indexOf(flag) + 1] ?? '');
  return { ca: await file('--cacert'), cert: await file('--cert'), key: await file('--key') };
}

export async function residentBytes(pid: number): Promise<number> {
  const status = await readFile(`/proc/${pid}/status`, 'utf8');
  return Number(/^VmRSS:\s+(\d+) kB$/m.exec(status)?.[1] ?? Number.NaN) * 1024;
}

/** Clock ticks a second in /proc/<pid>/stat (USER_HZ: 100 on every Linux this runs on). */
const clockTicksPerSecond = 100;

/**
 * CPU time a process has used (user + system), from /proc (Linux): what its work cost, which,
 * unlike wall-clock delays, does not grow while other processes hold the cores.
 */
export async function cpuMilliseconds(pid: number): Promise<number> {
  const stat = await readFile(`/proc/${pid}/stat`, 'utf8');
  // Fields after the command name (which may hold spaces): state is field 3, utime 14, stime 15.
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return ((Number(fields[11]) + Number(fields[12])) * 1000) / clockTicksPerSecond;
}

/** A gateway Put of `valueBytes` from `localAddress`: `STATUS BODY`. */
export function httpsPut(port: number, credentials: Credentials, key: string, valueBytes: number, localAddress = '127.0.0.1'): Promise<string> {
  return new Promise((resolve, reject) => {
    const put = request({ host: '127.0.0.1', localAddress, port, path: '/v3/kv/put', method: 'POST', agent: false, ...credentials }, (response) => {
      let body = '';
      response.on('data', (chunk: Buffer) => (body += chunk.toString()));
      response.on('end', () => resolve(`${response.statusCode ?? 0} ${body}`));
    });
    put.on('error', reject);
    put.end(JSON.stringify({ key: Buffer.from(key).toString('base64'), value: Buffer.alloc(valueBytes, 'v').toString('base64') }));
  });
}
