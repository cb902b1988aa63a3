/**
 * `rampart compliance check`: every control, in a fixed order (the CIS etcd controls, then
 * Rampart's own), evaluated from gathered facts. The entry point of the checks; gathering lives
 * in the CLI (`src/cli/compliance-facts.ts`), formats in `report.ts`.
 */
import { cisControls } from './cis-controls.js';
import type { ControlResult } from './control.js';
import type { ComplianceFacts } from './facts.js';
import { rampartControls } from './rampart-controls.js';

export const expiryWarningDaysDefault = 30;

export function evaluateControls(facts: ComplianceFacts): ControlResult[] {
  return [...cisControls(facts), ...rampartControls(facts)];
}
