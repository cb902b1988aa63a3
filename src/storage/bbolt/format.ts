/**
 * bbolt's on-disk format (the B+tree file etcd keeps its state in, and what `etcdctl snapshot
 * save` writes), as far as reading and writing a whole file needs it. Little-endian throughout (the
 * byte order of the machines etcd runs on; bbolt writes its structs in native order).
 *
 * The file is a sequence of pages of `pageSize` bytes (4096 on Linux); page N starts at N × pageSize.
 * Every page starts with a 16-byte header:
 *   offset 0   u64  page id (its own number)
 *   offset 8   u16  flags: 0x01 branch, 0x02 leaf, 0x04 meta, 0x10 freelist
 *   offset 10  u16  element count (freelist: 0xFFFF means the real count is the first u64 of the body)
 *   offset 12  u32  overflow: how many further pages this one spans (one element larger than a page)
 *
 * Pages 0 and 1 are meta pages (two, so a torn write of one leaves the other); the valid one with
 * the higher transaction id wins. Meta body, at offset 16 of the page:
 *   offset 0   u32  magic 0xED0CDAED
 *   offset 4   u32  version 2
 *   offset 8   u32  page size
 *   offset 12  u32  flags (0)
 *   offset 16  u64  root bucket's root page      } the root bucket header: the root bucket holds
 *   offset 24  u64  root bucket's sequence       } one entry per top-level bucket
 *   offset 32  u64  freelist page (all ones: not written; the reader rebuilds it)
 *   offset 40  u64  high-water mark: the number of pages in use
 *   offset 48  u64  transaction id (meta page id = txid mod 2)
 *   offset 56  u64  checksum: FNV-1a 64 of bytes 0..55
 *
 * Leaf page element (16 bytes each, after the header; `pos` counts from the element's own start):
 *   u32 flags (0x01: the value is a bucket), u32 pos, u32 key size, u32 value size; key then value.
 * Branch page element: u32 pos, u32 key size, u64 child page; the key is the child's first key.
 * Keys are in ascending byte order within and across pages.
 *
 * A bucket value is a bucket header (u64 root page, u64 sequence). Root page 0 means an inline
 * bucket: a whole leaf page (header and elements) follows the 16 bytes, inside the value.
 *
 * A damaged file is refused as a whole (`BboltFormatError`): bad magic, version or checksum on both
 * metas, a page outside the file, a cycle, keys out of order, an element overrunning its page.
 */

export const bboltMagic = 0xed0cdaed;
export const bboltVersion = 2;
export const pageHeaderBytes = 16;
export const elementBytes = 16;
export const metaBytes = 64;
export const bucketHeaderBytes = 16;
export const pageFlag = { branch: 0x01, leaf: 0x02, meta: 0x04, freelist: 0x10 } as const;
export const leafFlagBucket = 0x01;
export const noFreelistPage = 0xffff_ffff_ffff_ffffn;
export const defaultPageSizeBytes = 4096;
/** Deeper than any real tree (a 4 KiB-page tree of depth 16 holds more than any file). */
export const treeDepthMax = 64;

export class BboltFormatError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'BboltFormatError';
  }
}

const fnvOffsetBasis = 0xcbf29ce484222325n;
const fnvPrime = 0x100000001b3n;
const mask64 = 0xffff_ffff_ffff_ffffn;

/** FNV-1a, 64 bits: bbolt's meta checksum. */
export function fnv1a64(bytes: Buffer): bigint {
  let hash = fnvOffsetBasis;
  for (const byte of bytes) {
    hash ^= BigInt(byte);
    hash = (hash * fnvPrime) & mask64;
  }
  return hash;
}

export interface Meta {
  readonly pageSize: number;
  readonly rootPage: bigint;
  readonly rootSequence: bigint;
  readonly freelistPage: bigint;
  readonly highWaterPage: bigint;
  readonly transactionId: bigint;
}

/** Reads the meta body at `offset`; undefined when its magic, version or checksum is wrong. */
export function readMeta(file: Buffer, offset: number): Meta | undefined {
  if (offset + pageHeaderBytes + metaBytes > file.length) return undefined;
  const body = file.subarray(offset + pageHeaderBytes, offset + pageHeaderBytes + metaBytes);
  if (body.readUInt32LE(0) !== bboltMagic || body.readUInt32LE(4) !== bboltVersion) return undefined;
  if (fnv1a64(body.subarray(0, 56)) !== body.readBigUInt64LE(56)) return undefined;
  return {
    pageSize: body.readUInt32LE(8),
    rootPage: body.readBigUInt64LE(16),
    rootSequence: body.readBigUInt64LE(24),
    freelistPage: body.readBigUInt64LE(32),
    highWaterPage: body.readBigUInt64LE(40),
    transactionId: body.readBigUInt64LE(48),
  };
}

/** Writes a meta page (header and body, checksum computed) into `page`. */
export function writeMeta(page: Buffer, pageId: number, meta: Meta): void {
  writePageHeader(page, 0, pageId, pageFlag.meta, 0, 0);
  const body = page.subarray(pageHeaderBytes, pageHeaderBytes + metaBytes);
  body.writeUInt32LE(bboltMagic, 0);
  body.writeUInt32LE(bboltVersion, 4);
  body.writeUInt32LE(meta.pageSize, 8);
  body.writeUInt32LE(0, 12);
  body.writeBigUInt64LE(meta.rootPage, 16);
  body.writeBigUInt64LE(meta.rootSequence, 24);
  body.writeBigUInt64LE(meta.freelistPage, 32);
  body.writeBigUInt64LE(meta.highWaterPage, 40);
  body.writeBigUInt64LE(meta.transactionId, 48);
  body.writeBigUInt64LE(fnv1a64(body.subarray(0, 56)), 56);
}

export function writePageHeader(buffer: Buffer, offset: number, pageId: number, flags: number, count: number, overflow: number): void {
  buffer.writeBigUInt64LE(BigInt(pageId), offset);
  buffer.writeUInt16LE(flags, offset + 8);
  buffer.writeUInt16LE(count, offset + 10);
  buffer.writeUInt32LE(overflow, offset + 12);
}
