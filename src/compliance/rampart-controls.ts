/**
 * Rampart's own controls, beyond the CIS benchmark: auth on, root by certificate only, encryption
 * at rest, the audit trail on, witnessed and verifying, certificates not near expiry, a fresh CRL,
 * and no plaintext listener. Pure: they read `ComplianceFacts` only.
 */
import { daysLeft } from './certificates.js';
import { worst, type ControlResult, type ControlStatus } from './control.js';
import type { ComplianceFacts } from './facts.js';
import { auditPolicyControl } from './audit-policy-control.js';
import { auditRetentionControl } from './audit-retention-control.js';

interface Finding {
  readonly status: ControlStatus;
  readonly line: string;
}

function control(id: string, title: string, findings: readonly Finding[], fix: string, none: string): ControlResult {
  if (findings.length === 0) return { id, title, status: 'skip', evidence: [none], fix };
  return { id, title, status: worst(findings.map((finding) => finding.status)), evidence: findings.map((finding) => finding.line), fix };
}

const dayMs = 86_400_000;

function authControl(facts: ComplianceFacts): ControlResult {
  const findings: Finding[] = [];
  if ('value' in facts.auth) {
    const auth = facts.auth.value;
    findings.push(auth.enabled
      ? { status: 'pass', line: `auth is enabled (auth revision ${auth.revision}; users: ${auth.users.join(', ')})` }
      : { status: 'fail', line: `auth is DISABLED (auth revision ${auth.revision}): every certificate holder may read and write every key` });
  } else {
    findings.push({ status: 'skip', line: `auth state: ${facts.auth.unavailable}` });
  }
  if ('value' in facts.members) {
    for (const member of facts.members.value) {
      if ('value' in member.metrics && member.metrics.value.authEnabled !== undefined) {
        findings.push({ status: member.metrics.value.authEnabled ? 'pass' : 'fail', line: `${member.name} metrics: rampart_auth_enabled ${member.metrics.value.authEnabled ? 1 : 0}` });
      }
    }
  }
  return control('RAMPART-AUTH', 'Authentication and RBAC are enabled', findings,
    'enable auth with the reviewed policies: `rampart policy apply policies/` then `etcdctl auth enable` (new clusters start with it on; do not pass --no-auth or --no-bootstrap-auth)', 'no auth facts');
}

function rootControl(facts: ComplianceFacts): ControlResult {
  const title = 'The root user authenticates by client certificate only (no password)';
  const fix = 'remove root\'s password: with auth disabled, `etcdctl user delete root`, `rampart policy apply` (root comes back without a password), then `etcdctl auth enable`; administrators use the admin certificate (CN root)';
  if ('unavailable' in facts.auth) return { id: 'RAMPART-ROOT-CERT', title, status: 'skip', evidence: [`auth state: ${facts.auth.unavailable}`], fix };
  const auth = facts.auth.value;
  if (auth.passwordUsers === undefined) return { id: 'RAMPART-ROOT-CERT', title, status: 'skip', evidence: ['the cluster does not say which users have a password (an older member)'], fix };
  if (!auth.users.includes('root')) return { id: 'RAMPART-ROOT-CERT', title, status: auth.enabled ? 'fail' : 'skip', evidence: ['there is no root user'], fix };
  const certificates = ['CN root', ...auth.rootBindings.map((cn) => `CN ${cn} (bound)`)].join(', ');
  // Past password logins as root, from the trails verified on this host: a password removed since still warrants a look.
  const logins = facts.trails.flatMap((trail) => ('value' in trail.outcome && trail.outcome.value.rootPasswordLogins > 0
    ? [`${trail.member}'s trail: root logged in with a password ${trail.outcome.value.rootPasswordLogins} times, the last at ${trail.outcome.value.lastRootPasswordLogin ?? '?'}`]
    : []));
  if (auth.passwordUsers.includes('root')) {
    return { id: 'RAMPART-ROOT-CERT', title, status: 'fail', evidence: [`root has a PASSWORD: anyone who learns it administers the cluster from any client certificate of the CA; certificates acting as root: ${certificates}`, ...logins], fix };
  }
  const seen = `root has no password; certificates acting as root: ${certificates}; users with a password: ${auth.passwordUsers.length === 0 ? 'none' : auth.passwordUsers.join(', ')}`;
  return { id: 'RAMPART-ROOT-CERT', title, status: logins.length > 0 ? 'warn' : 'pass', evidence: [seen, ...logins], fix };
}

function encryptionControl(facts: ComplianceFacts): ControlResult {
  const findings: Finding[] = 'unavailable' in facts.encryption
    ? [{ status: 'skip', line: `encryption status: ${facts.encryption.unavailable}` }]
    : facts.encryption.value.map((member): Finding => {
      if (!member.encrypted) return { status: 'fail', line: `${member.member}: NOT encrypted at rest` };
      const seen = `${member.member}: encrypted (provider ${member.provider}, kek ${member.kekId}, active dek ${member.activeDek}, ${member.percentResealed.toFixed(1)}% under it)`;
      return member.providerReachable ? { status: 'pass', line: seen } : { status: 'warn', line: `${seen}; its key provider is UNREACHABLE` };
    });
  return control('RAMPART-ENCRYPTION', 'Encryption at rest is on for every member', findings,
    'start every member with encryption (the default; remove --no-encryption): a member seals its plaintext data online when started with a key file; see `rampart encryption status`', 'no encryption status');
}

function auditOnControl(facts: ComplianceFacts): ControlResult {
  const findings: Finding[] = [];
  if ('unavailable' in facts.members) {
    findings.push({ status: 'skip', line: `members: ${facts.members.unavailable}` });
  } else {
    const summaries = 'value' in facts.checkpoints ? new Map(facts.checkpoints.value.map((summary) => [summary.member, summary])) : undefined;
    if ('unavailable' in facts.checkpoints) findings.push({ status: 'skip', line: `checkpoints: ${facts.checkpoints.unavailable}` });
    for (const member of facts.members.value) {
      if ('value' in member.metrics) {
        findings.push(member.metrics.value.auditOn
          ? { status: 'pass', line: `${member.name} metrics: rampart_audit_queue_events present (the trail is on)` }
          : { status: 'fail', line: `${member.name} metrics: no rampart_audit_queue_events: the member keeps NO audit trail (--no-audit)` });
      }
      if (summaries === undefined) continue;
      const summary = summaries.get(member.id);
      if (summary === undefined) {
        // A member just started proposes its first checkpoint within seconds; its metrics tell whether it has a trail at all.
        const trailOn = 'value' in member.metrics && member.metrics.value.auditOn;
        findings.push(trailOn
          ? { status: 'warn', line: `${member.name} (${member.id}): not witnessed yet: the cluster holds no checkpoint of it (a member proposes one every few seconds once it has events)` }
          : { status: 'fail', line: `${member.name} (${member.id}): the cluster holds no audit checkpoint of it (no trail, or never witnessed)` });
      } else if (summary.signed < summary.count) {
        findings.push({ status: 'warn', line: `${member.name} (${member.id}): ${summary.count} checkpoints, ${summary.count - summary.signed} unsigned (an exported trail cannot be checked offline), latest ${summary.latestTime}` });
      } else {
        findings.push({ status: 'pass', line: `${member.name} (${member.id}): ${summary.count} signed checkpoints witnessed by the cluster, latest ${summary.latestTime}` });
      }
    }
  }
  return control('RAMPART-AUDIT', 'The audit trail is on for every member and witnessed by the cluster', findings,
    'start every member with its audit trail (the default; remove --no-audit) and an audit signing certificate (--audit-signing-cert-file/--audit-signing-key-file, `rampart cert issue audit NAME`)', 'no members');
}

function auditVerifyControl(facts: ComplianceFacts): ControlResult {
  const findings = facts.trails.map((trail): Finding => {
    if ('unavailable' in trail.outcome) return { status: 'skip', line: `${trail.member} ${trail.directory}: ${trail.outcome.unavailable}` };
    const outcome = trail.outcome.value;
    if (!outcome.ok) return { status: 'fail', line: `${trail.member} ${trail.directory}: BROKEN: ${outcome.problem ?? 'unknown problem'}` };
    // verifyAudit requires every checkpoint of the member to be found: none matched means the cluster holds none of it yet.
    if (outcome.checkpointsMatched === 0) return { status: 'warn', line: `${trail.member} ${trail.directory}: intact, ${outcome.events} events, but not witnessed yet (the cluster holds no checkpoint of member ${outcome.memberId ?? '(none)'})` };
    const line = `${trail.member} ${trail.directory}: intact, ${outcome.events} events in ${outcome.files} files, ${outcome.checkpointsMatched} checkpoints matched; ${outcome.signatures}`;
    return { status: outcome.signatures.startsWith('signatures verified') ? 'pass' : outcome.signatures.startsWith('signatures NOT') ? 'fail' : 'warn', line };
  });
  return control('RAMPART-AUDIT-VERIFY', 'Every audit trail verifies against the checkpoints the cluster witnessed', findings,
    'investigate at once: a broken trail was altered, cut or deleted on its host (`rampart audit verify DIR --dir` names the first problem); keep the host\'s evidence before changing anything',
    'no audit directory given (--dir of a rampart up cluster on this host, or --audit-dir)');
}

function expiryControl(facts: ComplianceFacts): ControlResult {
  const threshold = facts.expiryWarningDays;
  const findings: Finding[] = [];
  const judge = (what: string, notAfter: string, left: number): Finding => {
    if (left < 0) return { status: 'fail', line: `${what}: EXPIRED on ${notAfter}` };
    if (left < threshold) return { status: 'fail', line: `${what}: expires in ${left} days (${notAfter}), within the ${threshold}-day threshold` };
    return { status: 'pass', line: `${what}: ${left} days left (${notAfter})` };
  };
  findings.push(judge(`CA ${facts.ca.description.subject}`, facts.ca.description.notAfter, daysLeft(facts.ca.description, facts.now)));
  for (const endpoint of facts.endpoints) {
    if ('value' in endpoint.certificate) findings.push(judge(`${endpoint.member} ${endpoint.role} listener ${endpoint.url} (${endpoint.certificate.value.subject})`, endpoint.certificate.value.notAfter, daysLeft(endpoint.certificate.value, facts.now)));
  }
  if ('value' in facts.members) {
    for (const member of facts.members.value) {
      if (!('value' in member.metrics)) continue;
      for (const [use, seconds] of Object.entries(member.metrics.value.certificateExpirySeconds)) {
        findings.push(judge(`${member.name} metrics: the ${use} certificate in use`, new Date(facts.now + seconds * 1000).toISOString(), Math.floor((seconds * 1000) / dayMs)));
      }
    }
  }
  for (const file of facts.certificateFiles) {
    if ('value' in file.certificate) findings.push(judge(`${file.file} (${file.certificate.value.subject})`, file.certificate.value.notAfter, daysLeft(file.certificate.value, facts.now)));
    else findings.push({ status: 'skip', line: `${file.file}: ${file.certificate.unavailable}` });
  }
  return control('RAMPART-CERT-EXPIRY', `Certificates are not near expiry (${threshold} days or more left)`, findings,
    '`rampart cert renew NAME` (members reload renewed files while serving) or `rampart rotate` for a rampart up cluster; renew the CA with `rampart rotate --new-ca`', 'no certificates');
}

function crlControl(facts: ComplianceFacts): ControlResult {
  const findings: Finding[] = [];
  const reference = facts.crls.find((crl) => crl.holder === 'pki' && 'value' in crl.crl);
  const referenceNumber = reference !== undefined && 'value' in reference.crl ? reference.crl.value.number : undefined;
  for (const crl of facts.crls) {
    if ('unavailable' in crl.crl) {
      findings.push({ status: crl.enforcedNumber !== undefined && crl.enforcedNumber !== '0' ? 'fail' : 'warn', line: `${crl.holder} ${crl.file}: ${crl.crl.unavailable}${crl.enforcedNumber === undefined ? '' : ` (the member has enforced CRL number ${crl.enforcedNumber})`}` });
      continue;
    }
    const value = crl.crl.value;
    const seen = `${crl.holder} ${crl.file}: CRL number ${value.number ?? '(none)'}, ${value.revoked} revoked, issued ${value.thisUpdate}, next update ${value.nextUpdate ?? '(none)'}`;
    if (!value.verified) {
      findings.push({ status: 'fail', line: `${seen}; its signature does NOT verify against the cluster CA` });
    } else if (value.nextUpdate !== undefined && Date.parse(value.nextUpdate) < facts.now) {
      findings.push({ status: 'fail', line: `${seen}; STALE: past its next update` });
    } else if (value.number === undefined) {
      findings.push({ status: 'warn', line: `${seen}; it carries no CRL number (an old CRL could replace it unnoticed)` });
    } else if (referenceNumber !== undefined && crl.holder !== 'pki' && BigInt(value.number) < BigInt(referenceNumber)) {
      findings.push({ status: 'fail', line: `${seen}; OLDER than the CA's CRL number ${referenceNumber}: this member still trusts certificates revoked since` });
    } else if (crl.enforcedNumber !== undefined && BigInt(crl.enforcedNumber) < BigInt(value.number)) {
      findings.push({ status: 'warn', line: `${seen}; the member has enforced only number ${crl.enforcedNumber} so far (it reloads within seconds; a lasting gap means it refuses this CRL: see its log)` });
    } else {
      findings.push({ status: 'pass', line: `${seen}${crl.enforcedNumber === undefined ? '' : `; the member enforces number ${crl.enforcedNumber}`}` });
    }
  }
  return control('RAMPART-CRL', 'The certificate revocation list is fresh and the same on every member', findings,
    'sign a fresh CRL with `rampart cert revoke` (it numbers and hands it to a rampart up cluster\'s members) and copy it to every member\'s --crl-file',
    'no CRL file given (--dir of a rampart up cluster, or --crl-file)');
}

function plaintextControl(facts: ComplianceFacts): ControlResult {
  const findings = facts.endpoints.map((endpoint): Finding => {
    const where = `${endpoint.member} ${endpoint.role} ${endpoint.url}`;
    const severity: ControlStatus = endpoint.role === 'metrics' ? 'warn' : 'fail';
    if (endpoint.url.startsWith('http://')) return { status: severity, line: `${where}: a plaintext URL${endpoint.role === 'metrics' ? ' (metrics and health only)' : ''}` };
    if ('unavailable' in endpoint.plaintext) return { status: 'skip', line: `${where}: ${endpoint.plaintext.unavailable}` };
    return endpoint.plaintext.value === 'refused'
      ? { status: 'pass', line: `${where}: plaintext HTTP/2 got no answer (TLS only)` }
      : { status: severity, line: `${where}: ANSWERED plaintext HTTP/2` };
  });
  return control('RAMPART-NO-PLAINTEXT', 'No listener serves plaintext', findings,
    'serve every client, peer and metrics URL over https:// (never --insecure; --listen-metrics-urls https://…)', 'no listener known');
}

export function rampartControls(facts: ComplianceFacts): ControlResult[] {
  return [authControl(facts), rootControl(facts), encryptionControl(facts), auditOnControl(facts), auditPolicyControl(facts.auditPolicy, facts.auth), auditRetentionControl(facts.members), auditVerifyControl(facts), expiryControl(facts), crlControl(facts), plaintextControl(facts)];
}
