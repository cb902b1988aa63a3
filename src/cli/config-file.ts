/**
 * `rampart serve --config-file FILE`: YAML whose keys are the long flag names (as etcd's config
 * files), e.g. `name: m1`, `initial-cluster: m1=https://…`, `listen-client-urls: [https://…]`.
 * Flags given on the command line win over the file. An unknown key or a value of the wrong type is
 * refused with the file and line. (yaml is a well-kept parser that reports positions; a hand-written
 * one would not.)
 */
import { readFile } from 'node:fs/promises';
import type { Command } from 'commander';
import { LineCounter, isMap, isScalar, isSeq, parseDocument } from 'yaml';

export async function applyConfigFile(command: Command, file: string): Promise<void> {
  const text = await readFile(file, 'utf8');
  const lineCounter = new LineCounter();
  const document = parseDocument(text, { lineCounter });
  const where = (offset: number | undefined): string => `${file}:${offset === undefined ? 1 : lineCounter.linePos(offset).line}`;
  if (document.errors.length > 0) {
    const first = document.errors[0];
    throw new Error(`${where(first?.pos[0])}: ${first?.message.split('\n')[0]}`);
  }
  if (document.contents === null) return;
  if (!isMap(document.contents)) throw new Error(`${where(0)}: expected a mapping of flag names to values`);
  const options = new Map(command.options.map((option) => [option.long?.replace(/^--/, ''), option]));
  for (const pair of document.contents.items) {
    const keyNode = pair.key;
    const key = isScalar(keyNode) ? String(keyNode.value) : '';
    const at = where(isScalar(keyNode) ? keyNode.range?.[0] : undefined);
    const option = options.get(key);
    if (option === undefined || key === 'config-file') throw new Error(`${at}: unknown setting "${key}"`);
    const name = option.attributeName();
    if (command.getOptionValueSource(name) === 'cli') continue;
    const valueNode = pair.value;
    let raw: string;
    if (isSeq(valueNode)) {
      raw = valueNode.items.map((item) => (isScalar(item) ? String(item.value) : '')).join(',');
    } else if (isScalar(valueNode)) {
      raw = String(valueNode.value);
    } else {
      throw new Error(`${at}: "${key}" needs a value`);
    }
    let value: unknown;
    if (option.isBoolean()) {
      if (!isScalar(valueNode) || typeof valueNode.value !== 'boolean') throw new Error(`${at}: "${key}" must be true or false`);
      value = valueNode.value;
    } else {
      try {
        value = option.parseArg === undefined ? raw : option.parseArg(raw, undefined);
      } catch (error) {
        throw new Error(`${at}: "${key}": ${error instanceof Error ? error.message : String(error)}`);
      }
    }
    command.setOptionValueWithSource(name, value, 'config');
  }
}
