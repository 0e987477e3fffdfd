/**
 * Header values beyond ASCII, passed through as the bytes they arrived as.
 *
 * uWS hands Ferry request header values UTF-8-decoded (a value that is not UTF-8 is refused 400 in
 * http-request.ts) and writes the strings it is given as UTF-8. Node's http client (under ws) and
 * undici write header strings as latin1, one byte per character, refusing characters above U+00FF, and
 * undici reads response header bytes as latin1. Without a conversion a UTF-8 `é` reached the backend
 * as the single byte E9, `€` made the request fail 400, and a backend's UTF-8 `é` reached the client
 * as four bytes.
 */

const NON_ASCII = /[^\x00-\x7f]/

/** A decoded value as a string whose characters are its UTF-8 bytes: what a latin1 writer must be given. */
export function utf8ForLatin1Writer (v: string): string {
  return NON_ASCII.test(v) ? Buffer.from(v, 'utf8').toString('latin1') : v
}

/** Flat `[name, value, …]` with each value converted by utf8ForLatin1Writer; the same array when all are ASCII. */
export function headersForLatin1Writer (headers: readonly string[]): readonly string[] {
  let out: string[] | undefined
  for (let i = 1; i < headers.length; i += 2) {
    const v = headers[i]!
    if (!NON_ASCII.test(v)) continue
    out ??= headers.slice()
    out[i] = Buffer.from(v, 'utf8').toString('latin1')
  }
  return out ?? headers
}

/** A value read as latin1 (undici), as uWS must be given it to write the same bytes: a Buffer when beyond ASCII. */
export function latin1Bytes (v: string): string | Buffer {
  return NON_ASCII.test(v) ? Buffer.from(v, 'latin1') : v
}
