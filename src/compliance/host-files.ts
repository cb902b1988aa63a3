/**
 * A member host's files as a compliance check reads them: the data directory's mode and owner
 * (CIS 1.1.11 and 1.1.12), entries inside it that group or others could read, and whom the
 * directory should belong to (the user the member runs as).
 *
 * Bounded: the walk looks at most `dataDirectoryEntriesMax` entries and reports at most
 * `looseEntriesReportedMax` of the loose ones.
 */
import { readFile, readdir, lstat } from 'node:fs/promises';
import path from 'node:path';
import { observed, unavailable, type Observed } from './control.js';
import type { DataDirectoryFacts, FileOwner } from './facts.js';

export const dataDirectoryEntriesMax = 10_000;
const looseEntriesReportedMax = 20;

/** uid → user name and gid → group name from /etc/passwd and /etc/group (numbers when absent). */
export async function accountNames(): Promise<{ user: (uid: number) => string; group: (gid: number) => string; uidOf: (name: string) => number | undefined }> {
  const table = async (file: string): Promise<Map<number, string>> => {
    const text = await readFile(file, 'utf8').catch(() => '');
    const names = new Map<number, string>();
    for (const line of text.split('\n')) {
      const [name, , id] = line.split(':');
      if (name !== undefined && id !== undefined && /^\d+$/.test(id) && !names.has(Number(id))) names.set(Number(id), name);
    }
    return names;
  };
  const [users, groups] = await Promise.all([table('/etc/passwd'), table('/etc/group')]);
  return {
    user: (uid) => users.get(uid) ?? String(uid),
    group: (gid) => groups.get(gid) ?? String(gid),
    uidOf: (name) => [...users].find(([, candidate]) => candidate === name)?.[0],
  };
}

/** The real uid of a running process (Linux /proc), or why it is not known. */
export async function processUid(pid: number): Promise<Observed<number>> {
  const status = await readFile(`/proc/${pid}/status`, 'utf8').catch(() => undefined);
  const uid = status === undefined ? undefined : /^Uid:\s+(\d+)/m.exec(status)?.[1];
  return uid === undefined ? unavailable(`process ${pid} is not running (or /proc is not readable)`) : observed(Number(uid));
}

/**
 * Entries under `directory` that group or others may access (mode & 0o077: what `chmod -R o+r` or
 * a copy made with a loose umask leaves), depth first, bounded: the first ones and how many.
 */
async function looseEntries(directory: string): Promise<{ reported: string[]; total: number }> {
  const loose: string[] = [];
  let total = 0;
  const pending = [directory];
  let seen = 0;
  while (pending.length > 0 && seen < dataDirectoryEntriesMax) {
    const current = pending.pop() as string;
    const names = await readdir(current).catch(() => [] as string[]);
    for (const name of names) {
      if (++seen > dataDirectoryEntriesMax) break;
      const entry = path.join(current, name);
      const info = await lstat(entry).catch(() => undefined);
      if (info === undefined || info.isSymbolicLink()) continue;
      if ((info.mode & 0o077) !== 0) {
        total += 1;
        if (loose.length < looseEntriesReportedMax) loose.push(`${entry} (${(info.mode & 0o777).toString(8).padStart(3, '0')})`);
      }
      if (info.isDirectory()) pending.push(entry);
    }
  }
  return { reported: loose, total };
}

export interface ExpectedOwner {
  readonly user: string;
  readonly uid: number;
  readonly source: string;
}

export async function inspectDataDirectory(member: string, directory: string, expectedOwner: Observed<ExpectedOwner>): Promise<DataDirectoryFacts> {
  const names = await accountNames();
  const info = await lstat(directory).catch((error: NodeJS.ErrnoException) => error);
  if (info instanceof Error) {
    return { member, directory, stat: unavailable(`cannot read ${directory}: ${info.code ?? info.message}`), looseEntries: [], looseEntriesTotal: 0, expectedOwner };
  }
  if (!info.isDirectory()) return { member, directory, stat: unavailable(`${directory} is not a directory`), looseEntries: [], looseEntriesTotal: 0, expectedOwner };
  const owner: FileOwner = { uid: info.uid, gid: info.gid, user: names.user(info.uid), group: names.group(info.gid) };
  const loose = await looseEntries(directory);
  return { member, directory, stat: observed({ mode: info.mode & 0o777, ...owner }), looseEntries: loose.reported, looseEntriesTotal: loose.total, expectedOwner };
}
