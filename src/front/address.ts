import { formatIpv4, formatIpv6 } from '../net/address.js'

/** Text form of a uWS binary remote address: IPv4 dotted, IPv4-mapped IPv6 unwrapped, IPv6 compressed. */
export function formatAddress (ab: ArrayBuffer): string {
  const b = new Uint8Array(ab)
  if (b.length === 4) return formatIpv4(b, 0)
  if (b.length === 16) return formatIpv6(b, 0)
  return ''
}
