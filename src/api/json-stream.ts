/**
 * Splits a stream of concatenated JSON values (a gateway Watch or LeaseKeepAlive body) into the
 * text of each value, as the chunks arrive. Owns: finding where each value ends. Never: parsing
 * or validating a value (parseJson does that on the text handed back).
 *
 * Every character is looked at once, and the chunks of an unfinished value are kept apart and
 * joined only when it ends: a client trickling one large value in small chunks costs time linear
 * in its size. (Rescanning the whole held text on every chunk, or appending to one string and
 * reading it back, is quadratic: 6 MiB sent 2 KB at a time blocked a member for tens of seconds.)
 */

type Scanning =
  /** Between values: whitespace is skipped. */
  | 'between'
  /** Inside an object or array (`depth` open brackets), maybe inside a string in it. */
  | 'nested'
  /** Inside a top-level string. */
  | 'string'
  /** A bare literal or number: it ends at the next delimiter, which is not part of it. */
  | 'literal';

const whitespace = /\s/;
/** What ends a bare literal (as in jsonValueEnd). */
const literalDelimiter = /[\s,\]}{[]/;

const stringSpecial = /["\\]/g;

/** The index of the next quote or backslash in `chunk` from `from` (its length if none): inside a string nothing else matters. */
function skipPlain(chunk: string, from: number): number {
  stringSpecial.lastIndex = from;
  return stringSpecial.exec(chunk)?.index ?? chunk.length;
}

export class JsonValueSplitter {
  private scanning: Scanning = 'between';
  private depth = 0;
  private inString = false;
  private escaped = false;
  /** The unfinished value's text, chunk by chunk. */
  private pieces: string[] = [];
  private heldLength = 0;

  /** Characters held for a value not yet ended (the caller bounds them). */
  get pendingLength(): number {
    return this.heldLength;
  }

  /** Takes the next chunk; returns the text of every value it completes, in order. */
  feed(chunk: string): string[] {
    const values: string[] = [];
    let pieceStart = 0;
    const finish = (end: number): void => {
      this.pieces.push(chunk.slice(pieceStart, end));
      values.push(this.pieces.join(''));
      this.pieces = [];
      this.heldLength = 0;
      pieceStart = end;
      this.scanning = 'between';
      this.depth = 0;
      this.inString = false;
      this.escaped = false;
    };
    for (let index = 0; index < chunk.length; index += 1) {
      const char = chunk[index] as string;
      switch (this.scanning) {
        case 'between':
          if (whitespace.test(char)) {
            pieceStart = index + 1;
          } else if (char === '{' || char === '[') {
            this.scanning = 'nested';
            this.depth = 1;
          } else if (char === '"') {
            this.scanning = 'string';
          } else if (literalDelimiter.test(char)) {
            // A stray delimiter is a value of its own (one that will not parse).
            finish(index + 1);
          } else {
            this.scanning = 'literal';
          }
          break;
        case 'string':
          if (!this.escaped && char !== '\\' && char !== '"') {
            index = skipPlain(chunk, index) - 1;
            break;
          }
          if (this.escaped) this.escaped = false;
          else if (char === '\\') this.escaped = true;
          else if (char === '"') finish(index + 1);
          break;
        case 'nested':
          if (this.inString) {
            if (!this.escaped && char !== '\\' && char !== '"') index = skipPlain(chunk, index) - 1;
            else if (this.escaped) this.escaped = false;
            else if (char === '\\') this.escaped = true;
            else if (char === '"') this.inString = false;
          } else if (char === '"') {
            this.inString = true;
          } else if (char === '{' || char === '[') {
            this.depth += 1;
          } else if (char === '}' || char === ']') {
            this.depth -= 1;
            if (this.depth === 0) finish(index + 1);
          }
          break;
        case 'literal':
          if (literalDelimiter.test(char)) {
            finish(index);
            index -= 1; // the delimiter is looked at again, between values
          }
          break;
      }
    }
    if (pieceStart < chunk.length) {
      this.pieces.push(chunk.slice(pieceStart));
      this.heldLength += chunk.length - pieceStart;
    }
    return values;
  }

  /** The text held when the stream ends (an unfinished value, or a literal the end completes). */
  rest(): string {
    return this.pieces.join('');
  }
}
