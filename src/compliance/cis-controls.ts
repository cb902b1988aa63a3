/**
 * The CIS Kubernetes Benchmark controls for etcd that apply to Rampart: section 2 (2.1–2.7, the
 * etcd node configuration) and the data-directory controls 1.1.11 and 1.1.12. Titles are the
 * benchmark's; the evidence is what Rampart's listeners and files show, since the benchmark's own
 * audit (`ps -ef | grep etcd` for flags) cannot see a Rampart member's settings — a listener that
 * takes a connection without a client certificate is a fact whatever its flags say.
 */
import { daysLeft } from './certificates.js';
import { worst, type ControlResult, type ControlStatus } from './control.js';
import type { ComplianceFacts, EndpointFacts, EndpointRole } from './facts.js';

interface Finding {
  readonly status: ControlStatus;
  readonly line: string;
}

function result(id: string, title: string, findings: readonly Finding[], fix: string, none: string): ControlResult {
  if (findings.length === 0) return { id, title, status: 'skip', evidence: [none], fix };
  return { id, title, status: worst(findings.map((finding) => finding.status)), evidence: findings.map((finding) => finding.line), fix };
}

const where = (endpoint: EndpointFacts): string => `${endpoint.member} ${endpoint.role} ${endpoint.url}`;

function endpointsOf(facts: ComplianceFacts, role: EndpointRole): readonly EndpointFacts[] {
  return facts.endpoints.filter((endpoint) => endpoint.role === role);
}

function noEndpoints(facts: ComplianceFacts, role: EndpointRole): string {
  return 'unavailable' in facts.members ? `no member list: ${facts.members.unavailable}` : `no ${role} listener known`;
}

/** 2.1 / 2.4: TLS with a certificate of the cluster CA, valid now. */
function certificateFindings(facts: ComplianceFacts, role: EndpointRole): Finding[] {
  return endpointsOf(facts, role).map((endpoint): Finding => {
    if (endpoint.url.startsWith('http://')) return { status: 'fail', line: `${where(endpoint)}: plaintext URL, no certificate` };
    if ('unavailable' in endpoint.certificate) return { status: 'skip', line: `${where(endpoint)}: ${endpoint.certificate.unavailable}` };
    const certificate = endpoint.certificate.value;
    const left = daysLeft(certificate, facts.now);
    const seen = `presents ${certificate.subject} (serial ${certificate.serialNumber}, issued by ${certificate.issuer}, expires ${certificate.notAfter})`;
    if (!certificate.issuedByCa) return { status: 'fail', line: `${where(endpoint)}: ${seen}, not issued by the cluster CA` };
    if (left < 0) return { status: 'fail', line: `${where(endpoint)}: ${seen}, EXPIRED` };
    return { status: 'pass', line: `${where(endpoint)}: ${seen}` };
  });
}

/** 2.2 / 2.5: a TLS connection without a client certificate is refused. */
function clientCertificateFindings(facts: ComplianceFacts, role: EndpointRole): Finding[] {
  return endpointsOf(facts, role).map((endpoint): Finding => {
    if (endpoint.url.startsWith('http://')) return { status: 'fail', line: `${where(endpoint)}: plaintext URL, no certificate authentication at all` };
    if ('unavailable' in endpoint.withoutClientCertificate) return { status: 'skip', line: `${where(endpoint)}: ${endpoint.withoutClientCertificate.unavailable}` };
    return endpoint.withoutClientCertificate.value === 'refused'
      ? { status: 'pass', line: `${where(endpoint)}: a TLS connection offering no client certificate was refused` }
      : { status: 'fail', line: `${where(endpoint)}: a TLS connection offering no client certificate was ACCEPTED (it answered HTTP/2)` };
  });
}

/** 2.3 / 2.6: no self-generated certificate (etcd's auto-TLS makes self-signed ones). */
function autoTlsFindings(facts: ComplianceFacts, role: EndpointRole): Finding[] {
  return endpointsOf(facts, role).map((endpoint): Finding => {
    if (endpoint.url.startsWith('http://')) return { status: 'fail', line: `${where(endpoint)}: plaintext URL` };
    if ('unavailable' in endpoint.certificate) return { status: 'skip', line: `${where(endpoint)}: ${endpoint.certificate.unavailable}` };
    const certificate = endpoint.certificate.value;
    if (certificate.selfSigned) return { status: 'fail', line: `${where(endpoint)}: presents a self-signed certificate (${certificate.subject}), as auto-TLS would` };
    if (!certificate.issuedByCa) return { status: 'fail', line: `${where(endpoint)}: presents a certificate the cluster CA did not issue (${certificate.issuer})` };
    return { status: 'pass', line: `${where(endpoint)}: certificate issued by the cluster CA, not self-generated (Rampart has no auto-TLS mode)` };
  });
}

export function cisControls(facts: ComplianceFacts): ControlResult[] {
  const caLine = `cluster CA ${facts.ca.description.subject} (SHA-256 ${facts.ca.description.fingerprint}), from ${facts.ca.file}`;
  const uniqueCa = (): ControlResult => {
    const title = 'Ensure that a unique Certificate Authority is used for etcd';
    const fix = 'give the cluster a CA of its own (`rampart ca init` makes one per cluster; `rampart rotate --new-ca` replaces a shared one); never issue Kubernetes or other certificates from it';
    const findings: Finding[] = [];
    for (const other of facts.otherAuthorities) {
      findings.push(other.samePublicKey
        ? { status: 'fail', line: `${other.file} (SHA-256 ${other.fingerprint}) is the same CA (same key) as the etcd CA` }
        : { status: 'pass', line: `${other.file} (SHA-256 ${other.fingerprint}) is a different CA` });
    }
    const signers = facts.endpoints.filter((endpoint) => 'value' in endpoint.certificate && !endpoint.certificate.value.issuedByCa);
    for (const endpoint of signers) findings.push({ status: 'fail', line: `${where(endpoint)}: its certificate comes from another CA: the members do not share one CA of their own` });
    if (facts.ca.description.organizationalUnit === 'rampart-ca') {
      findings.push({ status: 'pass', line: `${caLine}: a CA rampart created for this cluster (OU=rampart-ca)${facts.otherAuthorities.length === 0 ? '; give --other-ca (e.g. the Kubernetes CA) to compare it with another system\'s' : ''}` });
    } else {
      findings.push({ status: facts.otherAuthorities.length === 0 ? 'warn' : 'pass', line: `${caLine}: not a rampart cluster CA; whether another system shares it cannot be seen here${facts.otherAuthorities.length === 0 ? ' (give --other-ca to compare)' : ''}` });
    }
    return { id: 'CIS-2.7', title, status: worst(findings.map((finding) => finding.status)), evidence: findings.map((finding) => finding.line), fix };
  };

  // The directory, and every file and directory in it: keys (audit/trail-key), sealed trails and
  // LevelDB files that group or others may read fail too, even under a 700 directory (the next
  // chmod of the directory, or a copy of the tree, exposes them as they are).
  const permissions = facts.dataDirectories.flatMap((directory): Finding[] => {
    if ('unavailable' in directory.stat) return [{ status: 'skip', line: `${directory.member}: ${directory.stat.unavailable}` }];
    const mode = directory.stat.value.mode.toString(8).padStart(3, '0');
    const findings: Finding[] = [(directory.stat.value.mode & 0o077) !== 0
      ? { status: 'fail', line: `${directory.member} ${directory.directory}: mode ${mode}, group or others may access it` }
      : { status: 'pass', line: `${directory.member} ${directory.directory}: mode ${mode}` }];
    if (directory.looseEntriesTotal > 0) {
      const more = directory.looseEntriesTotal - directory.looseEntries.length;
      findings.push({ status: 'fail', line: `${directory.member} ${directory.directory}: group or others may access ${directory.looseEntriesTotal} entries inside it: ${directory.looseEntries.join(', ')}${more > 0 ? ` and ${more} more` : ''}` });
    }
    return findings;
  });
  const ownership = facts.dataDirectories.map((directory): Finding => {
    if ('unavailable' in directory.stat) return { status: 'skip', line: `${directory.member}: ${directory.stat.unavailable}` };
    const { user, group, uid } = directory.stat.value;
    const seen = `${directory.member} ${directory.directory}: owned by ${user}:${group}`;
    if ('unavailable' in directory.expectedOwner) return { status: 'skip', line: `${seen}; whom it should belong to is unknown: ${directory.expectedOwner.unavailable}` };
    const expected = directory.expectedOwner.value;
    return uid === expected.uid
      ? { status: 'pass', line: `${seen}, the member's user (${expected.source})` }
      : { status: 'fail', line: `${seen}, not ${expected.user} (${expected.source})` };
  });
  const noDirectories = 'no data directory given (--dir of a rampart up cluster on this host, or --data-dir)';

  return [
    result('CIS-2.1', 'Ensure that the --cert-file and --key-file arguments are set as appropriate', certificateFindings(facts, 'client'),
      'start every member with --cert-file and --key-file (a server certificate from `rampart cert issue server NAME --san HOST`); renew an expired one with `rampart cert renew`', noEndpoints(facts, 'client')),
    result('CIS-2.2', 'Ensure that the --client-cert-auth argument is set to true', clientCertificateFindings(facts, 'client'),
      'start every member with --client-cert-auth true (the default; remove --client-cert-auth false and --insecure)', noEndpoints(facts, 'client')),
    result('CIS-2.3', 'Ensure that the --auto-tls argument is not set to true', autoTlsFindings(facts, 'client'),
      'serve a certificate issued by the cluster CA (`rampart cert issue server NAME`), never a self-signed one', noEndpoints(facts, 'client')),
    result('CIS-2.4', 'Ensure that the --peer-cert-file and --peer-key-file arguments are set as appropriate', certificateFindings(facts, 'peer'),
      'start every member with --peer-cert-file and --peer-key-file (`rampart cert issue peer NAME --san HOST`)', noEndpoints(facts, 'peer')),
    result('CIS-2.5', 'Ensure that the --peer-client-cert-auth argument is set to true', clientCertificateFindings(facts, 'peer'),
      'serve peers over mutual TLS (--peer-cert-file, --peer-key-file, --peer-trusted-ca-file; never --insecure)', noEndpoints(facts, 'peer')),
    result('CIS-2.6', 'Ensure that the --peer-auto-tls argument is not set to true', autoTlsFindings(facts, 'peer'),
      'serve a peer certificate issued by the cluster CA (`rampart cert issue peer NAME`), never a self-signed one', noEndpoints(facts, 'peer')),
    uniqueCa(),
    result('CIS-1.1.11', 'Ensure that the etcd data directory permissions are set to 700 or more restrictive', permissions,
      'chmod -R go-rwx DATA-DIR (the directory 700, everything inside it open to its owner only); members refuse to start on a directory others may access', noDirectories),
    result('CIS-1.1.12', 'Ensure that the etcd data directory ownership is set to etcd:etcd', ownership,
      'chown -R USER:GROUP DATA-DIR with the user the member runs as (the systemd unit\'s `rampart` user; in Rampart the member\'s user plays etcd:etcd\'s part)', noDirectories),
  ];
}
