/**
 * What a member tells a joining member about the cluster (Peer.Cluster's ClusterReply), and the
 * bounds the joining member reads it within.
 *
 * The answer comes from a member holding a peer certificate, but a joining member has nothing of
 * its own to check it against yet, and before these bounds one answer could name any number of
 * members and URLs: gRPC took up to 4 MiB, which protobufjs made into ~2 million member objects
 * (two bytes each on the wire) before anything looked at them. The reply is now read by hand,
 * counting as it reads, and refused (WireFormatError, naming the bound) at the first member, URL or
 * string past these limits; gRPC refuses a reply past `clusterReplyBytesMax` from its frame header,
 * before buffering it. A refused answer fails the call (INTERNAL, "Response message parsing
 * error: ..."), and the joining member asks the next member of --initial-cluster.
 *
 * The limits, with etcd as the guide: etcd sets no hard cap on members, but recommends at most
 * seven (FAQ, "What is maximum cluster size?") and allows one learner by default; `memberAdd`
 * refuses to grow a cluster past `clusterMembersMax` (so every cluster can be joined), and refuses
 * more than `clusterMemberPeerUrlsMax` peer URLs or a URL past `clusterTextBytesMax` (etcd's
 * "given member URLs are invalid").
 *
 * Owns: ClusterReply's wire format on the reading side. Never: what the view means (member.ts
 * checks the ids and finds itself in it).
 */
import { WireFormatError, WireReader, wireBytes, wireVarint } from '../wire/protobuf.js';

/** What a member tells a joining member about the cluster (Peer.Cluster). */
export interface ClusterView {
  readonly clusterId: string;
  readonly members: readonly ClusterViewMember[];
}

export interface ClusterViewMember {
  readonly id: string;
  readonly name: string;
  readonly peerUrls: readonly string[];
  readonly isLearner: boolean;
}

/** Members (voters and learners) a cluster may have, and a joining member takes in an answer. */
export const clusterMembersMax = 64;
/** Peer URLs one member may advertise. */
export const clusterMemberPeerUrlsMax = 16;
/** Bytes of the cluster id, and of each member's id, name and peer URL. */
export const clusterTextBytesMax = 1024;

/** A length-delimited field at most `clusterTextBytesMax` long, with its key and length. */
const textFieldBytesMax = 1 + 2 + clusterTextBytesMax;
/** One member at the limits: id, name, every URL, the learner flag, and its own key and length. */
const memberBytesMax = textFieldBytesMax * (2 + clusterMemberPeerUrlsMax) + 2 + 1 + 3;
/** The largest ClusterReply the limits allow (gRPC refuses a longer one before reading it). */
export const clusterReplyBytesMax = textFieldBytesMax + clusterMembersMax * memberBytesMax;

const replyField = { clusterId: 1, members: 2 } as const;
const memberField = { id: 1, name: 2, peerUrls: 3, isLearner: 4 } as const;

function text(reader: WireReader, wireType: number, what: string): string {
  if (wireType !== wireBytes) throw new WireFormatError(`cluster answer: wire type ${wireType} where ${what} belongs`);
  const bytes = reader.bytes();
  if (bytes.length > clusterTextBytesMax) throw new WireFormatError(`cluster answer: ${what} of ${bytes.length} bytes (at most ${clusterTextBytesMax})`);
  return bytes.toString('utf8');
}

function decodeMember(reader: WireReader): ClusterViewMember {
  let id = '';
  let name = '';
  const peerUrls: string[] = [];
  let isLearner = false;
  while (!reader.done) {
    const key = reader.key();
    const wireType = key & 7;
    switch (key >>> 3) {
      case memberField.id:
        id = text(reader, wireType, 'a member id');
        break;
      case memberField.name:
        name = text(reader, wireType, 'a member name');
        break;
      case memberField.peerUrls:
        if (peerUrls.length === clusterMemberPeerUrlsMax) throw new WireFormatError(`cluster answer: a member with more than ${clusterMemberPeerUrlsMax} peer URLs`);
        peerUrls.push(text(reader, wireType, 'a peer URL'));
        break;
      case memberField.isLearner:
        if (wireType !== wireVarint) throw new WireFormatError(`cluster answer: wire type ${wireType} where a bool belongs`);
        isLearner = reader.uint32() !== 0;
        break;
      default:
        reader.skip(wireType);
    }
  }
  return { id, name, peerUrls, isLearner };
}

/**
 * Reads a ClusterReply as protobufjs would (last value of a field wins, unknown fields skipped),
 * refusing it with a WireFormatError past the limits above or where it is malformed.
 */
export function decodeClusterReply(bytes: Buffer): ClusterView {
  if (bytes.length > clusterReplyBytesMax) throw new WireFormatError(`cluster answer: ${bytes.length} bytes (at most ${clusterReplyBytesMax})`);
  const reader = new WireReader(bytes, 0, bytes.length);
  let clusterId = '';
  const members: ClusterViewMember[] = [];
  while (!reader.done) {
    const key = reader.key();
    const wireType = key & 7;
    switch (key >>> 3) {
      case replyField.clusterId:
        clusterId = text(reader, wireType, 'the cluster id');
        break;
      case replyField.members:
        if (wireType !== wireBytes) throw new WireFormatError(`cluster answer: wire type ${wireType} where a member belongs`);
        if (members.length === clusterMembersMax) throw new WireFormatError(`cluster answer: more than ${clusterMembersMax} members`);
        members.push(decodeMember(reader.nested()));
        break;
      default:
        reader.skip(wireType);
    }
  }
  return { clusterId, members };
}
