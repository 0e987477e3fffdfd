import type { Counter, Gauge, Histogram } from 'prom-client'
import type { FerryErrorCode } from '../../errors.js'
import type { Metrics } from '../../observability/metrics.js'

/** Metric children for one HTTP upstream, resolved once so the request path does no label lookups. */
export interface UpstreamMetrics {
  readonly inFlight: Gauge.Internal<'kind'>
  readonly latency: Histogram.Internal<'upstream'>
  readonly retries: Counter.Internal
  /** Requests whose client went away before they were sent upstream (a pipelined request in the same read, say). */
  readonly abortedBeforeUpstream: Counter.Internal
  readonly bytesIn: Counter.Internal
  readonly bytesOut: Counter.Internal
  requests: (route: string, status: number) => void
  error: (code: FerryErrorCode) => void
}

export function upstreamMetrics (m: Metrics, upstream: string): UpstreamMetrics {
  const byRouteStatus = new Map<string, Counter.Internal>()
  const byCode = new Map<FerryErrorCode, Counter.Internal>()
  return {
    inFlight: m.httpInFlight.labels('http'),
    latency: m.upstreamLatency.labels(upstream),
    retries: m.upstreamRetries.labels(upstream),
    abortedBeforeUpstream: m.httpAbortedBeforeUpstream.labels(upstream),
    bytesIn: m.bytes.labels('request', upstream),
    bytesOut: m.bytes.labels('response', upstream),
    requests (route, status) {
      const key = `${route}\0${status}`
      let c = byRouteStatus.get(key)
      if (c === undefined) { c = m.httpRequests.labels(route, upstream, String(status)); byRouteStatus.set(key, c) }
      c.inc()
    },
    error (code) {
      let c = byCode.get(code)
      if (c === undefined) { c = m.httpErrors.labels(code, upstream); byCode.set(code, c) }
      c.inc()
    },
  }
}
