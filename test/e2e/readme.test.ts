/**
 * The README's first command, as a new user runs it: from a fresh clone, `npm ci && npm run build &&
 * ./bin/rampart.js up` (with --base-port so it cannot collide with anything else on the machine),
 * then the etcdctl line `up` prints, turned into a put and a get, then `down`. npm ci reads the
 * package cache first (npm_config_prefer_offline), so in CI — where `npm ci` has just filled the
 * cache — this costs about a minute; RAMPART_README_TEST=0 skips it.
 */
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { cleanEnvironment, freeBasePort, projectRoot, removeDirectory, run, temporaryDirectory } from '../helpers/processes.js';

const enabled = process.env['RAMPART_README_TEST'] !== '0';

describe.runIf(enabled)('the README from a fresh clone', () => {
  let home: string;
  let clone: string;
  const shell = (command: string, timeoutMs: number) => run('sh', ['-c', command], { timeoutMs, env: cleanEnvironment({ npm_config_prefer_offline: 'true', npm_config_fund: 'false', npm_config_audit: 'false' }) });

  beforeAll(async () => {
    home = await temporaryDirectory('readme');
    clone = path.join(home, 'rampart');
    // What is committed, not this working tree: a clone of the repository's HEAD.
    const cloned = await run('git', ['clone', '-q', projectRoot, clone]);
    expect(cloned.code, cloned.stderr).toBe(0);
  });

  afterAll(async () => {
    await shell(`cd ${JSON.stringify(clone)} && ./bin/rampart.js down`, 30_000);
    await removeDirectory(home);
  }, 60_000);

  it('installs, starts a secure cluster, and the printed etcdctl line puts and gets', async () => {
    const readme = await readFile(path.join(clone, 'README.md'), 'utf8');
    const first = /```sh\n(.+)\n```/.exec(readme)?.[1] as string;
    expect(first).toBe('npm ci && npm run build && ./bin/rampart.js up');
    const base = await freeBasePort();
    const started = await shell(`cd ${JSON.stringify(clone)} && ${first} --base-port ${base}`, 240_000);
    expect(started.code, `${started.stdout}\n${started.stderr}`).toBe(0);
    const line = /^\s*(ETCDCTL_API=3 etcdctl .*) endpoint status --cluster -w table$/m.exec(started.stdout)?.[1];
    expect(line, started.stdout).toBeDefined();
    const put = await shell(`cd ${JSON.stringify(clone)} && ${line} put /readme works`, 30_000);
    expect(put.stdout, put.stderr).toBe('OK\n');
    const get = await shell(`cd ${JSON.stringify(clone)} && ${line} get /readme --print-value-only`, 30_000);
    expect(get.stdout).toBe('works\n');
    const status = await shell(`cd ${JSON.stringify(clone)} && ${line} endpoint status --cluster -w table`, 30_000);
    expect(status.stdout.match(/https:\/\/127\.0\.0\.1:\d+/g)).toHaveLength(3);
    const stopped = await shell(`cd ${JSON.stringify(clone)} && ./bin/rampart.js down`, 60_000);
    expect(stopped.stdout).toBe('stopped m1\nstopped m2\nstopped m3\n');
  }, 300_000);
});
