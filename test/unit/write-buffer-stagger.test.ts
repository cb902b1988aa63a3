/**
 * Members' LevelDB write buffers differ (database.ts staggeredWriteBufferBytes), so members that
 * apply the same writes do not fill their memtables, and start their level-0 compactions, at the
 * same moment: each open draws 4 to 8 MiB.
 */
import { describe, expect, it } from 'vitest';
import { staggeredWriteBufferBytes } from '../../src/storage/database.js';

describe('the write buffer of each database open', () => {
  it('is drawn from 4 to 8 MiB, and opens draw different sizes', () => {
    const sizes = Array.from({ length: 200 }, () => staggeredWriteBufferBytes());
    for (const size of sizes) {
      expect(Number.isInteger(size)).toBe(true);
      expect(size).toBeGreaterThanOrEqual(4 << 20);
      expect(size).toBeLessThan(8 << 20);
    }
    // Spread over the range, not one size: the lowest and highest quarters are both drawn.
    expect(sizes.some((size) => size < 5 << 20)).toBe(true);
    expect(sizes.some((size) => size >= 7 << 20)).toBe(true);
  });
});
