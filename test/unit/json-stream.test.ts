import { describe, expect, it } from 'vitest';
import { JsonValueSplitter } from '../../src/api/json-stream.js';

/** Feeds `text` cut at `cuts` (sorted offsets); every value found, then what is left at the end. */
function split(text: string, cuts: readonly number[]): { values: string[]; rest: string } {
  const splitter = new JsonValueSplitter();
  const values: string[] = [];
  let from = 0;
  for (const cut of [...cuts, text.length]) {
    values.push(...splitter.feed(text.slice(from, cut)));
    from = cut;
  }
  return { values, rest: splitter.rest() };
}

describe('JsonValueSplitter', () => {
  const stream = ' {"create_request":{"key":"YQ==","x":"a\\"}{[b\\\\"}}\n[1,{"a":[]}]"str\\"ing"  true 12{"progress_request":{}}';
  const expected = ['{"create_request":{"key":"YQ==","x":"a\\"}{[b\\\\"}}', '[1,{"a":[]}]', '"str\\"ing"', 'true', '12', '{"progress_request":{}}'];

  it('finds each value, however the stream is cut into chunks', () => {
    expect(split(stream, [])).toEqual({ values: expected, rest: '' });
    for (let cut = 0; cut <= stream.length; cut += 1) expect(split(stream, [cut])).toEqual({ values: expected, rest: '' });
    expect(split(stream, Array.from({ length: stream.length }, (_, index) => index))).toEqual({ values: expected, rest: '' });
  });

  it('holds an unfinished value, counts it, and hands it back at the end', () => {
    const splitter = new JsonValueSplitter();
    expect(splitter.feed('{"a":1} {"key":"ab')).toEqual(['{"a":1}']);
    expect(splitter.pendingLength).toBe('{"key":"ab'.length);
    expect(splitter.feed('cd')).toEqual([]);
    expect(splitter.pendingLength).toBe('{"key":"abcd'.length);
    expect(splitter.rest()).toBe('{"key":"abcd');
    // A literal ends at a delimiter or with the stream.
    const literal = new JsonValueSplitter();
    expect(literal.feed('null')).toEqual([]);
    expect(literal.rest()).toBe('null');
  });

  it('a stray delimiter is a value of its own (which will not parse), as before', () => {
    expect(split('{},{}', [])).toEqual({ values: ['{}', ',', '{}'], rest: '' });
  });

  it('costs time linear in the size of one value fed in small chunks', () => {
    const value = `{"create_request":{"key":"${'A'.repeat(6_000_000)}"}}`;
    const started = performance.now();
    const { values } = split(value, Array.from({ length: Math.floor(value.length / 2000) }, (_, index) => (index + 1) * 2000));
    const elapsedMs = performance.now() - started;
    expect(values).toEqual([value]);
    // Rescanning all that is held on every chunk (the old way) takes tens of seconds here.
    expect(elapsedMs).toBeLessThan(2_000);
  });
});
