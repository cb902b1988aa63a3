import { describe, expect, it } from 'vitest';
import { cliErrorMessage } from '../../src/cli/error-message.js';

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
});
