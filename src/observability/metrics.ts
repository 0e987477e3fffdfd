import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client'

/**
 * Every metric Ferry exports is declared here, on a registry passed in (never the global one), so
 * several gateways can live in one process (tests). Labels are bounded: route, upstream, endpoint,
 * status code, error code, kind. Never a client address or request id.
 * Callers resolve label children once (per upstream / route), not per request.
 */
export class Metrics {
  readonly registry: Registry
  readonly httpRequests: Counter<'route' | 'upstream' | 'status'>
  readonly httpInFlight: Gauge<'kind'>
  readonly httpErrors: Counter<'code' | 'upstream'>
  readonly upstreamLatency: Histogram<'upstream'>
  readonly upstreamConnections: Gauge<'side' | 'kind' | 'upstream'>
  readonly upstreamQueueDepth: Gauge<'upstream'>
  readonly upstreamRetries: Counter<'upstream'>
  readonly endpointEjections: Counter<'upstream' | 'endpoint'>
  readonly endpointUp: Gauge<'upstream' | 'endpoint'>
  readonly bytes: Counter<'direction' | 'upstream'>
  readonly configInfo: Gauge<'gateway' | 'version'>
  readonly tcpConnections: Counter<'listener'>
  readonly tcpClosed: Counter<'listener' | 'reason'>
  readonly tcpBytes: Counter<'listener' | 'direction'>
  readonly tcpDuration: Histogram<'listener'>
  readonly tcpConnectFailures: Counter<'upstream' | 'endpoint' | 'code'>

  constructor (registry = new Registry()) {
    this.registry = registry
    const r = [registry]
    collectDefaultMetrics({ register: registry, prefix: 'ferry_' }) // ferry_process_*, ferry_nodejs_*
    this.httpRequests = new Counter({ name: 'ferry_http_requests_total', help: 'HTTP requests answered, by route, upstream and status code sent to the client.', labelNames: ['route', 'upstream', 'status'], registers: r })
    this.httpInFlight = new Gauge({ name: 'ferry_client_requests_in_flight', help: 'Client HTTP requests being served now. (uWebSockets.js 20.30 has no per-connection HTTP hook, so idle keep-alive client connections are not counted.)', labelNames: ['kind'], registers: r })
    this.httpErrors = new Counter({ name: 'ferry_errors_total', help: 'Requests ended by a Ferry error, by stable error code (see docs/errors.md).', labelNames: ['code', 'upstream'], registers: r })
    this.upstreamLatency = new Histogram({ name: 'ferry_upstream_response_seconds', help: 'Time from dispatch to the upstream until its response headers arrived.', labelNames: ['upstream'], buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30], registers: r })
    this.upstreamConnections = new Gauge({ name: 'ferry_connections', help: 'Open connections by side (client/upstream), kind (http/ws/mux/tcp) and upstream.', labelNames: ['side', 'kind', 'upstream'], registers: r })
    this.upstreamQueueDepth = new Gauge({ name: 'ferry_upstream_queue_depth', help: 'Requests waiting for a free upstream connection.', labelNames: ['upstream'], registers: r })
    this.upstreamRetries = new Counter({ name: 'ferry_upstream_retries_total', help: 'Idempotent requests retried on another endpoint after a connection failure.', labelNames: ['upstream'], registers: r })
    this.endpointEjections = new Counter({ name: 'ferry_upstream_ejections_total', help: 'Endpoints ejected by passive health checking.', labelNames: ['upstream', 'endpoint'], registers: r })
    this.endpointUp = new Gauge({ name: 'ferry_upstream_endpoint_up', help: '1 when the endpoint takes requests, 0 while ejected.', labelNames: ['upstream', 'endpoint'], registers: r })
    this.bytes = new Counter({ name: 'ferry_http_body_bytes_total', help: 'HTTP body bytes proxied, by direction (request = client→upstream, response = upstream→client).', labelNames: ['direction', 'upstream'], registers: r })
    // TCP passthrough (open connections are ferry_connections{kind="tcp"}).
    this.tcpConnections = new Counter({ name: 'ferry_tcp_connections_total', help: 'Client connections accepted by a TCP listener, including those then closed by a limit.', labelNames: ['listener'], registers: r })
    this.tcpClosed = new Counter({ name: 'ferry_tcp_closed_total', help: 'TCP client connections ended, by reason: "ok" (both sides finished) or the error code that ended it (see docs/errors.md).', labelNames: ['listener', 'reason'], registers: r })
    this.tcpBytes = new Counter({ name: 'ferry_tcp_bytes_total', help: 'Bytes passed through TCP listeners, by direction (to_upstream = client→backend, to_client = backend→client). Updated at scrape time.', labelNames: ['listener', 'direction'], registers: r })
    this.tcpDuration = new Histogram({ name: 'ferry_tcp_connection_seconds', help: 'Lifetime of TCP client connections, accept to close.', labelNames: ['listener'], buckets: [0.001, 0.01, 0.1, 1, 10, 60, 300, 1800, 3600, 14400, 86400], registers: r })
    this.tcpConnectFailures = new Counter({ name: 'ferry_tcp_connect_failures_total', help: 'Failed connect attempts to a TCP upstream endpoint (each failover attempt counts), by error code.', labelNames: ['upstream', 'endpoint', 'code'], registers: r })
    this.configInfo = new Gauge({ name: 'ferry_info', help: 'Constant 1, labelled with this gateway\'s id and version.', labelNames: ['gateway', 'version'], registers: r })
  }

  /** Adds a scrape-time callback (pool stats are read when scraped, not updated per request). */
  onCollect (fn: () => void): () => void {
    this.collectors.add(fn)
    return () => this.collectors.delete(fn)
  }

  private readonly collectors = new Set<() => void>()

  async render (): Promise<string> {
    for (const fn of this.collectors) fn()
    return await this.registry.metrics()
  }
}
