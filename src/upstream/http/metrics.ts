import type { Counter } from 'prom-client'
import type { FerryErrorCode } from '../../errors.js'
import type { Metrics } from '../../observability/metrics.js'
import { HistogramBatch } from '../../observability/histogram-batch.js'

/**
 * Metrics of one HTTP upstream as the request path updates them. Per-request counts (requests by route
 * and status, bytes, requests in flight) are plain numbers added to the prom-client metrics at scrape
 * time (`flushHttpMetrics`, run by every /metrics render and by the console before it samples): a
 * labelled child's inc() hashes its labels again on every call, which showed in the keep-alive profile.
 * The response latency likewise: counted by bucket and added to the histogram at scrape time (HistogramBatch).
 */
export interface UpstreamMetrics {
  /** ferry_upstream_response_seconds of this upstream, in seconds. */
  readonly latency: { observe: (seconds: number) => void }
  readonly retries: Counter.Internal
  /** Requests whose client went away before they were sent upstream (a pipelined request in the same read, say). */
  readonly abortedBeforeUpstream: Counter.Internal
  /** A request started (+1) or ended (-1): ferry_client_requests_in_flight. */
  inFlight: (delta: 1 | -1) => void
  /** An ended request: counted by route and status, its body bytes each way. */
  requests: (route: string, status: number, bytesIn?: number, bytesOut?: number) => void
  error: (code: FerryErrorCode) => void
}

/** Pending counts of one upstream name, kept across reloads (a retired build's requests still count under its name). */
class HttpCounts {
  inFlight = 0
  /** A request started since the last flush: the gauge is written even when the delta is 0 (its series exists from the first request on, as with inc/dec). */
  started = false
  bytesIn = 0
  bytesOut = 0
  /** route → status → [count not yet flushed, the counter child] */
  readonly requests = new Map<string, Map<number, [number, Counter.Internal]>>()
  readonly latency: HistogramBatch<'upstream'>

  constructor (private readonly m: Metrics, readonly upstream: string) {
    this.latency = new HistogramBatch(m.upstreamLatency, { upstream })
  }

  request (route: string, status: number): void {
    let byStatus = this.requests.get(route)
    if (byStatus === undefined) { byStatus = new Map(); this.requests.set(route, byStatus) }
    const e = byStatus.get(status)
    if (e === undefined) byStatus.set(status, [1, this.m.httpRequests.labels(route, this.upstream, String(status))])
    else e[0]++
  }

  flush (): void {
    const m = this.m
    this.latency.flush()
    // An ended request alone (-1, nothing started since the last flush) moves the gauge too.
    if (this.started || this.inFlight !== 0) { m.httpInFlight.labels('http').inc(this.inFlight); this.inFlight = 0; this.started = false }
    if (this.bytesIn > 0) { m.bytes.labels('request', this.upstream).inc(this.bytesIn); this.bytesIn = 0 }
    if (this.bytesOut > 0) { m.bytes.labels('response', this.upstream).inc(this.bytesOut); this.bytesOut = 0 }
    for (const byStatus of this.requests.values()) {
      for (const e of byStatus.values()) if (e[0] > 0) { e[1].inc(e[0]); e[0] = 0 }
    }
  }
}

const counts = new WeakMap<Metrics, Map<string, HttpCounts>>()

/** Moves the pending per-request counts of every HTTP upstream into the prom-client metrics. */
export function flushHttpMetrics (m: Metrics): void {
  for (const c of counts.get(m)?.values() ?? []) c.flush()
}

export function upstreamMetrics (m: Metrics, upstream: string): UpstreamMetrics {
  let byName = counts.get(m)
  if (byName === undefined) {
    byName = new Map()
    counts.set(m, byName)
    m.onCollect(() => { flushHttpMetrics(m) })
  }
  let c = byName.get(upstream)
  if (c === undefined) { c = new HttpCounts(m, upstream); byName.set(upstream, c) }
  const pending = c
  const byCode = new Map<FerryErrorCode, Counter.Internal>()
  return {
    latency: pending.latency,
    retries: m.upstreamRetries.labels(upstream),
    abortedBeforeUpstream: m.httpAbortedBeforeUpstream.labels(upstream),
    inFlight (delta) {
      pending.inFlight += delta
      if (delta > 0) pending.started = true
    },
    requests (route, status, bytesIn = 0, bytesOut = 0) {
      pending.request(route, status)
      pending.bytesIn += bytesIn
      pending.bytesOut += bytesOut
    },
    error (code) {
      let e = byCode.get(code)
      if (e === undefined) { e = m.httpErrors.labels(code, upstream); byCode.set(code, e) }
      e.inc()
    },
  }
}
