import { describe, expect, it } from 'vitest';
import { refusalOf } from '../../src/cli/policy.js';
import { startProgress } from '../../src/cli/progress.js';
import { permissionType } from '../../src/auth/permissions.js';

describe('progress lines', () => {
  it('says nothing for a quick operation, then a line per interval and a final one', () => {
    let clock = 0;
    const lines: string[] = [];
    const quick = startProgress('reading f', 'bytes', (line) => lines.push(line), 2000, () => clock);
    quick.update(1024 * 1024, 4 * 1024 * 1024);
    quick.finish();
    expect(lines).toEqual([]);

    const slow = startProgress('reading f', 'bytes', (line) => lines.push(line), 2000, () => clock);
    clock = 2500;
    slow.update(1024 * 1024, 4 * 1024 * 1024);
    clock = 3000;
    slow.update(2 * 1024 * 1024); // within the interval: no line
    clock = 5000;
    slow.update(4 * 1024 * 1024);
    slow.finish();
    expect(lines).toEqual([
      'reading f: 1.0 MiB of 4.0 MiB (25%), 3 s',
      'reading f: 4.0 MiB of 4.0 MiB (100%), 5 s',
      'reading f: 4.0 MiB of 4.0 MiB (100%), 5 s, done',
    ]);
  });
});

describe('policy apply --dry-run', () => {
  const role = { name: 'app', permissions: [{ type: permissionType.read, key: Buffer.from('/a'), rangeEnd: Buffer.alloc(0) }], denies: [] };
  const withRoot = { users: [{ name: 'root', roles: ['root'] }], roles: [role], bindings: new Map<string, string>() };
  const rootless = { users: [{ name: 'app', roles: ['app'] }], roles: [role], bindings: new Map<string, string>() };

  it('reports what the cluster would refuse, with the same check the cluster runs', () => {
    expect(refusalOf({ state: withRoot, revision: 5, enabled: true }, rootless)).toMatch(/no root user with the root role/);
    expect(refusalOf({ state: withRoot, revision: 5, enabled: false }, rootless)).toBeUndefined();
    expect(refusalOf({ state: withRoot, revision: 5, enabled: true }, withRoot)).toBeUndefined();
    expect(refusalOf({ state: withRoot, revision: 5, enabled: true }, { ...withRoot, users: [...withRoot.users, { name: 'x', roles: ['missing'] }] })).toMatch(/role the policy does not define/);
  });
});
