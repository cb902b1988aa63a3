/**
 * A proposal whose entry is not applied within the request timeout fails with etcd's
 * `etcdserver: request timed out` (Unavailable), is counted in etcd_server_proposals_failed_total
 * and leaves no waiter behind; each proposal times out on its own deadline (one timer serves them
 * all, member.ts' proposalDeadline), and the member takes writes again once its apply resumes.
 * One member in this process, its apply held.
 */
import { Writable } from 'node:stream';
import { status } from '@grpc/grpc-js';
import { afterEach, describe, expect, it } from 'vitest';
import { toServiceError } from '../../src/api/errors.js';
import { instruments } from '../../src/instruments.js';
import type { Entry } from '../../src/raft/types.js';
import type { Member } from '../../src/server/member.js';
import { openInProcessCluster, putOf, putRetrying, type InProcessCluster } from '../helpers/in-process-cluster.js';

const requestTimeoutMs = 2_000;

describe('proposal timeout', () => {
  let cluster: InProcessCluster | undefined;
  let release = (): void => undefined;
  afterEach(async () => {
    instruments.proposalFailed.bind(undefined);
    release(); // a failed expectation must not leave the apply held: close waits for it
    await cluster?.close();
    cluster = undefined;
  });

  it('fails each proposal at its own deadline with etcd\'s error and forgets it', async () => {
    const quiet = new Writable({ write(_chunk, _encoding, done) { done(); } });
    cluster = await openInProcessCluster(1, quiet, { requestTimeoutMs });
    const member = cluster.members[0] as Member;
    await putRetrying(member, 'first', 'v');
    let failed = 0;
    instruments.proposalFailed.bind((value) => { failed += value; });

    const held = new Promise<void>((resolve) => { release = resolve; });
    const host = member as unknown as { applyEntries: (entries: readonly Entry[]) => Promise<void> };
    const apply = host.applyEntries.bind(member);
    host.applyEntries = async (entries) => {
      await held;
      return apply(entries);
    };

    const settled = (promise: Promise<unknown>): { done: boolean; outcome: Promise<unknown> } => {
      const state = { done: false, outcome: promise.then(() => 'applied', (error: unknown) => error) };
      void state.outcome.then(() => { state.done = true; });
      return state;
    };
    const early = settled(member.put(putOf('early', 'v')));
    await new Promise((resolve) => setTimeout(resolve, requestTimeoutMs / 2));
    const late = settled(member.put(putOf('late', 'v')));
    await new Promise((resolve) => setImmediate(resolve)); // past its authorization
    expect(member.pendingProposals).toBe(2);

    const earlyOutcome = await early.outcome;
    expect(toServiceError(earlyOutcome)).toMatchObject({ code: status.UNAVAILABLE, details: 'etcdserver: request timed out' });
    // The later proposal still waits for its own deadline, half a timeout on.
    expect(late.done).toBe(false);
    expect(member.pendingProposals).toBe(1);
    expect(failed).toBe(1);

    expect(toServiceError(await late.outcome)).toMatchObject({ code: status.UNAVAILABLE, details: 'etcdserver: request timed out' });
    expect(member.pendingProposals).toBe(0);
    expect(failed).toBe(2);

    // Applied late, the timed-out entries answer nobody; a new proposal is answered as usual.
    release();
    host.applyEntries = apply;
    await expect(member.put(putOf('after', 'v'))).resolves.toMatchObject({ revision: expect.any(Number) as unknown });
    expect(member.pendingProposals).toBe(0);
    expect(failed).toBe(2);
  });
});
