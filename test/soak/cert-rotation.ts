/**
 * The soak's certificate rotation check: every member's server and peer certificates are renewed
 * while another fault hits (as `rampart rotate` does: new keys and serials, same names, written in
 * place), then:
 * - each member that is up must serve the new certificates on its client and peer ports within
 *   `reloadTimeoutMs` (members poll their certificate files);
 * - once the concurrent fault is healed, every peer connection is cut at the fault proxies, so the
 *   members must reconnect with the new certificates, and every member must answer a linearizable
 *   read (which needs the leader, hence working peer links) within `servingTimeoutMs`.
 * Self-tests (RAMPART_SOAK_SELF_TEST): stranger-certs signs the renewed certificates with a CA
 * nobody trusts (members keep serving their old ones, which the reload check reports);
 * no-reconnect keeps one member cut off after the cut (the serving check reports it).
 */
import type { SoakPki } from './secure-cluster.js';

const reloadTimeoutMs = 20_000;
export const servingTimeoutMs = 45_000;
const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

export interface RotatedMember {
  readonly name: string;
  readonly port: number;
  readonly peerPort: number;
  /** Running and not paused: it should answer. */
  up(): boolean;
  /** When (performance.now()) its running process started serving: a member (re)started during the wait gets its own window. */
  upSince(): number;
}

const normalized = (serial: string): string => serial.toUpperCase().replace(/^0+/, '');

/** Waits until the members serve `serials`; returns a problem for each that still does not. */
export async function awaitReload(pki: SoakPki, serials: ReadonlyMap<string, { server: string; peer: string }>, members: readonly RotatedMember[]): Promise<string[]> {
  const began = performance.now();
  // A member that was down (killed, paused, stopped on a full disk) reads the new files when it
  // restarts: it has reloadTimeoutMs from then, as the others have from the renewal.
  const deadlineOf = (member: RotatedMember): number => Math.max(began, member.upSince()) + reloadTimeoutMs;
  const pending = new Set(members.map((member) => member.name));
  const last = new Map<string, string>();
  const waiting = (): boolean => members.some((member) => pending.has(member.name) && (!member.up() ? performance.now() < began + reloadTimeoutMs : performance.now() < deadlineOf(member)));
  while (pending.size > 0 && waiting()) {
    for (const member of members) {
      if (!pending.has(member.name)) continue;
      if (!member.up()) continue;
      const expected = serials.get(member.name);
      if (expected === undefined) continue;
      const server = await pki.servedSerial(member.port, 'root');
      // Any member's peer certificate opens a peer port; the member's own is at hand.
      const peer = await pki.servedSerial(member.peerPort, { member: member.name });
      last.set(member.name, `client port serves ${server ?? 'nothing'}, peer port ${peer ?? 'nothing'}; renewed ${expected.server} and ${expected.peer}`);
      if (server !== undefined && peer !== undefined && normalized(server) === normalized(expected.server) && normalized(peer) === normalized(expected.peer)) pending.delete(member.name);
    }
    if (pending.size > 0) await sleep(500);
  }
  // A member down all along (killed, paused) is not asked: it reads the new files when it restarts.
  return [...pending].filter((name) => members.some((member) => member.name === name && member.up() && performance.now() >= deadlineOf(member))).map((name) => `cert rotation: ${name} did not serve its renewed certificates within ${reloadTimeoutMs / 1000} s (${last.get(name) ?? 'never answered'})`);
}
