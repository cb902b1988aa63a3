/**
 * Temporary audit directories for a unit test file (each removed after the file's tests), and the
 * `onError` an AuditLog under test gets: a write that fails fails the test.
 */
import { afterAll } from 'vitest';
import { removeDirectory, temporaryDirectory } from './processes.js';

export interface AuditDirectories {
  /** A new empty directory, removed after the tests. */
  newDirectory(): Promise<string>;
  /** Rethrows: the `onError` of an AuditLog under test. */
  fail(error: unknown): never;
}

/** Call inside a `describe`: registers the clean-up with its `afterAll`. */
export function auditDirectories(name: string): AuditDirectories {
  const directories: string[] = [];
  afterAll(async () => {
    for (const directory of directories) await removeDirectory(directory);
  });
  return {
    newDirectory: async () => {
      const directory = await temporaryDirectory(name);
      directories.push(directory);
      return directory;
    },
    fail: (error) => {
      throw error;
    },
  };
}
