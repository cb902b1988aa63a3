/**
 * What a compliance command says when it cannot read a host file: the file and the reason, so a
 * run as a user without access to the members' files says so instead of reporting the evidence as
 * missing, empty or unwitnessed.
 */

/** Whether `error` is the file system refusing access (not the file being absent). */
export function isPermissionError(error: unknown): boolean {
  const code = (error as NodeJS.ErrnoException | undefined)?.code;
  return code === 'EACCES' || code === 'EPERM';
}

/** `cannot read FILE: permission denied (EACCES) ...`, or the error's own code or message. */
export function unreadable(file: string, error: unknown): string {
  const code = (error as NodeJS.ErrnoException | undefined)?.code;
  if (isPermissionError(error)) {
    return `cannot read ${file}: permission denied (${code ?? 'EACCES'}) for uid ${process.getuid?.() ?? '?'}: run as root or as the user that owns the members' files`;
  }
  return `cannot read ${file}: ${code ?? (error instanceof Error ? error.message : String(error))}`;
}
