/**
 * What a member needs from its consensus: the Raft loop implements it for every deployment,
 * a single member being a cluster of one voter.
 */
export interface Consensus {
  readonly term: number;
  readonly leaderId: bigint;
  readonly isLeader: boolean;
  readonly lastIndex: number;
  /** Queues data for the log. Throws NoLeader when it cannot be accepted. */
  propose(data: Buffer): void;
  /** Resolves when a read served after it is linearizable. */
  readBarrier(): Promise<void>;
  close(): Promise<void>;
}
