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
}

export function checkHistory(history: readonly Operation[]): CheckResult {
  const byKey = new Map<string, Operation[]>();
  for (const operation of history) {
    // A read that failed tells nothing.
    if (operation.kind === 'get' && !Number.isFinite(operation.returnMs)) continue;
    byKey.set(operation.key, [...(byKey.get(operation.key) ?? []), operation]);
  }
  for (const [key, operations] of byKey) {
    if (!checkKey(operations)) return { ok: false, keys: byKey.size, operations: history.length, failedKey: key };
  }
  return { ok: true, keys: byKey.size, operations: history.length };
}

function checkKey(operations: readonly Operation[]): boolean {
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
  while (head.next !== undefined) {
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
