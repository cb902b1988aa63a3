/**
 * hot-metrics.ts' histograms and counters are scraped exactly as prom-client's own: the same
 * observations fed to both give byte-identical /metrics text and equal JSON, also across
 * interleaved series (first-seen order), values on, between and past the bucket bounds, label
 * values the text format must escape, a constant label, and a reset.
 */
import { Counter, Histogram, Registry, exponentialBuckets } from 'prom-client';
import { describe, expect, it } from 'vitest';
import { HotCounter, HotHistogram } from '../../src/server/hot-metrics.js';

const stageBuckets = exponentialBuckets(0.0001, 2, 16);
const values = [0, 0.0001, 0.00015, 0.0002, 0.003, 0.0064, 1.2, 3.2768, 3.3, 1e9, 0.05, 0.1 + 0.2];

describe('hot metrics', () => {
  it('scrape as prom-client\'s Histogram and Counter for the same observations', async () => {
    const expected = new Registry();
    const actual = new Registry();
    const plain = { old: new Histogram({ name: 'plain_seconds', help: 'Unlabelled.', buckets: [0.001, 0.01, 0.1], registers: [expected] }), hot: new HotHistogram({ name: 'plain_seconds', help: 'Unlabelled.', buckets: [0.001, 0.01, 0.1], registers: [actual] }) };
    const stage = { old: new Histogram({ name: 'stage_seconds', help: 'One label "quoted" \\ and\nnew line.', labelNames: ['stage'], buckets: stageBuckets, registers: [expected] }), hot: new HotHistogram({ name: 'stage_seconds', help: 'One label "quoted" \\ and\nnew line.', labelNames: ['stage'], buckets: stageBuckets, registers: [actual] }) };
    const handling = { old: new Histogram({ name: 'handling_seconds', help: 'A constant label and one more.', labelNames: ['grpc_type', 'grpc_method'], registers: [expected] }), hot: new HotHistogram({ name: 'handling_seconds', help: 'A constant label and one more.', constantLabels: { grpc_type: 'unary' }, labelNames: ['grpc_method'], buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10], registers: [actual] }) };
    const handled = { old: new Counter({ name: 'handled_total', help: 'A constant label and two more.', labelNames: ['grpc_type', 'grpc_method', 'grpc_code'], registers: [expected] }), hot: new HotCounter({ name: 'handled_total', help: 'A constant label and two more.', constantLabels: { grpc_type: 'unary' }, labelNames: ['grpc_method', 'grpc_code'], registers: [actual] }) };
    new Histogram({ name: 'empty_seconds', help: 'Never observed.', labelNames: ['To'], registers: [expected] });
    new HotHistogram({ name: 'empty_seconds', help: 'Never observed.', labelNames: ['To'], buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10], registers: [actual] });

    const stages = ['commit', 'a"b\\c\nd', 'authorize', 'commit', 'answer', 'authorize'];
    const methods = ['Put', 'Range', 'Put', 'Txn'];
    const codes = ['OK', 'OK', 'NotFound', 'OK', 'ResourceExhausted'];
    values.forEach((value, index) => {
      plain.old.observe(value);
      plain.hot.observe(value);
      const stageName = stages[index % stages.length] as string;
      stage.old.observe({ stage: stageName }, value);
      stage.hot.observe(value, stageName);
      const method = methods[index % methods.length] as string;
      handling.old.observe({ grpc_type: 'unary', grpc_method: method }, value);
      handling.hot.observe(value, method);
      const code = codes[index % codes.length] as string;
      handled.old.inc({ grpc_type: 'unary', grpc_method: method, grpc_code: code });
      handled.hot.inc(method, code);
    });
    handled.old.inc({ grpc_type: 'unary', grpc_method: 'Put', grpc_code: 'OK' }, 2.5);
    handled.hot.inc('Put', 'OK', 2.5);

    const text = await actual.metrics();
    expect(text).toContain('stage_seconds_bucket{le="0.0001",stage="commit"} 1');
    expect(text).toContain('handled_total{grpc_type="unary",grpc_method="Put",grpc_code="OK"} 6.5');
    expect(text).toBe(await expected.metrics());
    expect(await actual.getMetricsAsJSON()).toEqual(await expected.getMetricsAsJSON());

    for (const pair of [plain, stage, handling, handled]) {
      pair.old.reset();
      pair.hot.reset();
    }
    stage.old.observe({ stage: 'answer' }, 0.02);
    stage.hot.observe(0.02, 'answer');
    expect(await actual.metrics()).toBe(await expected.metrics());
  });
});
