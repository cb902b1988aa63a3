/**
 * The formats a sink writes: `rampart`, the trail's own canonical line (a receiver can re-verify
 * the chain from it), or `ocsf`, the OCSF API Activity object of `../ocsf.ts`.
 */
import type { AuditEvent } from '../event.js';
import { ocsfApiActivity } from '../ocsf.js';

export const sinkFormats = ['rampart', 'ocsf'] as const;
export type SinkFormat = (typeof sinkFormats)[number];

export function formatEvent(format: SinkFormat, event: AuditEvent, line: string, file: string, productVersion: string): string {
  switch (format) {
    case 'rampart':
      return line;
    case 'ocsf':
      return JSON.stringify(ocsfApiActivity(event, { file, productVersion }));
  }
}
