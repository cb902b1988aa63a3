/**
 * The cluster's audit checkpoints as exported (the Checkpoints RPC's lines, one JSON each:
 * checkpoints and signer certificates), read back strictly: a line that is neither is a problem.
 */
import { decodeCheckpoint, decodeSigner, type CheckpointSigner, type TrailCheckpoint } from '../audit/checkpoint.js';

export function parseCheckpointExport(text: string): { checkpoints: TrailCheckpoint[]; signers: CheckpointSigner[]; problem?: string } {
  const checkpoints: TrailCheckpoint[] = [];
  const signers: CheckpointSigner[] = [];
  const lines = text.split('\n');
  if (lines.at(-1) === '') lines.pop();
  for (const [index, line] of lines.entries()) {
    const checkpoint = decodeCheckpoint(line);
    if (typeof checkpoint !== 'string') {
      checkpoints.push(checkpoint);
      continue;
    }
    const signer = decodeSigner(line);
    if (typeof signer === 'string') return { checkpoints, signers, problem: `line ${index + 1}: ${checkpoint}` };
    signers.push(signer);
  }
  return { checkpoints, signers };
}
