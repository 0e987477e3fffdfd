import { monitorEventLoopDelay } from 'node:perf_hooks'
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics, type MetricObjectWithValues, type MetricValue } from 'prom-client'

/** The counters the console's charts difference: WebSocket messages proxied and HTTP requests answered, since start. */
export interface TrafficTotals {
  messages: number
  requests: number
}

/**
 * Every metric Ferry exports is declared here, on a registry passed in (never the global one), so
 * several gateways can live in one process (tests). Labels are bounded: route, upstream, endpoint,
 * status code, error code, kind. Never a client address or request id.
 * Callers resolve label children once (per upstream / route), not per request.
 *
 * A pod's /metrics adds its workers' registries and the control plane's (src/planes/control.ts) by each
 * metric's `aggregator` (prom-client's cluster aggregation; unset: sum). Counters, histograms and gauges
 * that count things held (connections, sessions, bytes, waiting requests) are summed; a gauge that is a
 * state, a flag or a configured figure must not be: it names its aggregator (min, max or first) and says
 * in its help what the pod's figure means.
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
  readonly httpPoolResets: Counter<'upstream'>
  readonly httpAbortedBeforeUpstream: Counter<'upstream'>
  readonly httpLongHeld: Counter<'upstream' | 'why'>
  readonly httpLongHeldNow: Gauge<'upstream'>
  readonly httpAffinity: Counter<'upstream' | 'outcome'>
  readonly endpointEjections: Counter<'upstream' | 'endpoint'>
  readonly endpointUp: Gauge<'upstream' | 'endpoint'>
  readonly endpointCheckedUp: Gauge<'upstream' | 'endpoint'>
  readonly healthChecks: Counter<'upstream' | 'endpoint' | 'result'>
  readonly upstreamEndpoints: Gauge<'upstream' | 'state'>
  readonly discoveryChanges: Counter<'upstream' | 'change'>
  readonly discoveryRefreshes: Counter<'upstream' | 'source' | 'result'>
  readonly noHealthyEndpoint: Counter<'upstream'>
  readonly splitAssigned: Counter<'route' | 'subset' | 'by'>
  readonly splitFallbacks: Counter<'route' | 'subset' | 'reason'>
  readonly splitRebalanced: Counter<'route' | 'subset'>
  readonly endpointState: Gauge<'upstream' | 'endpoint'>
  readonly endpointDrainMoved: Counter<'upstream' | 'cause'>
  readonly endpointDrainRemaining: Gauge<'upstream' | 'endpoint'>
  readonly bytes: Counter<'direction' | 'upstream'>
  readonly authResults: Counter<'policy' | 'method' | 'result'>
  readonly rateLimitDecisions: Counter<'policy' | 'decision'>
  readonly configInfo: Gauge<'gateway' | 'version'>
  readonly workers: Gauge<'state'>
  readonly workerRestarts: Counter<'reason'>
  readonly tcpConnections: Counter<'listener'>
  readonly tcpClosed: Counter<'listener' | 'reason'>
  readonly tcpBytes: Counter<'listener' | 'direction'>
  readonly tcpDuration: Histogram<'listener'>
  readonly tcpConnectFailures: Counter<'upstream' | 'endpoint' | 'code'>
  readonly upstreamTlsFailures: Counter<'upstream' | 'endpoint' | 'reason'>
  readonly wsSessions: Gauge<'route' | 'mode'>
  readonly wsSessionsTotal: Counter<'route' | 'mode'>
  readonly wsUpgradeFailures: Counter<'route' | 'code'>
  readonly accessDenied: Counter<'route' | 'reason'>
  readonly wsClosed: Counter<'mode' | 'reason'>
  readonly wsMessages: Counter<'mode' | 'direction'>
  readonly wsBytes: Counter<'mode' | 'direction'>
  readonly muxLinks: Gauge<'upstream' | 'endpoint' | 'state'>
  readonly muxLinkEvents: Counter<'upstream' | 'endpoint' | 'event'>
  readonly muxStreamsPerLink: Gauge<'upstream' | 'endpoint' | 'link'>
  readonly muxCreditStalls: Counter<'upstream' | 'direction'>
  readonly muxPublished: Counter<'upstream'>
  readonly muxFanout: Counter<'upstream'>
  readonly muxProtocolErrors: Counter<'upstream' | 'code'>
  readonly muxHandoffs: Counter<'upstream' | 'outcome'>
  readonly muxHandoffSeconds: Histogram<'upstream'>
  readonly muxHandoffsWaiting: Gauge<'upstream'>
  readonly affinityFallback: Gauge<'store'>
  readonly affinityLookups: Counter<'store' | 'outcome'>
  readonly affinityStoreLatency: Histogram<'store' | 'op'>
  readonly affinityStoreErrors: Counter<'store' | 'op' | 'reason'>
  readonly affinityEvictions: Counter<'store'>
  readonly resumes: Counter<'upstream' | 'outcome'>
  readonly resumeReplayed: Counter<'upstream' | 'direction'>
  readonly resumeSeconds: Histogram<'upstream'>
  readonly resumeClientErrors: Counter<'upstream' | 'code'>
  readonly admissionRefused: Counter<'reply'>
  readonly limitRefused: Counter<'limit'>
  readonly ipLeaseBorrows: Counter<'result'>
  readonly bufferedBodyBytes: Gauge
  readonly streamedBodies: Gauge
  readonly acceptPaused: Counter<'listener'>
  readonly acceptPausedNow: Gauge<'listener'>
  readonly configReloads: Counter<'result'>
  readonly tlsCertChecks: Counter<'result'>
  readonly tcpTlsCertChecks: Counter<'listener' | 'result'>
  readonly tcpSniRouted: Counter<'listener' | 'upstream'>
  readonly drainPhase: Gauge
  readonly consoleSubscribers: Gauge
  readonly consoleDropped: Counter
  readonly adminUnauthorized: Counter<'path'>
  readonly drainMigrated: Counter<'kind'>
  readonly drainRemaining: Gauge<'kind'>

  constructor (registry = new Registry()) {
    this.registry = registry
    const r = [registry]
    collectDefaultMetrics({ register: registry, prefix: 'ferry_' }) // ferry_process_*, ferry_nodejs_*
    eventLoopDelay(registry)
    this.httpRequests = new Counter({ name: 'ferry_http_requests_total', help: 'HTTP requests answered, by route, upstream and status code sent to the client.', labelNames: ['route', 'upstream', 'status'], registers: r })
    this.httpInFlight = new Gauge({ name: 'ferry_client_requests_in_flight', help: 'Client HTTP requests being served now. (uWebSockets.js 20.30 has no per-connection HTTP hook, so idle keep-alive client connections are not counted.)', labelNames: ['kind'], registers: r })
    this.httpErrors = new Counter({ name: 'ferry_errors_total', help: 'Requests ended by a Ferry error, by stable error code (see docs/errors.md).', labelNames: ['code', 'upstream'], registers: r })
    this.upstreamLatency = new Histogram({ name: 'ferry_upstream_response_seconds', help: 'Time from dispatch to the upstream until its response headers arrived.', labelNames: ['upstream'], buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30], registers: r })
    this.upstreamConnections = new Gauge({ name: 'ferry_connections', help: 'Open connections by side (client/upstream), kind (http/ws/mux/tcp) and upstream.', labelNames: ['side', 'kind', 'upstream'], registers: r })
    this.upstreamQueueDepth = new Gauge({ name: 'ferry_upstream_queue_depth', help: 'Requests waiting for a free upstream connection.', labelNames: ['upstream'], registers: r })
    this.httpPoolResets = new Counter({ name: 'ferry_http_pool_resets_total', help: 'HTTP endpoint connection pools replaced because undici refused a request before sending it (such a refusal leaves an undici client unable to dispatch).', labelNames: ['upstream'], registers: r })
    this.httpLongHeld = new Counter({ name: 'ferry_http_long_held_total', help: 'HTTP requests served from the long-held budget (pool.longHeld), by why: sse (Accept: text/event-stream), route (longHeld: true), polling (Engine.IO long-polling GET), refused (the budget was full: 503).', labelNames: ['upstream', 'why'], registers: r })
    this.httpLongHeldNow = new Gauge({ name: 'ferry_http_long_held', help: 'HTTP requests holding a long-held connection now (pool.longHeld), per upstream.', labelNames: ['upstream'], registers: r })
    this.httpAbortedBeforeUpstream = new Counter({ name: 'ferry_http_aborted_before_upstream_total', help: 'HTTP requests never sent upstream because their client went away first: among them a request followed in the same read by a pipelined one (uWS closes such a connection; docs/http.md).', labelNames: ['upstream'], registers: r })
    this.httpAffinity = new Counter({ name: 'ferry_http_affinity_total', help: 'Requests on routes with affinity (sticky sessions) to an HTTP upstream, by how their endpoint was chosen: hit (the endpoint the affinity store records for the key), miss (no record: rendezvous hashing of the key), fallback (the recorded endpoint is unhealthy, gone or outside the route split\'s subset: the next healthy one in the key\'s rendezvous order; the record follows), issued (no key: Ferry made one and set its cookie), keyless (no key and no setCookie: balanced normally), learned (the backend set the route\'s affinity cookie: its value is recorded for the endpoint that set it).', labelNames: ['upstream', 'outcome'], registers: r })
    this.upstreamRetries = new Counter({ name: 'ferry_upstream_retries_total', help: 'Idempotent HTTP requests retried, and WebSocket passthrough handshakes failed over, on another endpoint after a connection failure.', labelNames: ['upstream'], registers: r })
    this.endpointEjections = new Counter({ name: 'ferry_upstream_ejections_total', help: 'Endpoints ejected by passive health checking.', labelNames: ['upstream', 'endpoint'], registers: r })
    this.endpointUp = new Gauge({ name: 'ferry_upstream_endpoint_up', help: '1 unless passive health (outlier ejection) has ejected the endpoint, 0 while ejected (in a pod each worker ejects on its own: 0 while any worker has).', labelNames: ['upstream', 'endpoint'], registers: r, aggregator: 'min' })
    // Discovery and active health checks (docs/discovery.md).
    this.endpointCheckedUp = new Gauge({ name: 'ferry_upstream_endpoint_checked_up', help: 'Active health checks (upstream healthCheck): 1 while the endpoint passes them, 0 while it is starting (no check passed yet) or down (in a pod each worker checks: 0 while any worker sees it so).', labelNames: ['upstream', 'endpoint'], registers: r, aggregator: 'min' })
    this.healthChecks = new Counter({ name: 'ferry_upstream_health_checks_total', help: 'Active health checks run, by result (passed, failed).', labelNames: ['upstream', 'endpoint', 'result'], registers: r })
    this.upstreamEndpoints = new Gauge({ name: 'ferry_upstream_endpoints', help: 'Endpoints of an upstream by state: active (in the discovered set, taking new work when healthy), held (in the set, but drained by the operator: no new work) or draining (removed from the set, finishing what they carry). Updated at scrape time. In a pod: the most any worker counts (each worker keeps the same set).', labelNames: ['upstream', 'state'], registers: r, aggregator: 'max' })
    // Endpoint drain and admin states (docs/endpoint-drain.md).
    this.endpointState = new Gauge({ name: 'ferry_upstream_endpoint_state', help: 'Each endpoint\'s state: 0 active, 1 draining (leaving: drained by the operator, removed from the source, or failing its health; its sessions are being moved off), 2 drained (leaving, nothing left on it). Updated at scrape time. In a pod: the least advanced worker\'s (drained once every worker has drained it).', labelNames: ['upstream', 'endpoint'], registers: r, aggregator: 'min' })
    this.endpointDrainMoved = new Counter({ name: 'ferry_upstream_endpoint_drain_moved_total', help: 'Sessions moved off leaving endpoints (closed 1012 with a retry hint, paced by the upstream\'s drain budget), by why the endpoint left: operator, removed, unhealthy.', labelNames: ['upstream', 'cause'], registers: r })
    this.endpointDrainRemaining = new Gauge({ name: 'ferry_upstream_endpoint_drain_sessions', help: 'Sessions still on a leaving endpoint (present while it is draining or drained). Updated at scrape time.', labelNames: ['upstream', 'endpoint'], registers: r })
    this.discoveryChanges = new Counter({ name: 'ferry_discovery_changes_total', help: 'Endpoints added to or removed from an upstream\'s set by its source (static, dns, registry).', labelNames: ['upstream', 'change'], registers: r })
    this.discoveryRefreshes = new Counter({ name: 'ferry_discovery_refreshes_total', help: 'Resolutions (dns) and reads (registry) of an upstream\'s endpoint source, by result: ok, or failed (the last good set is kept).', labelNames: ['upstream', 'source', 'result'], registers: r })
    this.noHealthyEndpoint = new Counter({ name: 'ferry_upstream_no_healthy_endpoint_total', help: 'Requests, sessions and connections refused at once because no endpoint of the upstream was healthy and whenAllUnhealthy is fail (or the set was empty).', labelNames: ['upstream'], registers: r })
    // Route splits (docs/canary.md): subset = the subset's name (its label values by default), bounded by the config.
    this.splitAssigned = new Counter({ name: 'ferry_split_assigned_total', help: 'New requests (http routes) and sessions (ws, mux routes) of a route with a split, by the subset they went to and why: weight (the key\'s weighted rendezvous choice), pin (the pin header, cookie or query value named it) or fallback (the key\'s subset had no healthy endpoint; subset "*": no subset had one, the whole upstream took it). ferry/client resumes go back to their endpoint and are not counted.', labelNames: ['route', 'subset', 'by'], registers: r })
    this.splitFallbacks = new Counter({ name: 'ferry_split_fallbacks_total', help: 'Requests and sessions whose subset (by weight or pin) could not take them, by that subset and why: unhealthy (it has endpoints, none healthy) or no_endpoints (no endpoint carries its labels, e.g. a registry whose backends have not announced them yet).', labelNames: ['route', 'subset', 'reason'], registers: r })
    this.splitRebalanced = new Counter({ name: 'ferry_split_rebalanced_total', help: 'Open mux sessions a route split with rebalance started moving (backend handoff) to the subset their key is assigned after a weight change, by that subset. Outcomes: ferry_mux_handoffs_total.', labelNames: ['route', 'subset'], registers: r })
    this.bytes = new Counter({ name: 'ferry_http_body_bytes_total', help: 'HTTP body bytes proxied, by direction (request = client→upstream, response = upstream→client).', labelNames: ['direction', 'upstream'], registers: r })
    // TCP passthrough (open connections are ferry_connections{kind="tcp"}).
    this.tcpConnections = new Counter({ name: 'ferry_tcp_connections_total', help: 'Client connections accepted by a TCP listener, including those then closed by a limit.', labelNames: ['listener'], registers: r })
    this.tcpClosed = new Counter({ name: 'ferry_tcp_closed_total', help: 'TCP client connections ended, by reason: "ok" (both sides finished), "probe" (closed before sending a byte of the PROXY header, TLS handshake or ClientHello the listener waited for: a TCP health check) or the error code that ended it (see docs/errors.md).', labelNames: ['listener', 'reason'], registers: r })
    this.tcpBytes = new Counter({ name: 'ferry_tcp_bytes_total', help: 'Bytes passed through TCP listeners, by direction (to_upstream = client→backend, to_client = backend→client). Updated at scrape time.', labelNames: ['listener', 'direction'], registers: r })
    this.tcpDuration = new Histogram({ name: 'ferry_tcp_connection_seconds', help: 'Lifetime of TCP client connections, accept to close.', labelNames: ['listener'], buckets: [0.001, 0.01, 0.1, 1, 10, 60, 300, 1800, 3600, 14400, 86400], registers: r })
    this.tcpConnectFailures = new Counter({ name: 'ferry_tcp_connect_failures_total', help: 'Failed connect attempts to a TCP upstream endpoint (each failover attempt counts), by error code.', labelNames: ['upstream', 'endpoint', 'code'], registers: r })
    this.upstreamTlsFailures = new Counter({ name: 'ferry_upstream_tls_failures_total', help: 'Failed TLS handshakes with upstream endpoints (upstreams with tls), by reason: verify (the certificate does not chain to tls.caFile or the public CAs, or is expired), name (it does not name tls.serverName or the endpoint host), refused (the endpoint sent an alert: it refused Ferry\'s client certificate, or wanted one), protocol (no TLS spoken, nothing in common). Health checks count too.', labelNames: ['upstream', 'endpoint', 'reason'], registers: r })
    // WebSocket sessions (mode: ws = passthrough, mux = streams over links).
    this.wsSessions = new Gauge({ name: 'ferry_ws_sessions', help: 'Open client WebSocket sessions, by route and mode (ws = passthrough, mux = stream over a link).', labelNames: ['route', 'mode'], registers: r })
    this.wsSessionsTotal = new Counter({ name: 'ferry_ws_sessions_total', help: 'Client WebSocket sessions opened (upgrade completed), by route and mode.', labelNames: ['route', 'mode'], registers: r })
    this.accessDenied = new Counter({ name: 'ferry_access_denied_total', help: 'Requests and WebSocket upgrades a route\'s access list refused (403), by route and reason: ip (deny, or not in allow) or origin (a WebSocket Origin not in access.origins).', labelNames: ['route', 'reason'], registers: r })
    this.wsUpgradeFailures = new Counter({ name: 'ferry_ws_upgrade_failures_total', help: 'WebSocket upgrades answered with an HTTP error instead of 101, by route and error code.', labelNames: ['route', 'code'], registers: r })
    this.wsClosed = new Counter({ name: 'ferry_ws_closed_total', help: 'Client WebSocket sessions ended, by mode and reason: "client" (the client closed), "upstream" (the backend closed) or the Ferry error code that ended it.', labelNames: ['mode', 'reason'], registers: r })
    this.wsMessages = new Counter({ name: 'ferry_ws_messages_total', help: 'WebSocket messages proxied, by mode and direction (to_upstream, to_client; topic fan-out not included).', labelNames: ['mode', 'direction'], registers: r })
    this.wsBytes = new Counter({ name: 'ferry_ws_message_bytes_total', help: 'WebSocket message payload bytes proxied, by mode and direction.', labelNames: ['mode', 'direction'], registers: r })
    this.muxLinks = new Gauge({ name: 'ferry_mux_links', help: 'Mux links per upstream endpoint, by state (connecting, ready, draining). Updated at scrape time.', labelNames: ['upstream', 'endpoint', 'state'], registers: r })
    this.muxLinkEvents = new Counter({ name: 'ferry_mux_link_events_total', help: 'Mux link lifecycle events: connected, connect_failed, lost (socket error, close or ping timeout), goaway (the backend is draining).', labelNames: ['upstream', 'endpoint', 'event'], registers: r })
    this.muxStreamsPerLink = new Gauge({ name: 'ferry_mux_streams', help: 'Open streams on each mux link (link = slot index 0..links-1). Updated at scrape time.', labelNames: ['upstream', 'endpoint', 'link'], registers: r })
    this.muxCreditStalls = new Counter({ name: 'ferry_mux_credit_stalls_total', help: 'Times a stream ran out of credit: to_upstream = a client message waited for backend credit; to_client = Ferry held credit back because the client was not reading.', labelNames: ['upstream', 'direction'], registers: r })
    this.muxPublished = new Counter({ name: 'ferry_mux_published_total', help: 'PUBLISH frames received from mux backends (one topic message each).', labelNames: ['upstream'], registers: r })
    this.muxFanout = new Counter({ name: 'ferry_mux_fanout_deliveries_total', help: 'Client deliveries made by topic fan-out (subscribers reached per PUBLISH, summed).', labelNames: ['upstream'], registers: r })
    this.muxProtocolErrors = new Counter({ name: 'ferry_mux_protocol_errors_total', help: 'Mux protocol violations by the backend (malformed frames, flow-control violations, bad UTF-8), by error code; link-scoped ones close the link, stream-scoped ones reset the stream.', labelNames: ['upstream', 'code'], registers: r })
    this.muxHandoffs = new Counter({ name: 'ferry_mux_handoffs_total', help: 'Sessions moved between backends of a mux upstream with their client connected, by outcome: moved (the old backend handed them over), lost_moved (its link died or it never answered: reopened without state), failed (no endpoint took it: client closed 1012), client_gone (the client left meanwhile).', labelNames: ['upstream', 'outcome'], registers: r })
    this.muxHandoffSeconds = new Histogram({ name: 'ferry_mux_handoff_seconds', help: 'From FREEZE (or the link loss) to the session open on its new backend, per moved session.', labelNames: ['upstream'], buckets: [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10], registers: r })
    this.muxHandoffsWaiting = new Gauge({ name: 'ferry_mux_handoffs_waiting', help: 'Sessions waiting for their turn under handoff.maxPerSec (client messages held). Updated at scrape time.', labelNames: ['upstream'], registers: r })
    // Session affinity store (store = memory | redis).
    this.affinityFallback = new Gauge({ name: 'ferry_affinity_fallback', help: '1 while the affinity store cannot answer within affinity.redis.lookupTimeoutMs (Redis down, slow or not connected yet) and sessions are placed by rendezvous hashing of their key; 0 when it answers (in a pod: 1 while any worker falls back).', labelNames: ['store'], registers: r, aggregator: 'max' })
    this.affinityLookups = new Counter({ name: 'ferry_affinity_lookups_total', help: 'Affinity lookups by outcome: hit (a record), miss (none), fallback (the store could not answer; rendezvous hashing decides).', labelNames: ['store', 'outcome'], registers: r })
    this.affinityStoreLatency = new Histogram({ name: 'ferry_affinity_store_seconds', help: 'Time the affinity store (Redis) took to answer a call, by operation; calls past lookupTimeoutMs are counted in ferry_affinity_store_errors_total instead.', labelNames: ['store', 'op'], buckets: [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25], registers: r })
    this.affinityStoreErrors = new Counter({ name: 'ferry_affinity_store_errors_total', help: 'Affinity store calls that failed, by operation and reason: timeout (no answer within lookupTimeoutMs), connection (Redis unreachable), reply (Redis refused the command), corrupt (the value is not an affinity record).', labelNames: ['store', 'op', 'reason'], registers: r })
    this.resumes = new Counter({ name: 'ferry_resume_attempts_total', help: 'ferry/client reconnections offering a resume token, by outcome: resumed, or why not (invalid, expired, wrong_upstream: refused by the gateway; unknown, stale, bad_ack: refused by the backend; no_resume: the backend does not resume). Refused ones got a fresh session.', labelNames: ['upstream', 'outcome'], registers: r })
    this.resumeReplayed = new Counter({ name: 'ferry_resume_replayed_messages_total', help: 'Messages sent again because of resumes: to_client by the backend, to_upstream by the client (what it sent that the backend had not received).', labelNames: ['upstream', 'direction'], registers: r })
    this.resumeSeconds = new Histogram({ name: 'ferry_resume_seconds', help: 'Time from a resuming client\'s upgrade request to the backend\'s ACCEPT (the session is back).', labelNames: ['upstream'], buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5], registers: r })
    this.resumeClientErrors = new Counter({ name: 'ferry_resume_client_errors_total', help: 'ferry.v1 clients closed for breaking the wire protocol (FERRY_ERR_RESUME_BAD_ACK: acknowledged messages it was never sent; FERRY_ERR_WS_CLIENT_PROTOCOL: unknown message kind).', labelNames: ['upstream', 'code'], registers: r })
    this.affinityEvictions = new Counter({ name: 'ferry_affinity_evictions_total', help: 'Affinity records dropped before their TTL because the memory store held affinity.maxEntries.', labelNames: ['store'], registers: r })
    this.configReloads = new Counter({ name: 'ferry_config_reloads_total', help: 'Config reloads (SIGHUP, POST /reload) by result: ok, or refused (invalid, or a field that needs a restart; the running config was kept).', labelNames: ['result'], registers: r })
    this.tlsCertChecks = new Counter({ name: 'ferry_tls_cert_checks_total', help: 'Checks of the HTTP front\'s TLS certificate files (listen.http.tls: every reload and every watchIntervalMs tick, per worker) by result: applied (changed and valid, new handshakes get it), unchanged (grows every tick while the files stay: the watch is alive), or refused (on every check while the files stay bad) (unreadable, not PEM, key mismatch, expired; the running certificates stay).', labelNames: ['result'], registers: r })
    this.tcpTlsCertChecks = new Counter({ name: 'ferry_tcp_tls_cert_checks_total', help: 'Checks of a TCP listener\'s TLS certificate files (listen.tcp[].tls: every reload and every watchIntervalMs tick, per worker) by result: applied (changed and valid, new handshakes get it), unchanged (grows every tick while the files stay: the watch is alive), or refused (on every check while the files stay bad) (unreadable, not PEM, key mismatch, expired, a cipher list OpenSSL refuses; the running certificates stay).', labelNames: ['listener', 'result'], registers: r })
    this.tcpSniRouted = new Counter({ name: 'ferry_tcp_sni_routed_total', help: 'Connections of a TCP listener with sniRoutes passed through to an upstream after their ClientHello was read, by the upstream chosen (a route\'s, or the listener\'s `upstream` for no SNI or no match). Refused ones are in ferry_tcp_closed_total.', labelNames: ['listener', 'upstream'], registers: r })
    this.admissionRefused = new Counter({ name: 'ferry_admission_refused_total', help: 'New WebSocket handshakes refused by admission control (admission.handshakesPerSec), by reply: http_503 (503 + Retry-After) or ws_1013 (ferry/client: close 1013 with retry-after-ms).', labelNames: ['reply'], registers: r })
    this.limitRefused = new Counter({ name: 'ferry_limit_refused_total', help: 'HTTP requests and WebSocket upgrades refused by a limit of config `limits`, by limit: http_in_flight, http_buffered_bytes, ws_sessions (503) or http_in_flight_per_ip, http_streamed_bodies_per_ip, http_buffered_bytes_per_ip, ws_sessions_per_ip (429).', labelNames: ['limit'], registers: r })
    this.ipLeaseBorrows = new Counter({ name: 'ferry_ip_lease_borrows_total', help: 'A worker of a pod borrowed per-IP slots from its control plane (limits.maxRequestsInFlightPerIp, limits.maxWebSocketSessionsPerIp, listen.tcp[].maxConnectionsPerIp; docs/workers.md), by result: granted (all it asked for), short (less: the client holds the figure in the pod, the rest refused), unanswered (no answer within 250 ms: the worker decided alone).', labelNames: ['result'], registers: r })
    this.bufferedBodyBytes = new Gauge({ name: 'ferry_http_buffered_body_bytes', help: 'Request body bytes held in memory now: buffered bodies being read or waiting for an upstream connection (limits.maxBufferedBodyBytes). Updated at scrape time.', registers: r })
    this.streamedBodies = new Gauge({ name: 'ferry_http_streamed_bodies', help: 'Request bodies larger than http.bufferBodyBytes streaming to upstreams now, not yet complete. Updated at scrape time.', registers: r })
    this.acceptPaused = new Counter({ name: 'ferry_accept_paused_total', help: 'Times listeners stopped accepting because fewer than limits.fdReserve file descriptors were free, by listener: front (the HTTP/WebSocket listener and the TCP listeners) or admin (only when no descriptor at all was left).', labelNames: ['listener'], registers: r })
    this.acceptPausedNow = new Gauge({ name: 'ferry_accept_paused', help: '1 while the listener (front, admin) is not accepting because file descriptors ran low (see ferry_accept_paused_total); in a pod, 1 while any worker\'s is.', labelNames: ['listener'], registers: r, aggregator: 'max' })
    this.consoleSubscribers = new Gauge({ name: 'ferry_console_subscribers', help: 'Status console live channels (/events on the admin listener) open now.', registers: r })
    this.consoleDropped = new Counter({ name: 'ferry_console_dropped_total', help: 'Console subscribers dropped because they did not take their snapshots (FERRY_ERR_CONSOLE_SLOW).', registers: r })
    this.adminUnauthorized = new Counter({ name: 'ferry_admin_unauthorized_total', help: 'Admin requests refused 401 for a missing or wrong admin token, by path.', labelNames: ['path'], registers: r })
    this.drainPhase = new Gauge({ name: 'ferry_drain_phase', help: 'Drain progress: 0 running, 1 accept grace (not ready, still accepting), 2 migrating sessions, 3 finishing (HTTP requests, TCP connections, links), 4 drained. In a pod: the pod\'s phase, as /status drain.phase says it.', registers: r, aggregator: 'first' })
    this.drainMigrated = new Counter({ name: 'ferry_drain_migrated_total', help: 'WebSocket sessions moved off this pod by a drain, by kind: resumable (ferry/client: migrate message, close 1012, resumed elsewhere), plain (close 1012), forced (still open at drain.deadlineMs).', labelNames: ['kind'], registers: r })
    this.drainRemaining = new Gauge({ name: 'ferry_drain_remaining', help: 'While draining: what is still open, by kind (sessions, http_requests, tcp_connections).', labelNames: ['kind'], registers: r })
    this.authResults = new Counter({ name: 'ferry_auth_total', help: 'Authentication decisions on routes with an auth policy, by policy, method (jwt, apiKey, hmac; none when no credential was found) and result (ok, anonymous, or the FERRY_ERR_AUTH_* code).', labelNames: ['policy', 'method', 'result'], registers: r })
    this.rateLimitDecisions = new Counter({ name: 'ferry_rate_limit_decisions_total', help: 'Rate limit checks by policy and decision: allowed, limited (429 / 1013), fail_open (Redis could not answer, let through), fail_closed (Redis could not answer, refused 503).', labelNames: ['policy', 'decision'], registers: r })
    this.workers = new Gauge({ name: 'ferry_workers', help: 'Data-plane worker processes of this pod by state (starting, running, draining, restarting), with gateway.workers above 1 (docs/workers.md).', labelNames: ['state'], registers: r })
    this.workerRestarts = new Counter({ name: 'ferry_worker_restarts_total', help: 'Workers the control plane restarted, by why: crash (it exited), hung (no heartbeat for gateway.workerHangMs, killed), start_failed (it could not start after a restart).', labelNames: ['reason'], registers: r })
    this.configInfo = new Gauge({ name: 'ferry_info', help: 'Constant 1, labelled with this gateway\'s id and version.', labelNames: ['gateway', 'version'], registers: r, aggregator: 'max' })
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

  /** The counters the console's charts difference (src/admin/console-feed.ts): every message and request counted so far. */
  async trafficTotals (): Promise<TrafficTotals> {
    const [messages, requests] = await Promise.all([total(this.wsMessages), total(this.httpRequests)])
    return { messages, requests }
  }

  /** What a scrape would read, as prom-client's JSON (a worker's share of the pod's /metrics, src/planes/). */
  async json (): Promise<MetricObjectWithValues<MetricValue<string>>[]> {
    for (const fn of this.collectors) fn()
    return await this.registry.getMetricsAsJSON()
  }
}

/** Sum of every child of a counter family (prom-client's get() is async). */
async function total (c: { get: () => Promise<{ values: Array<{ value: number }> }> }): Promise<number> {
  let n = 0
  for (const v of (await c.get()).values) n += v.value
  return n
}

const LAG_STATS = { min: 'minimum', max: 'maximum', mean: 'mean', stddev: 'standard deviation', p50: '50th percentile', p90: '90th percentile', p99: '99th percentile' } as const
/** How a pod's /metrics combines its processes' figures: the lowest minimum, the average mean, the worst of the rest. */
const LAG_AGGREGATOR: Record<keyof typeof LAG_STATS, 'min' | 'max' | 'average'> = { min: 'min', max: 'max', mean: 'average', stddev: 'max', p50: 'max', p90: 'max', p99: 'max' }

/**
 * Replaces prom-client's ferry_nodejs_eventloop_lag_* gauges. Those read its delay histogram at every
 * scrape and reset it, and a histogram without a sample (right after start, or two scrapes within its
 * 10 ms resolution) reads min 9223372036.85 s (int64 max in ns) and mean NaN. These have the same names
 * and meaning but take the histogram only once it has samples: 0 until the first one, then the figures
 * of the last interval that had any.
 */
function eventLoopDelay (registry: Registry): void {
  registry.removeSingleMetric('ferry_nodejs_eventloop_lag_seconds')
  for (const stat of Object.keys(LAG_STATS)) registry.removeSingleMetric(`ferry_nodejs_eventloop_lag_${stat}_seconds`)
  const histogram = monitorEventLoopDelay({ resolution: 10 })
  histogram.enable()
  // Registered first: a scrape collects the gauges in order, so the others read what this collect set.
  const lag: Gauge = new Gauge({
    name: 'ferry_nodejs_eventloop_lag_seconds',
    help: 'Lag of event loop in seconds.',
    registers: [registry],
    // A pod's /metrics: the worst of its processes (as for the statistics below but min and mean).
    aggregator: 'max',
    // One collect sets every gauge of the family (prom-client's way): the lag is measured by a setImmediate.
    collect () {
      const start = process.hrtime.bigint()
      setImmediate(() => { lag.set(Number(process.hrtime.bigint() - start) / 1e9) })
      if (histogram.count === 0) return
      stats.min.set(histogram.min / 1e9)
      stats.max.set(histogram.max / 1e9)
      stats.mean.set(histogram.mean / 1e9)
      stats.stddev.set(histogram.stddev / 1e9)
      stats.p50.set(histogram.percentile(50) / 1e9)
      stats.p90.set(histogram.percentile(90) / 1e9)
      stats.p99.set(histogram.percentile(99) / 1e9)
      histogram.reset()
    },
  })
  const stats = Object.fromEntries(Object.entries(LAG_STATS).map(([stat, what]) => [stat, new Gauge({ name: `ferry_nodejs_eventloop_lag_${stat}_seconds`, help: `The ${what} of the recorded event loop delays (0 until the first sample).`, registers: [registry], aggregator: LAG_AGGREGATOR[stat as keyof typeof LAG_STATS] })])) as Record<keyof typeof LAG_STATS, Gauge>
}
