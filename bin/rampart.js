#!/usr/bin/env node
// The command runs the compiled TypeScript in dist/; from a clone that is `npm run build` first.
// `npm link` (or `npm install -g .`) puts this file on the PATH as `rampart`.
import { existsSync } from 'node:fs';

const main = new URL('../dist/src/cli/main.js', import.meta.url);
if (!existsSync(main)) {
  process.stderr.write(`rampart: ${main.pathname} is missing; run \`npm ci && npm run build\` in ${new URL('..', import.meta.url).pathname}\n`);
  process.exit(1);
}
await import(main.href);
