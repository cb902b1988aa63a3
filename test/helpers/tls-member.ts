/**
 * One TLS member started from a `rampart init` bundle (auth on, the shipped policies), its metrics
 * on their own port, and client certificates issued by its CA on demand: the setup an attacker
 * holding one valid certificate faces.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { connect, type RawClient } from './client.js';
import { cleanEnvironment, freePort, rampartBin, removeDirectory, run, temporaryDirectory } from './processes.js';

export interface TlsMember {
  readonly directory: string;
  readonly clientPort: number;
  readonly peerPort: number;
  readonly metricsPort: number;
  readonly child: ChildProcess;
  output(): string;
  /** A gRPC client presenting the certificate issued to `commonName` (issued on first use). */
  client(commonName: string, options?: grpc.ChannelOptions): Promise<RawClient>;
  /** etcdctl flags for the admin certificate (CN root). */
  readonly adminFlags: readonly string[];
  /** etcdctl flags for a certificate issued to `commonName`. */
  flagsFor(commonName: string): Promise<string[]>;
  metric(name: string): Promise<number>;
  stop(): Promise<void>;
}

export async function startTlsMember(extraArgs: readonly string[] = []): Promise<TlsMember> {
  const directory = await temporaryDirectory('tls-member');
  const [clientPort, peerPort, metricsPort] = [await freePort(), await freePort(), await freePort()];
  const init = await run(process.execPath, [rampartBin, 'init', '--member', 'a=127.0.0.1', '--out', directory,
    '--client-port', String(clientPort), '--peer-port', String(peerPort), '--data-dir', path.join(directory, 'data')]);
  if (init.code !== 0) throw new Error(`rampart init failed: ${init.stderr}`);
  const child = spawn(process.execPath, [rampartBin, 'serve', '--config-file', 'rampart.yaml', '--log-level', process.env.RAMPART_TEST_LOG_LEVEL ?? 'warn',
    '--listen-metrics-urls', `http://127.0.0.1:${metricsPort}`, ...extraArgs], { cwd: path.join(directory, 'a'), env: cleanEnvironment(), stdio: ['ignore', 'pipe', 'pipe'] });
  let text = '';
  child.stdout.on('data', (chunk: Buffer) => (text += chunk.toString()));
  child.stderr.on('data', (chunk: Buffer) => (text += chunk.toString()));
  const pki = path.join(directory, 'pki');
  const adminFlags = ['--endpoints', `https://127.0.0.1:${clientPort}`, '--cacert', path.join(pki, 'ca.crt'), '--cert', path.join(pki, 'admin.crt'), '--key', path.join(pki, 'admin.key'), '--dial-timeout=2s', '--command-timeout=5s'];
  const stop = async (): Promise<void> => {
    if (child.exitCode === null && child.signalCode === null) {
      const exited = new Promise((resolve) => child.once('exit', resolve));
      child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), 10_000);
      await exited;
      clearTimeout(timer);
    }
    await removeDirectory(directory);
  };
  // Serving once the admin can write (the bootstrap policies are applied by then).
  for (let attempt = 0; ; attempt++) {
    const put = await run('etcdctl', [...adminFlags, 'put', 'ready', 'yes'], { env: cleanEnvironment() });
    if (put.code === 0 && (await run('etcdctl', [...adminFlags, 'user', 'list'], { env: cleanEnvironment() })).stdout.includes('root')) break;
    if (attempt > 80 || child.exitCode !== null) {
      await stop();
      throw new Error(`TLS member did not serve:\n${text}${put.stderr}`);
    }
    await new Promise((resolve) => setTimeout(resolve, 250));
  }
  const { issueCertificate, readKeyPair, writeKeyPair } = await import('../../src/pki/authority.js');
  const authority = await readKeyPair(path.join(pki, 'ca'), 'ca');
  const caCertificate = await readFile(path.join(pki, 'ca.crt'));
  const issued = new Map<string, { key: Buffer; certificate: Buffer }>();
  const files = new Map<string, { certificateFile: string; keyFile: string }>();
  const filesFor = async (commonName: string): Promise<{ certificateFile: string; keyFile: string }> => {
    let pair = files.get(commonName);
    if (pair === undefined) {
      pair = commonName === 'root'
        ? { certificateFile: path.join(pki, 'admin.crt'), keyFile: path.join(pki, 'admin.key') }
        : await writeKeyPair(directory, `client-${commonName}`, await issueCertificate(authority, { kind: 'client', commonName }));
      files.set(commonName, pair);
    }
    return pair;
  };
  return {
    directory, clientPort, peerPort, metricsPort, child, adminFlags,
    output: () => text,
    flagsFor: async (commonName) => {
      const written = await filesFor(commonName);
      return ['--endpoints', `https://127.0.0.1:${clientPort}`, '--cacert', path.join(pki, 'ca.crt'), '--cert', written.certificateFile, '--key', written.keyFile, '--dial-timeout=2s', '--command-timeout=5s'];
    },
    client: async (commonName, options = {}) => {
      let pair = issued.get(commonName);
      if (pair === undefined) {
        const written = await filesFor(commonName);
        pair = { key: await readFile(written.keyFile), certificate: await readFile(written.certificateFile) };
        issued.set(commonName, pair);
      }
      return connect(`127.0.0.1:${clientPort}`, options, grpc.credentials.createSsl(caCertificate, pair.key, pair.certificate));
    },
    metric: async (name) => {
      const response = await fetch(`http://127.0.0.1:${metricsPort}/metrics`, { signal: AbortSignal.timeout(20_000) });
      const body = await response.text();
      const match = new RegExp(`^${name} (\\S+)$`, 'm').exec(body);
      if (match === null) throw new Error(`no metric ${name}`);
      return Number(match[1]);
    },
    stop,
  };
}
