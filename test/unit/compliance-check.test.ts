/**
 * The compliance check's parts: the listener probes against real local servers (a plaintext
 * HTTP/2 server answers plaintext, a TLS server without client-certificate auth takes a client
 * without one, mutual TLS refuses it), the controls' verdicts from facts, and the report formats'
 * escaping.
 */
import { X509Certificate } from 'node:crypto';
import { createSecureServer, createServer, type Http2SecureServer, type Http2Server } from 'node:http2';
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createAuthority, issueCertificate, type KeyPairPem } from '../../src/pki/authority.js';
import { describeCertificate } from '../../src/compliance/certificates.js';
import { observed, unavailable, type ControlResult } from '../../src/compliance/control.js';
import { retentionShortfall } from '../../src/audit/retention-minimum.js';
import { evaluateControls } from '../../src/compliance/check.js';
import type { ComplianceFacts, EndpointFacts } from '../../src/compliance/facts.js';
import { presentedCertificate, probePlaintext, probeWithoutClientCertificate } from '../../src/compliance/probe.js';
import { escapeXml, formatJunit, formatTable } from '../../src/compliance/report.js';
import { parseMetrics } from '../../src/compliance/metrics-text.js';
import { auditPolicyDigest, encodeAuditPolicy, parseAuditPolicy, shippedAuditPolicy } from '../../src/audit/policy.js';

let authority: KeyPairPem;
let server: KeyPairPem;
let client: KeyPairPem;
const servers: (Http2Server | Http2SecureServer)[] = [];

async function listen(target: Http2Server | Http2SecureServer): Promise<string> {
  servers.push(target);
  target.on('stream', (stream) => {
    stream.respond({ ':status': 200 });
    stream.end('ok');
  });
  await new Promise<void>((resolve) => target.listen(0, '127.0.0.1', resolve));
  return `https://127.0.0.1:${(target.address() as AddressInfo).port}`;
}

beforeAll(async () => {
  authority = await createAuthority('unit root CA');
  server = await issueCertificate(authority, { kind: 'server', commonName: 'm1', subjectAltNames: ['127.0.0.1'] });
  client = await issueCertificate(authority, { kind: 'client', commonName: 'root' });
});

afterAll(() => {
  for (const target of servers) target.close();
});

describe('listener probes', () => {
  it('see a plaintext listener, and a TLS listener that takes a client without a certificate', async () => {
    const plaintext = await listen(createServer());
    expect(await probePlaintext(plaintext)).toEqual({ value: 'accepted' });

    const tlsOnly = await listen(createSecureServer({ cert: server.certificatePem, key: server.keyPem, allowHTTP1: false }));
    expect(await probePlaintext(tlsOnly)).toEqual({ value: 'refused' });
    expect(await probeWithoutClientCertificate(tlsOnly, Buffer.from(authority.certificatePem))).toEqual({ value: 'accepted' });

    const mutual = await listen(createSecureServer({ cert: server.certificatePem, key: server.keyPem, ca: authority.certificatePem, requestCert: true, rejectUnauthorized: true }));
    expect(await probePlaintext(mutual)).toEqual({ value: 'refused' });
    expect(await probeWithoutClientCertificate(mutual, Buffer.from(authority.certificatePem))).toEqual({ value: 'refused' });
    const presented = await presentedCertificate(mutual, { ca: Buffer.from(authority.certificatePem), certificate: Buffer.from(client.certificatePem), key: Buffer.from(client.keyPem) });
    expect('value' in presented && presented.value).toMatchObject({ subject: 'CN=m1, OU=rampart-server', issuedByCa: true, selfSigned: false });

    // Nothing listening: the probe could not be made (not a pass).
    const closed = await listen(createServer());
    servers.pop()?.close();
    await new Promise((resolve) => setTimeout(resolve, 50));
    expect(await probePlaintext(closed)).toMatchObject({ unavailable: expect.stringMatching(/cannot connect/) });
  });
});

describe('controls', () => {
  const facts = (changes: Partial<ComplianceFacts> = {}): ComplianceFacts => {
    const ca = new X509Certificate(authority.certificatePem);
    const serverDescription = describeCertificate(new X509Certificate(server.certificatePem), ca);
    const endpoint = (role: EndpointFacts['role'], url: string): EndpointFacts => ({ member: 'm1', role, url, certificate: observed(serverDescription), withoutClientCertificate: observed('refused'), plaintext: observed('refused') });
    return {
      now: Date.now(),
      expiryWarningDays: 30,
      ca: { file: 'ca.crt', description: describeCertificate(ca, ca) },
      otherAuthorities: [],
      members: observed([{ name: 'm1', id: 'abc', clientUrls: ['https://127.0.0.1:1'], peerUrls: ['https://127.0.0.1:2'], metrics: observed({ auditOn: true, authEnabled: true, encryptionEnabled: true, auditRetentionSeconds: 400 * 86_400, certificateExpirySeconds: { client: 80 * 86_400 } }) }]),
      endpoints: [endpoint('client', 'https://127.0.0.1:1'), endpoint('peer', 'https://127.0.0.1:2')],
      auth: observed({ enabled: true, revision: 3, users: ['kube-apiserver', 'root'], passwordUsers: [], rootBindings: [] }),
      encryption: observed([{ member: 'm1', encrypted: true, provider: 'file', providerReachable: true, kekId: 'k', activeDek: 1, percentResealed: 100 }]),
      checkpoints: observed([{ member: 'abc', count: 3, signed: 3, latestTime: new Date().toISOString() }]),
      auditPolicy: observed({ json: shippedAuditPolicy(), digest: auditPolicyDigest(shippedAuditPolicy()), shippedDefault: true, hmacKey: true }),
      dataDirectories: [{ member: 'm1', directory: '/data', stat: observed({ mode: 0o700, uid: 10, gid: 10, user: 'rampart', group: 'rampart' }), looseEntries: [], looseEntriesTotal: 0, expectedOwner: observed({ user: 'rampart', uid: 10, source: 'test' }) }],
      trails: [{ member: 'm1', directory: '/data/audit', outcome: observed({ ok: true, events: 5, files: 1, checkpointsMatched: 3, signatures: 'signatures verified against the cluster CA', rootPasswordLogins: 0 }) }],
      crls: [{ holder: 'pki', file: 'crl.pem', crl: observed({ number: '2', thisUpdate: new Date().toISOString(), nextUpdate: new Date(Date.now() + 86_400_000).toISOString(), revoked: 1, verified: true }) }],
      certificateFiles: [],
      ...changes,
    };
  };
  const statusOf = (changes: Partial<ComplianceFacts>, id: string): string => evaluateControls(facts(changes)).find((result) => result.id === id)?.status ?? 'missing';

  it('pass on good facts and fail, each naming its control, on bad ones', () => {
    expect(evaluateControls(facts()).filter((result) => result.status !== 'pass')).toEqual([]);
    const base = facts();
    const accepted = base.endpoints.map((endpoint) => ({ ...endpoint, withoutClientCertificate: observed<'accepted'>('accepted') }));
    expect(statusOf({ endpoints: accepted }, 'CIS-2.2')).toBe('fail');
    expect(statusOf({ endpoints: accepted }, 'CIS-2.5')).toBe('fail');
    const ca = new X509Certificate(authority.certificatePem);
    const selfSigned = base.endpoints.map((endpoint) => ({ ...endpoint, certificate: observed({ ...describeCertificate(ca, undefined) }) }));
    expect(statusOf({ endpoints: selfSigned }, 'CIS-2.3')).toBe('fail');
    expect(statusOf({ endpoints: selfSigned }, 'CIS-2.1')).toBe('fail');
    expect(statusOf({ endpoints: base.endpoints.map((endpoint) => ({ ...endpoint, plaintext: observed<'accepted'>('accepted') })) }, 'RAMPART-NO-PLAINTEXT')).toBe('fail');
    expect(statusOf({ otherAuthorities: [{ file: 'k8s-ca.crt', fingerprint: 'AA', samePublicKey: true }] }, 'CIS-2.7')).toBe('fail');
    const [directory] = base.dataDirectories;
    if (directory === undefined || !('value' in directory.stat)) throw new Error('fixture');
    expect(statusOf({ dataDirectories: [{ ...directory, stat: observed({ ...directory.stat.value, mode: 0o755 }) }] }, 'CIS-1.1.11')).toBe('fail');
    // A file inside that group or others may read fails even under a 700 directory, naming it.
    const looseInside = evaluateControls(facts({ dataDirectories: [{ ...directory, looseEntries: ['/data/audit/trail-key (644)'], looseEntriesTotal: 1 }] })).find((result) => result.id === 'CIS-1.1.11');
    expect(looseInside?.status).toBe('fail');
    expect(looseInside?.evidence).toContain('m1 /data: group or others may access 1 entries inside it: /data/audit/trail-key (644)');
    expect(statusOf({ dataDirectories: [{ ...directory, stat: observed({ ...directory.stat.value, uid: 0, user: 'root' }) }] }, 'CIS-1.1.12')).toBe('fail');
    expect(statusOf({ dataDirectories: [{ ...directory, expectedOwner: unavailable('unknown') }] }, 'CIS-1.1.12')).toBe('skip');
    expect(statusOf({ auth: observed({ enabled: false, revision: 4, users: ['root'], passwordUsers: [], rootBindings: [] }) }, 'RAMPART-AUTH')).toBe('fail');
    expect(statusOf({ auth: observed({ enabled: true, revision: 4, users: ['root'], passwordUsers: ['root'], rootBindings: [] }) }, 'RAMPART-ROOT-CERT')).toBe('fail');
    expect(statusOf({ encryption: observed([{ member: 'm1', encrypted: false, provider: '', providerReachable: false, kekId: '', activeDek: 0, percentResealed: 0 }]) }, 'RAMPART-ENCRYPTION')).toBe('fail');
    expect(statusOf({ checkpoints: observed([]), members: observed([{ name: 'm1', id: 'abc', clientUrls: [], peerUrls: [], metrics: observed({ auditOn: false, authEnabled: true, encryptionEnabled: true, certificateExpirySeconds: {} }) }]) }, 'RAMPART-AUDIT')).toBe('fail');
    expect(statusOf({ trails: [{ member: 'm1', directory: '/a', outcome: observed({ ok: false, events: 2, files: 1, checkpointsMatched: 0, problem: 'hash does not match', signatures: '', rootPasswordLogins: 0 }) }] }, 'RAMPART-AUDIT-VERIFY')).toBe('fail');
    const loggedIn = evaluateControls(facts({ trails: [{ member: 'm1', directory: '/a', outcome: observed({ ok: true, events: 9, files: 1, checkpointsMatched: 2, signatures: 'signatures verified against the cluster CA', rootPasswordLogins: 2, lastRootPasswordLogin: '2026-11-01T00:00:00.000Z' }) }] })).find((result) => result.id === 'RAMPART-ROOT-CERT');
    expect(loggedIn?.status).toBe('warn');
    expect(loggedIn?.evidence).toContain("m1's trail: root logged in with a password 2 times, the last at 2026-11-01T00:00:00.000Z");
    expect(statusOf({ expiryWarningDays: 100 }, 'RAMPART-CERT-EXPIRY')).toBe('fail');
    const stale = { holder: 'pki', file: 'crl.pem', crl: observed({ number: '2', thisUpdate: '2020-01-01T00:00:00.000Z', nextUpdate: '2020-02-01T00:00:00.000Z', revoked: 0, verified: true }) };
    expect(statusOf({ crls: [stale] }, 'RAMPART-CRL')).toBe('fail');
    const [fresh] = base.crls;
    if (fresh === undefined || !('value' in fresh.crl)) throw new Error('fixture');
    expect(statusOf({ crls: [fresh, { holder: 'm1', file: 'm1/crl.pem', crl: observed({ ...fresh.crl.value, number: '1' }) }] }, 'RAMPART-CRL')).toBe('fail');
    // A policy that exempts one user's writes (a rule before the defaults) no longer records what PCI DSS 10.2 asks.
    const exempting = encodeAuditPolicy(parseAuditPolicy('exempt.yaml', `rules:\n  - name: quiet-apiserver\n    operations: [write]\n    users: [kube-apiserver]\n    level: none\n${shippedAuditPolicy() === '' ? '' : JSON.parse(shippedAuditPolicy()).rules.map((rule: object) => `  - ${JSON.stringify(rule)}\n`).join('')}`));
    const quiet = evaluateControls(facts({ auditPolicy: observed({ json: exempting, digest: auditPolicyDigest(exempting), shippedDefault: false, hmacKey: true }) })).find((result) => result.id === 'RAMPART-AUDIT-POLICY');
    expect(quiet?.status).toBe('fail');
    expect(quiet?.evidence).toContain('a put is NOT recorded for kube-apiserver (quiet-apiserver)');
    expect(quiet?.evidence.join('\n')).not.toMatch(/failed login is NOT/);
    // A retention below PCI DSS 10.5.1's year (tests start members with `--audit-retention 8s`) fails, named, with the fix.
    const shortLived = (seconds: number | undefined): ComplianceFacts['members'] => observed([{ name: 'm1', id: 'abc', clientUrls: [], peerUrls: [], metrics: observed({ auditOn: true, authEnabled: true, encryptionEnabled: true, certificateExpirySeconds: {}, ...(seconds === undefined ? {} : { auditRetentionSeconds: seconds }) }) }]);
    const retention = evaluateControls(facts({ members: shortLived(10) })).find((result) => result.id === 'RAMPART-AUDIT-RETENTION');
    expect(retention).toMatchObject({ status: 'fail', evidence: ['m1 metrics: rampart_audit_retention_seconds 10: closed audit files are deleted after 10 s, LESS than 365 days'] });
    expect(retention?.fix).toMatch(/--audit-retention 365d or more/);
    expect(formatJunit([retention as ControlResult], '2026-01-01T00:00:00.000Z')).toContain('<failure message="RAMPART-AUDIT-RETENTION failed: Audit files are kept at least 365 days (PCI DSS 10.5.1)"');
    expect(statusOf({ members: shortLived(364 * 86_400) }, 'RAMPART-AUDIT-RETENTION')).toBe('fail');
    expect(statusOf({ members: shortLived(365 * 86_400) }, 'RAMPART-AUDIT-RETENTION')).toBe('pass');
    expect(evaluateControls(facts({ members: shortLived(undefined) })).find((result) => result.id === 'RAMPART-AUDIT-RETENTION')).toMatchObject({ status: 'skip', evidence: ['m1 metrics: no rampart_audit_retention_seconds (a member older than this check)'] });
    expect(retentionShortfall(8_000)).toMatch(/^audit files are deleted 8 s after they close \(--audit-retention\), less than PCI DSS 10.5.1's 365 days/);
    expect(retentionShortfall(400 * 86_400_000)).toBeUndefined();
    // Facts that could not be gathered skip, with the reason as evidence; they never pass.
    const skipped = evaluateControls(facts({ members: unavailable('MemberList failed: unreachable'), endpoints: [], dataDirectories: [], trails: [], crls: [] }));
    expect(skipped.find((result) => result.id === 'CIS-2.2')).toMatchObject({ status: 'skip', evidence: ['no member list: MemberList failed: unreachable'] });
    expect(skipped.find((result) => result.id === 'CIS-1.1.11')?.status).toBe('skip');
  });
});

describe('reports', () => {
  it('escape every string in JUnit XML and print the fix of a failed control', () => {
    const results = [{ id: 'RAMPART-X', title: 'a <b> & "c"', status: 'fail' as const, evidence: ['m1 <script>alert(1)</script> \u0001 \'q\''], fix: 'do <this>' }];
    const junit = formatJunit(results, '2026-01-01T00:00:00.000Z');
    expect(junit).not.toMatch(/<script>|<b>|<this>/);
    expect(junit).not.toContain(String.fromCharCode(1));
    expect(junit).toContain('&lt;script&gt;alert(1)&lt;/script&gt;');
    expect(junit).toContain('name="RAMPART-X a &lt;b&gt; &amp; &quot;c&quot;"');
    expect(escapeXml('\'"<>&')).toBe('&apos;&quot;&lt;&gt;&amp;');
    expect(formatTable(results)).toMatch(/^FAIL {2}RAMPART-X {2}a <b> & "c"\n {6} {9} {2}- m1 <script>.*\n {6} {9} {2}fix: do <this>\n\n1 controls: 0 pass, 1 fail, 0 warn, 0 skip\n$/);
  });

  it('read the member facts from Prometheus text', () => {
    const metrics = parseMetrics('# HELP x\nrampart_auth_enabled 0\nrampart_audit_queue_events 0\nrampart_certificate_expiry_seconds{use="peer"} 86400\nrampart_encryption_enabled 1\n');
    expect(metrics).toEqual({ auditOn: true, authEnabled: false, encryptionEnabled: true, certificateExpirySeconds: { peer: 86_400 } });
    expect(parseMetrics('rampart_auth_enabled 1\n').auditOn).toBe(false);
    expect(parseMetrics('rampart_audit_queue_events 0\nrampart_audit_retention_seconds 8\n').auditRetentionSeconds).toBe(8);
  });
});
