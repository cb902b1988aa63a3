/**
 * The one line a CLI command prints when it fails. Most errors are ours and already say what went
 * wrong; grpc-js's "cannot connect" is not ("No connection established. Last error: Error: connect
 * ECONNREFUSED 127.0.0.1:2379. Resolution note: "), and it is what a new user meets first, with
 * the cluster down or the wrong --dir or --endpoints: say that, and what to do.
 */
import { noConnectionDetail } from './unreachable.js';

/** Node's file errors ("ENOENT: no such file or directory, open 'x'") name the file last; say it first. */
function fileErrorMessage(error: Error): string | undefined {
  const { code, path: file } = error as Error & { code?: unknown; path?: unknown };
  if (typeof code !== 'string' || typeof file !== 'string') return undefined;
  const reason = /^[A-Z]+: (.*?), \w+ '/.exec(error.message)?.[1] ?? error.message;
  return `${file}: ${reason} (${code})`;
}

export function cliErrorMessage(error: unknown): string {
  const fileMessage = error instanceof Error ? fileErrorMessage(error) : undefined;
  if (fileMessage !== undefined) return fileMessage;
  const message = error instanceof Error ? error.message : String(error);
  const detail = noConnectionDetail(message);
  if (detail === undefined) return message;
  return `cannot reach the cluster (${detail}): is it running? (\`rampart up\` starts a local one; check --dir or --endpoints)`;
}
