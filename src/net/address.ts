import { BlockList, isIPv4, isIPv6 } from 'node:net'

/**
 * IP address helpers shared by the stages (front, tcp): text ⇄ bytes for the PROXY protocol, normalisation of the
 * IPv4-mapped IPv6 text Node reports on dual-stack sockets, and CIDR lists of trusted proxies.
 * Pure functions, no I/O.
 */

export type IpFamily = 4 | 6

/** `::ffff:1.2.3.4` → `1.2.3.4`; other text unchanged. */
export function normalizeIp (ip: string): string {
  if (ip.length > 7 && (ip.charCodeAt(0) === 58 /* : */) && /^::ffff:/i.test(ip)) {
    const v4 = ip.slice(7)
    if (isIPv4(v4)) return v4
  }
  return ip
}

/** 4 or 6 for a valid address without a zone id, 0 otherwise. */
export function ipFamily (ip: string): IpFamily | 0 {
  if (isIPv4(ip)) return 4
  if (ip.includes('%')) return 0
  return isIPv6(ip) ? 6 : 0
}

/** Writes the 4 bytes of a dotted-quad IPv4 address. The caller has checked `isIPv4`. */
export function writeIpv4 (ip: string, out: Uint8Array, off: number): void {
  let v = 0
  let k = 0
  for (let i = 0; i < ip.length; i++) {
    const c = ip.charCodeAt(i)
    if (c === 46) { out[off + k++] = v; v = 0 } else v = v * 10 + (c - 48)
  }
  out[off + k] = v
}

/**
 * Writes the 16 bytes of an IPv6 address (with `::` compression and an optional trailing dotted quad).
 * Returns false for text that is not IPv6; accepts an IPv4 address as its IPv4-mapped form.
 */
export function writeIpv6 (ip: string, out: Uint8Array, off: number): boolean {
  if (isIPv4(ip)) {
    out.fill(0, off, off + 10)
    out[off + 10] = 0xff
    out[off + 11] = 0xff
    writeIpv4(ip, out, off + 12)
    return true
  }
  if (ipFamily(ip) !== 6) return false
  const groups: number[] = []
  let tail: number[] = []
  const dbl = ip.indexOf('::')
  const parse = (part: string, into: number[]): void => {
    if (part === '') return
    for (const g of part.split(':')) {
      if (g.includes('.')) {
        const b = new Uint8Array(4)
        writeIpv4(g, b, 0)
        into.push((b[0]! << 8) | b[1]!, (b[2]! << 8) | b[3]!)
      } else {
        into.push(parseInt(g, 16))
      }
    }
  }
  if (dbl === -1) {
    parse(ip, groups)
  } else {
    parse(ip.slice(0, dbl), groups)
    parse(ip.slice(dbl + 2), tail)
  }
  const zeros = 8 - groups.length - tail.length
  if (zeros < 0) return false
  tail = [...groups, ...new Array<number>(zeros).fill(0), ...tail]
  for (let i = 0; i < 8; i++) {
    out[off + 2 * i] = tail[i]! >> 8
    out[off + 2 * i + 1] = tail[i]! & 0xff
  }
  return true
}

/** Text of 4 address bytes. */
export function formatIpv4 (b: Uint8Array, off: number): string {
  return `${b[off]}.${b[off + 1]}.${b[off + 2]}.${b[off + 3]}`
}

/** RFC 5952 text of 16 address bytes; an IPv4-mapped address comes out as plain IPv4. */
export function formatIpv6 (b: Uint8Array, off: number): string {
  let mapped = b[off + 10] === 0xff && b[off + 11] === 0xff
  for (let i = 0; i < 10 && mapped; i++) if (b[off + i] !== 0) mapped = false
  if (mapped) return formatIpv4(b, off + 12)
  const groups: number[] = []
  for (let i = 0; i < 16; i += 2) groups.push((b[off + i]! << 8) | b[off + i + 1]!)
  let bestStart = -1
  let bestLen = 0
  for (let i = 0; i < 8;) {
    if (groups[i] !== 0) { i++; continue }
    let j = i
    while (j < 8 && groups[j] === 0) j++
    if (j - i > bestLen && j - i >= 2) { bestStart = i; bestLen = j - i }
    i = j
  }
  const hex = groups.map((g) => g.toString(16))
  if (bestStart === -1) return hex.join(':')
  return `${hex.slice(0, bestStart).join(':')}::${hex.slice(bestStart + bestLen).join(':')}`
}

/** `10.0.0.0/8`, `::1/128` or a bare address (one host). Returns undefined when the text is none of these. */
export function parseCidr (s: string): { ip: string, prefix: number, family: IpFamily } | undefined {
  const slash = s.indexOf('/')
  const ip = slash === -1 ? s : s.slice(0, slash)
  const family = ipFamily(ip)
  if (family === 0) return undefined
  const max = family === 4 ? 32 : 128
  if (slash === -1) return { ip, prefix: max, family }
  const p = s.slice(slash + 1)
  if (!/^\d{1,3}$/.test(p) || Number(p) > max) return undefined
  return { ip, prefix: Number(p), family }
}

/** A fixed set of networks (config `trustedProxies`), checked per accepted connection. */
export class Networks {
  private readonly list = new BlockList()
  readonly size: number

  constructor (cidrs: readonly string[]) {
    for (const c of cidrs) {
      const n = parseCidr(c)
      if (n === undefined) throw new TypeError(`not a CIDR: ${c}`)
      this.list.addSubnet(n.ip, n.prefix, n.family === 4 ? 'ipv4' : 'ipv6')
    }
    this.size = cidrs.length
  }

  /** `ip` is normalised text (see normalizeIp). */
  contains (ip: string): boolean {
    const f = ipFamily(ip)
    if (f === 0) return false
    return this.list.check(ip, f === 4 ? 'ipv4' : 'ipv6')
  }
}
