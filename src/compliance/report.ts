/**
 * Compliance results for people and machines: a table (default), JSON, and JUnit XML (one test
 * case per control, a failure per failed control, skipped for skip; what CI systems such as
 * GitLab, Jenkins and GitHub test reporters read as a gate).
 */
import type { ControlResult, ControlStatus } from './control.js';

export type ReportFormat = 'table' | 'json' | 'junit';

export const reportFormats: readonly ReportFormat[] = ['table', 'json', 'junit'];

const statusLabel: Record<ControlStatus, string> = { pass: 'PASS', fail: 'FAIL', warn: 'WARN', skip: 'SKIP' };

function counts(results: readonly ControlResult[]): Record<ControlStatus, number> {
  const tally: Record<ControlStatus, number> = { pass: 0, fail: 0, warn: 0, skip: 0 };
  for (const result of results) tally[result.status] += 1;
  return tally;
}

export function summaryLine(results: readonly ControlResult[]): string {
  const tally = counts(results);
  return `${results.length} controls: ${tally.pass} pass, ${tally.fail} fail, ${tally.warn} warn, ${tally.skip} skip`;
}

/** One block per control: status, id and title, then its evidence, and the fix unless it passed. */
export function formatTable(results: readonly ControlResult[]): string {
  const idWidth = Math.max(...results.map((result) => result.id.length), 2);
  const lines: string[] = [];
  for (const result of results) {
    lines.push(`${statusLabel[result.status]}  ${result.id.padEnd(idWidth)}  ${result.title}`);
    for (const evidence of result.evidence) lines.push(`      ${' '.repeat(idWidth)}  - ${evidence}`);
    if (result.status === 'fail' || result.status === 'warn') lines.push(`      ${' '.repeat(idWidth)}  fix: ${result.fix}`);
  }
  lines.push('', summaryLine(results));
  return `${lines.join('\n')}\n`;
}

export function formatJson(results: readonly ControlResult[], checkedAt: string): string {
  return `${JSON.stringify({ checkedAt, summary: counts(results), controls: results }, null, 2)}\n`;
}

/** Text as XML character data or attribute value: markup characters escaped, characters XML 1.0 forbids dropped. */
export function escapeXml(text: string): string {
  // eslint-disable-next-line no-control-regex
  return text.replace(/[\u0000-\u0008\u000b\u000c\u000e-\u001f\ufffe\uffff]/g, '').replace(/[&<>"']/g, (character) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&apos;' })[character] as string);
}

export function formatJunit(results: readonly ControlResult[], checkedAt: string): string {
  const tally = counts(results);
  const lines = [
    '<?xml version="1.0" encoding="UTF-8"?>',
    `<testsuites name="rampart compliance check" tests="${results.length}" failures="${tally.fail}" skipped="${tally.skip}">`,
    `  <testsuite name="rampart compliance" tests="${results.length}" failures="${tally.fail}" errors="0" skipped="${tally.skip}" timestamp="${escapeXml(checkedAt)}">`,
  ];
  for (const result of results) {
    const body = escapeXml(`${result.evidence.join('\n')}${result.status === 'pass' ? '' : `\nfix: ${result.fix}`}`);
    lines.push(`    <testcase classname="${escapeXml(result.id.startsWith('CIS') ? 'cis-kubernetes-etcd' : 'rampart')}" name="${escapeXml(`${result.id} ${result.title}`)}">`);
    if (result.status === 'fail') lines.push(`      <failure message="${escapeXml(`${result.id} failed: ${result.title}`)}" type="${escapeXml(result.id)}">${body}</failure>`);
    else if (result.status === 'skip') lines.push(`      <skipped message="${escapeXml(result.evidence[0] ?? '')}"/>`);
    lines.push(`      <system-out>${body}</system-out>`, '    </testcase>');
  }
  lines.push('  </testsuite>', '</testsuites>');
  return `${lines.join('\n')}\n`;
}

export function formatReport(results: readonly ControlResult[], format: ReportFormat, checkedAt: string): string {
  switch (format) {
    case 'table': return formatTable(results);
    case 'json': return formatJson(results, checkedAt);
    case 'junit': return formatJunit(results, checkedAt);
  }
}
