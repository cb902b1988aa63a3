/**
 * Reads a whole bbolt file held in memory (format in `format.ts`). Every page reference, element
 * and key order is checked; anything wrong throws `BboltFormatError` naming the page, so a damaged
 * file is refused before anything is taken from it. Never writes.
 */
import {
  BboltFormatError,
  bucketHeaderBytes,
  elementBytes,
  leafFlagBucket,
  pageFlag,
  pageHeaderBytes,
  readMeta,
  treeDepthMax,
  type Meta,
} from './format.js';

/** A bucket: its root page, or for an inline bucket the leaf page bytes it carries. */
type BucketReference = { readonly rootPage: number } | { readonly inline: Buffer };

export interface BboltEntry {
  readonly key: Buffer;
  /** The value, or for a nested bucket its header bytes (use `isBucket`). */
  readonly value: Buffer;
  readonly isBucket: boolean;
}

const pageSizesTried = [4096, 512, 1024, 2048, 8192, 16384, 32768, 65536];

export class BboltReader {
  private constructor(
    private readonly file: Buffer,
    readonly meta: Meta,
  ) {}

  /** `file` is the database alone (no trailing checksum). */
  static open(file: Buffer): BboltReader {
    if (file.length < pageHeaderBytes * 2) throw new BboltFormatError('file too short to be a bbolt database');
    // Meta 0 names the page size; if it is damaged, meta 1 sits one page further, at a size to guess.
    const metas: Meta[] = [];
    const first = readMeta(file, 0);
    if (first !== undefined) metas.push(first);
    for (const size of first === undefined ? pageSizesTried : [first.pageSize]) {
      const second = readMeta(file, size);
      if (second !== undefined && second.pageSize === size) {
        metas.push(second);
        break;
      }
    }
    const valid = metas.filter((meta) => isPowerOfTwo(meta.pageSize) && meta.pageSize >= 512 && meta.pageSize <= 65536);
    if (valid.length === 0) throw new BboltFormatError('no valid bbolt meta page (not a bbolt database, or both meta pages are damaged)');
    const meta = valid.reduce((best, candidate) => (candidate.transactionId > best.transactionId ? candidate : best));
    if (file.length % meta.pageSize !== 0) throw new BboltFormatError(`file size ${file.length} is not a multiple of the page size ${meta.pageSize} (truncated?)`);
    const pages = file.length / meta.pageSize;
    if (meta.highWaterPage > BigInt(pages)) throw new BboltFormatError(`the database claims ${meta.highWaterPage} pages but the file holds ${pages} (truncated?)`);
    return new BboltReader(file, meta);
  }

  /** The top-level buckets' names and entries, in key order. */
  topLevel(): BboltEntry[] {
    return this.entries({ rootPage: this.pageNumber(this.meta.rootPage, 'the root bucket') });
  }

  /** The entries of the top-level bucket `name`, or undefined when there is no such bucket. */
  bucket(name: string): BboltEntry[] | undefined {
    const entry = this.topLevel().find((candidate) => candidate.key.toString('latin1') === name);
    if (entry === undefined) return undefined;
    if (!entry.isBucket) throw new BboltFormatError(`"${name}" is a key, not a bucket`);
    return this.entries(this.bucketReference(entry.value, name));
  }

  private bucketReference(header: Buffer, name: string): BucketReference {
    if (header.length < bucketHeaderBytes) throw new BboltFormatError(`bucket "${name}": header too short`);
    const root = header.readBigUInt64LE(0);
    if (root === 0n) return { inline: header.subarray(bucketHeaderBytes) };
    return { rootPage: this.pageNumber(root, `bucket "${name}"`) };
  }

  private pageNumber(id: bigint, what: string): number {
    if (id < 2n || id >= this.meta.highWaterPage) throw new BboltFormatError(`${what} points at page ${id}, outside the database`);
    return Number(id);
  }

  /** The bytes of page `id`, with its overflow pages. */
  private page(id: number): Buffer {
    const size = this.meta.pageSize;
    const start = id * size;
    if (start + size > this.file.length) throw new BboltFormatError(`page ${id} lies past the end of the file`);
    const recordedId = this.file.readBigUInt64LE(start);
    if (recordedId !== BigInt(id)) throw new BboltFormatError(`page ${id} is marked as page ${recordedId}`);
    const overflow = this.file.readUInt32LE(start + 12);
    const end = start + (overflow + 1) * size;
    if (BigInt(id + overflow) >= this.meta.highWaterPage || end > this.file.length) throw new BboltFormatError(`page ${id} overflows past the end of the database`);
    return this.file.subarray(start, end);
  }

  /** Every entry of one bucket, keys checked to be strictly ascending. */
  private entries(reference: BucketReference): BboltEntry[] {
    const result: BboltEntry[] = [];
    const visited = new Set<number>();
    const visit = (page: Buffer, where: string, depth: number): void => {
      if (depth > treeDepthMax) throw new BboltFormatError(`${where}: tree deeper than ${treeDepthMax}`);
      const flags = page.readUInt16LE(8);
      const count = page.readUInt16LE(10);
      if (pageHeaderBytes + count * elementBytes > page.length) throw new BboltFormatError(`${where}: ${count} elements do not fit the page`);
      if (flags === pageFlag.leaf) {
        for (let index = 0; index < count; index++) {
          const at = pageHeaderBytes + index * elementBytes;
          const elementFlags = page.readUInt32LE(at);
          const keyStart = at + page.readUInt32LE(at + 4);
          const keyEnd = keyStart + page.readUInt32LE(at + 8);
          const valueEnd = keyEnd + page.readUInt32LE(at + 12);
          if (valueEnd > page.length) throw new BboltFormatError(`${where}: element ${index} overruns the page`);
          const key = page.subarray(keyStart, keyEnd);
          const previous = result[result.length - 1];
          if (previous !== undefined && Buffer.compare(previous.key, key) >= 0) throw new BboltFormatError(`${where}: keys out of order`);
          result.push({ key, value: page.subarray(keyEnd, valueEnd), isBucket: (elementFlags & leafFlagBucket) !== 0 });
        }
      } else if (flags === pageFlag.branch) {
        for (let index = 0; index < count; index++) {
          const at = pageHeaderBytes + index * elementBytes;
          const keyEnd = at + page.readUInt32LE(at) + page.readUInt32LE(at + 4);
          if (keyEnd > page.length) throw new BboltFormatError(`${where}: branch element ${index} overruns the page`);
          const child = this.pageNumber(page.readBigUInt64LE(at + 8), where);
          if (visited.has(child)) throw new BboltFormatError(`${where}: page ${child} is referenced twice`);
          visited.add(child);
          visit(this.page(child), `page ${child}`, depth + 1);
        }
      } else {
        throw new BboltFormatError(`${where}: expected a branch or leaf page, found flags 0x${flags.toString(16)}`);
      }
    };
    if ('inline' in reference) {
      if (reference.inline.length < pageHeaderBytes) throw new BboltFormatError('inline bucket shorter than a page header');
      visit(reference.inline, 'an inline bucket', 0);
    } else {
      visited.add(reference.rootPage);
      visit(this.page(reference.rootPage), `page ${reference.rootPage}`, 0);
    }
    return result;
  }
}

function isPowerOfTwo(value: number): boolean {
  return value > 0 && (value & (value - 1)) === 0;
}
