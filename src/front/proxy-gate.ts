import type { HttpResponse } from 'uWebSockets.js'
import type { Logger } from 'pino'
import type { FerryErrorCode } from '../errors.js'
import type { Metrics } from '../observability/metrics.js'
import { normalizeIp, type Networks } from '../net/address.js'
import { RateWindow } from '../net/rate-window.js'
import { formatAddress } from './address.js'

/** listen.http.acceptProxyProtocol */
export type ProxyMode = 'off' | 'v2' | 'v1+v2'

/**
 * The `listener` label of the HTTP front's PROXY refusals in ferry_tcp_closed_total, beside the TCP
 * listeners' own (their names cannot hold a dot, so it never clashes with one).
 */
export const FRONT_LISTENER = 'listen.http'

/** Warn lines a second about refused PROXY connections; a flood is summed up in the next line. */
const LOG_BUDGET_PER_SEC = 10

type RefusalCode = Extract<FerryErrorCode, 'FERRY_ERR_TCP_PROXY_HEADER' | 'FERRY_ERR_TCP_PROXY_TIMEOUT' | 'FERRY_ERR_TCP_PROXY_UNTRUSTED'>

/** Counts and logs (rate-limited, with the peer) the connections the front refused for their PROXY header. */
export class ProxyRefusals {
  private readonly counters = new Map<RefusalCode | 'probe', { inc: () => void }>()
  private readonly logBudget = new RateWindow(LOG_BUDGET_PER_SEC)
  private suppressed = 0

  constructor (private readonly log: Logger, private readonly metrics: Metrics) {}

  refused (code: RefusalCode, peer: string, detail: string): void {
    this.count(code)
    if (this.logBudget.take(Date.now()) !== 0) { this.suppressed++; return }
    const suppressed = this.suppressed
    this.suppressed = 0
    this.log.warn({ listener: FRONT_LISTENER, code, peer, ...(suppressed > 0 ? { suppressed } : {}) }, detail)
  }

  /** A trusted peer that connected and left before its first byte: a TCP health check, counted as reason="probe" (as the TCP listeners do) and not logged. */
  probe (): void {
    this.count('probe')
  }

  private count (reason: RefusalCode | 'probe'): void {
    let c = this.counters.get(reason)
    if (c === undefined) { c = this.metrics.tcpClosed.labels(FRONT_LISTENER, reason); this.counters.set(reason, c) }
    c.inc()
  }
}

/**
 * Who spoke HTTP to the front, asked once per request and per WebSocket upgrade: the TCP peer, or the
 * source address of the PROXY header its load balancer sent (listen.http.acceptProxyProtocol). What it
 * returns is what http.trustedProxies then resolves X-Forwarded-For from, so the header's source feeds
 * limits, rate limits, access lists, logs, X-Forwarded-For and `hash` balancing alike.
 *
 * - `off`: the TCP peer. (uWebSockets.js strips a v2 header from anyone whatever the mode; it is ignored.)
 * - `v2`: uWebSockets.js 20.30 reads a v2 header itself (it is built with UWS_WITH_PROXY) from every
 *   peer, and JavaScript only sees the connection at its first request. So the peer is checked here: one
 *   outside http.trustedProxies is refused (closed, counted) whatever it sent. From a trusted peer the
 *   header's source is the client; with no address (no header, or LOCAL / AF_UNSPEC, which uWS does not
 *   tell apart) the peer itself is, as the spec says for LOCAL.
 * - `v1+v2`: uWS listens only on a loopback port fed by Ferry's reader (src/front/proxy-reader.ts), which
 *   checked the peer and read the header, and connects to uWS from a loopback address of its own per
 *   connection: `clientOf` maps that address to the client. (A v2 header uWS finds inside the stream is
 *   then the client's own bytes, and ignored.)
 */
export class ProxyGate {
  constructor (private mode: ProxyMode, private trusted: Networks, private readonly refusals: ProxyRefusals, private readonly clientOf?: (loopback: string) => string | undefined) {}

  /** A reload: http.trustedProxies (and a switch between `off` and `v2`) apply to the next request. */
  configure (mode: ProxyMode, trusted: Networks): void {
    this.mode = mode
    this.trusted = trusted
  }

  /**
   * The client address as the TCP layer knows it (text, IPv4-mapped unwrapped), or '' when the
   * connection is refused: then it has been closed and counted, and the caller leaves `res` alone.
   */
  peer (res: HttpResponse): string {
    const peer = formatAddress(res.getRemoteAddress())
    if (this.mode === 'off') return peer
    if (this.mode === 'v1+v2') {
      const client = this.clientOf?.(peer)
      if (client !== undefined) return client
      this.refuse(res, 'FERRY_ERR_TCP_PROXY_HEADER', peer, `a connection to the PROXY reader's internal port from ${peer}, which is not the reader`)
      return ''
    }
    if (!this.trusted.contains(normalizeIp(peer))) {
      this.refuse(res, 'FERRY_ERR_TCP_PROXY_UNTRUSTED', peer, `peer ${peer} is not in http.trustedProxies (listen.http.acceptProxyProtocol is v2)`)
      return ''
    }
    const source = formatAddress(res.getProxiedRemoteAddress())
    return source === '' ? peer : source
  }

  private refuse (res: HttpResponse, code: RefusalCode, peer: string, detail: string): void {
    this.refusals.refused(code, peer, detail)
    // No response: whoever this is did not speak the protocol the listener is configured for.
    res.close()
  }
}
