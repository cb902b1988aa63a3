/**
 * Raft's vocabulary: entries, persistent state, messages, and the Ready batch.
 * Plain data only; nothing here performs I/O.
 */

/** A member id (etcd's uint64 member id, as lowercase hex). The empty string means none. */
export type NodeId = string;
export const noNode: NodeId = '';

export type EntryType = 'normal' | 'configurationChange';

export interface Entry {
  readonly index: number;
  readonly term: number;
  readonly type: EntryType;
  readonly data: Buffer;
}

/** What must be on stable storage before a message that depends on it is sent. */
export interface HardState {
  readonly term: number;
  readonly vote: NodeId;
  readonly commit: number;
}

export interface ConfigurationState {
  readonly voters: readonly NodeId[];
  readonly learners: readonly NodeId[];
}

export interface SnapshotMetadata {
  readonly index: number;
  readonly term: number;
  readonly configuration: ConfigurationState;
}

export interface Snapshot {
  readonly metadata: SnapshotMetadata;
  /** The state machine at `metadata.index`, opaque to Raft. */
  readonly data: Buffer;
}

export type ConfigurationChangeType = 'addVoter' | 'addLearner' | 'removeNode' | 'promoteLearner';

export interface ConfigurationChange {
  readonly type: ConfigurationChangeType;
  readonly nodeId: NodeId;
  /** Opaque to Raft (the member's name and URLs). */
  readonly context: string;
}

interface Envelope {
  readonly from: NodeId;
  readonly to: NodeId;
  readonly term: number;
}

export type Message =
  | (Envelope & { readonly type: 'preVote' | 'vote'; readonly lastIndex: number; readonly lastTerm: number; readonly transfer: boolean })
  | (Envelope & { readonly type: 'preVoteResponse' | 'voteResponse'; readonly reject: boolean })
  | (Envelope & {
      readonly type: 'append';
      readonly prevIndex: number;
      readonly prevTerm: number;
      readonly entries: readonly Entry[];
      readonly commit: number;
      /**
       * An empty append that carries only a new commit index: the follower does not answer it
       * unless it rejects it (see RaftNode.sendAppend). Absent (false) on every other append.
       */
      readonly commitOnly?: boolean;
    })
  | (Envelope & { readonly type: 'appendResponse'; readonly reject: boolean; readonly index: number; readonly rejectHint: number })
  | (Envelope & { readonly type: 'heartbeat'; readonly commit: number; readonly context: string })
  | (Envelope & { readonly type: 'heartbeatResponse'; readonly context: string })
  | (Envelope & { readonly type: 'snapshot'; readonly snapshot: Snapshot })
  | (Envelope & { readonly type: 'timeoutNow' })
  | (Envelope & { readonly type: 'propose'; readonly entries: readonly { readonly type: EntryType; readonly data: Buffer }[] })
  | (Envelope & { readonly type: 'readIndex'; readonly context: string })
  | (Envelope & { readonly type: 'readIndexResponse'; readonly context: string; readonly index: number });

export type MessageType = Message['type'];

export type Role = 'follower' | 'preCandidate' | 'candidate' | 'leader';

/** A linearizable read may be served once the state machine has applied `index`. */
export interface ReadState {
  readonly context: string;
  readonly index: number;
}

export interface SoftState {
  readonly leader: NodeId;
  readonly role: Role;
}

/**
 * One batch of work for the caller, handled in this order: persist `hardState`, `snapshot` and
 * `entries` (fsync); then send `messages`; then apply `snapshot` and `committedEntries`; then
 * call `advance(ready)`. A leader may send its messages before persisting: none of them depends
 * on its own unpersisted state, because it counts its own entries toward commit only after
 * `advance` reports them persisted.
 */
export interface Ready {
  readonly softState: SoftState;
  readonly hardState: HardState | undefined;
  readonly snapshot: Snapshot | undefined;
  readonly entries: readonly Entry[];
  readonly committedEntries: readonly Entry[];
  readonly messages: readonly Message[];
  readonly readStates: readonly ReadState[];
}
