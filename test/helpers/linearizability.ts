/**
 * A linearizability checker for a key-value history (Wing & Gong's search with Lowe's memoization,
 * as in Porcupine). Linearizability is compositional, so each key is checked on its own.
 *
 * An operation whose outcome the client never learned (an error or time-out on a put) may have
 * taken effect at any time after its call, or never: its return is at infinity.
 */
export interface Operation {
  readonly key: string;
  readonly kind: 'put' | 'get';
  /** put: the value written; get: the value read (null: absent). */
  readonly value: string | null;
  readonly callMs: number;
  /** Infinity when the outcome is unknown. */
  readonly returnMs: number;
}

interface Node {
  readonly operation: number;
  readonly isCall: boolean;
  readonly time: number;
  match: Node | undefined;
  previous: Node | undefined;
  next: Node | undefined;
}

export interface CheckResult {
  readonly ok: boolean;
  readonly keys: number;
  readonly operations: number;
  /** The key whose history has no linearization, if any. */
  readonly failedKey?: string;
  /** A key whose search ran out of steps before deciding (reported, never taken as a pass). */
  readonly undecidedKey?: string;
}

/** Search steps per key before giving up as undecided: a bound, so a check can never hang a run. */
export const searchStepsPerKeyMax = 20_000_000;

export function checkHistory(history: readonly Operation[], stepsMax = searchStepsPerKeyMax): CheckResult {
  const byKey = new Map<string, Operation[]>();
  for (const operation of history) {
    const operations = byKey.get(operation.key);
    if (operations === undefined) byKey.set(operation.key, [operation]);
    else operations.push(operation);
  }
  for (const [key, operations] of byKey) {
    const verdict = checkKey(prune(operations), stepsMax);
    if (verdict === 'undecided') return { ok: false, keys: byKey.size, operations: history.length, undecidedKey: key };
    if (!verdict) return { ok: false, keys: byKey.size, operations: history.length, failedKey: key };
  }
  return { ok: true, keys: byKey.size, operations: history.length };
}

/**
 * Narrows one key's history without changing its verdict (values written are unique):
 * - a read that failed tells nothing;
 * - a put with an unknown outcome whose value no read returned may be taken to have never
 *   happened: placed anywhere, it only sets a value no later read asks for;
 * - a put with an unknown outcome whose value a read returned took effect before that read
 *   returned: its return is bounded by the earliest such read.
 * Without this, every unknown put stays concurrent with everything after it and the search is
 * exponential in their number (a soak's fault windows leave dozens per key).
 */
function prune(operations: readonly Operation[]): Operation[] {
  const firstReadReturn = new Map<string | null, number>();
  for (const operation of operations) {
    if (operation.kind !== 'get' || !Number.isFinite(operation.returnMs)) continue;
    firstReadReturn.set(operation.value, Math.min(firstReadReturn.get(operation.value) ?? Infinity, operation.returnMs));
  }
  const kept: Operation[] = [];
  for (const operation of operations) {
    if (Number.isFinite(operation.returnMs)) {
      kept.push(operation);
    } else if (operation.kind === 'put') {
      const readBy = firstReadReturn.get(operation.value);
      if (readBy === undefined) continue;
      // A read that returned before the put was called keeps it unbounded: the search rejects it.
      kept.push(readBy >= operation.callMs ? { ...operation, returnMs: readBy } : operation);
    }
  }
  return kept;
}

function checkKey(operations: readonly Operation[], stepsMax: number): boolean | 'undecided' {
  const events: Node[] = [];
  operations.forEach((operation, index) => {
    const call: Node = { operation: index, isCall: true, time: operation.callMs, match: undefined, previous: undefined, next: undefined };
    const done: Node = { operation: index, isCall: false, time: operation.returnMs, match: undefined, previous: undefined, next: undefined };
    call.match = done;
    events.push(call, done);
  });
  // By time; at equal times calls first, which only widens what counts as concurrent.
  events.sort((a, b) => a.time - b.time || (a.isCall === b.isCall ? 0 : a.isCall ? -1 : 1));
  const head: Node = { operation: -1, isCall: false, time: -Infinity, match: undefined, previous: undefined, next: undefined };
  let previous = head;
  for (const event of events) {
    previous.next = event;
    event.previous = previous;
    previous = event;
  }

  const lift = (call: Node): void => {
    const done = call.match as Node;
    (call.previous as Node).next = call.next;
    if (call.next !== undefined) call.next.previous = call.previous;
    (done.previous as Node).next = done.next;
    if (done.next !== undefined) done.next.previous = done.previous;
  };
  const unlift = (call: Node): void => {
    const done = call.match as Node;
    (done.previous as Node).next = done;
    if (done.next !== undefined) done.next.previous = done;
    (call.previous as Node).next = call;
    if (call.next !== undefined) call.next.previous = call;
  };

  let state: string | null = null;
  const linearized = new Uint8Array(operations.length);
  const seen = new Set<string>();
  const stack: { call: Node; state: string | null }[] = [];
  let entry = head.next;
  let steps = 0;
  while (head.next !== undefined) {
    if (++steps > stepsMax) return 'undecided';
    if (entry === undefined) return false;
    const operation = operations[entry.operation] as Operation;
    if (entry.isCall) {
      const accepted = operation.kind === 'put' || operation.value === state;
      const nextState: string | null = operation.kind === 'put' ? operation.value : state;
      if (accepted) {
        linearized[entry.operation] = 1;
        const signature = `${Buffer.from(linearized).toString('base64')}|${nextState}`;
        if (!seen.has(signature)) {
          seen.add(signature);
          stack.push({ call: entry, state });
          state = nextState;
          lift(entry);
          entry = head.next;
          continue;
        }
        linearized[entry.operation] = 0;
      }
      entry = entry.next;
    } else {
      if (!Number.isFinite(entry.time)) {
        // Every operation with a known outcome is placed; the rest may never have happened.
        return true;
      }
      const top = stack.pop();
      if (top === undefined) return false;
      linearized[top.call.operation] = 0;
      state = top.state;
      unlift(top.call);
      entry = top.call.next;
    }
  }
  return true;
}
