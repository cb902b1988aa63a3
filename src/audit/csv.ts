/**
 * One CSV cell of an audit export, safe to open in a spreadsheet.
 *
 * Spreadsheets run a cell as a formula when it starts with `=`, `+`, `-` or `@`, also after a tab
 * or carriage return (`\t=…`, `\r=…`), and some treat `|` as a DDE command separator. Any such cell
 * is prefixed with `'` so it reads as text (the OWASP CSV injection advice); cells with quotes,
 * commas, line breaks or the prefix itself are quoted.
 */
const formulaStart = /^[\s]*[=+\-@|]|^[\t\r]/;

export function csvCell(value: unknown): string {
  const raw = Array.isArray(value) ? value.join(' ') : String(value ?? '');
  const text = formulaStart.test(raw) || raw.includes('|') ? `'${raw}` : raw;
  return /[",\n\r\t']/.test(text) ? `"${text.replace(/"/g, '""')}"` : text;
}
