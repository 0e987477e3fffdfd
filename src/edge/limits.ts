import type { Counter } from 'prom-client'
import type { Config } from '../config/load.js'
import { FerryError } from '../errors.js'
import type { Metrics } from '../observability/metrics.js'

export type LimitsConfig = Config['limits']

/** The `limit` label of ferry_limit_refused_total. */
export type LimitName = 'http_in_flight' | 'http_in_flight_per_ip' | 'ws_sessions' | 'ws_sessions_per_ip'

/** Counts per client IP; an entry exists only while its count is above zero (no growth with churn). */
class IpTable {
  private readonly counts = new Map<string, number>()
  total = 0

  count (ip: string): number {
    return this.counts.get(ip) ?? 0
  }

  add (ip: string): void {
    this.counts.set(ip, (this.counts.get(ip) ?? 0) + 1)
    this.total++
  }

  remove (ip: string): void {
    const n = this.counts.get(ip)
    if (n === undefined) return // not ours: a release without a take is a bug upstream, never a negative count
    if (n <= 1) this.counts.delete(ip)
    else this.counts.set(ip, n - 1)
    this.total--
  }

  get ips (): number {
    return this.counts.size
  }
}

/**
 * Concurrency limits of the HTTP/WebSocket front (config `limits`), keyed on the resolved client IP
 * (http.trustedProxies). uWS 20.30 gives JavaScript no hook at TCP accept, so what is limited is what
 * Ferry sees: HTTP requests in flight to upstreams and WebSocket sessions (from the upgrade on).
 * A `take*` that returns undefined must be matched by exactly one `release*` with the same IP; one that
 * returns an error took nothing.
 */
export class ConnectionLimits {
  private cfg: LimitsConfig
  private readonly http = new IpTable()
  private readonly ws = new IpTable()
  private readonly refused: Record<LimitName, Counter.Internal>

  constructor (cfg: LimitsConfig, metrics: Metrics) {
    this.cfg = cfg
    const c = metrics.limitRefused
    this.refused = {
      http_in_flight: c.labels('http_in_flight'),
      http_in_flight_per_ip: c.labels('http_in_flight_per_ip'),
      ws_sessions: c.labels('ws_sessions'),
      ws_sessions_per_ip: c.labels('ws_sessions_per_ip'),
    }
  }

  /** A reload: new limits apply to new requests and sessions; those counted stay counted. */
  configure (cfg: LimitsConfig): void {
    this.cfg = cfg
  }

  get retryAfter (): readonly [string, string] {
    return ['retry-after', String(this.cfg.retryAfterSec)]
  }

  takeRequest (ip: string): FerryError | undefined {
    const { maxRequestsInFlight: max, maxRequestsInFlightPerIp: perIp } = this.cfg
    if (max > 0 && this.http.total >= max) return this.refuse('http_in_flight', 'FERRY_ERR_GLOBAL_LIMIT', `the gateway serves limits.maxRequestsInFlight ${max} requests`)
    if (perIp > 0 && this.http.count(ip) >= perIp) return this.refuse('http_in_flight_per_ip', 'FERRY_ERR_PER_IP_LIMIT', `${ip} has limits.maxRequestsInFlightPerIp ${perIp} requests in flight`)
    this.http.add(ip)
    return undefined
  }

  releaseRequest (ip: string): void {
    this.http.remove(ip)
  }

  takeSession (ip: string): FerryError | undefined {
    const { maxWebSocketSessions: max, maxWebSocketSessionsPerIp: perIp } = this.cfg
    if (max > 0 && this.ws.total >= max) return this.refuse('ws_sessions', 'FERRY_ERR_GLOBAL_LIMIT', `the gateway holds limits.maxWebSocketSessions ${max} sessions`)
    if (perIp > 0 && this.ws.count(ip) >= perIp) return this.refuse('ws_sessions_per_ip', 'FERRY_ERR_PER_IP_LIMIT', `${ip} holds limits.maxWebSocketSessionsPerIp ${perIp} sessions`)
    this.ws.add(ip)
    return undefined
  }

  releaseSession (ip: string): void {
    this.ws.remove(ip)
  }

  private refuse (limit: LimitName, code: 'FERRY_ERR_GLOBAL_LIMIT' | 'FERRY_ERR_PER_IP_LIMIT', msg: string): FerryError {
    this.refused[limit].inc()
    return new FerryError(code, `${msg}; retry in ${this.cfg.retryAfterSec} s`)
  }

  /** For /status: what is counted now, and how many client IPs the tables hold (0 when idle: no leak). */
  status (): object {
    return {
      httpInFlight: this.http.total,
      httpClientIps: this.http.ips,
      wsSessions: this.ws.total,
      wsClientIps: this.ws.ips,
      ...this.cfg,
    }
  }
}
