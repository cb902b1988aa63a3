/**
 * The MVCC index's memory and GC cost, alone (no server, no encryption): loads N keys into a store
 * on a temporary LevelDB as the applier does (Txns of 16 puts, 1 KiB values), then reports heap
 * bytes and objects per key, the GC time and CPU of a fixed load of overwrites, and the time to
 * open the store again from its database (the index rebuild).
 *
 *   node --expose-gc dist/bench/mvcc-index.js [keys=200000] [writes=100000] [snapshot=0]
 *
 * `snapshot=1` also counts the heap's objects by type (a heap snapshot: use ≤ 100,000 keys).
 */
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { PerformanceObserver } from 'node:perf_hooks';
import v8 from 'node:v8';
import { ClassicLevel } from 'classic-level';
import { MvccStore, type BatchOperation } from '../src/storage/mvcc/store.js';

const keys = Number(process.argv[2] ?? 200_000);
const writes = Number(process.argv[3] ?? 100_000);
const countObjects = process.argv[4] === '1';
const putsPerTxn = 16;
const valueBytes = 1024;

const collect = (): void => {
  const gc = (globalThis as { gc?: () => void }).gc;
  if (gc === undefined) throw new Error('run with --expose-gc');
  gc();
  gc();
};

const keyOf = (index: number): Buffer => Buffer.from(`/registry/pods/namespace-${index % 5}/pod-${index.toString().padStart(8, '0')}`);

let gcMilliseconds = 0;
let gcCount = 0;
new PerformanceObserver((list) => {
  for (const entry of list.getEntries()) {
    gcMilliseconds += entry.duration;
    gcCount += 1;
  }
}).observe({ entryTypes: ['gc'] });

async function apply(store: MvccStore, db: ClassicLevel<Buffer, Buffer>, first: number, count: number, stride: number): Promise<void> {
  const transaction = store.beginWrite();
  for (let position = 0; position < count; position++) {
    transaction.put(keyOf((first + position * stride) % keys), Buffer.alloc(valueBytes, position % 251), 0n);
  }
  const revision = transaction.commit();
  const batch: BatchOperation[] = transaction.batch;
  await db.batch(batch);
  store.markFlushed(batch, revision);
}

/** Objects and self bytes in the heap by node type and name. */
async function heapCounts(): Promise<Map<string, [number, number]>> {
  const chunks: Buffer[] = [];
  for await (const chunk of v8.getHeapSnapshot()) chunks.push(chunk as Buffer);
  const parsed = JSON.parse(Buffer.concat(chunks).toString()) as {
    snapshot: { meta: { node_fields: string[]; node_types: [string[]] } };
    nodes: number[];
    strings: string[];
  };
  const fields = parsed.snapshot.meta.node_fields;
  const typeNames = parsed.snapshot.meta.node_types[0];
  const stride = fields.length;
  const typeField = fields.indexOf('type');
  const nameField = fields.indexOf('name');
  const sizeField = fields.indexOf('self_size');
  const counts = new Map<string, [number, number]>();
  for (let offset = 0; offset < parsed.nodes.length; offset += stride) {
    const type = typeNames[parsed.nodes[offset + typeField] as number] as string;
    const name = type === 'object' || type === 'native' || type === 'hidden' ? (parsed.strings[parsed.nodes[offset + nameField] as number] as string) : '';
    const label = `${type}:${name.slice(0, 40)}`;
    const count = counts.get(label) ?? [0, 0];
    count[0] += 1;
    count[1] += parsed.nodes[offset + sizeField] as number;
    counts.set(label, count);
  }
  return counts;
}

function printCounts(before: Map<string, [number, number]>, after: Map<string, [number, number]>): void {
  const rows: [string, number, number][] = [];
  let objects = 0;
  for (const [label, [count, bytes]] of after) {
    const [countBefore, bytesBefore] = before.get(label) ?? [0, 0];
    objects += count - countBefore;
    rows.push([label, count - countBefore, bytes - bytesBefore]);
  }
  rows.sort((a, b) => b[2] - a[2]);
  console.log(`heap snapshot: ${(objects / keys).toFixed(2)} objects/key`);
  for (const [label, count, bytes] of rows.slice(0, 10)) console.log(`  ${label.padEnd(48)} ${(count / keys).toFixed(2)}/key ${(bytes / keys).toFixed(1)} B/key`);
}

async function main(): Promise<void> {
  const directory = await mkdtemp(path.join(os.tmpdir(), 'mvcc-index-'));
  try {
    let db = new ClassicLevel<Buffer, Buffer>(directory, { keyEncoding: 'buffer', valueEncoding: 'buffer' });
    await db.open();
    let store = await MvccStore.open(db);
    collect();
    const before = countObjects ? await heapCounts() : undefined;
    const heapBefore = process.memoryUsage().heapUsed;
    const loadStart = performance.now();
    for (let first = 0; first < keys; first += putsPerTxn) await apply(store, db, first, Math.min(putsPerTxn, keys - first), 1);
    const loadMilliseconds = performance.now() - loadStart;
    collect();
    const heapAfter = process.memoryUsage().heapUsed;
    const external = process.memoryUsage().arrayBuffers;
    console.log(`load ${keys} keys: ${loadMilliseconds.toFixed(0)} ms; heap ${((heapAfter - heapBefore) / keys).toFixed(1)} B/key (array buffers ${(external / 2 ** 20).toFixed(0)} MiB)`);
    if (before !== undefined) printCounts(before, await heapCounts());

    // A fixed write load: single-put transactions over existing keys, as a Kubernetes cluster updates objects.
    await new Promise((resolve) => setTimeout(resolve, 100));
    gcMilliseconds = 0;
    gcCount = 0;
    const cpuBefore = process.cpuUsage();
    const writeStart = performance.now();
    for (let position = 0; position < writes; position++) await apply(store, db, (position * 7919) % keys, 1, 1);
    const writeMilliseconds = performance.now() - writeStart;
    const cpu = process.cpuUsage(cpuBefore);
    await new Promise((resolve) => setTimeout(resolve, 100));
    console.log(
      `${writes} writes: ${writeMilliseconds.toFixed(0)} ms, CPU ${((cpu.user + cpu.system) / writes).toFixed(1)} us/write, GC ${gcMilliseconds.toFixed(0)} ms (${gcCount} pauses, ${((100 * gcMilliseconds) / writeMilliseconds).toFixed(1)}% of the time)`,
    );

    await db.close();
    store = undefined as unknown as MvccStore;
    collect();
    db = new ClassicLevel<Buffer, Buffer>(directory, { keyEncoding: 'buffer', valueEncoding: 'buffer' });
    await db.open();
    gcMilliseconds = 0;
    const emptyCounts = countObjects ? await heapCounts() : undefined;
    const heapEmpty = process.memoryUsage().heapUsed;
    const openCpu = process.cpuUsage();
    const openStart = performance.now();
    store = await MvccStore.open(db);
    const openMilliseconds = performance.now() - openStart;
    const openUsage = process.cpuUsage(openCpu);
    await new Promise((resolve) => setTimeout(resolve, 100));
    collect();
    console.log(
      `open: ${openMilliseconds.toFixed(0)} ms, CPU ${((openUsage.user + openUsage.system) / 1000).toFixed(0)} ms, GC ${gcMilliseconds.toFixed(0)} ms; heap after ${((process.memoryUsage().heapUsed - heapEmpty) / keys).toFixed(1)} B/key; ${store.keyCount} keys`,
    );
    if (emptyCounts !== undefined) printCounts(emptyCounts, await heapCounts());
    await db.close();
  } finally {
    await rm(directory, { recursive: true, force: true });
  }
}

await main();
