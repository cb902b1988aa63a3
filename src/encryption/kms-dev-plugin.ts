/**
 * `rampart kms dev-plugin --socket PATH`: a KMS v2 plugin for development, tests and demos. Its
 * keys live in a JSON file (mode 0600): {"current": "<key id>", "keys": {"<key id>": "<base64 32
 * bytes>"}}; it is read again on every call, so rotating (`rotateDevKey`, or editing the file)
 * takes effect at once and Status reports the new key_id. Not for production: the keys sit in a
 * plain file, which is what a real KMS avoids.
 *
 * Ciphertext: 12-byte random nonce, AES-256-GCM ciphertext, 16-byte tag; additional data: the key id.
 */
import { createCipheriv, createDecipheriv, randomBytes } from 'node:crypto';
import { readFile, rename, rm, writeFile } from 'node:fs/promises';
import * as grpc from '@grpc/grpc-js';
import { kmsService } from './kms.js';

interface DevKeys {
  current: string;
  keys: Record<string, string>;
}

async function readKeys(file: string): Promise<DevKeys> {
  const keys = JSON.parse(await readFile(file, 'utf8')) as DevKeys;
  if (typeof keys.current !== 'string' || keys.keys[keys.current] === undefined) throw new Error(`${file}: no current key`);
  return keys;
}

async function writeKeys(file: string, keys: DevKeys): Promise<void> {
  await writeFile(`${file}.tmp`, JSON.stringify(keys, null, 2) + '\n', { mode: 0o600 });
  await rename(`${file}.tmp`, file);
}

/** Adds a new key and makes it current; returns its id. Creates the file when missing. */
export async function rotateDevKey(file: string): Promise<string> {
  const keys = await readKeys(file).catch((): DevKeys => ({ current: '', keys: {} }));
  const id = `dev-key-${Object.keys(keys.keys).length + 1}-${randomBytes(3).toString('hex')}`;
  keys.keys[id] = randomBytes(32).toString('base64');
  keys.current = id;
  await writeKeys(file, keys);
  return id;
}

function keyBytes(keys: DevKeys, id: string): Buffer {
  const encoded = keys.keys[id];
  if (encoded === undefined) throw new Error(`unknown key_id ${id}`);
  return Buffer.from(encoded, 'base64');
}

/** Serves the plugin on `socket` until the returned function is called. */
export async function serveDevPlugin(socket: string, keyFile: string): Promise<() => Promise<void>> {
  await readKeys(keyFile).catch(() => rotateDevKey(keyFile));
  await rm(socket, { force: true });
  const server = new grpc.Server();
  const answer = <Response>(work: () => Promise<Response>, callback: grpc.sendUnaryData<Response>): void => {
    work().then((response) => callback(null, response), (error: unknown) => callback({ code: grpc.status.INTERNAL, details: error instanceof Error ? error.message : String(error) }));
  };
  server.addService(kmsService().service, {
    Status: (_call: grpc.ServerUnaryCall<object, object>, callback: grpc.sendUnaryData<object>) =>
      answer(async () => ({ version: 'v2', healthz: 'ok', key_id: (await readKeys(keyFile)).current }), callback),
    Encrypt: (call: grpc.ServerUnaryCall<{ plaintext: Buffer }, object>, callback: grpc.sendUnaryData<object>) =>
      answer(async () => {
        const keys = await readKeys(keyFile);
        const nonce = randomBytes(12);
        const cipher = createCipheriv('aes-256-gcm', keyBytes(keys, keys.current), nonce);
        cipher.setAAD(Buffer.from(keys.current, 'utf8'));
        const ciphertext = Buffer.concat([nonce, cipher.update(call.request.plaintext), cipher.final(), cipher.getAuthTag()]);
        return { ciphertext, key_id: keys.current, annotations: { 'dev-plugin.rampart.io/format': Buffer.from('aes-256-gcm') } };
      }, callback),
    Decrypt: (call: grpc.ServerUnaryCall<{ ciphertext: Buffer; key_id: string }, object>, callback: grpc.sendUnaryData<object>) =>
      answer(async () => {
        const keys = await readKeys(keyFile);
        const data = call.request.ciphertext;
        if (data.length < 28) throw new Error('ciphertext too short');
        const decipher = createDecipheriv('aes-256-gcm', keyBytes(keys, call.request.key_id), data.subarray(0, 12));
        decipher.setAAD(Buffer.from(call.request.key_id, 'utf8'));
        decipher.setAuthTag(data.subarray(data.length - 16));
        const plaintext = Buffer.concat([decipher.update(data.subarray(12, data.length - 16)), decipher.final()]);
        return { plaintext };
      }, callback),
  });
  await new Promise<void>((resolve, reject) => server.bindAsync(`unix:${socket}`, grpc.ServerCredentials.createInsecure(), (error) => (error === null ? resolve() : reject(error))));
  return () => new Promise<void>((resolve) => server.tryShutdown(() => resolve()));
}
