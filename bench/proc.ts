/**
 * What the bench tools read of a process from /proc: CPU time (utime + stime, fields 14 and 15 of
 * stat(5), in clock ticks of 1/100 s) and memory (VmRSS, VmHWM of status(5)). One reader instead of
 * a copy in each tool.
 */
import { readFile } from 'node:fs/promises';

/** Clock ticks a second (USER_HZ: 100 on Linux). */
export const ticksPerSecond = 100;

/** utime + stime in clock ticks of a stat file: `/proc/<pid>/stat` or `/proc/<pid>/task/<tid>/stat`. */
export async function statTicks(file: string): Promise<number> {
  const raw = await readFile(file, 'utf8');
  // The command name (field 2) is in parentheses and may hold spaces or ')': count from the last one.
  const fields = raw.slice(raw.lastIndexOf(')') + 2).split(' ');
  return Number(fields[11]) + Number(fields[12]);
}

/** Clock ticks of a whole process (every thread, ended ones included) and of its main thread. */
export async function processTicks(pid: number | 'self'): Promise<{ total: number; main: number }> {
  const mainThread = pid === 'self' ? process.pid : pid;
  const [total, main] = await Promise.all([statTicks(`/proc/${pid}/stat`), statTicks(`/proc/${pid}/task/${mainThread}/stat`)]);
  return { total, main };
}

/** A process's resident and peak resident memory in MiB. */
export async function memoryMiB(pid: number | 'self'): Promise<{ resident: number; peak: number }> {
  const status = await readFile(`/proc/${pid}/status`, 'utf8');
  const field = (name: string): number => Number(new RegExp(`^${name}:\\s+(\\d+) kB$`, 'm').exec(status)?.[1] ?? Number.NaN) / 1024;
  return { resident: field('VmRSS'), peak: field('VmHWM') };
}

/** The 1-minute load average as /proc/loadavg prints it. */
export async function loadAverage(): Promise<string> {
  return (await readFile('/proc/loadavg', 'utf8')).split(' ')[0] ?? '?';
}
