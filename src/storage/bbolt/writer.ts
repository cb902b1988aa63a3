/**
 * Writes a new bbolt file (format in `format.ts`) holding top-level buckets of plain keys and
 * values, in one pass: page 0 and 1 meta, page 2 an empty freelist, then each bucket's B+tree
 * bottom-up (leaves packed full, branch levels above until one root), then the root bucket's tree.
 * An empty bucket is written inline, as bbolt itself writes one. Never reads.
 */
import { assert } from '../../errors.js';
import {
  bucketHeaderBytes,
  defaultPageSizeBytes,
  elementBytes,
  leafFlagBucket,
  pageFlag,
  pageHeaderBytes,
  writeMeta,
  writePageHeader,
} from './format.js';

export interface BboltBucketContent {
  readonly name: string;
  /** Sorted by key, keys unique. */
  readonly entries: readonly (readonly [Buffer, Buffer])[];
}

interface Element {
  readonly key: Buffer;
  readonly value: Buffer;
  readonly flags: number;
}

/** bbolt stores a page's element count in 16 bits. */
const pageElementsMax = 0xffff;

class PageAllocator {
  readonly pages: Buffer[] = [];
  nextPage = 0;

  constructor(readonly pageSize: number) {}

  /** Reserves enough consecutive pages for `bytes`; returns the first page id and the buffer. */
  allocate(bytes: number): { id: number; page: Buffer; overflow: number } {
    const span = Math.max(1, Math.ceil(bytes / this.pageSize));
    const page = Buffer.alloc(span * this.pageSize);
    const id = this.nextPage;
    this.nextPage += span;
    this.pages.push(page);
    return { id, page, overflow: span - 1 };
  }
}

function leafSize(elements: readonly Element[]): number {
  return pageHeaderBytes + elements.reduce((total, element) => total + elementBytes + element.key.length + element.value.length, 0);
}

/** Lays out a leaf page's elements (headers first, then keys and values) into `page` at `offset`. */
function writeLeaf(page: Buffer, offset: number, pageId: number, elements: readonly Element[], overflow: number): void {
  writePageHeader(page, offset, pageId, pageFlag.leaf, elements.length, overflow);
  let data = offset + pageHeaderBytes + elements.length * elementBytes;
  elements.forEach((element, index) => {
    const at = offset + pageHeaderBytes + index * elementBytes;
    page.writeUInt32LE(element.flags, at);
    page.writeUInt32LE(data - at, at + 4);
    page.writeUInt32LE(element.key.length, at + 8);
    page.writeUInt32LE(element.value.length, at + 12);
    element.key.copy(page, data);
    data += element.key.length;
    element.value.copy(page, data);
    data += element.value.length;
  });
}

/** Splits elements into runs that each fit one page (a single oversized element gets its own). */
function pack<T>(items: readonly T[], sizeOf: (item: T) => number, pageSize: number): T[][] {
  const runs: T[][] = [];
  let run: T[] = [];
  let bytes = pageHeaderBytes;
  for (const item of items) {
    const size = sizeOf(item);
    if (run.length > 0 && (bytes + size > pageSize || run.length === pageElementsMax)) {
      runs.push(run);
      run = [];
      bytes = pageHeaderBytes;
    }
    run.push(item);
    bytes += size;
  }
  if (run.length > 0) runs.push(run);
  return runs;
}

/** Writes a B+tree of `elements` (sorted) and returns its root page id. */
function writeTree(allocator: PageAllocator, elements: readonly Element[]): number {
  let level: { firstKey: Buffer; id: number }[] = [];
  const leaves = elements.length === 0 ? [[]] : pack(elements, (element) => elementBytes + element.key.length + element.value.length, allocator.pageSize);
  for (const run of leaves) {
    const { id, page, overflow } = allocator.allocate(leafSize(run));
    writeLeaf(page, 0, id, run, overflow);
    level.push({ firstKey: run[0]?.key ?? Buffer.alloc(0), id });
  }
  while (level.length > 1) {
    const next: { firstKey: Buffer; id: number }[] = [];
    for (const run of pack(level, (child) => elementBytes + child.firstKey.length, allocator.pageSize)) {
      const bytes = pageHeaderBytes + run.reduce((total, child) => total + elementBytes + child.firstKey.length, 0);
      const { id, page, overflow } = allocator.allocate(bytes);
      writePageHeader(page, 0, id, pageFlag.branch, run.length, overflow);
      let data = pageHeaderBytes + run.length * elementBytes;
      run.forEach((child, index) => {
        const at = pageHeaderBytes + index * elementBytes;
        page.writeUInt32LE(data - at, at);
        page.writeUInt32LE(child.firstKey.length, at + 4);
        page.writeBigUInt64LE(BigInt(child.id), at + 8);
        child.firstKey.copy(page, data);
        data += child.firstKey.length;
      });
      next.push({ firstKey: run[0]?.firstKey ?? Buffer.alloc(0), id });
    }
    level = next;
  }
  const root = level[0];
  assert(root !== undefined, 'a tree has a root');
  return root.id;
}

function assertSorted(bucket: BboltBucketContent): void {
  for (let index = 1; index < bucket.entries.length; index++) {
    const previous = bucket.entries[index - 1] as readonly [Buffer, Buffer];
    const current = bucket.entries[index] as readonly [Buffer, Buffer];
    assert(Buffer.compare(previous[0], current[0]) < 0, `bucket ${bucket.name}: keys not sorted and unique`);
  }
}

export function writeBbolt(buckets: readonly BboltBucketContent[], pageSize: number = defaultPageSizeBytes): Buffer {
  const allocator = new PageAllocator(pageSize);
  const metaPages = [allocator.allocate(pageSize), allocator.allocate(pageSize)];
  const freelist = allocator.allocate(pageSize);
  writePageHeader(freelist.page, 0, freelist.id, pageFlag.freelist, 0, 0);

  const rootElements: Element[] = [];
  const sorted = [...buckets].sort((a, b) => Buffer.compare(Buffer.from(a.name, 'latin1'), Buffer.from(b.name, 'latin1')));
  for (const bucket of sorted) {
    assertSorted(bucket);
    let header: Buffer;
    if (bucket.entries.length === 0) {
      // Inline: a zero bucket header followed by an empty leaf page header.
      header = Buffer.alloc(bucketHeaderBytes + pageHeaderBytes);
      writePageHeader(header, bucketHeaderBytes, 0, pageFlag.leaf, 0, 0);
    } else {
      const root = writeTree(allocator, bucket.entries.map(([key, value]) => ({ key, value, flags: 0 })));
      header = Buffer.alloc(bucketHeaderBytes);
      header.writeBigUInt64LE(BigInt(root), 0);
    }
    rootElements.push({ key: Buffer.from(bucket.name, 'latin1'), value: header, flags: leafFlagBucket });
  }
  const rootPage = writeTree(allocator, rootElements);
  const highWaterPage = BigInt(allocator.nextPage);
  metaPages.forEach(({ page }, index) => {
    // The meta page id is the transaction id modulo 2; both name the same tree.
    writeMeta(page, index, { pageSize, rootPage: BigInt(rootPage), rootSequence: 0n, freelistPage: BigInt(freelist.id), highWaterPage, transactionId: BigInt(index === 0 ? 2 : 1) });
  });
  return Buffer.concat(allocator.pages);
}
