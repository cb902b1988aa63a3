/**
 * Writes an evidence bundle from its files: hashes each, writes the manifest and its signature
 * first, then the files in path order, as one ustar archive. The archive is written beside its
 * name and renamed into place once complete, never over an existing file.
 */
import { X509Certificate, createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { rename, rm, stat } from 'node:fs/promises';
import { fingerprintOf } from './certificates.js';
import { encodeManifest, encodeSignature, manifestFormat, manifestName, sha256Hex, signManifest, signatureName, type ManifestFile } from './manifest.js';
import { TarWriter } from './tar.js';

export type BundleFile = { readonly path: string; readonly content: string } | { readonly path: string; readonly source: string };

export interface BundleWrite {
  readonly out: string;
  readonly created: Date;
  readonly window: { readonly from: string; readonly to: string };
  readonly caPem: string;
  readonly signing: { readonly certificatePem: string; readonly keyPem: string };
  readonly files: readonly BundleFile[];
}

async function sha256OfFile(file: string): Promise<{ sha256: string; bytes: number }> {
  const hash = createHash('sha256');
  let bytes = 0;
  for await (const chunk of createReadStream(file) as AsyncIterable<Buffer>) {
    hash.update(chunk);
    bytes += chunk.length;
  }
  return { sha256: hash.digest('hex'), bytes };
}

export async function writeBundle(bundle: BundleWrite): Promise<{ files: number; caFingerprint: string }> {
  if (await stat(bundle.out).then(() => true, () => false)) throw new Error(`${bundle.out} exists; a bundle is never written over a file`);
  const caFingerprint = fingerprintOf(new X509Certificate(bundle.caPem).raw);
  const ordered = [...bundle.files].sort((a, b) => a.path.localeCompare(b.path));
  const listed: ManifestFile[] = [];
  for (const file of ordered) {
    listed.push('content' in file ? { path: file.path, bytes: Buffer.byteLength(file.content), sha256: sha256Hex(file.content) } : { path: file.path, ...(await sha256OfFile(file.source)) });
  }
  const manifestText = encodeManifest({ format: manifestFormat, created: bundle.created.toISOString(), window: bundle.window, caFingerprint, files: listed });
  const signature = signManifest(Buffer.from(manifestText, 'utf8'), bundle.signing.certificatePem, bundle.signing.keyPem, bundle.caPem, bundle.created.getTime());
  const partial = `${bundle.out}.partial`;
  await rm(partial, { force: true });
  const writer = await TarWriter.create(partial, bundle.created);
  try {
    await writer.addBuffer(manifestName, manifestText);
    await writer.addBuffer(signatureName, encodeSignature(signature));
    for (const [index, file] of ordered.entries()) {
      if ('content' in file) await writer.addBuffer(file.path, file.content);
      else await writer.addFile(file.path, file.source);
      // A source that changed between hashing and archiving would make a bundle that never verifies.
      if (!('content' in file) && (await sha256OfFile(file.source)).sha256 !== listed[index]?.sha256) throw new Error(`${file.source} changed while the bundle was written`);
    }
    await writer.finish();
  } catch (error) {
    await writer.abandon();
    await rm(partial, { force: true });
    throw error;
  }
  await rename(partial, bundle.out);
  return { files: ordered.length + 2, caFingerprint };
}
