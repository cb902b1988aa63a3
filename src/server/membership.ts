/**
 * Cluster membership as replicated state: one record per member under the 'n' prefix, changed only
 * by applying log entries (configuration changes, attribute and peer-URL updates).
 *
 * A new cluster starts from `--initial-cluster`: every founding member derives the same ids and
 * writes the same first entries (one configuration change per member, term 1), as etcd does, so a
 * member that joins later learns the founders by replaying or receiving the log like anything else.
 */
import { createHash } from 'node:crypto';
import type { ConfigurationChange, ConfigurationState, Entry } from '../raft/types.js';
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
    byName.set(name, [...(byName.get(name) ?? []), url]);
  }
  if (byName.size === 0) throw new Error('--initial-cluster is empty');
  return [...byName].map(([name, peerUrls]) => ({ name, peerUrls }));
}

/** The identical first log entries of a new cluster. */
export function bootstrapEntries(members: readonly InitialMember[], clusterToken: string): Entry[] {
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
