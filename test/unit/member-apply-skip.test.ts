/**
 * Three members in this process, real Raft loops, peer transport and databases: a committed entry
 * whose proposal cannot be decoded (an encoder bug, or a peer forwarding crafted bytes) used to
 * throw out of every member's apply loop on the same entry and stop the whole cluster. Now every
 * member skips it alike: the applied index moves past it, the revision does not, the proposer gets
 * a clear error, it is counted and logged without its bytes, and the cluster keeps serving.
 */
import { Writable } from 'node:stream';
import { afterEach, describe, expect, it } from 'vitest';
import { instruments } from '../../src/instruments.js';
import type { Member } from '../../src/server/member.js';
import { loopOf, openInProcessCluster, putOf, putRetrying, until, type InProcessCluster } from '../helpers/in-process-cluster.js';

describe('a committed entry whose proposal cannot be decoded', () => {
  let cluster: InProcessCluster | undefined;
  afterEach(async () => {
    await cluster?.close();
    cluster = undefined;
    instruments.applySkipped.bind(undefined);
  });

  it('is skipped by every member alike, fails its proposer clearly, and the cluster keeps serving', async () => {
    const logLines: string[] = [];
    const logStream = new Writable({ write(chunk: Buffer, _encoding, done) { logLines.push(chunk.toString()); done(); } });
    let skipped = 0;
    instruments.applySkipped.bind((value) => { skipped += value; });
    cluster = await openInProcessCluster(3, logStream);
    const members = cluster.members;
    const [first] = members as [Member, Member, Member];

    const before = await putRetrying(first, 'before', 'v1');
    await until(() => members.every((member) => member.store.currentRevision === before), 'every member at the first put');

    // The next proposal leaves `first` with a byte that is no protobuf (an encoder bug, say): an
    // unknown field of wire type 7 after the request. It commits, as any bytes do.
    const loop = loopOf(first);
    const propose = loop.propose.bind(loop);
    loop.propose = (data: Buffer): void => {
      loop.propose = propose;
      propose(Buffer.concat([data, Buffer.from([0xf7, 0x01, 0x00])]));
    };
    const skippedAt = first.appliedIndex;
    await expect(first.put(putOf('poison', 'secret-value'))).rejects.toMatchObject({ code: 'ProposalUndecodable' });
    expect(loop.propose).toBe(propose);

    // Every member applied past it (none stopped), and none changed its revision for it.
    await until(() => members.every((member) => member.appliedIndex > skippedAt), 'every member past the skipped entry');
    for (const member of members) expect(member.store.currentRevision).toBe(before);
    expect(skipped).toBe(3);
    const skipLines = logLines.filter((line) => line.includes('skipped a committed entry'));
    expect(skipLines).toHaveLength(3);
    for (const line of logLines) expect(line).not.toContain('secret-value');
    expect(JSON.parse(skipLines[0] ?? '{}')).toMatchObject({ level: 50, bytes: expect.any(Number) as unknown, reason: expect.stringMatching(/Error$/) as unknown });

    // The cluster keeps serving, through any member, and agrees.
    const after = await putRetrying(members[2] as Member, 'after', 'v2');
    expect(after).toBe(before + 1);
    await until(() => members.every((member) => member.store.currentRevision === after), 'every member at the put after');
    for (const member of members) {
      const read = await member.range({ key: Buffer.from('after'), range_end: Buffer.alloc(0), limit: '0', revision: '0', sort_order: 0, sort_target: 0, serializable: true, keys_only: false, count_only: false, min_mod_revision: '0', max_mod_revision: '0', min_create_revision: '0', max_create_revision: '0' } as never);
      expect(read.kvs.map((kv) => Buffer.from(kv.value as Buffer).toString())).toEqual(['v2']);
    }
  });

  it('an auth change of the wrong shape or with fields of the wrong type (only a crafted entry has one) is skipped, not thrown nor stored', async () => {
    const quiet = new Writable({ write(_chunk, _encoding, done) { done(); } });
    cluster = await openInProcessCluster(1, quiet);
    const [member] = cluster.members as [Member];
    await member.authChange({ op: 'roleAdd', name: 'r' });
    const revision = member.auth.state.revision;
    const users = member.auth.state.users.size;
    // A permission that is no permission: comparing it threw a TypeError out of the apply loop; an
    // unknown op made undefined the auth state. The rest were stored as given (a user named 42 with
    // a numeric password hash, a role named by an array, a permission whose key was a string).
    for (const change of [
      { op: 'roleGrantPermission', name: 'r', permission: null },
      { op: 'no-such-op' },
      { op: 'userAdd', name: 42, passwordHash: 7, noPassword: 'no' },
      { op: 'roleAdd', name: ['x'] },
      { op: 'userAdd', name: 'u', passwordHash: '', noPassword: true, extra: 1, roles: 'root' },
      { op: 'roleGrantPermission', name: 'r', permission: { type: 0, key: 'a', rangeEnd: 'b' } },
      { op: 'policyApply', policy: { users: [{ name: 'u', roles: [1] }], roles: [], bindings: new Map() }, expectRevision: 0 },
    ]) {
      const before = member.auth.state.revision;
      const outcome = await member.authChange(change as never).then(() => 'applied', (error: unknown) => (error as { code?: string }).code);
      // The one with only an extra field is read without it (nothing reads it); every other is skipped.
      if ('extra' in change) {
        expect(outcome).toBe('applied');
        expect(member.auth.state.users.get('u')).toEqual({ name: 'u', passwordHash: '', noPassword: true, roles: [] });
        expect(member.auth.state.revision).toBe(before + 1);
        continue;
      }
      expect(outcome).toBe('ProposalUndecodable');
      expect(member.auth.state.revision).toBe(before);
    }
    expect(member.auth.state.revision).toBe(revision + 1);
    expect(member.auth.state.users.size).toBe(users + 1);
    expect(member.auth.state.users.has('u')).toBe(true);
    expect([...member.auth.state.roles.keys()]).toEqual(['r']);
    expect(member.auth.state.roles.get('r')?.permissions).toEqual([]);
    await expect(member.authChange({ op: 'roleGrantPermission', name: 'r', permission: { type: 0, key: Buffer.from('a'), rangeEnd: Buffer.alloc(0) } })).resolves.toBeUndefined();
    expect(member.auth.state.revision).toBe(revision + 2);
  });
});
