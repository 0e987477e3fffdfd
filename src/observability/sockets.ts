import { readFileSync } from 'node:fs'

/** Established TCP connections on a local port, and how many of them still have bytes on their way out. */
export interface PortConnections {
  established: number
  /** Established connections whose kernel send queue is not empty (a response or close frame still leaving). */
  sending: number
}

/**
 * Established TCP connections on a local port, read from /proc/net/tcp{,6} at scrape time.
 * uWebSockets.js 20.30 gives no callback per HTTP connection (only per request), so this is how Ferry
 * reports open client HTTP connections without touching the request path. Listen ports are bound
 * exclusively, so every socket on the port is this process's. Returns undefined off Linux.
 */
export function connectionsOnPort (port: number): PortConnections | undefined {
  const out: PortConnections = { established: 0, sending: 0 }
  let any = false
  const hexPort = `:${port.toString(16).toUpperCase().padStart(4, '0')} `
  for (const file of ['/proc/net/tcp', '/proc/net/tcp6']) {
    let text: string
    try { text = readFileSync(file, 'latin1') } catch { continue }
    any = true
    // "  sl  local_address rem_address   st tx_queue:rx_queue ..." — local_address is ADDR:PORT in hex,
    // st 01 = ESTABLISHED, tx_queue the bytes sent but not yet acknowledged by the peer.
    let i = text.indexOf('\n') + 1
    while (i > 0 && i < text.length) {
      const end = text.indexOf('\n', i)
      const line = text.slice(i, end === -1 ? text.length : end)
      const colon = line.indexOf(':') // after "sl"
      const local = line.indexOf(hexPort, colon + 1)
      if (local !== -1 && local < line.indexOf(' ', colon + 2) + 1) {
        const fields = line.trim().split(/\s+/)
        if (fields[3] === '01') {
          out.established++
          if (!/^0+:/.test(fields[4] ?? '')) out.sending++
        }
      }
      i = end + 1
    }
  }
  return any ? out : undefined
}

/** Established TCP connections on a local port (see connectionsOnPort); undefined off Linux. */
export function establishedOnPort (port: number): number | undefined {
  return connectionsOnPort(port)?.established
}
