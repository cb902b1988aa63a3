/**
 * The peer stream's batches (raft.proto `MessageBatch`, `RaftMessage`, `RaftEntry`) encoded and
 * decoded by hand, byte for byte the protobuf wire format, so members with the reflection-based
 * codec and members with this one understand each other. Why: with protobufjs every message and
 * every entry went through `fromObject`/`toObject` and a Long object per 64-bit field, a few
 * percent of each member's CPU under write load; here an entry costs its header and one copy.
 *
 * Owns: the wire format of Raft messages on the peer stream. Never: what the messages mean.
 * Malformed input (truncated, overlong varint, a length past the end, a number past 2^53 - 1: see
 * wire/protobuf.ts) throws a WireFormatError naming the peer codec; gRPC then fails the stream, as
 * it did when protobufjs refused a batch. Unknown fields are skipped (protobuf rules).
 */

import { fieldKey, varintBytes, WireFormatError, WireReader, WireWriter, wireBytes, wireVarint } from '../wire/protobuf.js';

/** A message as the transport hands it over (see transport.ts `RaftMessageWire`): field names of raft.proto. */
export interface RaftMessageFields {
  type: string;
  from: string;
  to: string;
  term: string | number;
  last_index?: string | number;
  last_term?: string | number;
  transfer?: boolean;
  reject?: boolean;
  index?: string | number;
  reject_hint?: string | number;
  prev_index?: string | number;
  prev_term?: string | number;
  entries?: { index: string | number; term: string | number; configuration_change: boolean; data: Buffer }[];
  commit?: string | number;
  context?: string;
  snapshot_index?: string | number;
  snapshot_term?: string | number;
  snapshot_voters?: string[];
  snapshot_learners?: string[];
  /** An append that carries only the commit index and asks for no answer (raft/types.ts `commitOnly`). */
  commit_only?: boolean;
}

export interface MessageBatchFields {
  cluster_id: string;
  /** The sending member (field 3; see transport.ts `memberRemovedDetails`). */
  from?: string;
  messages: RaftMessageFields[];
}

/** Field numbers of raft.proto's RaftMessage. */
const field = {
  type: 1,
  from: 2,
  to: 3,
  term: 4,
  lastIndex: 5,
  lastTerm: 6,
  transfer: 7,
  reject: 8,
  index: 9,
  rejectHint: 10,
  prevIndex: 11,
  prevTerm: 12,
  entries: 13,
  commit: 14,
  context: 15,
  snapshotIndex: 16,
  snapshotTerm: 17,
  snapshotVoters: 18,
  snapshotLearners: 19,
  commitOnly: 20,
} as const;

const numeric = (value: string | number | undefined): number => (typeof value === 'number' ? value : Number(value ?? 0));

const tagBytes = (fieldNumber: number): number => varintBytes(fieldNumber << 3);

type Field = { kind: 'varint'; number: number; value: number } | { kind: 'string'; number: number; value: string; bytes: number } | { kind: 'message'; number: number; size: number; write: (writer: WireWriter) => void };

function fieldBytes(item: Field): number {
  switch (item.kind) {
    case 'varint':
      return tagBytes(item.number) + varintBytes(item.value);
    case 'string':
      return tagBytes(item.number) + varintBytes(item.bytes) + item.bytes;
    case 'message':
      return tagBytes(item.number) + varintBytes(item.size) + item.size;
  }
}

function writeField(writer: WireWriter, item: Field): void {
  switch (item.kind) {
    case 'varint':
      writer.varint(fieldKey(item.number, wireVarint));
      writer.varint(item.value);
      return;
    case 'string':
      writer.varint(fieldKey(item.number, wireBytes));
      writer.string(item.value, item.bytes);
      return;
    case 'message':
      writer.varint(fieldKey(item.number, wireBytes));
      writer.varint(item.size);
      item.write(writer);
  }
}

const varintField = (number: number, value: number): Field => ({ kind: 'varint', number, value });
const stringField = (number: number, value: string): Field => ({ kind: 'string', number, value, bytes: Buffer.byteLength(value, 'utf8') });

function entryField(entry: NonNullable<RaftMessageFields['entries']>[number]): Field {
  const index = numeric(entry.index);
  const term = numeric(entry.term);
  const size =
    tagBytes(1) + varintBytes(index) + tagBytes(2) + varintBytes(term) + (entry.configuration_change ? tagBytes(3) + 1 : 0) + tagBytes(4) + varintBytes(entry.data.length) + entry.data.length;
  return {
    kind: 'message',
    number: field.entries,
    size,
    write: (writer) => {
      writer.varint(fieldKey(1, wireVarint));
      writer.varint(index);
      writer.varint(fieldKey(2, wireVarint));
      writer.varint(term);
      if (entry.configuration_change) {
        writer.varint(fieldKey(3, wireVarint));
        writer.varint(1);
      }
      writer.varint(fieldKey(4, wireBytes));
      writer.bytes(entry.data);
    },
  };
}

/** The fields of one RaftMessage that differ from proto3 defaults, in field order. */
function messageFields(message: RaftMessageFields): Field[] {
  const fields: Field[] = [stringField(field.type, message.type), stringField(field.from, message.from), stringField(field.to, message.to)];
  const number = (fieldNumber: number, value: string | number | undefined): void => {
    const parsed = numeric(value);
    if (parsed !== 0) fields.push(varintField(fieldNumber, parsed));
  };
  const flag = (fieldNumber: number, value: boolean | undefined): void => {
    if (value === true) fields.push(varintField(fieldNumber, 1));
  };
  number(field.term, message.term);
  number(field.lastIndex, message.last_index);
  number(field.lastTerm, message.last_term);
  flag(field.transfer, message.transfer);
  flag(field.reject, message.reject);
  number(field.index, message.index);
  number(field.rejectHint, message.reject_hint);
  number(field.prevIndex, message.prev_index);
  number(field.prevTerm, message.prev_term);
  for (const entry of message.entries ?? []) fields.push(entryField(entry));
  number(field.commit, message.commit);
  if (message.context !== undefined && message.context !== '') fields.push(stringField(field.context, message.context));
  number(field.snapshotIndex, message.snapshot_index);
  number(field.snapshotTerm, message.snapshot_term);
  for (const voter of message.snapshot_voters ?? []) fields.push(stringField(field.snapshotVoters, voter));
  for (const learner of message.snapshot_learners ?? []) fields.push(stringField(field.snapshotLearners, learner));
  flag(field.commitOnly, message.commit_only);
  return fields;
}

/** Encodes a MessageBatch: cluster_id (1) and from (3), then each message (2). */
export function encodeMessageBatch(batch: MessageBatchFields): Buffer {
  const top: Field[] = [];
  if (batch.cluster_id !== '') top.push(stringField(1, batch.cluster_id));
  if (batch.from !== undefined && batch.from !== '') top.push(stringField(3, batch.from));
  for (const message of batch.messages) {
    const fields = messageFields(message);
    let size = 0;
    for (const item of fields) size += fieldBytes(item);
    top.push({ kind: 'message', number: 2, size, write: (writer) => fields.forEach((item) => writeField(writer, item)) });
  }
  let total = 0;
  for (const item of top) total += fieldBytes(item);
  const writer = new WireWriter(Buffer.allocUnsafe(total));
  for (const item of top) writeField(writer, item);
  if (writer.offset !== total) throw new Error(`peer codec: wrote ${writer.offset} of ${total} bytes`);
  return writer.buffer;
}

function decodeEntry(reader: WireReader): NonNullable<RaftMessageFields['entries']>[number] {
  const entry: NonNullable<RaftMessageFields['entries']>[number] = { index: 0, term: 0, configuration_change: false, data: Buffer.alloc(0) };
  while (!reader.done) {
    const tag = reader.key();
    const wireType = tag & 7;
    switch (tag >>> 3) {
      case 1:
        entry.index = expectVarint(reader, wireType);
        break;
      case 2:
        entry.term = expectVarint(reader, wireType);
        break;
      case 3:
        entry.configuration_change = expectBool(reader, wireType);
        break;
      case 4:
        if (wireType !== wireBytes) throw new WireFormatError('entry data is not length-delimited');
        entry.data = reader.bytes();
        break;
      default:
        reader.skip(wireType);
    }
  }
  return entry;
}

function expectVarint(reader: WireReader, wireType: number): number {
  if (wireType !== wireVarint) throw new WireFormatError(`wire type ${wireType} where a varint belongs`);
  return reader.varint53();
}

/** As protobufjs reads a bool: the varint's low 32 bits, nonzero. */
function expectBool(reader: WireReader, wireType: number): boolean {
  if (wireType !== wireVarint) throw new WireFormatError(`wire type ${wireType} where a bool belongs`);
  return reader.uint32() !== 0;
}

function expectString(reader: WireReader, wireType: number): string {
  if (wireType !== wireBytes) throw new WireFormatError(`wire type ${wireType} where a string belongs`);
  return reader.string();
}

/** What a batch may still hold: messages, entries and snapshot member names (see `peerBatchItemsMax`). */
interface ItemBudget {
  left: number;
}

function takeItem(budget: ItemBudget): void {
  budget.left -= 1;
  if (budget.left < 0) throw new WireFormatError(`more than ${peerBatchItemsMax} messages and entries (snapshot member names included) in one batch`);
}

function decodeMessage(reader: WireReader, budget: ItemBudget): RaftMessageFields {
  const message: RaftMessageFields = { type: '', from: '', to: '', term: 0 };
  while (!reader.done) {
    const tag = reader.key();
    const wireType = tag & 7;
    switch (tag >>> 3) {
      case field.type:
        message.type = expectString(reader, wireType);
        break;
      case field.from:
        message.from = expectString(reader, wireType);
        break;
      case field.to:
        message.to = expectString(reader, wireType);
        break;
      case field.term:
        message.term = expectVarint(reader, wireType);
        break;
      case field.lastIndex:
        message.last_index = expectVarint(reader, wireType);
        break;
      case field.lastTerm:
        message.last_term = expectVarint(reader, wireType);
        break;
      case field.transfer:
        message.transfer = expectBool(reader, wireType);
        break;
      case field.reject:
        message.reject = expectBool(reader, wireType);
        break;
      case field.index:
        message.index = expectVarint(reader, wireType);
        break;
      case field.rejectHint:
        message.reject_hint = expectVarint(reader, wireType);
        break;
      case field.prevIndex:
        message.prev_index = expectVarint(reader, wireType);
        break;
      case field.prevTerm:
        message.prev_term = expectVarint(reader, wireType);
        break;
      case field.entries:
        if (wireType !== wireBytes) throw new WireFormatError('an entry is not length-delimited');
        message.entries ??= [];
        takeItem(budget);
        message.entries.push(decodeEntry(reader.nested()));
        break;
      case field.commit:
        message.commit = expectVarint(reader, wireType);
        break;
      case field.context:
        message.context = expectString(reader, wireType);
        break;
      case field.snapshotIndex:
        message.snapshot_index = expectVarint(reader, wireType);
        break;
      case field.snapshotTerm:
        message.snapshot_term = expectVarint(reader, wireType);
        break;
      case field.snapshotVoters:
        takeItem(budget);
        (message.snapshot_voters ??= []).push(expectString(reader, wireType));
        break;
      case field.snapshotLearners:
        takeItem(budget);
        (message.snapshot_learners ??= []).push(expectString(reader, wireType));
        break;
      case field.commitOnly:
        message.commit_only = expectBool(reader, wireType);
        break;
      default:
        reader.skip(wireType);
    }
  }
  return message;
}

/**
 * Messages, entries and snapshot member names (voters, learners) one batch may hold. Decoded, each
 * costs ~80 bytes of heap for 2 bytes of input: a 64 MiB batch of empty messages from a peer (the
 * transport's limit) made 2.6 GB of objects and held the loop 16 s; member names, 3 bytes each,
 * were not counted. A member sends far fewer: at most 256 appends in flight per follower of at
 * most 256 entries each, a turn's forwarded proposals, and each member's name once in a snapshot.
 */
export const peerBatchItemsMax = 1 << 20;

/**
 * Decodes a MessageBatch; entry data are views of `bytes` (a buffer gRPC allocated for this message
 * alone). Malformed bytes throw a WireFormatError starting `peer codec:`.
 */
export function decodeMessageBatch(bytes: Buffer): MessageBatchFields {
  try {
    return decodeBatch(new WireReader(bytes, 0, bytes.length));
  } catch (error) {
    if (error instanceof WireFormatError) throw new WireFormatError(`peer codec: ${error.message}`);
    throw error;
  }
}

function decodeBatch(reader: WireReader): MessageBatchFields {
  const batch: MessageBatchFields = { cluster_id: '', from: '', messages: [] };
  const budget: ItemBudget = { left: peerBatchItemsMax };
  while (!reader.done) {
    const tag = reader.key();
    const wireType = tag & 7;
    switch (tag >>> 3) {
      case 1:
        batch.cluster_id = expectString(reader, wireType);
        break;
      case 2:
        if (wireType !== wireBytes) throw new WireFormatError('a message is not length-delimited');
        takeItem(budget);
        batch.messages.push(decodeMessage(reader.nested(), budget));
        break;
      case 3:
        batch.from = expectString(reader, wireType);
        break;
      default:
        reader.skip(wireType);
    }
  }
  return batch;
}
