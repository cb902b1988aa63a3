/**
 * What a compliance check knows about a cluster and its hosts: gathered by the CLI (live RPCs,
 * TLS probes, metrics, files it can read), evaluated by the controls (`cis-controls.ts`,
 * `rampart-controls.ts`) without any further I/O, so a control's verdict follows from facts an
 * auditor can read in its evidence.
 */
import type { CertificateDescription } from './certificates.js';
import type { Observed } from './control.js';

/** Whether a listener took a connection it should refuse (a TLS handshake without a client certificate, plaintext bytes). */
export type ProbeOutcome = 'refused' | 'accepted';

export type EndpointRole = 'client' | 'peer' | 'metrics';

export interface EndpointFacts {
  /** The member's name. */
  readonly member: string;
  readonly role: EndpointRole;
  readonly url: string;
  /** The certificate the listener presented in a TLS handshake verified against the cluster CA. */
  readonly certificate: Observed<CertificateDescription>;
  /** A TLS connection offering no client certificate. */
  readonly withoutClientCertificate: Observed<ProbeOutcome>;
  /** An HTTP/2 preface sent in plaintext. */
  readonly plaintext: Observed<ProbeOutcome>;
}

/** What a member's metrics listener says about it (names from `src/server/metrics.ts`). */
export interface MetricsFacts {
  readonly auditOn: boolean;
  readonly authEnabled: boolean | undefined;
  readonly encryptionEnabled: boolean | undefined;
  /** `rampart_audit_retention_seconds`: how long closed audit files are kept (absent: an older member, or no trail). */
  readonly auditRetentionSeconds?: number | undefined;
  /** `use` label (client, peer) → seconds until the certificate in use expires. */
  readonly certificateExpirySeconds: Readonly<Record<string, number>>;
}

export interface MemberFacts {
  readonly name: string;
  /** Member id, lower-case hex without leading zeros (as audit events and checkpoints name it). */
  readonly id: string;
  readonly clientUrls: readonly string[];
  readonly peerUrls: readonly string[];
  readonly metrics: Observed<MetricsFacts>;
}

export interface AuthFacts {
  readonly enabled: boolean;
  readonly revision: number;
  readonly users: readonly string[];
  /** Users who can log in with a password (names only); undefined when the cluster does not say. */
  readonly passwordUsers: readonly string[] | undefined;
  /** Certificate CNs bound to root (besides a CN `root`, which is root without a binding). */
  readonly rootBindings: readonly string[];
}

export interface EncryptionFacts {
  readonly member: string;
  readonly encrypted: boolean;
  readonly provider: string;
  readonly providerReachable: boolean;
  readonly kekId: string;
  readonly activeDek: number;
  readonly percentResealed: number;
}

export interface CheckpointSummary {
  /** Member id (hex). */
  readonly member: string;
  readonly count: number;
  readonly signed: number;
  readonly latestTime: string;
}

export interface FileOwner {
  readonly uid: number;
  readonly gid: number;
  /** Names from /etc/passwd and /etc/group, when they have one. */
  readonly user: string;
  readonly group: string;
}

export interface DataDirectoryFacts {
  readonly member: string;
  readonly directory: string;
  /** Mode bits (0o777 part) and owner of the directory. */
  readonly stat: Observed<{ readonly mode: number } & FileOwner>;
  /** Entries inside that group or others may access (the first few, with their modes)... */
  readonly looseEntries: readonly string[];
  /** ...and how many there are (within the bounded walk). */
  readonly looseEntriesTotal: number;
  /** Whom the directory should belong to: the member's process user, or the one given. */
  readonly expectedOwner: Observed<{ readonly user: string; readonly uid: number; readonly source: string }>;
}

export interface TrailFacts {
  readonly member: string;
  readonly directory: string;
  /** Verified against the cluster's checkpoints (and their signatures when a CA is at hand). */
  readonly outcome: Observed<{ readonly ok: boolean; readonly events: number; readonly files: number; readonly checkpointsMatched: number; readonly problem?: string; readonly memberId?: string; readonly signatures: string; readonly rootPasswordLogins: number; readonly lastRootPasswordLogin?: string }>;
}

/** The audit policy in force, as the cluster answers `AuditPolicy.Show`. */
export interface AuditPolicyFacts {
  /** Its canonical JSON (src/audit/policy.ts). */
  readonly json: string;
  readonly digest: string;
  /** No policy was applied: the shipped default is in force. */
  readonly shippedDefault: boolean;
  readonly hmacKey: boolean;
}

export interface CrlFacts {
  /** Which copy: `pki` or a member's name. */
  readonly holder: string;
  readonly file: string;
  readonly crl: Observed<{ readonly number: string | undefined; readonly thisUpdate: string; readonly nextUpdate: string | undefined; readonly revoked: number; readonly verified: boolean }>;
  /** The highest CRL number the member has enforced (`<data-dir>/crl-number`), when readable. */
  readonly enforcedNumber?: string;
}

export interface CertificateFileFacts {
  readonly file: string;
  readonly certificate: Observed<CertificateDescription>;
}

export interface OtherAuthority {
  readonly file: string;
  readonly fingerprint: string;
  readonly samePublicKey: boolean;
}

export interface ComplianceFacts {
  readonly now: number;
  readonly expiryWarningDays: number;
  readonly ca: { readonly file: string; readonly description: CertificateDescription };
  /** CAs of other systems (e.g. the Kubernetes CA) the etcd CA must differ from. */
  readonly otherAuthorities: readonly OtherAuthority[];
  readonly members: Observed<readonly MemberFacts[]>;
  readonly endpoints: readonly EndpointFacts[];
  readonly auth: Observed<AuthFacts>;
  readonly encryption: Observed<readonly EncryptionFacts[]>;
  readonly checkpoints: Observed<readonly CheckpointSummary[]>;
  readonly auditPolicy: Observed<AuditPolicyFacts>;
  readonly dataDirectories: readonly DataDirectoryFacts[];
  readonly trails: readonly TrailFacts[];
  readonly crls: readonly CrlFacts[];
  readonly certificateFiles: readonly CertificateFileFacts[];
}
