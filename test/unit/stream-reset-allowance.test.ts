/** Which clients reset every call, and when their connection is cycled (a model of nghttp2's reset allowance). */
import { describe, expect, it } from 'vitest';
import { ResetAllowance, resetsEveryCall, streamResetBurst, streamResetReserve, streamResetsPerSecond } from '../../src/api/stream-reset-allowance.js';

describe('stream reset allowance', () => {
  it('recognises grpc-js before 1.10.4 and nothing else', () => {
    expect(resetsEveryCall('grpc-node-js/1.8.22')).toBe(true);
    expect(resetsEveryCall('etcd3 grpc-node-js/1.9.15 extra')).toBe(true);
    expect(resetsEveryCall('grpc-node-js/1.10.3')).toBe(true);
    expect(resetsEveryCall('grpc-node-js/1.10.4')).toBe(false);
    expect(resetsEveryCall('grpc-node-js/1.14.7')).toBe(false);
    expect(resetsEveryCall('grpc-go/1.26.0')).toBe(false);
    expect(resetsEveryCall(undefined)).toBe(false);
  });

  it('asks for a graceful close before the burst is spent, and refills at nghttp2\'s rate', () => {
    let now = 0;
    const allowance = new ResetAllowance(() => now);
    let spent = 0;
    while (!allowance.spend()) spent++;
    expect(spent).toBe(streamResetBurst - streamResetReserve - 1);
    // A client at 33 calls a second or slower never runs out.
    const slow = new ResetAllowance(() => now);
    for (let call = 0; call < 10_000; call++) {
      now += 1000 / streamResetsPerSecond;
      expect(slow.spend()).toBe(false);
    }
  });
});
