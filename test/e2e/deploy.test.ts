/**
 * Deployment files against the bundles `rampart init` writes: the systemd unit (systemd-analyze
 * verify and its exposure score), the Kubernetes manifests (each member runs exactly its bundle's
 * rampart.yaml, with its files, ports and data directory), and a member started the way both start
 * it, answering the probes they use.
 */
import { spawn } from 'node:child_process';
import { chmod, cp, mkdir, readFile, readdir, writeFile } from 'node:fs/promises';
import { request } from 'node:https';
import type { TLSSocket } from 'node:tls';
import path from 'node:path';
import { parse, parseAllDocuments } from 'yaml';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { cleanEnvironment, freePort, projectRoot, rampartBin, removeDirectory, run, temporaryDirectory } from '../helpers/processes.js';

const unitFile = path.join(projectRoot, 'deploy/systemd/rampart.service');
const manifestsFile = path.join(projectRoot, 'deploy/kubernetes/rampart.yaml');
const rampart = (args: string[]) => run(process.execPath, [rampartBin, ...args], { timeoutMs: 30_000 });

type Config = Record<string, string | string[]>;
const fileSettings = ['cert-file', 'key-file', 'trusted-ca-file', 'peer-cert-file', 'peer-key-file', 'peer-trusted-ca-file', 'crl-file', 'encryption-key-file'];
const portOf = (url: string): number => Number(new URL(url).port);

function unitSettings(text: string): Map<string, string[]> {
  const settings = new Map<string, string[]>();
  for (const line of text.split('\n')) {
    const match = /^([A-Za-z]+)=(.*)$/.exec(line);
    if (match === null) continue;
    settings.set(match[1] as string, [...(settings.get(match[1] as string) ?? []), match[2] as string]);
  }
  return settings;
}

describe('deployment', () => {
  let home: string;

  beforeAll(async () => {
    home = await temporaryDirectory('deploy');
  });

  afterAll(async () => {
    await removeDirectory(home);
  });

  it('bundles carry the hardened systemd unit, which systemd-analyze verifies', async () => {
    const out = path.join(home, 'hosts');
    expect((await rampart(['init', '--out', out, '--member', 'm1=10.0.0.1', '--member', 'm2=10.0.0.2', '--member', 'm3=10.0.0.3'])).code).toBe(0);
    const shipped = await readFile(unitFile, 'utf8');
    const bundle = path.join(out, 'm1');
    expect(await readFile(path.join(bundle, 'rampart.service'), 'utf8')).toBe(shipped);
    const config = parse(await readFile(path.join(bundle, 'rampart.yaml'), 'utf8')) as Config;
    const unit = unitSettings(shipped);
    // It runs the bundle's rampart.yaml from the directory the bundle is installed in, nothing else.
    expect(unit.get('ExecStart')).toEqual(['/usr/local/bin/rampart serve --config-file rampart.yaml']);
    expect(unit.get('WorkingDirectory')).toEqual(['/etc/rampart']);
    expect(`/var/lib/${unit.get('StateDirectory')?.[0]}`).toBe(config['data-dir']);
    for (const setting of fileSettings) expect((await readdir(bundle)).includes(config[setting] as string), setting).toBe(true);
    for (const [setting, value] of [['User', 'rampart'], ['NoNewPrivileges', 'yes'], ['ProtectSystem', 'strict'], ['StateDirectoryMode', '0700'], ['UMask', '0077']]) {
      expect(unit.get(setting as string), setting).toEqual([value]);
    }
    // verify also checks that ExecStart is executable: point it at this checkout's command.
    const checkable = path.join(home, 'unit', 'rampart.service');
    await mkdir(path.dirname(checkable));
    await writeFile(checkable, shipped.replace('/usr/local/bin/rampart', rampartBin));
    const verified = await run('systemd-analyze', ['verify', checkable]);
    expect(verified, 'systemd-analyze (Debian systemd; scripts/test-dependencies.sh installs it)').toMatchObject({ code: 0, stderr: '' });
    const security = await run('systemd-analyze', ['security', '--offline=true', checkable]);
    const exposure = Number(/Overall exposure level for rampart\.service: ([\d.]+)/.exec(security.stdout)?.[1]);
    expect(exposure).toBeLessThanOrEqual(2);

    // The backup service and its timer verify too (the timer needs its service beside it).
    for (const name of ['rampart-backup.service', 'rampart-backup.timer']) {
      await writeFile(path.join(home, 'unit', name), (await readFile(path.join(projectRoot, 'deploy/systemd', name), 'utf8')).replace('/usr/local/bin/rampart', rampartBin));
    }
    expect(await run('systemd-analyze', ['verify', path.join(home, 'unit', 'rampart-backup.service'), path.join(home, 'unit', 'rampart-backup.timer')])).toMatchObject({ code: 0, stderr: '' });

    // A data directory elsewhere: systemd cannot own it, so the unit makes exactly it writable.
    const elsewhere = path.join(home, 'elsewhere');
    expect((await rampart(['init', '--out', elsewhere, '--member', 'm1=10.0.0.1', '--data-dir', '/srv/rampart'])).code).toBe(0);
    const other = unitSettings(await readFile(path.join(elsewhere, 'm1', 'rampart.service'), 'utf8'));
    expect(other.get('ReadWritePaths')).toEqual(['/srv/rampart']);
    expect(other.has('StateDirectory')).toBe(false);
  });

  it('the Kubernetes manifests run each member with exactly its bundle', async () => {
    const documents = parseAllDocuments(await readFile(manifestsFile, 'utf8')).map((document) => document.toJS() as Record<string, unknown>);
    const byKind = new Map(documents.map((document) => [document['kind'] as string, document as { metadata: { name: string; namespace: string }; spec: Record<string, unknown> }]));
    const statefulSet = byKind.get('StatefulSet') as unknown as {
      metadata: { namespace: string };
      spec: { serviceName: string; replicas: number; podManagementPolicy: string; template: { spec: {
        initContainers: { command: string[]; volumeMounts: { name: string; mountPath: string }[] }[];
        containers: { args: string[]; workingDir: string; ports: { name: string; containerPort: number }[]; volumeMounts: { name: string; mountPath: string }[];
          livenessProbe: { httpGet: { path: string; port: string; scheme: string } }; readinessProbe: { httpGet: { path: string; port: string; scheme: string } } }[];
        volumes: { name: string; secret?: { secretName: string } }[] } } };
    };
    const { namespace } = statefulSet.metadata;
    const { serviceName, replicas } = statefulSet.spec;
    expect(replicas).toBe(3);
    expect(statefulSet.spec.podManagementPolicy).toBe('Parallel');
    expect(byKind.get('Service')?.spec['clusterIP']).toBe('None');
    expect(byKind.get('Service')?.metadata.name).toBe(serviceName);
    expect(byKind.get('PodDisruptionBudget')?.spec['maxUnavailable']).toBe(1);
    expect(JSON.stringify(byKind.get('NetworkPolicy')?.spec)).toContain('"port":2380');

    // The bundles as the manifest's header says to make them.
    const pods = Array.from({ length: replicas }, (_, index) => `rampart-${index}`);
    const out = path.join(home, 'kubernetes');
    const members = pods.flatMap((pod) => ['--member', `${pod}=${pod}.${serviceName}.${namespace}.svc.cluster.local`]);
    expect((await rampart(['init', '--out', out, '--data-dir', '/var/lib/rampart/data', ...members])).code).toBe(0);
    const { spec } = statefulSet.spec.template;
    const container = spec.containers[0];
    const copier = spec.initContainers[0];
    expect(container?.args).toEqual(['serve', '--config-file', 'rampart.yaml']);
    expect(copier?.command.join(' ')).toContain('/bundles/$(POD_NAME)/* /etc/rampart/bundle/');
    for (const pod of pods) {
      const config = parse(await readFile(path.join(out, pod, 'rampart.yaml'), 'utf8')) as Config;
      // Every member's Secret is mounted where the copier looks for it.
      const volume = spec.volumes.find((entry) => entry.secret?.secretName === `${pod}-bundle`);
      expect(volume, pod).toBeDefined();
      expect(copier?.volumeMounts.find((mount) => mount.name === volume?.name)?.mountPath).toBe(`/bundles/${pod}`);
      // Ports, data volume and working directory match what the bundle says.
      const ports = new Map(container?.ports.map((port) => [port.name, port.containerPort]));
      expect(ports.get('client')).toBe(portOf((config['listen-client-urls'] as string[])[0] as string));
      expect(ports.get('peer')).toBe(portOf((config['listen-peer-urls'] as string[])[0] as string));
      expect(ports.get('metrics')).toBe(portOf((config['listen-metrics-urls'] as string[])[0] as string));
      const dataMount = container?.volumeMounts.find((mount) => mount.name === 'data')?.mountPath as string;
      expect((config['data-dir'] as string).startsWith(`${dataMount}/`)).toBe(true);
      expect(container?.workingDir).toBe('/etc/rampart/bundle');
      for (const setting of fileSettings) expect((await readdir(path.join(out, pod))).includes(config[setting] as string), `${pod} ${setting}`).toBe(true);
    }
    expect(container?.livenessProbe.httpGet).toEqual({ path: '/livez', port: 'metrics', scheme: 'HTTPS' });
    expect(container?.readinessProbe.httpGet).toEqual({ path: '/readyz', port: 'metrics', scheme: 'HTTPS' });
  });

  it('a member started as the unit and the pod start it serves, and answers the probes without a certificate', async () => {
    const [client, peer, metrics] = [await freePort(), await freePort(), await freePort()];
    const out = path.join(home, 'local');
    const dataDir = path.join(home, 'local-data');
    expect((await rampart(['init', '--out', out, '--member', 'solo=127.0.0.1', '--client-port', String(client), '--peer-port', String(peer), '--metrics-port', String(metrics), '--data-dir', dataDir])).code).toBe(0);
    // As the pod's copier leaves it: a 0700 directory of 0600 files.
    const bundle = path.join(home, 'etc-rampart', 'bundle');
    await cp(path.join(out, 'solo'), bundle, { recursive: true });
    await chmod(bundle, 0o700);
    for (const file of await readdir(bundle)) await chmod(path.join(bundle, file), 0o600);
    const child = spawn(process.execPath, [rampartBin, 'serve', '--config-file', 'rampart.yaml'], { cwd: bundle, env: cleanEnvironment(), stdio: ['ignore', 'ignore', 'pipe'] });
    let log = '';
    child.stderr.on('data', (chunk: Buffer) => {
      log += chunk.toString();
    });
    const probe = (route: string): Promise<number> => new Promise((resolve) => {
      // As a kubelet probes: HTTPS, no client certificate, the server certificate not checked.
      const call = request({ host: '127.0.0.1', port: metrics, path: route, rejectUnauthorized: false, timeout: 2000 }, (response) => {
        response.resume();
        resolve(response.statusCode ?? 0);
      });
      call.on('error', () => resolve(0));
      call.end();
    });
    /** One probe on a connection of its own that resumes `session` when given: its status, the ticket it got and whether it resumed. */
    const probeOnce = (route: string, session?: Buffer): Promise<{ status: number; session: Buffer | undefined; resumed: boolean }> => new Promise((resolve, reject) => {
      let ticket: Buffer | undefined;
      let resumed = false;
      const call = request({ host: '127.0.0.1', port: metrics, path: route, rejectUnauthorized: false, agent: false, timeout: 10_000, ...(session === undefined ? {} : { session }) }, (response) => {
        response.resume();
        response.on('end', () => resolve({ status: response.statusCode ?? 0, session: ticket, resumed }));
      });
      call.on('socket', (socket: TLSSocket) => {
        socket.on('session', (value: Buffer) => (ticket = value));
        socket.once('secureConnect', () => (resumed = socket.isSessionReused()));
      });
      call.on('error', reject);
      call.end();
    });
    try {
      const deadline = Date.now() + 30_000;
      while ((await probe('/readyz')) !== 200) {
        expect(child.exitCode, log).toBeNull();
        expect(Date.now(), log).toBeLessThan(deadline);
        await new Promise((resolve) => setTimeout(resolve, 250));
      }
      expect(await probe('/livez')).toBe(200);
      expect(await probe('/metrics')).toBe(401);
      // A prober that resumes a TLS session it got without a certificate has none either (Node
      // reported such a connection as authorized: this probe was answered 403, 'certificate revoked').
      const first = await probeOnce('/livez');
      expect(first).toMatchObject({ status: 200, resumed: false });
      for (const route of ['/metrics', '/health']) {
        expect(await probeOnce(route, first.session), route).toMatchObject({ status: 401, resumed: true });
      }
      const pki = path.join(out, 'pki');
      const put = await run('etcdctl', ['--endpoints', `https://127.0.0.1:${client}`, '--cacert', path.join(pki, 'ca.crt'), '--cert', path.join(pki, 'admin.crt'), '--key', path.join(pki, 'admin.key'), 'put', 'deployed', 'yes'], { env: cleanEnvironment() });
      expect(put.stdout).toBe('OK\n');
    } finally {
      child.kill('SIGTERM');
      await new Promise((resolve) => child.once('exit', resolve));
    }
  }, 60_000);
});
