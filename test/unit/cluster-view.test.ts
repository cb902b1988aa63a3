/**
 * A joining member reads the cluster's membership from a member's answer (Peer.Cluster) within
 * bounds: at most `clusterMembersMax` members, `clusterMemberPeerUrlsMax` peer URLs each, strings
 * of at most `clusterTextBytesMax` bytes. Before, any answer gRPC took (4 MiB) was decoded whole:
 * one of two bytes per member made ~2 million member objects before anything looked at them. MemberAdd
 * keeps a cluster within the same bounds, so every cluster can be joined.
 */
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { afterEach, describe, expect, it } from 'vitest';
import { decodeOptions, protoDirectory } from '../../src/api/proto.js';
import { clusterMemberPeerUrlsMax, clusterMembersMax, clusterReplyBytesMax, clusterTextBytesMax, decodeClusterReply, type ClusterView, type ClusterViewMember } from '../../src/server/cluster-view.js';
import { memberAddRefusal } from '../../src/server/member.js';
import { Transport, fetchCluster } from '../../src/server/transport.js';
import { WireFormatError } from '../../src/wire/protobuf.js';
import { freePort } from '../helpers/processes.js';
import { transportOptions } from '../helpers/transport-options.js';

// protobufjs, as the serving member encodes the answer: the reference the hand-written reader must match.
const raft = protoLoader.loadSync(['raft.proto'], { ...decodeOptions, includeDirs: [protoDirectory] });
const clusterMethod = (raft['rampart.Peer'] as protoLoader.ServiceDefinition).Cluster as protoLoader.MethodDefinition<object, object>;
const encode = (view: ClusterView): Buffer =>
  clusterMethod.responseSerialize({ cluster_id: view.clusterId, members: view.members.map((member) => ({ id: member.id, name: member.name, peer_urls: [...member.peerUrls], is_learner: member.isLearner })) });

const member = (index: number, overrides: Partial<ClusterViewMember> = {}): ClusterViewMember => ({
  id: (0x1000 + index).toString(16),
  name: `m${index}`,
  peerUrls: [`https://10.0.0.${index % 250}:2380`],
  isLearner: index % 2 === 1,
  ...overrides,
});

/** One member at every limit: the longest id and name and the most URLs, each as long as allowed. */
const largest = (index: number): ClusterViewMember =>
  member(index, {
    id: 'f'.repeat(clusterTextBytesMax),
    name: 'n'.repeat(clusterTextBytesMax),
    peerUrls: Array.from({ length: clusterMemberPeerUrlsMax }, (_, url) => `https://h${url}.example:2380/`.padEnd(clusterTextBytesMax, 'p')),
    isLearner: true,
  });

/** Bytes of a reply's `members` field holding an empty member: two bytes each (key 0x12, length 0). */
const emptyMembers = (count: number): Buffer => Buffer.alloc(2 * count, Buffer.of(0x12, 0x00));

describe('decodeClusterReply', () => {
  it('reads what protobufjs writes, fields and defaults alike', () => {
    const view: ClusterView = { clusterId: 'a1b2c3', members: [member(1), member(2, { peerUrls: ['https://a:1', 'https://b:2'], name: 'é' }), member(3, { name: '', peerUrls: [] })] };
    expect(decodeClusterReply(encode(view))).toEqual(view);
    expect(decodeClusterReply(Buffer.alloc(0))).toEqual({ clusterId: '', members: [] });
  });

  it('reads an answer at every limit, within the reply bound gRPC is given', () => {
    const view: ClusterView = { clusterId: 'f'.repeat(clusterTextBytesMax), members: Array.from({ length: clusterMembersMax }, (_, index) => largest(index)) };
    const bytes = encode(view);
    expect(bytes.length).toBeLessThanOrEqual(clusterReplyBytesMax);
    expect(decodeClusterReply(bytes)).toEqual(view);
  });

  it('refuses more members, more URLs, or a longer string than the limits', () => {
    const members = Array.from({ length: clusterMembersMax + 1 }, (_, index) => member(index));
    expect(() => decodeClusterReply(encode({ clusterId: 'c1', members }))).toThrow(new WireFormatError(`cluster answer: more than ${clusterMembersMax} members`));
    expect(() => decodeClusterReply(emptyMembers(500_000))).toThrow(`more than ${clusterMembersMax} members`);
    const urls = Array.from({ length: clusterMemberPeerUrlsMax + 1 }, (_, index) => `https://h${index}:2380`);
    expect(() => decodeClusterReply(encode({ clusterId: 'c1', members: [member(1, { peerUrls: urls })] }))).toThrow(`a member with more than ${clusterMemberPeerUrlsMax} peer URLs`);
    const long = 'x'.repeat(clusterTextBytesMax + 1);
    expect(() => decodeClusterReply(encode({ clusterId: 'c1', members: [member(1, { name: long })] }))).toThrow(`a member name of ${clusterTextBytesMax + 1} bytes`);
    expect(() => decodeClusterReply(encode({ clusterId: 'c1', members: [member(1, { peerUrls: [long] })] }))).toThrow('a peer URL of');
    expect(() => decodeClusterReply(encode({ clusterId: long, members: [] }))).toThrow('the cluster id of');
    expect(() => decodeClusterReply(Buffer.alloc(clusterReplyBytesMax + 1))).toThrow(`(at most ${clusterReplyBytesMax})`);
  });

  it('refuses malformed bytes', () => {
    expect(() => decodeClusterReply(Buffer.of(0x12, 0x05, 0x0a))).toThrow(WireFormatError);
    expect(() => decodeClusterReply(Buffer.of(0x10, 0x01))).toThrow('wire type 0 where a member belongs');
  });
});

describe('fetchCluster', () => {
  const servers: grpc.Server[] = [];
  const transports: Transport[] = [];
  afterEach(async () => {
    await Promise.all(transports.splice(0).map((transport) => transport.close()));
    for (const server of servers.splice(0)) server.forceShutdown();
  });

  /** A member's peer port (a real Transport) answering Cluster with `view`, as a malicious member could. */
  async function memberAnswering(view: ClusterView): Promise<string> {
    const port = await freePort();
    const transport = new Transport(transportOptions('b2', { onCluster: () => view }));
    await transport.listen([`http://127.0.0.1:${port}`]);
    transports.push(transport);
    return `http://127.0.0.1:${port}`;
  }

  /** A peer port answering Cluster with raw bytes. */
  async function rawAnswering(reply: Buffer): Promise<string> {
    const identity = (bytes: Buffer): Buffer => bytes;
    const server = new grpc.Server();
    server.addService(
      { Cluster: { path: '/rampart.Peer/Cluster', requestStream: false, responseStream: false, requestSerialize: identity, requestDeserialize: identity, responseSerialize: identity, responseDeserialize: identity } },
      { Cluster: (_call: grpc.ServerUnaryCall<Buffer, Buffer>, callback: grpc.sendUnaryData<Buffer>) => callback(null, reply) },
    );
    const port = await new Promise<number>((resolve, reject) => server.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (error, bound) => (error === null ? resolve(bound) : reject(error))));
    servers.push(server);
    return `http://127.0.0.1:${port}`;
  }

  const insecure = grpc.credentials.createInsecure();

  it('takes an answer within the limits, up to all of them at once', async () => {
    const small: ClusterView = { clusterId: 'c1', members: [member(1), member(2)] };
    expect(await fetchCluster(await memberAnswering(small), insecure)).toEqual(small);
    const full: ClusterView = { clusterId: 'c1', members: Array.from({ length: clusterMembersMax }, (_, index) => largest(index)) };
    expect(await fetchCluster(await memberAnswering(full), insecure)).toEqual(full);
  });

  it('refuses an answer with too many members, naming the limit', async () => {
    const view: ClusterView = { clusterId: 'c1', members: Array.from({ length: clusterMembersMax + 1 }, (_, index) => member(index)) };
    await expect(fetchCluster(await memberAnswering(view), insecure)).rejects.toMatchObject({ code: grpc.status.INTERNAL, details: expect.stringContaining(`cluster answer: more than ${clusterMembersMax} members`) });
    // 2 MiB of empty members (a million): before, gRPC took it and protobufjs made every one.
    await expect(fetchCluster(await rawAnswering(emptyMembers(1 << 20)), insecure)).rejects.toMatchObject({ code: grpc.status.RESOURCE_EXHAUSTED });
    await expect(fetchCluster(await rawAnswering(emptyMembers(200_000)), insecure)).rejects.toMatchObject({ details: expect.stringContaining(`more than ${clusterMembersMax} members`) });
  });
});

describe('member add', () => {
  it('keeps the cluster within what a joining member reads', () => {
    const urls = (count: number, bytes = 20): string[] => Array.from({ length: count }, (_, index) => `https://h${index}.example:2380/`.padEnd(bytes, 'p'));
    expect(memberAddRefusal(3, urls(1))).toBeUndefined();
    expect(memberAddRefusal(clusterMembersMax - 1, urls(clusterMemberPeerUrlsMax, clusterTextBytesMax))).toBeUndefined();
    expect(memberAddRefusal(clusterMembersMax, urls(1))).toBe('TooManyMembers');
    expect(memberAddRefusal(3, urls(clusterMemberPeerUrlsMax + 1))).toBe('MemberBadUrls');
    expect(memberAddRefusal(3, urls(1, clusterTextBytesMax + 1))).toBe('MemberBadUrls');
    expect(memberAddRefusal(3, [])).toBe('MemberBadUrls');
    expect(memberAddRefusal(3, ['ftp://h:1'])).toBe('MemberBadUrls');
  });
});
