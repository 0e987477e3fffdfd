import { Networks, ipFamily, normalizeIp } from '../net/address.js'

/** Who sent a request, as Ferry decided from the TCP peer and X-Forwarded-For, and what goes upstream. */
export interface ClientIp {
  /** The client address: rate limits, connection limits, logs and `hash` balancing key on it. */
  readonly ip: string
  /** The X-Forwarded-For value to send upstream. */
  readonly forwardedFor: string
}

/** Most X-Forwarded-For entries looked at: a client cannot make Ferry walk an arbitrarily long chain. */
const MAX_HOPS = 32

/**
 * Resolves the client address of a request (config `http.trustedProxies`).
 *
 * - The TCP peer is not a trusted proxy: the peer is the client; any X-Forwarded-For it sent is a claim
 *   Ferry cannot check, so it is replaced by the peer's address.
 * - The peer is trusted: X-Forwarded-For is walked right to left (nearest hop first) skipping trusted
 *   addresses; the first untrusted address is the client. When every entry is trusted the leftmost is.
 *   The chain is forwarded with the peer appended.
 * - A malformed entry (not an IP address: `unknown`, a host name, garbage, an address with a port) stops
 *   the walk: whoever wrote it cannot be trusted to have written the entries to its left either, so the
 *   client is the nearest valid address seen so far (the last trusted hop, or the peer itself).
 *
 * `xff` is every X-Forwarded-For header value, in the order received. Pure: no I/O.
 */
export function resolveClientIp (peer: string, xff: readonly string[], trusted: Networks): ClientIp {
  const peerIp = normalizeIp(peer)
  if (trusted.size === 0 || !trusted.contains(peerIp)) return { ip: peerIp, forwardedFor: peerIp }
  const chain = xff.length === 0 ? '' : xff.join(', ')
  const forwardedFor = chain.trim() === '' ? peerIp : `${chain}, ${peerIp}`
  let client = peerIp
  let end = chain.length
  for (let hops = 0; hops < MAX_HOPS && end > 0; hops++) {
    const comma = chain.lastIndexOf(',', end - 1)
    const entry = chain.slice(comma + 1, end).trim()
    end = comma === -1 ? 0 : comma
    if (entry === '' && comma !== -1) continue // `a,,b`: an empty list element (RFC 9110 §5.6.1)
    const ip = normalizeIp(entry)
    if (ipFamily(ip) === 0) break // malformed: untrusted-stop at the nearest valid address
    client = ip
    if (!trusted.contains(ip)) break
  }
  return { ip: client, forwardedFor }
}
