import { describe, expect, it } from 'vitest';
import { emptyHolds, overlappingHolds, type Hold } from '../soak/holds.js';

const hold = (worker: number, acquired: number, end: number): Hold => ({ worker, acquired, end, detail: `w${worker}` });

describe('soak lock/election holds', () => {
  it('reports a hold that begins while another worker still holds', () => {
    const earlier = hold(0, 74.2, 75.6);
    const later = hold(1, 74.6, 75.2);
    expect(overlappingHolds([later, earlier])).toEqual([{ current: later, previous: earlier }]);
  });

  it('does not count an answer that arrived after its lease coverage ended as a hold', () => {
    // The soak anomaly of the 3-minute run: worker 1's Campaign answer reached it at 74.6 s, but
    // its keep-alives covered its lease only until before then; worker 0 was elected meanwhile.
    const late = hold(1, 74.6, 74.1);
    expect(overlappingHolds([hold(0, 74.2, 75.6), late])).toEqual([]);
    expect(emptyHolds([hold(0, 74.2, 75.6), late])).toEqual([late]);
  });

  it('compares with the earlier hold reaching furthest, not only the one just before', () => {
    const long = hold(0, 0, 10);
    const short = hold(1, 1, 2);
    const inside = hold(1, 5, 6);
    expect(overlappingHolds([long, short, inside])).toEqual([
      { current: short, previous: long },
      { current: inside, previous: long },
    ]);
  });

  it('accepts holds that follow one another', () => {
    expect(overlappingHolds([hold(0, 0, 1), hold(1, 1, 2), hold(0, 2.5, 3)])).toEqual([]);
  });
});
