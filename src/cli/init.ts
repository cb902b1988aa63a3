/**
 * `rampart init --member name=host ...`: per-host bundles for a real multi-host deployment. Each
 * bundle holds the member's server and peer certificates (SANs: its host), its audit signing key, the CA certificate, the
 * member's encryption key file (its data at rest is sealed under it), a `rampart.yaml` for
 * `rampart serve --config-file`, and `rampart.service`, the hardened systemd unit that runs it; an admin client certificate goes next to the
 * CA. Copy `<out>/<name>/` to its host; keep `<out>/pki/ca/` offline.
 */
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { copyFile, mkdir, writeFile } from 'node:fs/promises';
import { isIP } from 'node:net';
import path from 'node:path';
import { stringify } from 'yaml';
import { caValidityDays, initAuthority, issueCertificate, writeKeyPair } from '../pki/authority.js';
import { crlFileName, writeRevocationList } from '../pki/revocation.js';
import { FileKekProvider } from '../encryption/kek-file.js';

export interface InitOptions {
  readonly members: readonly string[];
  readonly outDirectory: string;
  readonly clientPort: number;
  readonly peerPort: number;
  readonly metricsPort: number;
  readonly dataDir: string;
}

export function parseMemberSpec(spec: string): { name: string; host: string } {
  const match = /^([A-Za-z0-9][A-Za-z0-9_.-]*)=([^\s=]+)$/.exec(spec);
  if (match === null) throw new Error(`--member expects name=host, got "${spec}"`);
  const host = match[2] as string;
  if (isIP(host) === 0 && !/^[A-Za-z0-9.-]+$/.test(host)) throw new Error(`--member ${spec}: "${host}" is not a host name or IP address`);
  return { name: match[1] as string, host };
}

/** The hardened unit shipped in deploy/systemd/, whose state directory is the bundle's data directory. */
const unitTemplate = fileURLToPath(new URL('../../../deploy/systemd/rampart.service', import.meta.url));
let unitText: string | undefined;

/**
 * The systemd unit for a bundle: the shipped one, with StateDirectory= naming the data directory
 * (systemd creates it 0700 for the service user; ProtectSystem=strict leaves nothing else writable).
 */
export function systemdUnit(dataDir: string): string {
  unitText ??= readFileSync(unitTemplate, 'utf8');
  const state = /^\/var\/lib\/([^/]+(?:\/[^/]+)*)$/.exec(path.posix.normalize(dataDir));
  if (state === null) {
    // Outside /var/lib systemd cannot own the directory: the unit names it writable instead.
    return unitText.replace(/^StateDirectory=.*$/m, `ReadWritePaths=${dataDir}`).replace(/^StateDirectoryMode=.*\n/m, '');
  }
  return unitText.replace(/^StateDirectory=.*$/m, `StateDirectory=${state[1] as string}`);
}

export async function initBundles(options: InitOptions, print: (line: string) => void): Promise<void> {
  const members = options.members.map(parseMemberSpec);
  const names = new Set(members.map((member) => member.name));
  if (names.size !== members.length) throw new Error('member names must be unique');
  const pki = path.join(options.outDirectory, 'pki');
  const token = `rampart-${randomBytes(6).toString('hex')}`;
  const { authority } = await initAuthority(pki, token);
  await writeKeyPair(pki, 'admin', await issueCertificate(authority, { kind: 'client', commonName: 'root' }));
  // Each bundle's rampart.yaml names crl.pem: it starts as the CA's empty CRL (number 1);
  // `rampart cert revoke --pki-dir <out>/pki` writes the next one, to copy to every host.
  const crlFile = await writeRevocationList(pki);
  const urlHost = (host: string): string => (isIP(host) === 6 ? `[${host}]` : host);
  const initialCluster = members.map((member) => `${member.name}=https://${urlHost(member.host)}:${options.peerPort}`).join(',');
  for (const member of members) {
    const bundle = path.join(options.outDirectory, member.name);
    await mkdir(bundle, { recursive: true, mode: 0o700 });
    const sans = [member.host];
    await writeKeyPair(bundle, 'server', await issueCertificate(authority, { kind: 'server', commonName: member.name, subjectAltNames: sans }));
    await writeKeyPair(bundle, 'peer', await issueCertificate(authority, { kind: 'peer', commonName: member.name, subjectAltNames: sans }));
    // The key that signs this member's audit checkpoints, so its trail verifies offline against
    // the CA; as long-lived as the CA, since a kept trail must stay checkable (as rampart up does).
    await writeKeyPair(bundle, 'audit', await issueCertificate(authority, { kind: 'audit', commonName: member.name, validityDays: caValidityDays }));
    await writeFile(path.join(bundle, 'ca.crt'), authority.certificatePem);
    await copyFile(crlFile, path.join(bundle, crlFileName));
    // The member's key-encryption key: keep it with the certificates, outside the data directory.
    await FileKekProvider.ensure(path.join(bundle, 'encryption.key'));
    const config = {
      name: member.name,
      'data-dir': options.dataDir,
      'listen-client-urls': [`https://${urlHost(member.host)}:${options.clientPort}`],
      'listen-peer-urls': [`https://${urlHost(member.host)}:${options.peerPort}`],
      'initial-cluster': initialCluster,
      'initial-cluster-token': token,
      'cert-file': 'server.crt',
      'key-file': 'server.key',
      'trusted-ca-file': 'ca.crt',
      'peer-cert-file': 'peer.crt',
      'peer-key-file': 'peer.key',
      'peer-trusted-ca-file': 'ca.crt',
      'crl-file': 'crl.pem',
      // Metrics and health over TLS with the server certificate; scrapers need a client certificate.
      'listen-metrics-urls': [`https://${urlHost(member.host)}:${options.metricsPort}`],
      'encryption-key-file': 'encryption.key',
      'audit-signing-cert-file': 'audit.crt',
      'audit-signing-key-file': 'audit.key',
    };
    await writeFile(path.join(bundle, 'rampart.yaml'), `# rampart serve --config-file rampart.yaml (run from this directory)\n${stringify(config)}`, { mode: 0o600 });
    await writeFile(path.join(bundle, 'rampart.service'), systemdUnit(options.dataDir), { mode: 0o600 });
    print(`bundle for ${member.name} (${member.host}): ${bundle}`);
  }
  print(`admin client certificate: ${path.join(pki, 'admin.crt')}; CA key: ${path.join(pki, 'ca')} (keep it offline)`);
}
