import { describe, expect, it } from 'vitest';
import { GrpcMessageProgress, RequestBytesBudget } from '../../src/api/request-bytes-budget.js';

describe('RequestBytesBudget', () => {
  it('bounds the member and each source, and frees what is released', () => {
    const budget = new RequestBytesBudget(100, 40);
    expect(budget.take('a', 40)).toBe(true);
    expect(budget.take('a', 1)).toBe(false); // a's share is used up
    expect(budget.take('b', 40)).toBe(true);
    expect(budget.take('c', 30)).toBe(false); // the member's bound
    expect(budget.take('c', 20)).toBe(true);
    expect(budget.heldBytes).toBe(100);
    budget.release('a', 40);
    expect(budget.take('a', 10)).toBe(true);
    expect(budget.take('c', 21)).toBe(false);
    budget.release('b', 500); // more than held: only what b holds is freed
    expect(budget.heldBytes).toBe(30);
  });
});

describe('GrpcMessageProgress', () => {
  const frame = (bodyBytes: number): Buffer => {
    const prefix = Buffer.alloc(5);
    prefix.writeUInt32BE(bodyBytes, 1);
    return Buffer.concat([prefix, Buffer.alloc(bodyBytes, 7)]);
  };

  it('counts the unfinished message however its bytes are cut, and nothing once it is whole', () => {
    const stream = Buffer.concat([frame(10), frame(0), frame(300), frame(20)]);
    for (let cut = 1; cut < stream.length; cut += 7) {
      const progress = new GrpcMessageProgress();
      for (let offset = 0; offset < stream.length; offset += cut) progress.push(stream.subarray(offset, offset + cut));
      expect(progress.held).toBe(0);
    }
    const progress = new GrpcMessageProgress();
    progress.push(frame(10));
    progress.push(frame(300).subarray(0, 3));
    expect(progress.held).toBe(3);
    progress.push(frame(300).subarray(3, 105));
    expect(progress.held).toBe(105);
  });
});
