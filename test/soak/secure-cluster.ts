/**
 * The soak's cluster as `rampart up` ships it: a CA of its own; per member a server, a peer and an
 * audit-signing certificate and a key-encryption key file beside its data; mutual TLS on client and
 * peer ports; auth enabled by the members themselves with the shipped policies; the audit trail on.
 * Clients present certificates whose CN is their user: root (the admin certificate) and the soak's
 * own users. Member certificates can be renewed while the members serve, as `rampart rotate` does
 * (the members reload changed files).
 */
import { X509Certificate } from 'node:crypto';
import { mkdir, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { connect as tlsConnect } from 'node:tls';
import * as grpc from '@grpc/grpc-js';
import { packageDefinition } from '../../src/api/proto.js';
import { caValidityDays, createAuthority, issueCertificate, readKeyPair, renewCertificate, writeKeyPair, type KeyPairPem } from '../../src/pki/authority.js';

const localNames = ['127.0.0.1', 'localhost'];

type Unary = (request: object, options: grpc.CallOptions, callback: (error: grpc.ServiceError | null, response: Record<string, unknown>) => void) => void;
export type AuthClient = grpc.Client & Record<string, Unary>;

export class SoakPki {
  private readonly credentialsByUser = new Map<string, grpc.ChannelCredentials>();

  private constructor(
    private readonly directory: string,
    private readonly authority: KeyPairPem,
  ) {}

  /** A new CA in `directory` and the certificates of `memberNames` (CN = the member's name). */
  static async create(directory: string, memberNames: readonly string[]): Promise<SoakPki> {
    const authority = await createAuthority('rampart soak root CA');
    const pki = new SoakPki(directory, authority);
    for (const name of memberNames) {
      const home = pki.home(name);
      await writeKeyPair(home, 'server', await issueCertificate(authority, { kind: 'server', commonName: name, subjectAltNames: localNames }));
      await writeKeyPair(home, 'peer', await issueCertificate(authority, { kind: 'peer', commonName: name, subjectAltNames: localNames }));
      await writeKeyPair(home, 'audit', await issueCertificate(authority, { kind: 'audit', commonName: name, validityDays: caValidityDays }));
    }
    return pki;
  }

  get caPem(): string {
    return this.authority.certificatePem;
  }

  private home(name: string): string {
    return path.join(this.directory, name);
  }

  /** `rampart serve` flags for a member, as `rampart up` passes them (the CA bundle is the CA alone). */
  async memberArgs(name: string): Promise<string[]> {
    const home = this.home(name);
    const ca = path.join(home, 'ca.crt');
    await mkdir(home, { recursive: true, mode: 0o700 });
    await writeFile(ca, this.authority.certificatePem, { mode: 0o644 });
    return [
      '--cert-file', path.join(home, 'server.crt'), '--key-file', path.join(home, 'server.key'), '--trusted-ca-file', ca,
      '--peer-cert-file', path.join(home, 'peer.crt'), '--peer-key-file', path.join(home, 'peer.key'), '--peer-trusted-ca-file', ca,
      '--audit-signing-cert-file', path.join(home, 'audit.crt'), '--audit-signing-key-file', path.join(home, 'audit.key'),
      '--encryption-key-file', path.join(home, 'encryption.key'),
    ];
  }

  /** A replaced member starts from nothing: a fresh data directory gets a fresh key-encryption key. */
  async forgetKey(name: string): Promise<void> {
    await rm(path.join(this.home(name), 'encryption.key'), { force: true });
  }

  /** Channel credentials presenting a client certificate for `user` (issued on first use). */
  async credentials(user: string): Promise<grpc.ChannelCredentials> {
    let credentials = this.credentialsByUser.get(user);
    if (credentials === undefined) {
      const pair = await issueCertificate(this.authority, { kind: 'client', commonName: user });
      credentials = grpc.credentials.createSsl(Buffer.from(this.authority.certificatePem), Buffer.from(pair.keyPem), Buffer.from(pair.certificatePem));
      this.credentialsByUser.set(user, credentials);
    }
    return credentials;
  }

  /** An Auth service client as root. */
  async authClient(port: number): Promise<AuthClient> {
    const loaded = grpc.loadPackageDefinition(packageDefinition) as unknown as { etcdserverpb: { Auth: grpc.ServiceClientConstructor } };
    return new loaded.etcdserverpb.Auth(`127.0.0.1:${port}`, await this.credentials('root')) as unknown as AuthClient;
  }

  /**
   * Renews every member's server and peer certificate (same subject and names, new key and serial),
   * as `rampart rotate` does; returns the new serials by member. `issuer`: another CA's key pair to
   * sign with (the self-test of the rotation check: members must then fail to reconnect).
   */
  async renewMembers(names: readonly string[], issuer: KeyPairPem = this.authority): Promise<Map<string, { server: string; peer: string }>> {
    const serials = new Map<string, { server: string; peer: string }>();
    for (const name of names) {
      const server = await renewCertificate(issuer, this.home(name), 'server');
      const peer = await renewCertificate(issuer, this.home(name), 'peer');
      serials.set(name, { server: serialOf(server.certificatePem), peer: serialOf(peer.certificatePem) });
    }
    return serials;
  }

  /**
   * The serial of the certificate a member serves on `port` (undefined when it does not answer in
   * time). The peer port wants a member's certificate: the member's own peer pair is presented.
   */
  async servedSerial(port: number, presentAs: { member: string } | 'root'): Promise<string | undefined> {
    const pair = presentAs === 'root' ? await this.rootPair() : await readKeyPair(this.home(presentAs.member), 'peer');
    return new Promise((resolve) => {
      const socket = tlsConnect({ host: '127.0.0.1', port, ca: this.authority.certificatePem, cert: pair.certificatePem, key: pair.keyPem, ALPNProtocols: ['h2'] });
      const timer = setTimeout(() => {
        socket.destroy();
        resolve(undefined);
      }, 2000);
      socket.once('secureConnect', () => {
        clearTimeout(timer);
        const serial = socket.getPeerCertificate().serialNumber;
        socket.destroy();
        resolve(serial.toUpperCase());
      });
      socket.once('error', () => {
        clearTimeout(timer);
        socket.destroy();
        resolve(undefined);
      });
    });
  }

  private root: KeyPairPem | undefined;

  private async rootPair(): Promise<KeyPairPem> {
    this.root ??= await issueCertificate(this.authority, { kind: 'client', commonName: 'root' });
    return this.root;
  }
}

/** A CA nobody trusts: the rotation check's self-test signs member certificates with it. */
export function strangerAuthority(): Promise<KeyPairPem> {
  return createAuthority('a stranger CA');
}

function serialOf(certificatePem: string): string {
  return new X509Certificate(certificatePem).serialNumber.toUpperCase();
}
