import { describe, expect, it } from 'vitest';
import { cliErrorMessage } from '../../src/cli/error-message.js';
import { callFailure, socketErrorText, unreachableReason } from '../../src/cli/unreachable.js';

describe('CLI error lines', () => {
  it('turns grpc-js "No connection established" into what to do', () => {
    const raw = 'No connection established. Last error: Error: connect ECONNREFUSED 127.0.0.1:4711. Resolution note: ';
    expect(cliErrorMessage(new Error(raw))).toBe('cannot reach the cluster (connect ECONNREFUSED 127.0.0.1:4711): is it running? (`rampart up` starts a local one; check --dir or --endpoints)');
    expect(cliErrorMessage(new Error(`14 UNAVAILABLE: ${raw}`))).toMatch(/^cannot reach the cluster \(connect ECONNREFUSED 127\.0\.0\.1:4711\)/);
  });

  it('names the file first in Node\'s file errors', async () => {
    const missing = await import('node:fs/promises').then((fs) => fs.readFile('/nonexistent-rampart-file')).catch((error: unknown) => error);
    expect(cliErrorMessage(missing)).toBe('/nonexistent-rampart-file: no such file or directory (ENOENT)');
  });

  it('leaves every other message as it is', () => {
    expect(cliErrorMessage(new Error('--size must be between 1 and 7'))).toBe('--size must be between 1 and 7');
    expect(cliErrorMessage('plain')).toBe('plain');
  });

  it('says where and why a call could not reach the cluster, never grpc-js\'s raw words', () => {
    const raw = '14 UNAVAILABLE: No connection established. Last error: Error: connect ECONNREFUSED 127.0.0.1:4711. Resolution note: ';
    expect(callFailure('MemberList', new Error(raw), 'https://127.0.0.1:4711')).toBe('cannot reach the cluster at https://127.0.0.1:4711: connection refused (ECONNREFUSED)');
    expect(unreachableReason('No connection established. Last error: Error: getaddrinfo ENOTFOUND nowhere.invalid')).toBe('no such host (ENOTFOUND)');
    expect(unreachableReason('4 DEADLINE_EXCEEDED: Deadline exceeded after 10.002s,LB pick: 0.001s,remote_addr=127.0.0.1:2379')).toBe('no answer in time (DEADLINE_EXCEEDED)');
    expect(unreachableReason('14 UNAVAILABLE: Connection dropped')).toBe('Connection dropped');
    // An answer from the cluster is not "cannot reach": it stays as it is, with the call named.
    expect(callFailure('policy export', new Error('7 PERMISSION_DENIED: etcdserver: permission denied'), 'x')).toBe('policy export failed: 7 PERMISSION_DENIED: etcdserver: permission denied');
    expect(socketErrorText(Object.assign(new Error('connect ECONNREFUSED 127.0.0.1:2381'), { code: 'ECONNREFUSED' }))).toBe('connection refused (ECONNREFUSED)');
  });
});
