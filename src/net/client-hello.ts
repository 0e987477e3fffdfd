/**
 * Reads the server name (SNI, RFC 6066 section 3) from the first bytes a TLS client sends, without
 * terminating TLS: pure (bytes in, verdict out), no sockets, no timers. The ClientHello may span several
 * TLS records (RFC 8446 section 5.1: a handshake message may be fragmented); the caller passes every byte
 * received so far and asks again when more arrive, up to `maxBytes`.
 */

/** Largest ClientHello prefix read by default: 16 KiB across records (a post-quantum key share fits). */
export const CLIENT_HELLO_MAX_BYTES = 16 * 1024

export type ClientHelloResult =
  /** More bytes are needed (and `maxBytes` is not reached yet). */
  | { readonly kind: 'incomplete' }
  /** Not a TLS ClientHello, malformed, or larger than `maxBytes`: `reason` says which. */
  | { readonly kind: 'invalid', readonly reason: string }
  /** A complete ClientHello: its server name (lower case), or undefined when it sends none. */
  | { readonly kind: 'hello', readonly serverName: string | undefined }

const RECORD_HANDSHAKE = 0x16
const HANDSHAKE_CLIENT_HELLO = 0x01
const EXT_SERVER_NAME = 0x0000
const NAME_TYPE_HOST = 0x00
/** A TLS record's payload is at most 2^14 bytes (plus expansion for protected records, which a ClientHello is not). */
const MAX_RECORD = 16384
/** A host name: letters, digits, `-`, `_`, dots; 1-253 bytes (RFC 6066: no trailing dot, no IP literal checks here). */
const HOST_RE = /^[a-z0-9_-]+(\.[a-z0-9_-]+)*$/

const incomplete: ClientHelloResult = { kind: 'incomplete' }
const invalid = (reason: string): ClientHelloResult => ({ kind: 'invalid', reason })

/**
 * The verdict on `buf`, the bytes received from a client so far. Only the handshake bytes of the
 * records are looked at; `buf` is never changed (the caller forwards it untouched).
 */
export function readClientHello (buf: Uint8Array, maxBytes = CLIENT_HELLO_MAX_BYTES): ClientHelloResult {
  // Reassemble the handshake message from the records seen so far.
  const parts: Uint8Array[] = []
  let have = 0
  let need = -1
  let off = 0
  for (;;) {
    if (off + 5 > buf.length) return tooLong(buf, maxBytes) ?? incomplete
    if (buf[off] !== RECORD_HANDSHAKE) return invalid(off === 0 ? `not a TLS handshake record (first byte 0x${hex(buf[0]!)})` : `record of type 0x${hex(buf[off]!)} inside the ClientHello`)
    if (buf[off + 1] !== 0x03 || buf[off + 2]! > 0x04) return invalid(`record version ${buf[off + 1]}.${buf[off + 2]} is not TLS`)
    const len = (buf[off + 3]! << 8) | buf[off + 4]!
    if (len === 0 || len > MAX_RECORD) return invalid(`record length ${len}`)
    const end = off + 5 + len
    const body = buf.subarray(off + 5, Math.min(end, buf.length))
    parts.push(body)
    have += body.length
    if (need < 0 && have >= 4) {
      const first = concat(parts, 4)
      if (first[0] !== HANDSHAKE_CLIENT_HELLO) return invalid(`handshake message type ${first[0]} is not a ClientHello`)
      need = 4 + ((first[1]! << 16) | (first[2]! << 8) | first[3]!)
      if (need > maxBytes) return invalid(`ClientHello of ${need} bytes is larger than ${maxBytes}`)
    }
    if (need >= 0 && have >= need) break
    if (end > buf.length) return tooLong(buf, maxBytes) ?? incomplete
    off = end
  }
  return parseHello(concat(parts, need).subarray(4))
}

function tooLong (buf: Uint8Array, maxBytes: number): ClientHelloResult | undefined {
  return buf.length >= maxBytes ? invalid(`no complete ClientHello in the first ${maxBytes} bytes`) : undefined
}

/** The first `n` bytes of `parts` as one array (a copy only when they span several parts). */
function concat (parts: Uint8Array[], n: number): Uint8Array {
  if (parts.length === 1 || parts[0]!.length >= n) return parts[0]!.subarray(0, n)
  const out = new Uint8Array(n)
  let at = 0
  for (const p of parts) {
    const take = Math.min(p.length, n - at)
    out.set(p.subarray(0, take), at)
    at += take
    if (at === n) break
  }
  return out
}

/** The ClientHello body (RFC 8446 section 4.1.2; TLS 1.0-1.2 have the same layout up to the extensions). */
function parseHello (b: Uint8Array): ClientHelloResult {
  let p = 2 + 32 // legacy_version, random
  if (p + 1 > b.length) return invalid('ClientHello too short')
  p += 1 + b[p]! // legacy_session_id
  if (p + 2 > b.length) return invalid('ClientHello ends in the session id')
  p += 2 + ((b[p]! << 8) | b[p + 1]!) // cipher_suites
  if (p + 1 > b.length) return invalid('ClientHello ends in the cipher suites')
  p += 1 + b[p]! // legacy_compression_methods
  if (p > b.length) return invalid('ClientHello ends in the compression methods')
  if (p === b.length) return { kind: 'hello', serverName: undefined } // no extensions at all (SSL 3-era clients)
  if (p + 2 > b.length) return invalid('ClientHello ends in the extensions length')
  const extEnd = p + 2 + ((b[p]! << 8) | b[p + 1]!)
  if (extEnd > b.length) return invalid('extensions run past the ClientHello')
  p += 2
  let serverName: string | undefined
  while (p < extEnd) {
    if (p + 4 > extEnd) return invalid('truncated extension header')
    const type = (b[p]! << 8) | b[p + 1]!
    const len = (b[p + 2]! << 8) | b[p + 3]!
    const start = p + 4
    p = start + len
    if (p > extEnd) return invalid(`extension ${type} runs past the extensions`)
    if (type !== EXT_SERVER_NAME) continue
    if (serverName !== undefined) return invalid('two server_name extensions')
    const r = parseServerName(b.subarray(start, p))
    if (typeof r !== 'string') return r
    serverName = r
  }
  return { kind: 'hello', serverName }
}

/** The host_name of a server_name extension body (RFC 6066 section 3: exactly one host_name entry). */
function parseServerName (e: Uint8Array): string | ClientHelloResult {
  if (e.length < 2 || ((e[0]! << 8) | e[1]!) !== e.length - 2) return invalid('server_name list length does not match its extension')
  let p = 2
  let name: string | undefined
  while (p < e.length) {
    if (p + 3 > e.length) return invalid('truncated server_name entry')
    const type = e[p]!
    const len = (e[p + 1]! << 8) | e[p + 2]!
    if (p + 3 + len > e.length) return invalid('server_name entry runs past its list')
    if (type === NAME_TYPE_HOST) {
      if (name !== undefined) return invalid('two host_name entries')
      const s = Buffer.from(e.buffer, e.byteOffset + p + 3, len).toString('latin1').toLowerCase()
      if (len === 0 || len > 253 || !HOST_RE.test(s)) return invalid('host_name is not a DNS name')
      name = s
    }
    p += 3 + len
  }
  if (name === undefined) return invalid('server_name without a host_name')
  return name
}

function hex (n: number): string {
  return n.toString(16).padStart(2, '0')
}
