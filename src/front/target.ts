import { FerryError } from '../errors.js'

/**
 * The one form of a request target that routing, auth, limits, logs and every upstream leg see.
 *
 * uWS hands the target over UTF-8-decoded and untouched otherwise. Backends and URL parsers do not all
 * read such a target alike: the `ws` client resolves `..`, `%2e%2e` and `\` through the WHATWG URL parser,
 * undici refuses characters above U+00FF and writes the rest as Latin-1, and a framework may merge `//`.
 * A gateway that routes on one reading and forwards another lets `/open/../private` past the auth of
 * `/private`. So the target is made canonical once, here (what nginx does before matching locations):
 * - path: `%XX` of an unreserved character is decoded (`%61` → `a`, `%2e` → `.`), other `%XX` keep their
 *   meaning with upper-case hex; dot segments are removed (RFC 3986 §5.2.4); runs of `/` are merged
 *   (`http.mergeSlashes`); characters outside RFC 3986's pchar (`"<>\^\`{|}[]`, non-ASCII as UTF-8) are
 *   percent-encoded.
 * - query: characters outside RFC 3986's query set, and `'` (which the WHATWG parser encodes for ws:),
 *   are percent-encoded; nothing is decoded.
 * Refused with 400: control characters and spaces, bytes that were not UTF-8 (uWS turned them into
 * U+FFFD, so the original bytes are gone), and a malformed `%` escape in the path.
 * The result is a fixpoint of the WHATWG URL parser (`new URL('ws://h' + target)` gives it back), so the
 * ws passthrough leg sends the same bytes an http leg does (test/target.test.ts checks both).
 */
export interface Target {
  readonly path: string
  /** Without the `?`; '' for none. */
  readonly query: string
}

/** A path that is already canonical: pchar and `/` only, no `%`, no `//`, no segment starting with `.`. */
const CLEAN_PATH = /^(?:\/[A-Za-z0-9\-_~!$&'()*+,;=:@][A-Za-z0-9\-._~!$&'()*+,;=:@]*)*\/?$/
/** A query needing nothing: RFC 3986 query characters other than `'`, plus `%` (left as it is). */
const CLEAN_QUERY = /^[A-Za-z0-9\-._~!$&()*+,;=:@/?%]*$/

/** RFC 3986 pchar other than pct-encoded: kept as they are in a path. */
const PCHAR = new Uint8Array(128)
for (const c of "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~!$&'()*+,;=:@") PCHAR[c.charCodeAt(0)] = 1
const UNRESERVED = new Uint8Array(128)
for (const c of 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~') UNRESERVED[c.charCodeAt(0)] = 1
/** Kept as they are in a query: pchar, `/`, `?`, `%`, less `'`. */
const QCHAR = new Uint8Array(128)
for (const c of 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~!$&()*+,;=:@/?%') QCHAR[c.charCodeAt(0)] = 1

const HEX = '0123456789ABCDEF'

function hexValue (c: number): number {
  if (c >= 48 && c <= 57) return c - 48
  if (c >= 65 && c <= 70) return c - 55
  if (c >= 97 && c <= 102) return c - 87
  return -1
}

function pctEncodeAscii (c: number): string {
  return '%' + HEX[c >> 4]! + HEX[c & 15]!
}

/** Percent-encodes one non-ASCII code point (at `s[i]`, maybe a surrogate pair) as UTF-8; returns [encoded, chars used]. */
function pctEncodeCodePoint (s: string, i: number, where: string): [string, number] {
  const cp = s.codePointAt(i)!
  if (cp === 0xfffd) throw new FerryError('FERRY_ERR_BAD_REQUEST', `request ${where} is not valid UTF-8`)
  // A lone surrogate cannot come from uWS's UTF-8 decoding; refuse rather than encode U+FFFD for it.
  if (cp >= 0xd800 && cp <= 0xdfff) throw new FerryError('FERRY_ERR_BAD_REQUEST', `request ${where} is not valid UTF-8`)
  let out = ''
  for (const b of Buffer.from(String.fromCodePoint(cp), 'utf8')) out += '%' + HEX[b >> 4]! + HEX[b & 15]!
  return [out, cp > 0xffff ? 2 : 1]
}

function badChar (c: number, where: string): never {
  throw new FerryError('FERRY_ERR_BAD_REQUEST', c === 0x20 ? `space in the request ${where}` : `control character 0x${c.toString(16).padStart(2, '0')} in the request ${where}`)
}

/** Percent-encoding made canonical: unreserved decoded, the rest upper-case; other characters as the header explains. */
function encodePath (path: string): string {
  let out = ''
  for (let i = 0; i < path.length; i++) {
    const c = path.charCodeAt(i)
    if (c === 47 /* / */) { out += '/'; continue }
    if (c === 37 /* % */) {
      const hi = i + 2 < path.length ? hexValue(path.charCodeAt(i + 1)) : -1
      const lo = hi === -1 ? -1 : hexValue(path.charCodeAt(i + 2))
      if (lo === -1) throw new FerryError('FERRY_ERR_BAD_REQUEST', 'malformed percent-encoding in the request path')
      const b = hi * 16 + lo
      out += b < 128 && UNRESERVED[b] === 1 ? String.fromCharCode(b) : pctEncodeAscii(b)
      i += 2
      continue
    }
    const [enc, used] = encodeChar(path, i, PCHAR, 'path')
    out += enc
    i += used - 1
  }
  return out
}

/** One character at `s[i]` other than `%`: kept if `keep` lists it, else percent-encoded (UTF-8); controls refused. */
function encodeChar (s: string, i: number, keep: Uint8Array, where: string): [string, number] {
  const c = s.charCodeAt(i)
  if (c < 0x21 || c === 0x7f) badChar(c, where)
  if (c < 128) return [keep[c] === 1 ? s[i]! : pctEncodeAscii(c), 1]
  return pctEncodeCodePoint(s, i, where)
}

/** RFC 3986 §5.2.4 over `/`-separated segments, merging empty ones when asked. `path` starts with `/`. */
function removeDotSegments (path: string, mergeSlashes: boolean): string {
  const segs = path.split('/')
  const out: string[] = []
  const last = segs.length - 1
  for (let i = 1; i <= last; i++) {
    const seg = segs[i]!
    if (seg === '.' || seg === '..') {
      if (seg === '..') out.pop()
      if (i === last) out.push('')
      continue
    }
    if (seg === '' && mergeSlashes && i !== last) continue
    out.push(seg)
  }
  return '/' + out.join('/')
}

function encodeQuery (query: string): string {
  let out = ''
  for (let i = 0; i < query.length; i++) {
    const [enc, used] = encodeChar(query, i, QCHAR, 'query')
    out += enc
    i += used - 1
  }
  return out
}

/**
 * `path` as uWS's getUrl() gives it (starts with `/`: the caller refuses other forms), `query` as
 * getQuery() gives it. Throws FerryError FERRY_ERR_BAD_REQUEST (400) for what cannot be forwarded.
 */
export function canonicalTarget (path: string, query: string, mergeSlashes: boolean): Target {
  const p = CLEAN_PATH.test(path) ? path : removeDotSegments(encodePath(path), mergeSlashes)
  const q = CLEAN_QUERY.test(query) ? query : encodeQuery(query)
  return { path: p, query: q }
}

/** `path?query`, or `path` alone. */
export function formatTarget (t: Target): string {
  return t.query === '' ? t.path : `${t.path}?${t.query}`
}
