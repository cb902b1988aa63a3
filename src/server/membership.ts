/**
 * Cluster membership as replicated state: one record per member under the 'n' prefix, changed only
 * by applying log entries (configuration changes, attribute and peer-URL updates).
 *
 * A new cluster starts from `--initial-cluster`: every founding member derives the same ids and
 * writes the same first entries (one configuration change per member, term 1), as etcd does, so a
 * member that joins later learns the founders by replaying or receiving the log like anything else.
 *
 * A configuration change is checked again when its entry is applied (`refusal`), from the replicated
 * records alone, as etcd's applyConfChange does (ValidateConfigurationChange): a member proposing
 * one checks the cluster as it sees it then, but two MemberAdds checked at 63 members, on two
 * members or before the first one is applied, both pass that check. Applied, a refused change
 * changes nothing (neither the records nor Raft's configuration) on every member alike, and its
 * proposer gets the reason.
 */
import { createHash } from 'node:crypto';
import type { ConfigurationChange, ConfigurationState, Entry } from '../raft/types.js';
import type { ErrorCode } from '../errors.js';
import { clusterMemberPeerUrlsMax, clusterMembersMax, clusterTextBytesMax } from './cluster-view.js';
import type { BatchOperation, Database } from '../storage/mvcc/store.js';
import { prefix, prefixEnd } from '../storage/schema.js';

export interface MemberRecord {
  readonly id: string;
  readonly name: string;
  readonly peerUrls: readonly string[];
  readonly clientUrls: readonly string[];
  readonly isLearner: boolean;
}

export interface InitialMember {
  readonly name: string;
  readonly peerUrls: readonly string[];
}

/** The context carried by a configuration change entry. */
export interface ChangeContext {
  readonly requestId: string;
  readonly member: MemberRecord;
}

export function hash64(text: string): bigint {
  const value = createHash('sha256').update(text).digest().readBigUInt64BE(0);
  return value === 0n ? 1n : value;
}

export function memberIdFor(peerUrls: readonly string[], clusterToken: string): string {
  return hash64([...peerUrls].sort().join(',') + clusterToken).toString(16);
}

export function clusterIdFor(memberIds: readonly string[], clusterToken: string): bigint {
  return hash64(`${[...memberIds].sort().join(',')}/${clusterToken}`);
}

/** Parses `name=url,name=url` (a name may appear several times, once per peer URL). */
export function parseInitialCluster(text: string): InitialMember[] {
  const byName = new Map<string, string[]>();
  const seen = new Set<string>();
  for (const part of text.split(',').map((item) => item.trim()).filter((item) => item.length > 0)) {
    const separator = part.indexOf('=');
    if (separator <= 0 || separator === part.length - 1) {
      throw new Error(`--initial-cluster: expected name=url, got "${part}"`);
    }
    const name = part.slice(0, separator);
    const url = part.slice(separator + 1);
    try {
      new URL(url);
    } catch {
      throw new Error(`--initial-cluster: "${url}" is not a URL`);
    }
    if (Buffer.byteLength(name) > clusterTextBytesMax || Buffer.byteLength(url) > clusterTextBytesMax) throw new Error(`--initial-cluster: a name or URL longer than ${clusterTextBytesMax} bytes`);
    // Two members with one URL between them: the second would be refused as it is applied (PeerUrlExists).
    if (seen.has(url)) throw new Error(`--initial-cluster: "${url}" is listed twice`);
    seen.add(url);
    const urls = [...(byName.get(name) ?? []), url];
    if (urls.length > clusterMemberPeerUrlsMax) throw new Error(`--initial-cluster: ${name} has more than ${clusterMemberPeerUrlsMax} peer URLs`);
    byName.set(name, urls);
  }
  if (byName.size === 0) throw new Error('--initial-cluster is empty');
  // A cluster of more could never be joined (a joining member reads at most this many, cluster-view.ts).
  if (byName.size > clusterMembersMax) throw new Error(`--initial-cluster names ${byName.size} members: a cluster has at most ${clusterMembersMax}`);
  return [...byName].map(([name, peerUrls]) => ({ name, peerUrls }));
}

/** The identical first log entries of a new cluster. */
export function bootstrapEntries(members: readonly InitialMember[], clusterToken: string): Entry[] {
  if (members.length > clusterMembersMax) throw new Error(`an initial cluster of ${members.length} members: a cluster has at most ${clusterMembersMax}`);
  return members.map((member, position) => {
    const record: MemberRecord = { id: memberIdFor(member.peerUrls, clusterToken), name: member.name, peerUrls: member.peerUrls, clientUrls: [], isLearner: false };
    const change: ConfigurationChange = { type: 'addVoter', nodeId: record.id, context: JSON.stringify({ requestId: '', member: record } satisfies ChangeContext) };
    return { index: position + 1, term: 1, type: 'configurationChange' as const, data: Buffer.from(JSON.stringify(change)) };
  });
}

export function memberKey(id: string): Buffer {
  return Buffer.concat([Buffer.of(prefix.member), Buffer.from(id, 'utf8')]);
}

export class Membership {
  private readonly members = new Map<string, MemberRecord>();
  /** Members removed from this cluster: their ids may never come back. */
  private readonly removed = new Set<string>();

  async load(db: Database): Promise<void> {
    this.members.clear();
    this.removed.clear();
    for await (const [key, value] of db.iterator({ gte: Buffer.of(prefix.member), lt: prefixEnd(prefix.member) })) {
      const record = JSON.parse(value.toString('utf8')) as MemberRecord & { removed?: boolean };
      const id = key.subarray(1).toString('utf8');
      if (record.removed === true) this.removed.add(id);
      else this.members.set(id, record);
    }
  }

  list(): MemberRecord[] {
    return [...this.members.values()].sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
  }

  get(id: string): MemberRecord | undefined {
    return this.members.get(id);
  }

  isRemoved(id: string): boolean {
    return this.removed.has(id);
  }

  configuration(): ConfigurationState {
    const members = this.list();
    return { voters: members.filter((member) => !member.isLearner).map((member) => member.id), learners: members.filter((member) => member.isLearner).map((member) => member.id) };
  }

  /**
   * Why the committed `change` is refused, if it is (etcd's ValidateConfigurationChange): decided
   * from the replicated records alone, so every member decides alike. A refused change must not
   * reach `applyChange` nor Raft's configuration.
   */
  refusal(change: ConfigurationChange, context: ChangeContext | undefined): ErrorCode | undefined {
    const existing = this.members.get(change.nodeId);
    switch (change.type) {
      case 'addVoter':
      case 'addLearner': {
        // Only a crafted entry has no member record: Raft would count a voter no record names.
        if (context === undefined || !peerUrlsWithinBounds(context.member.peerUrls)) return 'MemberBadUrls';
        if (this.removed.has(change.nodeId)) return 'MemberIdRemoved';
        if (existing !== undefined) return 'MemberExists';
        const taken = new Set([...this.members.values()].flatMap((member) => member.peerUrls));
        if (context.member.peerUrls.some((url) => taken.has(url))) return 'PeerUrlExists';
        if (this.members.size >= clusterMembersMax) return 'TooManyMembers';
        return undefined;
      }
      case 'promoteLearner':
        if (existing === undefined) return 'MemberNotFound';
        return existing.isLearner ? undefined : 'MemberNotLearner';
      case 'removeNode':
        return existing === undefined ? 'MemberNotFound' : undefined;
    }
  }

  /** Applies a configuration change to the records; returns the batch operations that persist it. */
  applyChange(change: ConfigurationChange, context: ChangeContext | undefined): BatchOperation[] {
    const existing = this.members.get(change.nodeId);
    switch (change.type) {
      case 'addVoter':
      case 'addLearner': {
        if (context === undefined || existing !== undefined) return [];
        return this.put({ ...context.member, id: change.nodeId, isLearner: change.type === 'addLearner' });
      }
      case 'promoteLearner':
        return existing === undefined ? [] : this.put({ ...existing, isLearner: false });
      case 'removeNode': {
        if (existing === undefined) return [];
        this.members.delete(change.nodeId);
        this.removed.add(change.nodeId);
        return [{ type: 'put', key: memberKey(change.nodeId), value: Buffer.from(JSON.stringify({ ...existing, removed: true })) }];
      }
    }
  }

  updateAttributes(id: string, name: string, clientUrls: readonly string[]): BatchOperation[] {
    const existing = this.members.get(id);
    return existing === undefined ? [] : this.put({ ...existing, name, clientUrls });
  }

  updatePeerUrls(id: string, peerUrls: readonly string[]): BatchOperation[] {
    const existing = this.members.get(id);
    return existing === undefined ? [] : this.put({ ...existing, peerUrls });
  }

  private put(record: MemberRecord): BatchOperation[] {
    this.members.set(record.id, record);
    return [{ type: 'put', key: memberKey(record.id), value: Buffer.from(JSON.stringify(record)) }];
  }
}

/**
 * Whether `urls` stay within what a joining member reads of one member (cluster-view.ts). Only the
 * bounds: whether each is a URL MemberAdd takes is the proposer's check (a founding member's URL
 * from --initial-cluster may name no port, and was applied as it is).
 */
function peerUrlsWithinBounds(urls: unknown): boolean {
  return Array.isArray(urls) && urls.length > 0 && urls.length <= clusterMemberPeerUrlsMax && urls.every((url) => typeof url === 'string' && Buffer.byteLength(url) <= clusterTextBytesMax);
}
