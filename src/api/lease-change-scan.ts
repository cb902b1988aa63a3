/**
 * Which lease a log entry's payload grants or revokes, read from its protobuf wire bytes without
 * decoding the rest: a keep-alive at the leader looks through every entry committed but not yet
 * applied (src/server/lease-confirmation.ts), which under load is mostly puts, and decoding each
 * into an object would cost far more than walking its top-level fields.
 *
 * Wire layout (internal.proto): InternalRequest { 1: id, oneof { …, 6: LeaseGrantRequest,
 * 7: LeaseRevokeRequest, … }, 20: caller }; LeaseGrantRequest { 1: TTL, 2: ID };
 * LeaseRevokeRequest { 1: ID }. Bytes that do not parse throw: the entry is then one the caller
 * cannot rule out.
 */
import protobuf from 'protobufjs';

const wireVarint = 0;
const wireLengthDelimited = 2;
const leaseGrantField = 6;
const leaseRevokeField = 7;
const grantIdField = 2;
const revokeIdField = 1;

/** The lease an InternalRequest grants or revokes (0n for ID 0), or undefined for any other request. */
export function leaseChangedBy(payload: Uint8Array): bigint | undefined {
  const reader = protobuf.Reader.create(payload);
  while (reader.pos < reader.len) {
    const tag = reader.uint32();
    const field = tag >>> 3;
    const wireType = tag & 7;
    if ((field === leaseGrantField || field === leaseRevokeField) && wireType === wireLengthDelimited) {
      const end = reader.uint32() + reader.pos;
      return leaseIdIn(reader, end, field === leaseGrantField ? grantIdField : revokeIdField);
    }
    reader.skipType(wireType);
  }
  return undefined;
}

function leaseIdIn(reader: protobuf.Reader, end: number, idField: number): bigint {
  let id = 0n;
  while (reader.pos < end) {
    const tag = reader.uint32();
    if (tag >>> 3 === idField && (tag & 7) === wireVarint) {
      // int64: protobufjs hands a Long (or a number without long.js); its decimal form is exact.
      id = BigInt(reader.int64().toString());
    } else {
      reader.skipType(tag & 7);
    }
  }
  return id;
}
