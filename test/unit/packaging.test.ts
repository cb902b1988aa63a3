/**
 * What a fresh clone promises: the Node version in `engines` is one every installed dependency
 * accepts (npm only warns otherwise, and the failure shows up later as a syntax or import error),
 * the license file is the one package.json names, the `bin` runs, and the changelog covers the version.
 */
import { access, constants, readFile } from 'node:fs/promises';
import path from 'node:path';
import semver from 'semver';
import { describe, expect, it } from 'vitest';
import { projectRoot } from '../helpers/processes.js';

interface LockPackage { readonly engines?: { readonly node?: string } | string[]; readonly optional?: boolean }
interface Manifest { readonly version: string; readonly license: string; readonly engines: { readonly node: string }; readonly bin: Record<string, string> }

const read = (file: string): Promise<string> => readFile(path.join(projectRoot, file), 'utf8');

describe('packaging', () => {
  it('engines.node is accepted by every dependency, and this Node satisfies it', async () => {
    const manifest = JSON.parse(await read('package.json')) as Manifest;
    const lock = JSON.parse(await read('package-lock.json')) as { packages: Record<string, LockPackage> };
    const oldest = semver.minVersion(manifest.engines.node);
    expect(oldest).not.toBeNull();
    const refusing: string[] = [];
    for (const [name, entry] of Object.entries(lock.packages)) {
      // Optional packages are platform binaries (other OSes and CPUs); npm skips the ones that do not fit.
      if (name === '' || entry.optional === true || entry.engines === undefined || Array.isArray(entry.engines)) continue;
      const range = entry.engines.node;
      if (range === undefined) continue;
      if (!semver.satisfies(oldest as semver.SemVer, range) || !semver.satisfies(process.version, range)) refusing.push(`${name} wants node ${range}`);
    }
    expect(refusing).toEqual([]);
    expect(semver.satisfies(process.version, manifest.engines.node)).toBe(true);
  });

  it('LICENSE is the full Apache 2.0 text that package.json names', async () => {
    const manifest = JSON.parse(await read('package.json')) as Manifest;
    const license = await read('LICENSE');
    expect(manifest.license).toBe('Apache-2.0');
    expect(license).toMatch(/^\s*Apache License\s+Version 2\.0, January 2004/);
    expect(license).toContain('END OF TERMS AND CONDITIONS');
  });

  it('the bin is an executable node script, and the changelog has an entry for this version', async () => {
    const manifest = JSON.parse(await read('package.json')) as Manifest;
    const bin = manifest.bin['rampart'];
    expect(bin).toBe('bin/rampart.js');
    await access(path.join(projectRoot, bin as string), constants.X_OK);
    expect((await read(bin as string)).startsWith('#!/usr/bin/env node\n')).toBe(true);
    expect(await read('CHANGELOG.md')).toContain(`## ${manifest.version}`);
  });
});
