/**
 * `index.html` of the evidence bundle: one self-contained page for an auditor who will not read
 * JSON — the window, the compliance results, events per day (a stacked bar chart), the busiest
 * users, denials, administrative actions and failed logins. Charts are inline SVG; the page loads
 * nothing (no script, no CDN, no font; its Content-Security-Policy forbids any load), and every
 * string that came from an event (users, keys, addresses, details: caller-controlled) is escaped.
 */
import type { AuditEvent } from '../audit/event.js';
import type { ControlResult } from './control.js';
import type { EvidenceSummary } from './evidence-events.js';

/** Text for HTML content or a quoted attribute. */
export function escapeHtml(text: string): string {
  return text.replace(/[&<>"']/g, (character) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[character] as string);
}

const h = escapeHtml;

export interface SummaryPage {
  readonly created: string;
  readonly window: { readonly from: string; readonly to: string };
  readonly caFingerprint: string;
  readonly controls: readonly ControlResult[];
  readonly trails: readonly { readonly member: string; readonly memberId: string; readonly events: number; readonly inWindow: number; readonly checkpointsMatched: number }[];
  readonly summary: EvidenceSummary;
}

const colours = { allowed: '#4a7c59', denied: '#b03a2e', failed: '#d68910' } as const;

function dailyChart(summary: EvidenceSummary): string {
  const days = [...summary.days.keys()].sort();
  if (days.length === 0) return '<p>No events in the window.</p>';
  const width = 760;
  const height = 220;
  const left = 50;
  const bottom = 40;
  const plotWidth = width - left - 10;
  const plotHeight = height - bottom - 10;
  const max = Math.max(...days.map((day) => {
    const counts = summary.days.get(day);
    return counts === undefined ? 0 : counts.allowed + counts.denied + counts.failed;
  }), 1);
  const slot = plotWidth / days.length;
  const barWidth = Math.max(1, slot * 0.8);
  const parts: string[] = [];
  days.forEach((day, index) => {
    const counts = summary.days.get(day) ?? { allowed: 0, denied: 0, failed: 0 };
    let y = 10 + plotHeight;
    for (const outcome of ['allowed', 'denied', 'failed'] as const) {
      const barHeight = (counts[outcome] / max) * plotHeight;
      if (barHeight <= 0) continue;
      y -= barHeight;
      parts.push(`<rect x="${(left + index * slot).toFixed(1)}" y="${y.toFixed(1)}" width="${barWidth.toFixed(1)}" height="${barHeight.toFixed(1)}" fill="${colours[outcome]}"><title>${h(day)}: ${counts[outcome]} ${outcome}</title></rect>`);
    }
    if (days.length <= 31 || index % Math.ceil(days.length / 15) === 0) {
      parts.push(`<text x="${(left + index * slot + barWidth / 2).toFixed(1)}" y="${height - bottom + 14}" font-size="9" text-anchor="end" transform="rotate(-45 ${(left + index * slot + barWidth / 2).toFixed(1)} ${height - bottom + 14})">${h(day.slice(5))}</text>`);
    }
  });
  const axis = `<line x1="${left}" y1="${10 + plotHeight}" x2="${width - 10}" y2="${10 + plotHeight}" stroke="#333"/><text x="${left - 4}" y="14" font-size="10" text-anchor="end">${max}</text><text x="${left - 4}" y="${10 + plotHeight}" font-size="10" text-anchor="end">0</text>`;
  const legend = (['allowed', 'denied', 'failed'] as const).map((outcome, index) => `<rect x="${left + index * 90}" y="${height - 12}" width="10" height="10" fill="${colours[outcome]}"/><text x="${left + index * 90 + 14}" y="${height - 3}" font-size="11">${outcome}</text>`).join('');
  return `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" role="img" aria-label="events per day">${axis}${parts.join('')}${legend}</svg>`;
}

function barList(title: string, counts: ReadonlyMap<string, number>, limit: number): string {
  const top = [...counts].sort((a, b) => b[1] - a[1] || a[0].localeCompare(b[0])).slice(0, limit);
  if (top.length === 0) return '';
  const max = Math.max(...top.map(([, value]) => value), 1);
  const rowHeight = 18;
  const height = top.length * rowHeight + 4;
  const bars = top.map(([name, value], index) => {
    const y = index * rowHeight + 2;
    const barWidth = (value / max) * 420;
    return `<text x="195" y="${y + 12}" font-size="11" text-anchor="end">${h(name.length > 40 ? `${name.slice(0, 39)}…` : name)}</text><rect x="200" y="${y}" width="${barWidth.toFixed(1)}" height="${rowHeight - 4}" fill="#2e5e8c"/><text x="${(204 + barWidth).toFixed(1)}" y="${y + 12}" font-size="11">${value}</text>`;
  }).join('');
  return `<h3>${h(title)}</h3><svg xmlns="http://www.w3.org/2000/svg" width="760" height="${height}" role="img" aria-label="${h(title)}">${bars}</svg>`;
}

function eventTable(title: string, total: number, events: readonly AuditEvent[]): string {
  const shown = events.length < total ? ` (the latest ${events.length} of ${total})` : '';
  if (total === 0) return `<h2>${h(title)}: none</h2>`;
  const rows = [...events].reverse().map((event) => `<tr><td>${h(event.time)}</td><td>${h(event.user ?? '')}</td><td>${h(event.action)}</td><td>${h(event.outcome)}</td><td>${h(event.source ?? '')}</td><td>${h((event.targets ?? []).join(' '))}</td><td>${h(event.detail ?? '')}</td><td>${h(event.member)}#${event.seq}</td></tr>`).join('\n');
  return `<h2>${h(title)}: ${total}${h(shown)}</h2>\n<table><tr><th>time (UTC)</th><th>user</th><th>event</th><th>outcome</th><th>origin</th><th>affected data</th><th>detail</th><th>member#seq</th></tr>\n${rows}\n</table>`;
}

export function renderSummary(page: SummaryPage): string {
  const { summary } = page;
  const failing = page.controls.filter((control) => control.status !== 'pass');
  const tally = (status: string): number => page.controls.filter((control) => control.status === status).length;
  const controls = page.controls.map((control) => `<tr class="${h(control.status)}"><td>${h(control.status.toUpperCase())}</td><td>${h(control.id)}</td><td>${h(control.title)}</td><td>${control.evidence.map(h).join('<br>')}</td></tr>`).join('\n');
  const trails = page.trails.map((trail) => `<tr><td>${h(trail.member)}</td><td>${h(trail.memberId)}</td><td>${trail.events}</td><td>${trail.inWindow}</td><td>${trail.checkpointsMatched}</td></tr>`).join('\n');
  return `<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'">
<title>Rampart evidence ${h(page.window.from)} to ${h(page.window.to)}</title>
<style>
body { font-family: sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin-bottom: 1.5em; font-size: 13px; }
td, th { border: 1px solid #ccc; padding: 3px 6px; text-align: left; vertical-align: top; }
tr.fail td:first-child { color: #b03a2e; font-weight: bold; }
tr.warn td:first-child { color: #d68910; font-weight: bold; }
tr.pass td:first-child { color: #4a7c59; }
</style>
</head>
<body>
<h1>Rampart audit evidence</h1>
<p>Events from <b>${h(page.window.from)}</b> to <b>${h(page.window.to)}</b> (UTC), bundle made ${h(page.created)}.
Cluster CA SHA-256 fingerprint: <code>${h(page.caFingerprint)}</code>. Check this bundle with
<code>rampart compliance verify FILE --cacert ca.crt</code> against the CA you hold (not only the one inside it).</p>
<h2>Totals</h2>
<table>
<tr><th>events</th><td>${summary.total}</td></tr>
<tr><th>denied</th><td>${summary.deniedTotal}</td></tr>
<tr><th>administrative actions</th><td>${summary.administrativeTotal}</td></tr>
<tr><th>failed logins</th><td>${summary.failedLoginTotal}</td></tr>
</table>
<h2>Events per day</h2>
${dailyChart(summary)}
${barList('Events by user', summary.users, 20)}
${barList('Events by type', summary.actions, 20)}
<h2>Audit trails included</h2>
<table><tr><th>member</th><th>member id</th><th>events verified</th><th>in the window</th><th>checkpoints matched</th></tr>
${trails}
</table>
${eventTable('Denials', summary.deniedTotal, summary.denials)}
${eventTable('Administrative actions', summary.administrativeTotal, summary.administrative)}
${eventTable('Failed logins', summary.failedLoginTotal, summary.failedLogins)}
<h2>Compliance check: ${tally('pass')} pass, ${tally('fail')} fail, ${tally('warn')} warn, ${tally('skip')} skip</h2>
${failing.length === 0 ? '<p>Every control passed.</p>' : ''}
<table><tr><th>status</th><th>control</th><th>title</th><th>evidence</th></tr>
${controls}
</table>
</body>
</html>
`;
}
