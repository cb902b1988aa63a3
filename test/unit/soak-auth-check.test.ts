import { describe, expect, it } from 'vitest';
import { probeAnomalies, type ProbeOperation, type Revocation } from '../soak/auth-check.js';

const at = (ms: number): string => `${ms}ms`;
const op = (outcome: ProbeOperation['outcome'], callMs: number, returnMs: number): ProbeOperation => ({ kind: 'put', callMs, returnMs, outcome, via: 's1' });
// Revoke sent at 100, acknowledged at 200; grant sent at 500, acknowledged at 600.
const revocation: Revocation = { revokeSent: 100, revokeAcknowledged: 200, grantSent: 500, grantAcknowledged: 600 };

describe('soak auth check', () => {
  it('accepts refusals that overlap a revocation and successes the revocation cannot have covered', () => {
    const operations = [
      op('denied', 90, 150), // answered after the revoke was sent
      op('denied', 550, 650), // asked before the grant was acknowledged
      op('allowed', 150, 250), // asked before the revoke was acknowledged
      op('allowed', 450, 520), // answered after the grant was sent
      op('allowed', 700, 720),
      op('failed', 300, 400), // says nothing either way
    ];
    expect(probeAnomalies(operations, [revocation], at)).toEqual([]);
  });

  it('reports a refusal no revocation explains (access it was granted)', () => {
    const problems = probeAnomalies([op('denied', 40, 90), op('denied', 610, 700)], [revocation], at);
    expect(problems.map((problem) => problem.ms)).toEqual([40, 610]);
    expect(problems[0]?.text).toContain('refused access it was granted');
    expect(probeAnomalies([op('denied', 40, 90)], [], at)).toHaveLength(1);
  });

  it('reports a success asked after the revoke was acknowledged and answered before the grant was sent', () => {
    const problems = probeAnomalies([op('allowed', 210, 300)], [revocation], at);
    expect(problems).toHaveLength(1);
    expect(problems[0]?.text).toContain('allowed after its permission\'s revocation was acknowledged');
  });
});
