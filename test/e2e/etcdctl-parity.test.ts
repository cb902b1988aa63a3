/**
 * Side by side: the same etcdctl 3.4 commands against a fresh etcd 3.4 and a fresh Rampart member.
 * Outputs must match after normalizing what legitimately differs (cluster/member ids, raft term,
 * random lease ids, and where the client's retry log lines came from).
 */
import { describe, expect, it } from 'vitest';
import { etcdAvailable } from '../helpers/processes.js';
import { referencePair, step, type Step } from '../helpers/parity.js';


const steps: Step[] = [
  step('put foo bar'),
  step('get foo'),
  step('get foo -w json'),
  step('put foo baz --prev-kv'),
  step('put foo qux --prev-kv -w json'),
  step('get foo --print-value-only'),
  step('get foo -w fields'),
  step('put k1 v1'),
  step('put k2 v2'),
  step('put k3 v3'),
  step('put k4 v4'),
  step('put k5 v5'),
  step('get k --prefix'),
  step('get k --prefix --limit 2'),
  step('get k --prefix --limit 2 -w json'),
  step('get k1 k4'),
  step('get --from-key k3'),
  step('get k --prefix --sort-by=VALUE --order=DESCEND'),
  step('get k --prefix --sort-by=MODIFY --order=ASCEND --limit 3 -w json'),
  step('get k --prefix --sort-by=CREATE'),
  step('get k --prefix --sort-by=VERSION --order=DESCEND'),
  step('get k --prefix --keys-only'),
  step('get k --prefix --rev 5'),
  step('get k --prefix --rev 5 -w json'),
  step('get k --prefix --consistency=s'),
  step('get nokey'),
  step('get nokey -w json'),
  step('get --from-key ""'),
  step('put k1 v1b'),
  step('get k1 -w json'),
  step('del k1'),
  step('del k1'),
  step('del k --prefix --prev-kv'),
  step('del nokey -w json'),
  step('put foo --ignore-value'),
  step('get foo -w json'),
  step('put missing --ignore-value'),
  step('put missing x --ignore-lease'),
  step('txn --interactive=false', 'value("foo") = "qux"\n\nput t1 yes\nget foo\n\nput t1 no\n\n'),
  step('txn --interactive=false -w json', 'value("foo") = "nope"\n\nput t2 yes\n\nput t2 no\ndel t1\n\n'),
  step('txn --interactive=false -w json', 'mod("foo") > "0"\nversion("foo") = "3"\ncreate("foo") < "100"\n\nget foo --prefix\n\n\n'),
  step('txn --interactive=false', 'version("absent") = "0"\n\nput absent now\n\n\n'),
  step('txn --interactive=false', '\nput d1 a\nput d1 b\n\n\n'),
  step('get t --prefix -w json'),
  step('compaction 5'),
  step('get foo --rev 3'),
  step('get foo --rev 5'),
  step('get foo --rev 100000'),
  step('compaction 4'),
  step('compaction 100000'),
  step('get ""'),
  step('del ""'),
  step('lease revoke 1234'),
  step('lease timetolive 1234'),
  step('lease keep-alive --once 1234'),
  step('put withlease v --lease=1234'),
  step('lease list'),
  step('alarm list'),
  step('endpoint health --cluster=false'),
  // Leases: $LEASE is the id this server granted in the latest `lease grant`.
  step('lease grant 60'),
  step('put leased1 v --lease=$LEASE'),
  step('put leased2 v --lease=$LEASE'),
  step('lease timetolive $LEASE --keys'),
  step('lease timetolive $LEASE -w json'),
  step('lease keep-alive --once $LEASE'),
  step('lease list'),
  step('put leased1 w --ignore-lease'),
  step('get leased1 -w json'),
  step('lease revoke $LEASE'),
  step('get leased --prefix'),
  step('lease timetolive $LEASE'),
  step('lease grant 1'),
  step('lease grant 9000000001'),
  // lock and elect are client-side recipes over KV, Watch and Lease.
  step('lock mylock -- echo held'),
  // Watch replays history from a revision, then stops on SIGINT.
  { args: ['watch', '--prefix', '', '--rev', '5', '--prev-kv'], watch: true },
  { args: ['watch', 'k', '--prefix', '--rev', '6', '-w', 'json'], watch: true },
  { args: ['watch', 'foo', '--rev', '2'], watch: true },
  { args: ['elect', 'myelection', 'proposal-1'], watch: true },
];

describe.skipIf(!etcdAvailable())('etcdctl output parity with etcd 3.4', () => {
  const pair = referencePair();

  it('gives the same output, errors and exit codes for every command', async () => {
    expect(await pair.compare(steps)).toBe('');
  });
});
