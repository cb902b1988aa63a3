/**
 * Quorum-witnessed audit checkpoints on a 3-member `rampart up` cluster: each member proposes its
 * chain head through Raft every few seconds and on shutdown, and `rampart audit verify` checks a
 * trail against what the cluster holds — a trail cut short, rewritten with a recomputed chain, or
 * missing a file is caught with no anchor given, also offline from a saved export.
 */
import { cp, mkdtemp, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { eventLine, hashEvent, type AuditEvent } from '../../src/audit/event.js';
import { cleanEnvironment, freeBasePort, rampartBin, removeDirectory, run, temporaryDirectory } from '../helpers/processes.js';

describe('audit checkpoints witnessed by the cluster', () => {
  let home: string;
  let base: number;
  const rampart = (args: string[]) => run(process.execPath, [rampartBin, ...args], { timeoutMs: 60_000 });
  const pki = (): string => path.join(home, 'pki');
  /** Requests to m1, whose trail is examined. */
  const etcdctl = (args: string[]) => run('etcdctl', ['--endpoints', `https://127.0.0.1:${base}`, '--cacert', path.join(pki(), 'ca.crt'), '--cert', path.join(pki(), 'admin.crt'), '--key', path.join(pki(), 'admin.key'), '--command-timeout=5s', ...args], { env: cleanEnvironment() });
  /** Reaches the cluster through m2: m1 is stopped once its trail is final. */
  const viaM2 = (): string[] => ['--dir', home, '--endpoints', `https://127.0.0.1:${base + 10_000}`];
  const m1Trail = (): string => path.join(home, 'm1', 'data', 'audit');

  beforeAll(async () => {
    home = path.join(await temporaryDirectory('audit-checkpoints'), 'cluster');
    base = await freeBasePort();
    const result = await rampart(['up', '--dir', home, '--size', '3', '--base-port', String(base)]);
    expect(result.code, result.stderr).toBe(0);
  }, 90_000);

  afterAll(async () => {
    if (home !== undefined) {
      await rampart(['down', '--dir', home]);
      await removeDirectory(path.dirname(home));
    }
  }, 30_000);

  const stopM1 = async (): Promise<void> => {
    const pid = Number((await readFile(path.join(home, 'm1', 'pid'), 'utf8')).trim());
    process.kill(pid, 'SIGTERM');
    for (let attempt = 0; attempt < 100; attempt++) {
      try {
        process.kill(pid, 0);
      } catch {
        await rm(path.join(home, 'm1', 'pid'), { force: true });
        return;
      }
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
    throw new Error('m1 did not stop');
  };

  const copyOfTrail = async (): Promise<{ directory: string; files: string[] }> => {
    const directory = await mkdtemp(path.join(path.dirname(home), 'trail-'));
    await cp(m1Trail(), directory, { recursive: true });
    return { directory, files: (await readdir(directory)).sort().map((name) => path.join(directory, name)) };
  };

  it('catches a trail cut short, rewritten with a recomputed chain, or missing a file, with no anchor given', async () => {
    for (let index = 0; index < 5; index++) expect((await etcdctl(['put', `/first/${index}`, 'v'])).code).toBe(0);
    // A restart opens m1's second file; its shutdown proposes a last checkpoint of the first.
    await stopM1();
    expect((await rampart(['up', '--dir', home])).code).toBe(0);
    for (let index = 0; index < 5; index++) expect((await etcdctl(['put', `/second/${index}`, 'v'])).code).toBe(0);
    await stopM1();
    const files = (await readdir(m1Trail())).sort();
    expect(files).toHaveLength(2);

    const saved = (await rampart(['audit', 'checkpoints', ...viaM2()])).stdout;
    const checkpoints = saved.trim().split('\n').map((line) => JSON.parse(line) as { member: string; file: string; seq: number });
    const member = (JSON.parse((await readFile(path.join(m1Trail(), files[0] as string), 'utf8')).split('\n')[0] as string) as AuditEvent).member;
    // Every member witnesses its trail; m1's checkpoints name both of its files.
    expect(new Set(checkpoints.map((checkpoint) => checkpoint.member)).size).toBe(3);
    expect(new Set(checkpoints.filter((checkpoint) => checkpoint.member === member && checkpoint.file !== undefined).map((checkpoint) => checkpoint.file))).toEqual(new Set(files));
    const exported = path.join(path.dirname(home), 'checkpoints.jsonl');
    await writeFile(exported, saved);

    const intact = await rampart(['audit', 'verify', m1Trail(), ...viaM2()]);
    expect(intact.stderr).toBe('');
    expect(intact.stdout).toMatch(/^audit trail intact: \d+ events in 2 files; head [0-9a-f]{64}; [1-9]\d* checkpoints matched, each signed by the member's audit key \(CA-issued\)\n$/);
    // Offline: the saved export and the CA certificate are enough.
    const offlineIntact = await rampart(['audit', 'verify', m1Trail(), '--checkpoints', exported, '--cacert', path.join(pki(), 'ca.crt')]);
    expect(offlineIntact.stdout, offlineIntact.stderr).toMatch(/checkpoints matched, each signed/);

    // Cut short: the last events of the newest file removed. Whole without a witness; caught with one.
    const cut = await copyOfTrail();
    const newest = cut.files[1] as string;
    const newestLines = (await readFile(newest, 'utf8')).trim().split('\n');
    await writeFile(newest, `${newestLines.slice(0, -3).join('\n')}\n`);
    const cutAlone = await rampart(['audit', 'verify', cut.directory]);
    expect(cutAlone.code, cutAlone.stderr).toBe(0);
    const cutVerify = await rampart(['audit', 'verify', cut.directory, ...viaM2()]);
    expect(cutVerify.code).toBe(1);
    expect(cutVerify.stderr).toMatch(/^rampart: audit trail broken: .*: ends at event \d+, but the checkpoint of .* saw event \d+ .*events were removed from its end\n$/);

    // Rewritten: one denial turned into an allowed, every hash after it recomputed, across both files.
    const rewritten = await copyOfTrail();
    let prev: string | undefined;
    let changed = false;
    for (const file of rewritten.files) {
      const lines: string[] = [];
      for (const line of (await readFile(file, 'utf8')).trim().split('\n')) {
        const { hash: _hash, ...event } = JSON.parse(line) as AuditEvent;
        const edited = { ...event, ...(prev === undefined ? {} : { prev }), ...(!changed && event.action === 'Put' ? { targets: ['/first/forged'] } : {}) };
        if (!changed && event.action === 'Put') changed = true;
        if (event.action === 'audit.start' && event.targets?.length === 0) edited.prev = event.prev;
        const hash = hashEvent(edited);
        lines.push(eventLine({ ...edited, hash }));
        prev = hash;
      }
      await writeFile(file, `${lines.join('\n')}\n`);
    }
    expect(changed).toBe(true);
    expect((await rampart(['audit', 'verify', rewritten.directory])).code).toBe(0);
    const rewrittenVerify = await rampart(['audit', 'verify', rewritten.directory, ...viaM2()]);
    expect(rewrittenVerify.code).toBe(1);
    expect(rewrittenVerify.stderr).toMatch(/differs from the checkpoint of .*: the trail was rewritten\n$/);
    // Offline, against the saved export of the checkpoints: the same verdict.
    const offline = await rampart(['audit', 'verify', rewritten.directory, '--checkpoints', exported]);
    expect(offline.code).toBe(1);
    expect(offline.stderr).toMatch(/the trail was rewritten/);

    // A forged export: m1's checkpoints rewritten to match the rewritten trail. The chain matches,
    // the signatures do not.
    const rewrittenHashes = new Map<string, string>();
    for (const file of rewritten.files) {
      for (const line of (await readFile(file, 'utf8')).trim().split('\n')) {
        const event = JSON.parse(line) as AuditEvent;
        rewrittenHashes.set(`${path.basename(file)}:${event.seq}`, event.hash);
      }
    }
    const forged = path.join(path.dirname(home), 'forged.jsonl');
    await writeFile(forged, saved.trim().split('\n').map((line) => {
      const record = JSON.parse(line) as { member: string; file?: string; seq?: number; hash?: string };
      if (record.member !== member || record.hash === undefined) return line;
      return line.replace(record.hash, rewrittenHashes.get(`${record.file}:${record.seq}`) ?? record.hash);
    }).join('\n'));
    expect((await rampart(['audit', 'verify', rewritten.directory, '--checkpoints', forged])).code).toBe(0); // unsigned check: fooled
    const forgedVerify = await rampart(['audit', 'verify', rewritten.directory, '--checkpoints', forged, '--cacert', path.join(pki(), 'ca.crt')]);
    expect(forgedVerify.stderr).toMatch(/^rampart: audit checkpoints not trusted: the checkpoint of .* has a signature that does not verify \(forged or altered\)\n$/);

    // A deleted file: the newest (nothing links to it) is named by its checkpoint; the oldest breaks the genesis.
    const withoutNewest = await copyOfTrail();
    await rm(withoutNewest.files[1] as string);
    expect((await rampart(['audit', 'verify', withoutNewest.directory])).code).toBe(0);
    const deletedVerify = await rampart(['audit', 'verify', withoutNewest.directory, ...viaM2()]);
    expect(deletedVerify.code).toBe(1);
    expect(deletedVerify.stderr).toBe(`rampart: audit trail broken: ${files[1]}: missing, but the checkpoint of ${deletedVerify.stderr.match(/checkpoint of (\S+) saw/)?.[1] ?? '?'} saw its event ${deletedVerify.stderr.match(/saw its event (\d+)/)?.[1] ?? '?'} (the file was deleted)\n`);
    const withoutOldest = await copyOfTrail();
    await rm(withoutOldest.files[0] as string);
    expect((await rampart(['audit', 'verify', withoutOldest.directory])).stderr).toMatch(/does not start at the member's genesis/);

    // A trail the cluster never witnessed (another member id) is refused as such.
    const foreign = await copyOfTrail();
    const foreignLines: string[] = [];
    let foreignPrev: string | undefined;
    for (const line of (await readFile(foreign.files[0] as string, 'utf8')).trim().split('\n')) {
      const { hash: _hash, ...event } = JSON.parse(line) as AuditEvent;
      const edited = { ...event, member: 'abcdef', ...(foreignPrev === undefined ? {} : { prev: foreignPrev }) };
      const hash = hashEvent(edited);
      foreignLines.push(eventLine({ ...edited, hash }));
      foreignPrev = hash;
    }
    await rm(foreign.files[1] as string);
    await writeFile(foreign.files[0] as string, `${foreignLines.join('\n')}\n`);
    const foreignVerify = await rampart(['audit', 'verify', foreign.directory, '--checkpoints', exported]);
    expect(foreignVerify.stderr).toBe("rampart: audit trail not witnessed: the checkpoints hold none of member abcdef's events in this trail\n");
    expect((await rampart(['up', '--dir', home])).code).toBe(0);
  }, 120_000);
});
