import { isIPv4 } from 'node:net'
import { formatIpv4, formatIpv6, ipFamily, normalizeIp, writeIpv4, writeIpv6 } from './address.js'

/**
 * The PROXY protocol (HAProxy, versions 1 and 2): a header a proxy writes before the first byte of a
 * TCP stream, carrying the original client and destination addresses.
 * https://www.haproxy.org/download/2.9/doc/proxy-protocol.txt
 * Shared by the TCP listeners (src/tcp/) and the HTTP front's reader (src/front/proxy-reader.ts).
 *
 * Pure: bytes in, a header (or a reason it is invalid) out; no sockets, no timers. The decoder is
 * re-run over the bytes received so far until it answers something other than `incomplete`, so a header
 * split across any number of reads is fine; it never reads past the header and never throws.
 */

export type ProxyFamily = 'tcp4' | 'tcp6' | 'unknown'

export interface ProxyHeader {
  readonly version: 1 | 2
  /** 'local': a health check or the proxy's own connection; the addresses are not the client's. */
  readonly command: 'proxy' | 'local'
  /** 'unknown': v1 UNKNOWN, v2 AF_UNSPEC or AF_UNIX; the receiver uses the real connection addresses. */
  readonly family: ProxyFamily
  readonly source?: string
  readonly sourcePort?: number
  readonly destination?: string
  readonly destinationPort?: number
}

export type ProxyDecodeResult =
  | { readonly kind: 'incomplete' }
  | { readonly kind: 'header', readonly header: ProxyHeader, readonly length: number }
  | { readonly kind: 'invalid', readonly reason: string }

/** The longest v1 line, CRLF included (spec: 107). */
export const V1_MAX_BYTES = 107
/** v2: 16 fixed bytes, then `length` bytes of addresses and TLVs. */
export const V2_FIXED_BYTES = 16
/** Default cap on a whole v2 header. The format allows 64 KiB of TLVs; no load balancer needs that much. */
export const V2_DEFAULT_MAX_BYTES = 4096

export const V2_SIGNATURE = Buffer.from([0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a])
const V1_PREFIX = Buffer.from('PROXY ', 'latin1')

const INCOMPLETE: ProxyDecodeResult = Object.freeze({ kind: 'incomplete' })

function invalid (reason: string): ProxyDecodeResult {
  return { kind: 'invalid', reason }
}

/** Bytes at the start of a stream that can be the start of a PROXY header: `false` rules it out now. */
function prefixMatches (buf: Uint8Array, sig: Uint8Array): boolean {
  const n = Math.min(buf.length, sig.length)
  for (let i = 0; i < n; i++) if (buf[i] !== sig[i]) return false
  return true
}

/** What the bytes of a connection's start give so far: a whole header and the bytes after it (if any), or why not. */
export type ProxyReadResult =
  | { readonly kind: 'incomplete' }
  | { readonly kind: 'header', readonly header: ProxyHeader, readonly rest: Buffer | undefined }
  | { readonly kind: 'invalid', readonly reason: string }

/**
 * Reads a PROXY header off a connection's first chunks, however the peer splits it: the TCP listeners'
 * connections and the HTTP front's PROXY reader both feed it every chunk until it has an answer.
 */
export class ProxyHeaderReader {
  private buf: Buffer | undefined

  /** Part of a header has arrived (a connection ending now ended inside it). */
  get started (): boolean {
    return this.buf !== undefined
  }

  push (chunk: Buffer): ProxyReadResult {
    const buf = this.buf === undefined ? chunk : Buffer.concat([this.buf, chunk])
    const r = decodeProxyHeader(buf)
    if (r.kind === 'incomplete') { this.buf = buf; return r }
    this.buf = undefined
    if (r.kind === 'invalid') return r
    return { kind: 'header', header: r.header, rest: r.length < buf.length ? buf.subarray(r.length) : undefined }
  }

  /** Forgets what it holds (the connection is gone). */
  clear (): void {
    this.buf = undefined
  }
}

/**
 * Decodes a PROXY header at the start of `buf` (the bytes received so far). `maxV2Bytes` bounds the
 * v2 header (signature + addresses + TLVs); a longer one is invalid, so a peer cannot make us buffer more.
 */
export function decodeProxyHeader (buf: Uint8Array, maxV2Bytes = V2_DEFAULT_MAX_BYTES): ProxyDecodeResult {
  if (buf.length === 0) return INCOMPLETE
  if (buf[0] === 0x50 /* P */) return decodeV1(buf)
  if (buf[0] === 0x0d) return decodeV2(buf, maxV2Bytes)
  return invalid('no PROXY protocol signature')
}

const PORT_RE = /^(?:0|[1-9]\d{0,4})$/

function decodeV1 (buf: Uint8Array): ProxyDecodeResult {
  if (!prefixMatches(buf, V1_PREFIX)) return invalid('no PROXY protocol signature')
  const limit = Math.min(buf.length, V1_MAX_BYTES)
  let cr = -1
  for (let i = 0; i < limit; i++) {
    const c = buf[i]!
    if (c === 0x0d) { cr = i; break }
    // printable US-ASCII only; a bare LF or any control byte cannot be in a header line
    if (c < 0x20 || c > 0x7e) return invalid('v1 header contains a non-printable byte')
  }
  if (cr === -1) return buf.length >= V1_MAX_BYTES ? invalid(`v1 header longer than ${V1_MAX_BYTES} bytes`) : INCOMPLETE
  if (cr + 2 > V1_MAX_BYTES) return invalid(`v1 header longer than ${V1_MAX_BYTES} bytes`)
  if (cr + 1 >= buf.length) return INCOMPLETE
  if (buf[cr + 1] !== 0x0a) return invalid('v1 header: CR not followed by LF')
  const length = cr + 2
  const line = Buffer.from(buf.buffer, buf.byteOffset, cr).toString('latin1')
  const parts = line.split(' ')
  const proto = parts[1]
  if (proto === 'UNKNOWN') {
    // The spec lets a sender put anything after UNKNOWN; the receiver ignores it.
    return { kind: 'header', length, header: { version: 1, command: 'proxy', family: 'unknown' } }
  }
  if (proto !== 'TCP4' && proto !== 'TCP6') return invalid(`v1 header: unknown protocol ${JSON.stringify(proto?.slice(0, 16))}`)
  if (parts.length !== 6) return invalid('v1 header: expected "PROXY TCP4|TCP6 src dst sport dport"')
  const [, , src, dst, sport, dport] = parts as [string, string, string, string, string, string]
  const want = proto === 'TCP4' ? 4 : 6
  if (ipFamily(src) !== want || ipFamily(dst) !== want) return invalid(`v1 header: addresses are not ${proto === 'TCP4' ? 'IPv4' : 'IPv6'}`)
  if (!PORT_RE.test(sport) || !PORT_RE.test(dport) || Number(sport) > 65535 || Number(dport) > 65535) return invalid('v1 header: bad port')
  return {
    kind: 'header',
    length,
    header: {
      version: 1,
      command: 'proxy',
      family: proto === 'TCP4' ? 'tcp4' : 'tcp6',
      source: normalizeIp(src),
      sourcePort: Number(sport),
      destination: normalizeIp(dst),
      destinationPort: Number(dport),
    },
  }
}

function decodeV2 (buf: Uint8Array, maxBytes: number): ProxyDecodeResult {
  if (!prefixMatches(buf, V2_SIGNATURE)) return invalid('no PROXY protocol signature')
  if (buf.length < V2_FIXED_BYTES) return INCOMPLETE
  const verCmd = buf[12]!
  if (verCmd >> 4 !== 2) return invalid(`v2 header: version ${verCmd >> 4}`)
  const cmd = verCmd & 0x0f
  if (cmd > 1) return invalid(`v2 header: unknown command ${cmd}`)
  const fam = buf[13]!
  const len = (buf[14]! << 8) | buf[15]!
  const total = V2_FIXED_BYTES + len
  if (total > maxBytes) return invalid(`v2 header of ${total} bytes exceeds ${maxBytes}`)
  if (cmd === 0) {
    // LOCAL (health checks, the proxy's own traffic): the family and address block are ignored.
    if (buf.length < total) return INCOMPLETE
    return { kind: 'header', length: total, header: { version: 2, command: 'local', family: 'unknown' } }
  }
  const af = fam >> 4
  const transport = fam & 0x0f
  if (af > 3 || transport > 2) return invalid(`v2 header: unknown address family 0x${fam.toString(16).padStart(2, '0')}`)
  const addrLen = af === 1 ? 12 : af === 2 ? 36 : af === 3 ? 216 : 0
  // The address block is checked against the declared length before waiting for the bytes.
  if (len < addrLen) return invalid(`v2 header: length ${len} too short for its address family`)
  if (buf.length < total) return INCOMPLETE
  // TLVs fill the rest exactly: type (1), length (2), value.
  for (let p = V2_FIXED_BYTES + addrLen; p < total;) {
    if (p + 3 > total) return invalid('v2 header: truncated TLV')
    const tlvLen = (buf[p + 1]! << 8) | buf[p + 2]!
    p += 3 + tlvLen
    if (p > total) return invalid('v2 header: TLV overruns the header')
  }
  if (af === 0 || af === 3) {
    // AF_UNSPEC / AF_UNIX: valid, but no IP addresses to report.
    return { kind: 'header', length: total, header: { version: 2, command: 'proxy', family: 'unknown' } }
  }
  if (transport !== 1) return invalid(`v2 header: transport ${transport === 2 ? 'DGRAM' : 'UNSPEC'} on a TCP listener`)
  const a = V2_FIXED_BYTES
  const n = af === 1 ? 4 : 16 // address bytes; both addresses come first, then both ports
  const fmt = af === 1 ? formatIpv4 : formatIpv6
  return {
    kind: 'header',
    length: total,
    header: {
      version: 2,
      command: 'proxy',
      family: af === 1 ? 'tcp4' : 'tcp6',
      source: fmt(buf, a),
      destination: fmt(buf, a + n),
      sourcePort: (buf[a + 2 * n]! << 8) | buf[a + 2 * n + 1]!,
      destinationPort: (buf[a + 2 * n + 2]! << 8) | buf[a + 2 * n + 3]!,
    },
  }
}

/** The addresses of one proxied connection, as the encoders take them. Undefined: not known. */
export interface ConnectionAddresses {
  readonly source: string | undefined
  readonly sourcePort: number | undefined
  readonly destination: string | undefined
  readonly destinationPort: number | undefined
}

/** 4 when both addresses are IPv4, 6 when both are IP and one is IPv6 (IPv4 is then sent mapped), 0 if unknown. */
function familyOf (a: ConnectionAddresses): 4 | 6 | 0 {
  if (a.source === undefined || a.destination === undefined || a.sourcePort === undefined || a.destinationPort === undefined) return 0
  const s = ipFamily(a.source)
  const d = ipFamily(a.destination)
  if (s === 0 || d === 0) return 0
  return s === 4 && d === 4 ? 4 : 6
}

function v6Text (ip: string): string {
  return isIPv4(ip) ? `::ffff:${ip}` : ip
}

/** `PROXY TCP4 src dst sport dport\r\n` (or TCP6, or UNKNOWN when the addresses are not known). */
export function encodeProxyV1 (a: ConnectionAddresses): Buffer {
  const f = familyOf(a)
  if (f === 0) return Buffer.from('PROXY UNKNOWN\r\n', 'latin1')
  const src = f === 4 ? a.source! : v6Text(a.source!)
  const dst = f === 4 ? a.destination! : v6Text(a.destination!)
  return Buffer.from(`PROXY TCP${f} ${src} ${dst} ${a.sourcePort!} ${a.destinationPort!}\r\n`, 'latin1')
}

/** The binary v2 header, command PROXY; AF_UNSPEC (no addresses) when they are not known. */
export function encodeProxyV2 (a: ConnectionAddresses): Buffer {
  const f = familyOf(a)
  const addrLen = f === 4 ? 12 : f === 6 ? 36 : 0
  const out = Buffer.allocUnsafe(V2_FIXED_BYTES + addrLen)
  V2_SIGNATURE.copy(out, 0)
  out[12] = 0x21 // version 2, PROXY
  out[13] = f === 4 ? 0x11 : f === 6 ? 0x21 : 0x00
  out.writeUInt16BE(addrLen, 14)
  const p = V2_FIXED_BYTES
  if (f === 4) {
    writeIpv4(a.source!, out, p)
    writeIpv4(a.destination!, out, p + 4)
    out.writeUInt16BE(a.sourcePort!, p + 8)
    out.writeUInt16BE(a.destinationPort!, p + 10)
  } else if (f === 6) {
    writeIpv6(a.source!, out, p)
    writeIpv6(a.destination!, out, p + 16)
    out.writeUInt16BE(a.sourcePort!, p + 32)
    out.writeUInt16BE(a.destinationPort!, p + 34)
  }
  return out
}
