/**
 * etcd's JSON gateway on the client port, differentially: every step goes to etcd 3.4 and to
 * Rampart in the same run (plain HTTP/1.1, as curl and Patroni send it), and the HTTP status, the
 * content type and the body must match once what legitimately differs (ids, terms, sizes, versions,
 * tokens) is normalized. Then the same port still serves gRPC (etcdctl).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { etcdAvailable, etcdctl, removeDirectory, startEtcd, startRampart, type ServerProcess } from '../helpers/processes.js';
import { httpCall, type HttpAnswer, type HttpCallOptions } from '../helpers/http-gateway.js';

const b64 = (text: string): string => Buffer.from(text).toString('base64');

interface Step {
  readonly path: string;
  readonly options?: HttpCallOptions;
  /** A body built from what earlier answers on the same server held (lease id, token). */
  readonly body?: (saved: Saved) => string;
  readonly headers?: (saved: Saved) => Record<string, string>;
  /** Keep something from the answer for later steps. */
  readonly save?: (answer: HttpAnswer, saved: Saved) => void;
  /** Stream: lines to wait for; `during` runs after the first. */
  readonly lines?: number;
  readonly during?: (port: number) => Promise<unknown>;
}

interface Saved {
  lease: string;
  token: string;
}

/** Values that differ between two servers for good reasons. */
const normalizedKeys = new Set(['cluster_id', 'member_id', 'raft_term', 'ID', 'leader', 'dbSize', 'dbSizeInUse', 'raftIndex', 'raftTerm', 'raftAppliedIndex', 'hash', 'token', 'name', 'peerURLs', 'clientURLs', 'etcdserver', 'etcdcluster', 'blob']);

function normalizeJson(value: unknown, key = ''): unknown {
  if (normalizedKeys.has(key)) return 'X';
  // A lease's remaining TTL may have ticked down by the time the second server answers.
  if (key === 'TTL' && (value === '59' || value === '60')) return 'about 60';
  if (key === 'version' && typeof value === 'string' && /^\d+\.\d+\.\d+$/.test(value)) return 'X';
  if (key === 'key' && typeof value === 'string' && /^[A-Za-z0-9+/=]+$/.test(value) && Buffer.from(value, 'base64').toString().startsWith('mylock/')) return 'LOCKKEY';
  if (Array.isArray(value)) return value.map((entry) => normalizeJson(entry));
  if (value !== null && typeof value === 'object') {
    return Object.fromEntries(Object.entries(value as Record<string, unknown>).map(([name, entry]) => [name, normalizeJson(entry, name)]));
  }
  if (typeof value === 'string') return value.replace(/\(\d+ vs\. \d+\)/, '(N vs. M)');
  return value;
}

function normalizeBody(body: string): string {
  return body
    .split('\n')
    .filter((line) => line !== '')
    .map((line) => {
      try {
        return JSON.stringify(normalizeJson(JSON.parse(line)));
      } catch {
        return line;
      }
    })
    .join('\n');
}

const put = (port: number, key: string, value: string): Promise<HttpAnswer> => httpCall({ port }, '/v3/kv/put', { body: JSON.stringify({ key: b64(key), value: b64(value) }) });

const steps: readonly Step[] = [
  { path: '/v3/kv/put', options: { body: JSON.stringify({ key: b64('foo'), value: b64('bar') }) } },
  { path: '/v3/kv/put', options: { body: JSON.stringify({ key: b64('foo2'), value: b64('baz'), prev_kv: true }) } },
  { path: '/v3/kv/put', options: { body: JSON.stringify({ key: b64('foo2'), value: b64('qux'), prev_kv: true }) } },
  { path: '/v3/kv/range', options: { body: JSON.stringify({ key: b64('foo') }) } },
  { path: '/v3beta/kv/range', options: { body: JSON.stringify({ key: b64('foo'), range_end: b64('fop'), keys_only: true, sortOrder: 'DESCEND' }) } },
  { path: '/v3/kv/range', options: { body: JSON.stringify({ key: b64('foo'), range_end: b64('fop'), count_only: true }) } },
  { path: '/v3/kv/range', options: { body: JSON.stringify({ key: b64('foo'), range_end: b64('fop'), limit: 1 }) } },
  { path: '/v3/kv/range', options: { body: JSON.stringify({ key: b64('nothing') }) } },
  { path: '/v3/kv/txn', options: { body: JSON.stringify({ compare: [{ key: b64('foo'), target: 'VALUE', result: 'EQUAL', value: b64('bar') }], success: [{ request_put: { key: b64('t'), value: b64('1') } }, { request_range: { key: b64('foo') } }], failure: [] }) } },
  { path: '/v3/kv/txn', options: { body: JSON.stringify({ compare: [{ key: b64('foo'), target: 'VERSION', result: 'GREATER', version: '5' }], success: [], failure: [{ request_delete_range: { key: b64('t'), prev_kv: true } }] }) } },
  { path: '/v3/kv/deleterange', options: { body: JSON.stringify({ key: b64('foo2'), prev_kv: true }) } },
  { path: '/v3/kv/compaction', options: { body: JSON.stringify({ revision: 1000 }) } },
  { path: '/v3/kv/compaction', options: { body: JSON.stringify({ revision: 2 }) } },
  { path: '/v3/kv/range', options: { body: JSON.stringify({ key: b64('foo'), revision: 1 }) } },
  // Bad input: etcd's status and error body.
  { path: '/v3/kv/range', options: { body: '{"key":"!!!"}' } },
  // 64-bit integers out of range are refused, not wrapped (2^64-1 was read as -1: the current revision).
  { path: '/v3/kv/range', options: { body: JSON.stringify({ key: b64('foo'), revision: '18446744073709551615' }) } },
  { path: '/v3/kv/range', options: { body: `{"key":"${b64('foo')}","revision":1e300}` } },
  { path: '/v3/kv/range', options: { body: JSON.stringify({ key: b64('foo'), limit: '-9223372036854775809' }) } },
  { path: '/v3/kv/range', options: { body: '{"key":"Zm9"}' } },
  { path: '/v3/kv/range', options: { body: '{"key":"Zm9v-_"}' } },
  { path: '/v3/kv/range', options: { body: '{"key":' } },
  { path: '/v3/kv/range', options: { body: '[1]' } },
  { path: '/v3/kv/range', options: { body: '' } },
  { path: '/v3/kv/range', options: { body: '{"key":"Zm9v","bogus":1}' } },
  { path: '/v3/kv/range', options: { body: '{"key":"Zm9v","limit":1.5}' } },
  { path: '/v3/kv/range', options: { body: '{"key":"Zm9v","serializable":"yes"}' } },
  { path: '/v3/kv/range', options: { body: '{"key":123}' } },
  { path: '/v3/kv/txn', options: { body: '{"compare":[{"key":"Zm9v","target":"BOGUS","result":"EQUAL"}]}' } },
  { path: '/v3/kv/put', options: { body: JSON.stringify({ key: b64('big'), value: Buffer.alloc(3_000_000).toString('base64') }) } },
  { path: '/v3/kv/nothing', options: { body: '{}' } },
  { path: '/v3alpha/kv/range', options: { body: '{}' } },
  { path: '/v3/kv/range', options: { method: 'GET' } },
  { path: '/v3/kv/range', options: { method: 'PUT', body: '{}' } },
  { path: '/version', options: { method: 'GET' } },
  { path: '/health', options: { method: 'GET' } },
  // Leases, keep-alive stream.
  { path: '/v3/lease/grant', options: { body: '{"TTL":60}' }, save: (answer, saved) => { saved.lease = (JSON.parse(answer.body) as { ID: string }).ID; } },
  { path: '/v3/lease/leases', options: { body: '{}' } },
  { path: '/v3/kv/put', body: (saved) => JSON.stringify({ key: b64('leased'), value: b64('v'), lease: saved.lease }) },
  { path: '/v3/lease/timetolive', body: (saved) => JSON.stringify({ ID: saved.lease, keys: true }) },
  { path: '/v3/kv/lease/timetolive', body: (saved) => JSON.stringify({ ID: saved.lease }) },
  { path: '/v3/lease/keepalive', body: (saved) => JSON.stringify({ ID: saved.lease }), lines: 1 },
  { path: '/v3/lease/keepalive', options: { body: '{"ID":"1"}' }, lines: 1 },
  { path: '/v3/lease/revoke', body: (saved) => JSON.stringify({ ID: saved.lease }) },
  { path: '/v3/lease/revoke', body: (saved) => JSON.stringify({ ID: saved.lease }) },
  { path: '/v3/lease/timetolive', options: { body: '{"ID":"123"}' } },
  { path: '/v3/kv/put', options: { body: JSON.stringify({ key: b64('a'), value: b64('b'), lease: '12345' }) } },
  // Watch: created, then the event of a put made while it streams.
  { path: '/v3/watch', options: { body: JSON.stringify({ create_request: { key: b64('w'), prev_kv: true } }) }, lines: 2, during: (port) => put(port, 'w', 'watched') },
  { path: '/v3/watch', options: { body: JSON.stringify({ create_request: { key: b64('w'), start_revision: 1 } }) }, lines: 2 },
  { path: '/v3/watch', options: { body: '{"create_request":{"key":"!!"}}' }, lines: 1 },
  // Cluster and maintenance.
  { path: '/v3/cluster/member/list', options: { body: '{}' } },
  { path: '/v3/maintenance/status', options: { body: '{}' } },
  { path: '/v3/maintenance/alarm', options: { body: '{}' } },
  { path: '/v3/maintenance/hash', options: { body: '{}' } },
  { path: '/v3/maintenance/defragment', options: { body: '{}' } },
  // Lock and election.
  { path: '/v3/lease/grant', options: { body: '{"TTL":60}' }, save: (answer, saved) => { saved.lease = (JSON.parse(answer.body) as { ID: string }).ID; } },
  { path: '/v3/lock/lock', body: (saved) => JSON.stringify({ name: b64('mylock'), lease: saved.lease }) },
  { path: '/v3/election/leader', options: { body: JSON.stringify({ name: b64('nobody') }) } },
  // Auth: users and roles, then enable, log in, and call with the token.
  { path: '/v3/auth/authenticate', options: { body: JSON.stringify({ name: 'root', password: 'x' }) } },
  { path: '/v3/auth/user/add', options: { body: JSON.stringify({ name: 'root', password: 'rootpw' }) } },
  { path: '/v3/auth/user/add', options: { body: JSON.stringify({ name: 'root', password: 'rootpw' }) } },
  { path: '/v3/auth/role/add', options: { body: JSON.stringify({ name: 'root' }) } },
  { path: '/v3/auth/role/add', options: { body: JSON.stringify({ name: 'reader' }) } },
  { path: '/v3/auth/role/grant', options: { body: JSON.stringify({ name: 'reader', perm: { permType: 'READ', key: b64('foo'), range_end: b64('fop') } }) } },
  { path: '/v3/auth/role/get', options: { body: JSON.stringify({ role: 'reader' }) } },
  { path: '/v3/auth/role/list', options: { body: '{}' } },
  { path: '/v3/auth/user/grant', options: { body: JSON.stringify({ user: 'root', role: 'root' }) } },
  { path: '/v3/auth/user/get', options: { body: JSON.stringify({ name: 'root' }) } },
  { path: '/v3/auth/user/list', options: { body: '{}' } },
  { path: '/v3/auth/user/get', options: { body: JSON.stringify({ name: 'nobody' }) } },
  { path: '/v3/auth/enable', options: { body: '{}' } },
  { path: '/v3/auth/authenticate', options: { body: JSON.stringify({ name: 'root', password: 'wrong' }) } },
  { path: '/v3/auth/authenticate', options: { body: JSON.stringify({ name: 'root', password: 'rootpw' }) }, save: (answer, saved) => { saved.token = (JSON.parse(answer.body) as { token: string }).token; } },
  { path: '/v3/kv/range', options: { body: JSON.stringify({ key: b64('foo') }) }, headers: (saved) => ({ authorization: saved.token }) },
  { path: '/v3/kv/range', options: { body: JSON.stringify({ key: b64('foo') }), headers: { authorization: 'not-a-token' } } },
  { path: '/v3/auth/disable', options: { body: '{}' }, headers: (saved) => ({ authorization: saved.token }) },
];

describe.skipIf(!etcdAvailable())('JSON gateway parity with etcd 3.4', () => {
  let etcd: ServerProcess | undefined;
  let rampart: ServerProcess | undefined;
  beforeAll(async () => {
    [etcd, rampart] = await Promise.all([startEtcd(), startRampart()]);
  });
  afterAll(async () => {
    await Promise.all([etcd?.stop(), rampart?.stop()]);
    await Promise.all([etcd && removeDirectory(etcd.dataDir), rampart && removeDirectory(rampart.dataDir)]);
  });

  it('answers every gateway path as etcd does, and still serves gRPC on the same port', async () => {
    const servers = [etcd as ServerProcess, rampart as ServerProcess];
    const saved: Saved[] = [{ lease: '', token: '' }, { lease: '', token: '' }];
    const differences: string[] = [];
    for (const step of steps) {
      const answers: { status: number; contentType: string; body: string }[] = [];
      for (const [index, server] of servers.entries()) {
        const mine = saved[index] as Saved;
        const options: HttpCallOptions = {
          ...step.options,
          ...(step.body === undefined ? {} : { body: step.body(mine) }),
          headers: { ...step.options?.headers, ...step.headers?.(mine) },
          ...(step.lines === undefined ? {} : { lines: step.lines, timeoutMs: 3000 }),
          ...(step.during === undefined ? {} : { onFirstLine: () => step.during?.(server.port) }),
        };
        const answer = await httpCall({ port: server.port }, step.path, options);
        step.save?.(answer, mine);
        answers.push({ status: answer.status, contentType: answer.contentType.split(';')[0] ?? '', body: normalizeBody(answer.body) });
      }
      const [expected, actual] = answers;
      if (JSON.stringify(expected) !== JSON.stringify(actual)) {
        differences.push(`${step.options?.method ?? 'POST'} ${step.path} ${step.options?.body?.toString().slice(0, 80) ?? ''}\n  etcd:    ${JSON.stringify(expected)}\n  rampart: ${JSON.stringify(actual)}`);
      }
    }
    expect(differences.join('\n\n')).toBe('');
    // The same port speaks gRPC: etcdctl reads what the gateway wrote.
    const got = await etcdctl((rampart as ServerProcess).endpoint, ['get', 'w', '--print-value-only']);
    expect(got.stdout).toBe('watched\n');
  }, 120_000);
});
