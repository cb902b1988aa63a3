#!/usr/bin/env node
// `npm run soak -- --minutes N [--plaintext] [--faults a,b]`: runs test/soak/soak.test.ts (a nemesis
// soak against a real 3-member cluster) for N minutes (default 1). The cluster is secure as
// `rampart up` ships it; --plaintext runs it without TLS, auth or encryption. --faults narrows the
// nemesis (RAMPART_SOAK_FAULTS; `double` alone: only overlapping faults). Needs a build (npm run
// soak builds first).
//
// Interrupted (SIGINT, SIGTERM, SIGHUP, or its stdout closed as in `| head`), it cleans up what the
// soak started, which the soak's own `finally` cannot do once its process is gone: every process of
// the run (vitest, its workers, the members, orphaned or not) carries TMPDIR set to a directory of the
// run's own, under which every temporary directory of the run lives, the members' tmpfs mounts
// included. It stops the processes carrying that TMPDIR, unmounts what is mounted under that
// directory and removes it; nothing else. (Not a process group of its own: a signal to the caller's
// group, Ctrl-C or a CI job's timeout, still reaches every process.)
import { Buffer } from 'node:buffer';
import { execFileSync, spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, readdirSync, rmSync, rmdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { setTimeout } from 'node:timers';
import { parseArgs } from 'node:util';

const usage = `usage: npm run soak -- [--minutes N] [--plaintext] [--faults kill,partition,double,...]
  --minutes N   how long the nemesis runs (N > 0, default 1)
  --plaintext   a cluster without TLS, auth or encryption (default: secure, as rampart up ships it)
  --faults L    only these faults (comma-separated; \`double\` alone: only overlapping faults)
  -h, --help    this text`;

let options;
try {
  ({ values: options } = parseArgs({
    options: {
      minutes: { type: 'string' },
      plaintext: { type: 'boolean' },
      faults: { type: 'string' },
      help: { type: 'boolean', short: 'h' },
    },
    strict: true,
    allowPositionals: false,
  }));
} catch (error) {
  console.error(`soak: ${error.message}\n${usage}`);
  process.exit(2);
}
if (options.help) {
  console.log(usage);
  process.exit(0);
}
const minutes = Number(options.minutes ?? 1);
if (!Number.isFinite(minutes) || minutes <= 0 || options.faults === '') {
  console.error(usage);
  process.exit(2);
}

/** Milliseconds the soak's processes get to exit after SIGTERM before SIGKILL. */
const stopGraceMs = 5000;
const runDirectory = mkdtempSync(path.join(tmpdir(), 'rampart-soak-run-'));
const child = spawn('npx', ['vitest', 'run', 'test/soak/soak.test.ts'], {
  stdio: ['ignore', 'pipe', 'inherit'],
  env: {
    ...process.env,
    TMPDIR: runDirectory,
    ...(process.stdout.isTTY ? { FORCE_COLOR: '1' } : {}),
    RAMPART_SOAK_MINUTES: String(minutes),
    ...(options.plaintext ? { RAMPART_SOAK_PLAINTEXT: '1' } : {}),
    ...(options.faults === undefined ? {} : { RAMPART_SOAK_FAULTS: options.faults }),
  },
});
child.stdout.on('data', (chunk) => process.stdout.write(chunk));

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
/** The processes of this run, found by the TMPDIR they were started with (orphans too). */
function runProcesses() {
  const marker = Buffer.from(`\0TMPDIR=${runDirectory}\0`);
  const found = [];
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name) || Number(name) === process.pid) continue;
    try {
      if (Buffer.concat([Buffer.from([0]), readFileSync(`/proc/${name}/environ`)]).includes(marker)) found.push(Number(name));
    } catch {
      // Gone meanwhile.
    }
  }
  return found;
}
/** Signals every process of this run; false when none is left. */
function signalRun(signal) {
  const found = runProcesses();
  for (const pid of found) {
    try {
      process.kill(pid, signal);
    } catch {
      // Gone meanwhile.
    }
  }
  return found.length > 0;
}

/** Mount points under `directory`, deepest first. */
function mountsUnder(directory) {
  const decode = (field) => field.replace(/\\([0-7]{3})/g, (_match, octal) => String.fromCharCode(Number.parseInt(octal, 8)));
  return readFileSync('/proc/self/mounts', 'utf8').split('\n')
    .map((line) => decode(line.split(' ')[1] ?? ''))
    .filter((mountPoint) => mountPoint.startsWith(`${directory}${path.sep}`))
    .sort((a, b) => b.length - a.length);
}

let cleaning;
/**
 * Stops what is left of the soak's processes and unmounts its tmpfs disks, then removes its
 * directories: all of them when interrupted; otherwise all but member logs the soak kept for an
 * anomaly (rampart-soak-logs-*). Once.
 */
function cleanUp(graceMs, keepLogs) {
  cleaning ??= (async () => {
    if (signalRun('SIGTERM')) {
      signalRun('SIGCONT'); // a paused member would not see its SIGTERM
      const deadline = Date.now() + graceMs;
      while (Date.now() < deadline && runProcesses().length > 0) await sleep(100);
      signalRun('SIGKILL');
      // Gone once the kernel has freed them (zombies show no environment): then unmount.
      for (let waited = 0; waited < 50 && runProcesses().length > 0; waited++) await sleep(100);
    }
    for (const mountPoint of mountsUnder(runDirectory)) {
      try {
        execFileSync('umount', ['-l', mountPoint], { stdio: 'ignore' });
      } catch {
        process.stderr.write(`soak: could not unmount ${mountPoint}\n`);
      }
    }
    for (const name of readdirSync(runDirectory)) {
      if (!(keepLogs && name.startsWith('rampart-soak-logs-'))) rmSync(path.join(runDirectory, name), { recursive: true, force: true });
    }
    try {
      rmdirSync(runDirectory);
    } catch {
      process.stderr.write(`soak: member logs kept in ${runDirectory}\n`);
    }
  })();
  return cleaning;
}

let interruption;
function interrupt(reason, status) {
  if (interruption !== undefined) return;
  interruption = reason;
  process.stderr.write(`soak: ${reason}: stopping its processes and removing ${runDirectory}\n`);
  void cleanUp(stopGraceMs, false).finally(() => process.exit(status));
}
process.on('SIGINT', () => interrupt('interrupted (SIGINT)', 130));
process.on('SIGTERM', () => interrupt('terminated (SIGTERM)', 143));
process.on('SIGHUP', () => interrupt('hung up (SIGHUP)', 129));
// `| head` and the like: the reader is gone, nobody is watching the run.
process.stdout.on('error', () => interrupt('stdout closed', 141));

child.on('exit', (code) => {
  if (interruption !== undefined) return;
  // A soak that ended by itself has cleaned up in its `finally`; one whose vitest died has not.
  const drained = child.stdout.readableEnded ? Promise.resolve() : new Promise((resolve) => {
    child.stdout.once('end', resolve);
    setTimeout(resolve, 2000);
  });
  void drained.then(() => cleanUp(0, true)).finally(() => process.exit(code ?? 1));
});
