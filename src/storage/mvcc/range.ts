/**
 * Key ranges as etcd defines them: [key, rangeEnd), where an empty rangeEnd means the single key
 * and a rangeEnd of one zero byte means every key ≥ key.
 *
 * The index keys keys by their latin1 string: one char per byte, so string order is byte order.
 */
export interface KeyRange {
  readonly key: Buffer;
  readonly rangeEnd: Buffer;
}

export function toIndexKey(key: Buffer): string {
  return key.toString('latin1');
}

export function fromIndexKey(indexKey: string): Buffer {
  return Buffer.from(indexKey, 'latin1');
}

export function isFromKey(rangeEnd: Buffer): boolean {
  return rangeEnd.length === 1 && rangeEnd[0] === 0;
}

/** The exclusive end of a multi-key range as an index key; undefined means unbounded. */
export function rangeEndIndexKey(range: KeyRange): string | undefined {
  if (isFromKey(range.rangeEnd)) {
    return undefined;
  }
  return toIndexKey(range.rangeEnd);
}

/** Whether `key` falls inside the range. */
export function rangeContains(range: KeyRange, key: Buffer): boolean {
  if (range.rangeEnd.length === 0) {
    return key.equals(range.key);
  }
  if (Buffer.compare(key, range.key) < 0) {
    return false;
  }
  return isFromKey(range.rangeEnd) || Buffer.compare(key, range.rangeEnd) < 0;
}

/** The range end that selects every key with `prefix`, as etcdctl's --prefix computes it. */
export function prefixRangeEnd(prefix: Buffer): Buffer {
  const end = Buffer.from(prefix);
  for (let position = end.length - 1; position >= 0; position--) {
    const byte = end[position] ?? 0;
    if (byte < 0xff) {
      end[position] = byte + 1;
      return end.subarray(0, position + 1);
    }
  }
  return Buffer.of(0);
}
