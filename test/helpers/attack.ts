/**
 * What the attack-review e2e tests share: the TLS member they attack, a certificate's files as TLS
 * options, a member's RSS and CPU time, and a gateway Put from a chosen source address.
 */
import { readFile } from 'node:fs/promises';
import { request } from 'node:https';
import { afterAll, beforeAll } from 'vitest';
import { startTlsMember, type TlsMember } from './tls-member.js';

export interface Credentials { readonly ca: Buffer; readonly cert: Buffer; readonly key: Buffer }

export async function credentialsFor(member: TlsMember, commonName: string): Promise<Credentials> {
  const flags = await member.flagsFor(commonName);
  const file = (flag: string): Promise<Buffer> => readFile(flags[flags.indexOf(flag) + 1] ?? '');
  return { ca: await file('--cacert'), cert: await file('--cert'), key: await file('--key') };
}

/** The member a describe block attacks, and the credentials of each named certificate (ready once its beforeAll ran). */
export type AttackTarget<Name extends string> = { readonly member: TlsMember } & { readonly [name in Name]: Credentials };

/**
 * Starts a TLS member before the calling describe block's tests (startTlsMember; 60 s allowed) with
 * credentials for the certificates `names` (the member's CA issues them: 'stranger' is no user,
 * 'root' the admin), and stops it after them. Read its fields inside hooks and tests only.
 */
export function attackTarget<Name extends string>(...names: Name[]): AttackTarget<Name> {
  let member: TlsMember | undefined;
  const credentials = new Map<string, Credentials>();
  beforeAll(async () => {
    member = await startTlsMember();
    for (const name of names) credentials.set(name, await credentialsFor(member, name));
  }, 60_000);
  afterAll(async () => {
    await member?.stop();
  });
  const started = <T>(value: T | undefined): T => {
    if (value === undefined) throw new Error('the attacked member starts in beforeAll: read it in hooks and tests only');
    return value;
  };
  const target = { get member(): TlsMember { return started(member); } };
  for (const name of names) Object.defineProperty(target, name, { get: () => started(credentials.get(name)), enumerable: true });
  return target as AttackTarget<Name>;
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
