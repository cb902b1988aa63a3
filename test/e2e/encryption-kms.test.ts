/**
 * The `kms` KEK provider end to end over a real unix socket with `rampart kms dev-plugin`: a member
 * wraps its data keys with the plugin; the plugin killed while the member serves: requests keep
 * succeeding, /readyz and the metric say the provider is unreachable, and it recovers by itself
 * when the plugin is back; a new key_id in the plugin makes the member re-wrap by itself; a restart
 * with the plugin absent is refused naming the socket; with the plugin back everything reads back.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { rm } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { MemberEncryptionStatus } from '../../src/cli/encryption.js';
import { cleanEnvironment, etcdctl, freePort, rampartBin, removeDirectory, run, startRampart, temporaryDirectory, type ServerProcess } from '../helpers/processes.js';

describe('encryption with a KMS v2 plugin', () => {
  let directory: string;
  let socket: string;
  let keyFile: string;
  let plugin: ChildProcess | undefined;
  let member: ServerProcess | undefined;
  let metricsPort: number;

  const startPlugin = async (): Promise<void> => {
    // A killed plugin leaves its socket file behind; wait for the new one's.
    await rm(socket, { force: true });
    plugin = spawn(process.execPath, [rampartBin, 'kms', 'dev-plugin', '--socket', socket, '--key-file', keyFile], { env: cleanEnvironment(), stdio: 'ignore' });
    const deadline = Date.now() + 15_000;
    while (!existsSync(socket)) {
      if (Date.now() > deadline) throw new Error('the dev plugin did not create its socket');
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
  };
  const killPlugin = async (): Promise<void> => {
    const child = plugin;
    if (child === undefined || child.exitCode !== null || child.signalCode !== null) return;
    const exited = new Promise((resolve) => child.once('exit', resolve));
    child.kill('SIGKILL');
    await exited;
  };
  const status = async (): Promise<MemberEncryptionStatus> => {
    const result = await run(process.execPath, [rampartBin, 'encryption', 'status', '--json', '--endpoints', `http://${member?.endpoint}`]);
    expect(result.code, result.stderr).toBe(0);
    return JSON.parse(result.stdout) as MemberEncryptionStatus;
  };
  const fetchText = async (route: string): Promise<{ status: number; body: string }> => {
    const response = await fetch(`http://127.0.0.1:${metricsPort}${route}`);
    return { status: response.status, body: await response.text() };
  };
  const eventually = async (check: () => Promise<boolean>, what: string): Promise<void> => {
    const deadline = Date.now() + 20_000;
    while (!(await check())) {
      if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
      await new Promise((resolve) => setTimeout(resolve, 200));
    }
  };

  beforeAll(async () => {
    directory = await temporaryDirectory('kms');
    socket = path.join(directory, 'kms.sock');
    keyFile = path.join(directory, 'kms-keys.json');
    metricsPort = await freePort();
    await startPlugin();
    member = await startRampart({ dataDir: path.join(directory, 'data'), args: ['--encryption-kms-socket', socket, '--listen-metrics-urls', `http://127.0.0.1:${metricsPort}`] });
  }, 60_000);

  afterAll(async () => {
    await member?.stop();
    await killPlugin();
    if (directory !== undefined) await removeDirectory(directory);
  }, 120_000);

  it('seals under data keys the plugin wrapped', async () => {
    expect((await etcdctl(member?.endpoint ?? '', ['put', 'kms/a', 'secret-a'])).stdout).toBe('OK\n');
    const seen = await status();
    expect(seen.provider).toBe('kms');
    expect(seen.provider_source).toBe(socket);
    expect(seen.provider_reachable).toBe(true);
    expect(seen.kek_id).toMatch(/^dev-key-1-/);
    expect(seen.deks.map((dek) => dek.kek_id)).toEqual([seen.kek_id]);
  });

  it('keeps serving with the plugin killed, says so on /readyz and in the metrics, and recovers by itself', async () => {
    expect((await fetchText('/readyz')).status).toBe(200);
    await killPlugin();
    await eventually(async () => (await fetchText('/readyz')).status === 503, '/readyz to fail');
    expect((await fetchText('/readyz')).body).toBe('not ready: key-encryption key provider unreachable\n');
    expect((await fetchText('/metrics')).body).toMatch(/^rampart_encryption_kek_provider_reachable 0$/m);
    for (let index = 0; index < 20; index++) {
      expect((await etcdctl(member?.endpoint ?? '', ['put', `kms/during/${index}`, `v${index}`])).stdout).toBe('OK\n');
    }
    expect((await etcdctl(member?.endpoint ?? '', ['get', 'kms/a', '--print-value-only'])).stdout).toBe('secret-a\n');
    await startPlugin();
    await eventually(async () => (await fetchText('/readyz')).status === 200, '/readyz to recover');
    expect((await fetchText('/metrics')).body).toMatch(/^rampart_encryption_kek_provider_reachable 1$/m);
  }, 60_000);

  it('re-wraps its data keys by itself when the plugin reports a new key_id', async () => {
    const before = await status();
    const rotated = await run(process.execPath, [rampartBin, 'kms', 'dev-rotate', '--key-file', keyFile]);
    expect(rotated.code, rotated.stderr).toBe(0);
    const newKey = /current key_id: (\S+)/.exec(rotated.stdout)?.[1];
    expect(newKey).toMatch(/^dev-key-2-/);
    let after = before;
    await eventually(async () => {
      after = await status();
      return after.deks.every((dek) => dek.kek_id === newKey);
    }, 're-wrap under the new key_id');
    expect(after.kek_id).toBe(newKey);
    expect(after.active_dek).toBe(before.active_dek);
  }, 60_000);

  it('refuses to start with the plugin absent, naming the socket; starts and reads back once it is there', async () => {
    await member?.stop();
    await killPlugin();
    const port = await freePort();
    const refused = await run(process.execPath, [rampartBin, 'serve', '--insecure', '--data-dir', path.join(directory, 'data'), '--listen-client-urls', `http://127.0.0.1:${port}`, '--listen-peer-urls', `http://127.0.0.1:${await freePort()}`, '--encryption-kms-socket', socket], { timeoutMs: 20_000 });
    expect(refused.code).not.toBe(0);
    expect(refused.stderr).toContain(`KMS plugin at ${socket} does not answer`);
    await startPlugin();
    member = await startRampart({ dataDir: path.join(directory, 'data'), args: ['--encryption-kms-socket', socket, '--listen-metrics-urls', `http://127.0.0.1:${metricsPort}`] });
    expect((await etcdctl(member.endpoint, ['get', 'kms/a', '--print-value-only'])).stdout).toBe('secret-a\n');
    expect((await etcdctl(member.endpoint, ['get', 'kms/during/19', '--print-value-only'])).stdout).toBe('v19\n');
  }, 60_000);
});
