/**
 * Histograms and counters updated on every request (a put records about eight observations), kept
 * as plain numbers and handed to prom-client's registry only when it is scraped. prom-client's own
 * `observe`/`inc` validate the labels, hash the label object into a string and look the bucket up
 * by a number-keyed property on every call (about 1 us each, ~6 us a put); here a series is
 * found by one Map lookup per label value and a bucket by a scan over a small array of bounds.
 *
 * What a scrape sees is what prom-client's Histogram and Counter give for the same observations:
 * `get`/`getForPromString` return the same values in the same order (series in first-seen order;
 * per histogram series its cumulative buckets, `+Inf`, `_sum`, `_count`), so the registry formats
 * them byte for byte alike (test/unit/hot-metrics.test.ts compares the two). Series are bounded by
 * their label values (methods, status codes, stages, peers), as in prom-client.
 */
import type { Metric, Registry } from 'prom-client';

/** One series: the label values it is known by, its per-bucket (not cumulative) counts, sum and count. */
interface HistogramSeries {
  readonly labels: Readonly<Record<string, string>>;
  readonly counts: Float64Array;
  sum: number;
  count: number;
}

interface CounterSeries {
  readonly labels: Readonly<Record<string, string>>;
  value: number;
}

interface ExportedValue {
  readonly labels: Record<string, string | number>;
  readonly sharedLabels?: Readonly<Record<string, string>>;
  readonly value: number;
  readonly metricName?: string;
  readonly exemplar?: null;
}

interface Exported {
  readonly name: string;
  readonly help: string;
  readonly type: 'histogram' | 'counter';
  readonly values: ExportedValue[];
  readonly aggregator: 'sum';
}

/** Series by the values of up to two labels (`labelNames` order), in first-seen order for export. */
class SeriesTable<Series> {
  private readonly byFirst = new Map<string, Series | Map<string, Series>>();
  readonly ordered: Series[] = [];

  constructor(private readonly labelNames: readonly string[], private readonly create: (labels: Record<string, string>) => Series) {
    if (labelNames.length > 2) throw new Error('hot metrics take at most two labels');
  }

  get(first: string, second: string): Series {
    if (this.labelNames.length < 2) {
      let series = this.byFirst.get(first) as Series | undefined;
      if (series === undefined) {
        series = this.add(this.labelNames.length === 0 ? {} : { [this.labelNames[0] as string]: first });
        this.byFirst.set(first, series);
      }
      return series;
    }
    let inner = this.byFirst.get(first) as Map<string, Series> | undefined;
    if (inner === undefined) {
      inner = new Map();
      this.byFirst.set(first, inner);
    }
    let series = inner.get(second);
    if (series === undefined) {
      series = this.add({ [this.labelNames[0] as string]: first, [this.labelNames[1] as string]: second });
      inner.set(second, series);
    }
    return series;
  }

  clear(): void {
    this.byFirst.clear();
    this.ordered.length = 0;
  }

  private add(labels: Record<string, string>): Series {
    const series = this.create(labels);
    this.ordered.push(series);
    return series;
  }
}

interface HotMetricConfiguration {
  readonly name: string;
  readonly help: string;
  readonly registers: readonly Registry[];
  /** Label names, at most two; a label fixed for every series (grpc_type="unary") goes in `constantLabels`, first. */
  readonly labelNames?: readonly string[];
  readonly constantLabels?: Readonly<Record<string, string>>;
}

function register(metric: object, registries: readonly Registry[]): void {
  // The registry reads name, type, get/getForPromString and reset: the members prom-client's own metrics have.
  for (const registry of registries) registry.registerMetric(metric as Metric);
}

export class HotHistogram {
  readonly type = 'histogram';
  readonly aggregator = 'sum';
  readonly name: string;
  readonly help: string;
  private readonly bounds: readonly number[];
  private readonly table: SeriesTable<HistogramSeries>;

  constructor(configuration: HotMetricConfiguration & { readonly buckets: readonly number[] }) {
    this.name = configuration.name;
    this.help = configuration.help;
    this.bounds = [...configuration.buckets].sort((a, b) => a - b);
    const constant = configuration.constantLabels ?? {};
    this.table = new SeriesTable(configuration.labelNames ?? [], (labels) => ({ labels: { ...constant, ...labels }, counts: new Float64Array(this.bounds.length), sum: 0, count: 0 }));
    register(this, configuration.registers);
  }

  /** One observation; `first`/`second` are the label values in `labelNames` order. A non-finite value is dropped. */
  observe(value: number, first = '', second = ''): void {
    if (!Number.isFinite(value)) return;
    const series = this.table.get(first, second);
    const bounds = this.bounds;
    for (let index = 0; index < bounds.length; index++) {
      if (value <= (bounds[index] as number)) {
        (series.counts[index] as number) += 1;
        break;
      }
    }
    series.sum += value;
    series.count += 1;
  }

  reset(): void {
    this.table.clear();
  }

  getForPromString(): Promise<Exported> {
    const name = `${this.name}_bucket`;
    const values: ExportedValue[] = [];
    for (const series of this.table.ordered) {
      let cumulative = 0;
      this.bounds.forEach((bound, index) => {
        cumulative += series.counts[index] as number;
        values.push({ labels: { le: bound }, sharedLabels: series.labels, value: cumulative, metricName: name, exemplar: null });
      });
      values.push(
        { labels: { le: '+Inf' }, sharedLabels: series.labels, value: series.count, metricName: name, exemplar: null },
        { labels: {}, sharedLabels: series.labels, value: series.sum, metricName: `${this.name}_sum` },
        { labels: {}, sharedLabels: series.labels, value: series.count, metricName: `${this.name}_count` },
      );
    }
    return Promise.resolve({ name: this.name, help: this.help, type: this.type, values, aggregator: this.aggregator });
  }

  /** prom-client's JSON form: the series' labels merged into each value's. */
  async get(): Promise<Exported> {
    const exported = await this.getForPromString();
    return { ...exported, values: exported.values.map(({ sharedLabels, labels, ...rest }) => ({ ...rest, labels: { ...labels, ...sharedLabels } })) };
  }
}

export class HotCounter {
  readonly type = 'counter';
  readonly aggregator = 'sum';
  readonly name: string;
  readonly help: string;
  private readonly table: SeriesTable<CounterSeries>;

  constructor(configuration: HotMetricConfiguration) {
    this.name = configuration.name;
    this.help = configuration.help;
    const constant = configuration.constantLabels ?? {};
    this.table = new SeriesTable(configuration.labelNames ?? [], (labels) => ({ labels: { ...constant, ...labels }, value: 0 }));
    register(this, configuration.registers);
  }

  /** Adds `by` (1 unless given; a negative or non-finite amount is dropped) to the series of the label values. */
  inc(first = '', second = '', by = 1): void {
    if (!(by >= 0) || !Number.isFinite(by)) return;
    this.table.get(first, second).value += by;
  }

  reset(): void {
    this.table.clear();
  }

  getForPromString(): Promise<Exported> {
    const values = this.table.ordered.map((series) => ({ value: series.value, labels: series.labels }));
    return Promise.resolve({ name: this.name, help: this.help, type: this.type, values, aggregator: this.aggregator });
  }

  get(): Promise<Exported> {
    return this.getForPromString();
  }
}
