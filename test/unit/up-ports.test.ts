import { describe, expect, it } from 'vitest';
import { localPortsProblem } from '../../src/cli/up.js';

describe('rampart up --base-port', () => {
  it('accepts a base port whose every member port (client, peer, metrics) is a TCP port', () => {
    expect(localPortsProblem(2379, 3)).toBeUndefined();
    expect(localPortsProblem(45_533, 3)).toBeUndefined(); // m3 metrics on 65535
    expect(localPortsProblem(65_533, 1)).toBeUndefined();
  });

  it('refuses one that puts a member past 65535 or on port 0, naming the highest base that fits', () => {
    expect(localPortsProblem(45_534, 3)).toBe('--base-port 45534 cannot hold 3 members (client ports base, base+10000, …; peer +1, metrics +2): give a port from 1 to 45533');
    expect(localPortsProblem(70_000, 1)).toBe('--base-port 70000 cannot hold 1 member (client ports base, base+10000, …; peer +1, metrics +2): give a port from 1 to 65533');
    expect(localPortsProblem(0, 3)).toMatch(/^--base-port 0 cannot hold 3 members/);
  });
});
