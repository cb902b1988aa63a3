/**
 * RBAC side by side with etcd 3.4: users, roles, key-range grants (key, --prefix, --from-key,
 * explicit range), auth enable/disable, then allowed and denied gets, puts, txns and watches by
 * password — same output, same error text, same exit codes.
 */
import { describe, expect, it } from 'vitest';
import { etcdAvailable } from '../helpers/processes.js';
import { referencePair, step, type Step } from '../helpers/parity.js';

const alice = '--user alice:alice-pw';
const root = '--user root:root-pw';
const watch = (line: string): Step => ({ args: line.split(' '), watch: true });

const steps: Step[] = [
  step('user add root:root-pw'),
  step('user add alice:alice-pw'),
  step('user add alice:again'),
  step('user add carol --no-password'),
  step('role add reader'),
  step('role add writer'),
  step('role add reader'),
  step('role grant-permission reader read /app --prefix'),
  step('role grant-permission reader read /open --from-key'),
  step('role grant-permission writer readwrite /app/w/ --prefix'),
  step('role grant-permission writer write k1 k5'),
  step('role grant-permission writer read k1 k5'),
  step('role grant-permission nosuch read k'),
  step('role get reader'),
  step('role get writer'),
  step('role get nosuch'),
  step('role list'),
  step('user grant-role alice reader'),
  step('user grant-role alice writer'),
  step('user grant-role alice writer'),
  step('user grant-role alice nosuch'),
  step('user grant-role nobody reader'),
  step('user get alice'),
  step('user get nobody'),
  step('user list'),
  step('role revoke-permission writer k1 k5'),
  step('role revoke-permission writer k1 k5'),
  step('role grant-permission writer read zz aa'),
  step('role grant-permission writer read'),
  step('role grant-permission writer bogus k'),
  step('user add :pw'),
  step('role get writer -w json'),
  step('user get alice -w json'),
  step('user list -w json'),
  step('role get writer'),
  step('user revoke-role alice nosuch'),
  step('auth enable'),
  step('auth enable'),
  step(`put /app/x 1 ${root}`),
  step(`put /secret s ${root}`),
  step(`get /app/x ${alice}`),
  step(`get /app/x -w json ${alice}`),
  step(`put /app/x 2 ${alice}`),
  step(`put /app/w/1 v ${alice}`),
  step(`put /app/w/1 v2 --prev-kv ${alice}`),
  step(`get /app --prefix ${alice}`),
  step(`get / --prefix ${alice}`),
  step(`get /secret ${alice}`),
  step(`get /zzz ${alice}`),
  step(`get /open0 /openz ${alice}`),
  step(`del /app/w/1 ${alice}`),
  step(`del /app/x ${alice}`),
  step('get /app/x --user alice:wrong'),
  step('get /app/x --user nobody:pw'),
  step('get /app/x'),
  step(`txn ${alice}`, 'value("/app/x") = "1"\n\nput /app/w/2 two\n\nput /app/w/3 three\n'),
  step(`txn ${alice}`, 'value("/app/x") = "1"\n\nput /app/w/2 two\n\nput /app/x three\n'),
  step(`txn ${alice}`, 'value("/secret") = "s"\n\nget /app/x\n\n\n'),
  step(`txn ${alice}`, 'value("/app/x") = "1"\n\nget /app/x\n\n\n'),
  step(`user list ${alice}`),
  step(`user get alice ${alice}`),
  step(`user get root ${alice}`),
  step(`role get reader ${alice}`),
  step(`role get root ${alice}`),
  step(`role add sneaky ${alice}`),
  step(`user grant-role alice root ${alice}`),
  step(`user list ${root}`),
  step(`user get alice ${root}`),
  step(`user delete root ${root}`),
  step(`role delete root ${root}`),
  step(`user revoke-role root root ${root}`),
  step(`user passwd alice --interactive=false ${root}`, 'alice-pw2\n'),
  step(`get /app/x ${alice}`),
  step('get /app/x --user alice:alice-pw2'),
  watch(`watch /secret --user alice:alice-pw2`),
  watch(`watch /app/x --rev 1 --user alice:alice-pw2`),
  step(`auth disable ${alice}`),
  step(`auth disable ${root}`),
  step('get /secret'),
  step('user delete alice'),
  step('role delete writer'),
  step('role list'),
];

describe.skipIf(!etcdAvailable())('RBAC parity with etcd 3.4 (etcdctl, passwords)', () => {
  const pair = referencePair();

  it('manages users, roles and grants, and allows and denies exactly as etcd', async () => {
    expect(await pair.compare(steps)).toBe('');
  }, 120_000);
});
