/**
 * Quorum-witnessed audit checkpoints on a 3-member `rampart up` cluster: each member proposes its
 * chain head through Raft every few seconds and on shutdown, and `rampart audit verify` checks a
 * trail against what the cluster holds — a trail cut short, rewritten with a recomputed chain, or
 * missing a file (a rotated, compressed one included) is caught with no anchor given, also offline
 * from a saved export. The members rotate their (sealed) audit files every few events here, so the
 * trail spans rotated, gzip'd and sealed files; the "attacker" holds the member's KEK and so can
 * rewrite sealed files (what root on the host can do) — only the checkpoints catch that.
 */
import { cp, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { eventLine, hashEvent, type AuditEvent } from '../../src/audit/event.js';
import { RecordWriter, listTrailFiles, readRecords, type TrailFile } from '../../src/audit/records.js';
import type { TrailKey } from '../../src/audit/sealed-trail.js';
import { TrailKeyStore } from '../../src/audit/trail-key.js';
import { FileKekProvider } from '../../src/encryption/kek-file.js';
import { rampartCli, startUpCluster, type UpCluster } from '../helpers/up-cluster.js';

/** Small enough that m1 rotates every few events. */
const auditMaxFileBytes = 1000;

describe('audit checkpoints witnessed by the cluster', () => {
  let cluster: UpCluster;
  let home: string;
  let base: number;
  const rampart = rampartCli;
  const pki = (): string => cluster.pki;
  /** Requests to m1, whose trail is examined. */
  const etcdctl = (args: string[]) => cluster.etcdctl(args);
  /** Reaches the cluster through m2: m1 is stopped once its trail is final. */
  const viaM2 = (): string[] => ['--dir', home, '--endpoints', `https://127.0.0.1:${base + 10_000}`];
  const m1Trail = (): string => path.join(home, 'm1', 'data', 'audit');
  const m1Kek = (): string => path.join(home, 'm1', 'encryption.key');
  /** The KEK of m1, for copies of its trail kept away from its data directory. */
  const withKek = (): string[] => ['--encryption-key-file', m1Kek()];
  const up = () => rampart(['up', '--dir', home, '--base-port', String(base), '--audit-max-file-bytes', String(auditMaxFileBytes)]);

  beforeAll(async () => {
    cluster = await startUpCluster('audit-checkpoints', 3, ['--audit-max-file-bytes', String(auditMaxFileBytes)]);
    ({ home, base } = cluster);
  }, 90_000);

  afterAll(async () => {
    await cluster?.down();
  }, 120_000);

  const stopM1 = async (): Promise<void> => {
    const pid = Number((await readFile(path.join(home, 'm1', 'pid'), 'utf8')).trim());
    process.kill(pid, 'SIGTERM');
    // A member exits at most 8 s after SIGTERM by its own clock; 30 s leaves room for a starved
    // machine (the full suite at load 10+ once saw more than 10 s).
    for (let attempt = 0; attempt < 300; attempt++) {
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

  const keyOf = async (directory: string): Promise<TrailKey> => (await TrailKeyStore.open(directory, await FileKekProvider.open(m1Kek()))).key;
  const copyOfTrail = async (): Promise<{ directory: string; files: TrailFile[]; key: TrailKey }> => {
    const directory = await mkdtemp(path.join(path.dirname(home), 'trail-'));
    await cp(m1Trail(), directory, { recursive: true });
    return { directory, files: await listTrailFiles(directory), key: await keyOf(directory) };
  };
  const linesOf = async (file: TrailFile, key: TrailKey): Promise<string[]> => {
    const lines: string[] = [];
    for await (const record of readRecords(file, key)) {
      if (record.kind !== 'record') throw new Error(`${file.path}: ${record.kind}`);
      lines.push(record.text);
    }
    return lines;
  };
  /** What root with the KEK can do: replace a file's records with others, sealed as the member would. */
  const writeLines = async (file: TrailFile, lines: readonly string[], key: TrailKey): Promise<void> => {
    await rm(file.path);
    const writer = await RecordWriter.create(path.join(path.dirname(file.path), file.name), key);
    await writer?.append(lines);
    await writer?.close();
  };

  it('catches a trail cut short, rewritten with a recomputed chain, or missing a file, with no anchor given', async () => {
    for (let index = 0; index < 5; index++) expect((await etcdctl(['put', `/first/${index}`, 'v'])).code).toBe(0);
    // A restart opens a new file; its shutdown proposes a last checkpoint of the one before.
    await stopM1();
    expect((await up()).code).toBe(0);
    for (let index = 0; index < 5; index++) expect((await etcdctl(['put', `/second/${index}`, 'v'])).code).toBe(0);
    await stopM1();
    const files = await listTrailFiles(m1Trail());
    // Rotated by size: several files, the closed ones compressed; all sealed (no key name in the clear).
    expect(files.length).toBeGreaterThan(3);
    expect(files.filter((file) => file.compressed).length).toBeGreaterThan(1);
    for (const file of files) expect((await readFile(file.path)).includes(Buffer.from('/first/')), file.path).toBe(false);
    const names = files.map((file) => file.name);

    const saved = (await rampart(['audit', 'checkpoints', ...viaM2()])).stdout;
    const checkpoints = saved.trim().split('\n').map((line) => JSON.parse(line) as { member: string; file?: string; seq: number });
    const key = await keyOf(m1Trail());
    const member = (JSON.parse((await linesOf(files[0] as TrailFile, key))[0] as string) as AuditEvent).member;
    // Every member witnesses its trail; m1's checkpoints name its files, the newest included (its shutdown).
    expect(new Set(checkpoints.map((checkpoint) => checkpoint.member)).size).toBe(3);
    const witnessedFiles = new Set(checkpoints.filter((checkpoint) => checkpoint.member === member && checkpoint.file !== undefined).map((checkpoint) => checkpoint.file));
    expect([...witnessedFiles].every((file) => names.includes(file as string))).toBe(true);
    expect(witnessedFiles.has(names[names.length - 1])).toBe(true);
    const exported = path.join(path.dirname(home), 'checkpoints.jsonl');
    await writeFile(exported, saved);

    // The member's own directory: its KEK is found beside the data directory.
    const intact = await rampart(['audit', 'verify', m1Trail(), ...viaM2()]);
    expect(intact.stderr).toBe('');
    expect(intact.stdout).toMatch(new RegExp(`^audit trail intact: \\d+ events in ${files.length} files; head [0-9a-f]{64}; [1-9]\\d* checkpoints matched, each signed by the member's audit key \\(CA-issued\\)\\n$`));
    // Offline: the saved export and the CA certificate are enough (and the KEK, for a sealed copy).
    const copy = await copyOfTrail();
    const offlineIntact = await rampart(['audit', 'verify', copy.directory, '--checkpoints', exported, '--cacert', path.join(pki(), 'ca.crt'), ...withKek()]);
    expect(offlineIntact.stdout, offlineIntact.stderr).toMatch(/checkpoints matched, each signed/);
    const withoutKek = await rampart(['audit', 'verify', copy.directory]);
    expect(withoutKek.code).toBe(1);
    expect(withoutKek.stderr).toMatch(/^rampart: the audit trail in .* is sealed \(encryption at rest\): give the member's key-encryption key with --encryption-key-file FILE/);

    // Cut short: the last event of the newest file removed. Whole without a witness; caught with one.
    const cut = await copyOfTrail();
    const newest = cut.files[cut.files.length - 1] as TrailFile;
    const newestLines = await linesOf(newest, cut.key);
    expect(newestLines.length).toBeGreaterThan(1);
    await writeLines(newest, newestLines.slice(0, -1), cut.key);
    const cutAlone = await rampart(['audit', 'verify', cut.directory, ...withKek()]);
    expect(cutAlone.code, cutAlone.stderr).toBe(0);
    const cutVerify = await rampart(['audit', 'verify', cut.directory, ...viaM2(), ...withKek()]);
    expect(cutVerify.code).toBe(1);
    expect(cutVerify.stderr).toMatch(/^rampart: audit trail broken: .*: ends at event \d+, but the checkpoint of .* saw event \d+ .*events were removed from its end\n$/);

    // Rewritten: one Put's key changed, every hash after it recomputed, across all files (resealed).
    const rewritten = await copyOfTrail();
    let prev: string | undefined;
    let changed = false;
    const rewrittenHashes = new Map<string, string>();
    for (const file of rewritten.files) {
      const lines: string[] = [];
      for (const line of await linesOf(file, rewritten.key)) {
        const { hash: _hash, ...event } = JSON.parse(line) as AuditEvent;
        const edited = { ...event, ...(prev === undefined ? {} : { prev }), ...(!changed && event.action === 'Put' ? { targets: ['/first/forged'] } : {}) };
        if (!changed && event.action === 'Put') changed = true;
        const hash = hashEvent(edited);
        lines.push(eventLine({ ...edited, hash }));
        rewrittenHashes.set(`${file.name}:${event.seq}`, hash);
        prev = hash;
      }
      await writeLines(file, lines, rewritten.key);
    }
    expect(changed).toBe(true);
    expect((await rampart(['audit', 'verify', rewritten.directory, ...withKek()])).code).toBe(0);
    const rewrittenVerify = await rampart(['audit', 'verify', rewritten.directory, ...viaM2(), ...withKek()]);
    expect(rewrittenVerify.code).toBe(1);
    expect(rewrittenVerify.stderr).toMatch(/differs from the checkpoint of .*: the trail was rewritten\n$/);
    // Offline, against the saved export of the checkpoints: the same verdict.
    const offline = await rampart(['audit', 'verify', rewritten.directory, '--checkpoints', exported, ...withKek()]);
    expect(offline.code).toBe(1);
    expect(offline.stderr).toMatch(/the trail was rewritten/);

    // A forged export: m1's checkpoints rewritten to match the rewritten trail. The chain matches,
    // the signatures do not.
    const forged = path.join(path.dirname(home), 'forged.jsonl');
    await writeFile(forged, saved.trim().split('\n').map((line) => {
      const record = JSON.parse(line) as { member: string; file?: string; seq?: number; hash?: string };
      if (record.member !== member || record.hash === undefined) return line;
      return line.replace(record.hash, rewrittenHashes.get(`${record.file}:${record.seq}`) ?? record.hash);
    }).join('\n'));
    expect((await rampart(['audit', 'verify', rewritten.directory, '--checkpoints', forged, ...withKek()])).code).toBe(0); // unsigned check: fooled
    const forgedVerify = await rampart(['audit', 'verify', rewritten.directory, '--checkpoints', forged, '--cacert', path.join(pki(), 'ca.crt'), ...withKek()]);
    expect(forgedVerify.stderr).toMatch(/^rampart: audit checkpoints not trusted: the checkpoint of .* has a signature that does not verify \(forged or altered\)\n$/);

    // A deleted file: the newest (nothing links to it) is named by its checkpoint; a rotated,
    // compressed one in the middle breaks the link of the next; the oldest breaks the genesis.
    const withoutNewest = await copyOfTrail();
    await rm((withoutNewest.files[withoutNewest.files.length - 1] as TrailFile).path);
    expect((await rampart(['audit', 'verify', withoutNewest.directory, ...withKek()])).code).toBe(0);
    const deletedVerify = await rampart(['audit', 'verify', withoutNewest.directory, ...viaM2(), ...withKek()]);
    expect(deletedVerify.code).toBe(1);
    expect(deletedVerify.stderr).toMatch(new RegExp(`^rampart: audit trail broken: ${names[names.length - 1]}: missing, but the checkpoint of \\S+ saw its event \\d+ \\(the file was deleted\\)\\n$`));
    const withoutRotated = await copyOfTrail();
    const rotated = withoutRotated.files.findIndex((file, index) => index > 0 && file.compressed);
    await rm((withoutRotated.files[rotated] as TrailFile).path);
    const rotatedVerify = await rampart(['audit', 'verify', withoutRotated.directory, ...withKek()]);
    expect(rotatedVerify.code).toBe(1);
    expect(rotatedVerify.stderr).toMatch(/does not continue the previous file \(a file was removed or altered\)/);
    const withoutOldest = await copyOfTrail();
    await rm((withoutOldest.files[0] as TrailFile).path);
    expect((await rampart(['audit', 'verify', withoutOldest.directory, ...withKek()])).stderr).toMatch(/does not start at the member's genesis .*no retention record says they were deleted/);

    // A trail the cluster never witnessed (another member id) is refused as such.
    const foreign = await copyOfTrail();
    const foreignLines: string[] = [];
    let foreignPrev: string | undefined;
    for (const line of await linesOf(foreign.files[0] as TrailFile, foreign.key)) {
      const { hash: _hash, ...event } = JSON.parse(line) as AuditEvent;
      const edited = { ...event, member: 'abcdef', ...(foreignPrev === undefined ? {} : { prev: foreignPrev }) };
      const hash = hashEvent(edited);
      foreignLines.push(eventLine({ ...edited, hash }));
      foreignPrev = hash;
    }
    for (const file of foreign.files.slice(1)) await rm(file.path);
    await writeLines(foreign.files[0] as TrailFile, foreignLines, foreign.key);
    const foreignVerify = await rampart(['audit', 'verify', foreign.directory, '--checkpoints', exported, ...withKek()]);
    expect(foreignVerify.stderr).toBe("rampart: audit trail not witnessed: the checkpoints hold none of member abcdef's events in this trail\n");
    expect((await up()).code).toBe(0);
  }, 150_000);
});
