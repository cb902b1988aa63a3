/** How a member starts, or refuses to: secure by default, and never on a damaged log. */
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { cleanEnvironment, etcdctl, freePort, rampartBin, removeDirectory, run, startRampart, temporaryDirectory } from '../helpers/processes.js';

describe('member start', () => {
  it('refuses to serve without TLS unless --insecure is given', async () => {
    const dataDir = await temporaryDirectory('notls');
    const port = await freePort();
    const result = await run(process.execPath, [rampartBin, 'serve', '--data-dir', dataDir, '--listen-client-urls', `https://127.0.0.1:${port}`]);
    expect(result.code).toBe(1);
    expect(result.stderr).toContain('TLS is required: pass --cert-file, --key-file and --trusted-ca-file');
    const plaintextUrl = await run(process.execPath, [rampartBin, 'serve', '--insecure', '--data-dir', dataDir, '--listen-client-urls', `https://127.0.0.1:${port}`]);
    expect(plaintextUrl.code).toBe(1);
    expect(plaintextUrl.stderr).toContain('must use http://');
    await removeDirectory(dataDir);
  });

  it('refuses an --initial-cluster of more than 64 members (no member could join it), naming the bound', async () => {
    const dataDir = await temporaryDirectory('too-many-members');
    const initialCluster = Array.from({ length: 65 }, (_, index) => `m${index}=http://127.0.0.1:${30_000 + index}`).join(',');
    const result = await run(process.execPath, [rampartBin, 'serve', '--insecure', '--name', 'm0', '--data-dir', dataDir, '--listen-client-urls', 'http://127.0.0.1:1',
      '--listen-peer-urls', 'http://127.0.0.1:30000', '--initial-advertise-peer-urls', 'http://127.0.0.1:30000', '--initial-cluster', initialCluster]);
    expect(result.code).toBe(1);
    expect(result.stderr).toContain('--initial-cluster names 65 members: a cluster has at most 64');
    expect(result.stderr).not.toMatch(/\n\s+at /);
    await removeDirectory(dataDir);
  });

  it('starts from a YAML config file, with command-line flags winning, and names the line of a bad setting', async () => {
    const dataDir = await temporaryDirectory('config');
    const port = await freePort();
    const peerPort = await freePort();
    const file = `${dataDir}.yaml`;
    const { writeFile } = await import('node:fs/promises');
    await writeFile(file, [
      '# a member from a file',
      'name: from-file',
      `data-dir: ${dataDir}`,
      `listen-client-urls: [http://127.0.0.1:${port}]`,
      `listen-peer-urls: http://127.0.0.1:${peerPort}`,
      'insecure: true',
      'heartbeat-interval: 50',
      'log-level: warn',
      '',
    ].join('\n'));
    const { spawn } = await import('node:child_process');
    const child = spawn(process.execPath, [rampartBin, 'serve', '--config-file', file, '--name', 'from-cli'], { env: cleanEnvironment(), stdio: 'ignore' });
    try {
      let listed = '';
      for (let attempt = 0; attempt < 100 && !listed.includes('from-cli'); attempt++) {
        await new Promise((resolve) => setTimeout(resolve, 100));
        listed = (await etcdctl(`127.0.0.1:${port}`, ['member', 'list'])).stdout;
      }
      // Everything else came from the file (data dir, URLs, plaintext); the name from the command line.
      expect(listed).toContain(`, started, from-cli, http://127.0.0.1:${peerPort}, http://127.0.0.1:${port}, false`);
    } finally {
      child.kill('SIGTERM');
      await new Promise((resolve) => child.once('exit', resolve));
    }
    await writeFile(file, `name: x\ninsecure: true\nbogus-setting: 1\n`);
    const unknown = await run(process.execPath, [rampartBin, 'serve', '--config-file', file]);
    expect(unknown.code).toBe(1);
    expect(unknown.stderr).toBe(`rampart: ${file}:3: unknown setting "bogus-setting"\n`);
    await writeFile(file, `insecure: true\n\nsnapshot-count: many\n`);
    const badNumber = await run(process.execPath, [rampartBin, 'serve', '--config-file', file]);
    expect(badNumber.stderr).toBe(`rampart: ${file}:3: "snapshot-count": not a non-negative integer: many\n`);
    await writeFile(file, `insecure: [true\n`);
    const malformed = await run(process.execPath, [rampartBin, 'serve', '--config-file', file]);
    expect(malformed.code).toBe(1);
    expect(malformed.stderr).toMatch(new RegExp(`^rampart: ${file.replace(/[.]/g, '\\.')}:\\d+: `));
    await removeDirectory(dataDir);
  });

  it('creates its data 0700/0600 and refuses a data or key directory open to group or others, naming the fix', async () => {
    const { chmod, mkdir, readdir, stat } = await import('node:fs/promises');
    const home = await temporaryDirectory('modes');
    const dataDir = path.join(home, 'data');
    await mkdir(dataDir, { mode: 0o755 });
    await chmod(dataDir, 0o755);
    const port = await freePort();
    const serveArgs = ['serve', '--insecure', '--data-dir', dataDir, '--listen-client-urls', `http://127.0.0.1:${port}`, '--listen-peer-urls', `http://127.0.0.1:${await freePort()}`];
    const refused = await run(process.execPath, [rampartBin, ...serveArgs], { timeoutMs: 60_000 });
    expect(refused.code).toBe(1);
    expect(refused.stderr).toContain(`rampart: data directory ${dataDir} is accessible by group or others (mode 0755); run: chmod 700 ${dataDir}`);

    // Fixed as told, it starts; what it creates is its owner's only, whatever the umask (022 here).
    await chmod(dataDir, 0o700);
    const server = await startRampart({ dataDir, port });
    try {
      expect((await etcdctl(server.endpoint, ['put', 'private', 'yes'])).stdout).toBe('OK\n');
    } finally {
      await server.stop();
    }
    const modes: Record<string, string> = {};
    const walk = async (directory: string): Promise<void> => {
      for (const entry of await readdir(directory, { withFileTypes: true })) {
        const file = path.join(directory, entry.name);
        modes[path.relative(dataDir, file)] = ((await stat(file)).mode & 0o777).toString(8);
        if (entry.isDirectory()) await walk(file);
      }
    };
    await walk(dataDir);
    expect(Object.keys(modes)).toContain('db');
    expect(Object.keys(modes).filter((file) => file.startsWith('db/')).length).toBeGreaterThan(3);
    for (const [file, mode] of Object.entries(modes)) expect(`${file} ${mode}`).toMatch(/ (600|700)$/);

    // TLS: a private key, or the directory holding it, open to others stops the start too.
    const { createAuthority, issueCertificate, writeKeyPair } = await import('../../src/pki/authority.js');
    const authority = await createAuthority('modes');
    const pki = path.join(home, 'pki');
    const server1 = await writeKeyPair(pki, 'server', await issueCertificate(authority, { kind: 'server', commonName: 'm1', subjectAltNames: ['127.0.0.1'] }));
    const peer = await writeKeyPair(pki, 'peer', await issueCertificate(authority, { kind: 'peer', commonName: 'm1', subjectAltNames: ['127.0.0.1'] }));
    const { writeFile } = await import('node:fs/promises');
    await writeFile(path.join(pki, 'ca.crt'), authority.certificatePem);
    const tlsArgs = [
      'serve', '--data-dir', dataDir, '--listen-client-urls', `https://127.0.0.1:${port}`, '--listen-peer-urls', `https://127.0.0.1:${await freePort()}`,
      '--cert-file', server1.certificateFile, '--key-file', server1.keyFile, '--trusted-ca-file', path.join(pki, 'ca.crt'),
      '--peer-cert-file', peer.certificateFile, '--peer-key-file', peer.keyFile, '--peer-trusted-ca-file', path.join(pki, 'ca.crt'), '--no-bootstrap-auth',
    ];
    await chmod(pki, 0o750);
    const openDirectory = await run(process.execPath, [rampartBin, ...tlsArgs], { timeoutMs: 60_000 });
    expect(openDirectory.code).toBe(1);
    expect(openDirectory.stderr).toContain(`key directory ${pki} is accessible by group or others (mode 0750); run: chmod 700 ${pki}`);
    await chmod(pki, 0o700);
    await chmod(peer.keyFile, 0o644);
    const openKey = await run(process.execPath, [rampartBin, ...tlsArgs], { timeoutMs: 60_000 });
    expect(openKey.code).toBe(1);
    expect(openKey.stderr).toContain(`private key ${peer.keyFile} is accessible by group or others (mode 0644); run: chmod 600 ${peer.keyFile}`);
    // A peer certificate speaks for the member its CN names: one naming another member is refused.
    await chmod(peer.keyFile, 0o600);
    const otherName = await run(process.execPath, [rampartBin, ...tlsArgs, '--name', 'm2'], { timeoutMs: 60_000 });
    expect(otherName.code).toBe(1);
    expect(otherName.stderr).toContain(`the peer certificate ${peer.certificateFile} names "m1", not this member (--name "m2")`);
    await removeDirectory(home);
  }, 60_000);

  it('keeps data across a clean restart', async () => {
    const first = await startRampart();
    expect((await etcdctl(first.endpoint, ['put', 'durable', 'yes'])).stdout).toBe('OK\n');
    const lease = await etcdctl(first.endpoint, ['lease', 'grant', '600']);
    const leaseId = /lease ([0-9a-f]+) granted/.exec(lease.stdout)?.[1] ?? '';
    await etcdctl(first.endpoint, ['put', 'leased', 'v', `--lease=${leaseId}`]);
    await first.stop();
    const second = await startRampart({ dataDir: first.dataDir });
    try {
      expect((await etcdctl(second.endpoint, ['get', 'durable', '--print-value-only'])).stdout).toBe('yes\n');
      const ttl = await etcdctl(second.endpoint, ['lease', 'timetolive', leaseId, '--keys']);
      expect(ttl.stdout).toMatch(new RegExp(`^lease ${leaseId} granted with TTL\\(600s\\), remaining\\(\\d+s\\), attached keys\\(\\[leased\\]\\)\\n$`));
    } finally {
      await second.stop();
      await removeDirectory(first.dataDir);
    }
  });

  it('refuses to start on a log damaged before its last write, naming the file and offset', async () => {
    const server = await startRampart();
    for (let index = 0; index < 5; index++) {
      await etcdctl(server.endpoint, ['put', `k${index}`, 'v']);
    }
    await server.stop();
    const { readFile, readdir, writeFile } = await import('node:fs/promises');
    const walDir = path.join(server.dataDir, 'wal');
    const segments = (await readdir(walDir)).filter((name) => name.endsWith('.seg')).sort();
    expect(segments.length).toBeGreaterThan(0);
    const file = path.join(walDir, segments[0] ?? '');
    const contents = await readFile(file);
    // A flipped bit in the first record; the member wrote several after it.
    contents.writeUInt8(contents.readUInt8(20) ^ 0x40, 20);
    await writeFile(file, contents);
    const result = await run(process.execPath, [rampartBin, 'serve', '--insecure', '--data-dir', server.dataDir, '--listen-client-urls', `http://127.0.0.1:${await freePort()}`, '--listen-peer-urls', `http://127.0.0.1:${server.peerPort}`]);
    expect(result.code).toBe(3);
    expect(result.stderr).toMatch(new RegExp(`rampart: ${file}: the record at offset 0 is damaged and a valid record follows it at offset \\d+`));
    await removeDirectory(server.dataDir);
  });

  it('refuses to start on a flipped bit in the log\'s last write (was cut off as a torn tail, losing an acknowledged entry)', async () => {
    const server = await startRampart();
    for (let index = 0; index < 5; index++) {
      expect((await etcdctl(server.endpoint, ['put', `k${index}`, 'v'.repeat(100)])).stdout).toBe('OK\n');
    }
    await server.stop();
    const { readFile, readdir, writeFile } = await import('node:fs/promises');
    const { scanFrames } = await import('../../src/storage/wal/frame.js');
    const walDir = path.join(server.dataDir, 'wal');
    const segments = (await readdir(walDir)).filter((name) => name.endsWith('.seg')).sort();
    const file = path.join(walDir, segments[segments.length - 1] ?? '');
    const contents = await readFile(file);
    const last = scanFrames(contents, file).frames.at(-1);
    if (last === undefined) throw new Error('no frame in the last segment');
    // One bit of the last frame's payload, in the sector its header is in (written whole with it).
    const at = last.offset + 8 + Math.min(last.payload.length, 512 - ((last.offset + 8) % 512)) - 1;
    contents.writeUInt8(contents.readUInt8(at) ^ 0x01, at);
    await writeFile(file, contents);
    const result = await run(process.execPath, [rampartBin, 'serve', '--insecure', '--data-dir', server.dataDir, '--listen-client-urls', `http://127.0.0.1:${await freePort()}`, '--listen-peer-urls', `http://127.0.0.1:${server.peerPort}`]);
    expect(result.code).toBe(3);
    expect(result.stderr).toContain(`rampart: ${file}: the record at offset ${last.offset} is whole (no sector of it unwritten) but fails its checksum (not a torn last write); refusing to use the log`);
    expect((await readFile(file)).equals(contents)).toBe(true);
    await removeDirectory(server.dataDir);
  });
});
