import { describe, expect, it } from 'vitest';
import { durationText } from '../../src/cli/duration-text.js';

describe('durations in CLI help', () => {
  it('shows a default in the largest whole unit the flag accepts', () => {
    expect(durationText(86_400_000)).toBe('1d');
    expect(durationText(400 * 86_400_000)).toBe('400d');
    expect(durationText(7 * 86_400_000)).toBe('7d');
    expect(durationText(36 * 3_600_000)).toBe('36h');
    expect(durationText(90_000)).toBe('90s');
    expect(durationText(1500)).toBe('1500ms');
  });
});
