/**
 * A cluster that cannot be reached, said plainly. grpc-js says it as "14 UNAVAILABLE: No connection
 * established. Last error: Error: connect ECONNREFUSED 127.0.0.1:2379. Resolution note: " (or
 * "4 DEADLINE_EXCEEDED: Deadline exceeded after 10.002s,LB pick: 0.001s,remote_addr=…"): a user
 * wants where it tried and why, in words: "cannot reach the cluster at https://127.0.0.1:2379:
 * connection refused (ECONNREFUSED)". Used by every line a command prints about a failed call
 * (`compliance check` SKIP evidence in every format, error lines).
 */
const noConnection = /^(?:\d+ UNAVAILABLE: )?No connection established\. Last error: (?:Error: )?(.*?)\.?(?: Resolution note:.*)?$/s;
const unavailableCode = /^14 UNAVAILABLE: (.*)$/s;
const deadlineExceeded = /^(?:\d+ DEADLINE_EXCEEDED: )?Deadline exceeded/;

/** Socket error codes in words. */
const socketReasons: Readonly<Record<string, string>> = {
  ECONNREFUSED: 'connection refused',
  ECONNRESET: 'connection reset',
  ETIMEDOUT: 'connection timed out',
  EHOSTUNREACH: 'host unreachable',
  ENETUNREACH: 'network unreachable',
  ENOTFOUND: 'no such host',
  EAI_AGAIN: 'host name lookup failed',
};

/** A socket error (Node's `connect ECONNREFUSED 127.0.0.1:2381`) in words, its code kept. */
export function socketErrorText(error: NodeJS.ErrnoException): string {
  const words = error.code === undefined ? undefined : socketReasons[error.code];
  return words === undefined ? error.message : `${words} (${error.code ?? ''})`;
}

/** What grpc-js says after "Last error:" when it could not connect, or undefined for any other message. */
export function noConnectionDetail(message: string): string | undefined {
  return noConnection.exec(message)?.[1];
}

/** The short reason a call could not reach the cluster, or undefined when the message says something else. */
export function unreachableReason(message: string): string | undefined {
  const detail = noConnectionDetail(message);
  if (detail !== undefined) {
    const code = /\b(E[A-Z_]+)\b/.exec(detail)?.[1];
    const words = code === undefined ? undefined : socketReasons[code];
    return words === undefined ? detail : `${words} (${code})`;
  }
  if (deadlineExceeded.test(message)) return 'no answer in time (DEADLINE_EXCEEDED)';
  const unavailable = unavailableCode.exec(message)?.[1];
  return unavailable === undefined ? undefined : unavailable.trim();
}

/**
 * `what failed: why`, or — when the call could not reach the cluster — "cannot reach the cluster at
 * ENDPOINTS: reason", whichever call it was (each would say the same).
 */
export function callFailure(what: string, error: unknown, endpoints: string): string {
  const message = error instanceof Error ? error.message : String(error);
  const reason = unreachableReason(message);
  return reason === undefined ? `${what} failed: ${message}` : `cannot reach the cluster at ${endpoints}: ${reason}`;
}
