/**
 * Every error Ferry raises or reports carries a stable `FERRY_ERR_*` code. This table is the one place
 * that maps a code to what a client sees (HTTP status), what an operator reads (description) and the
 * metric label (the code itself). docs/errors.md is generated from it and a test keeps the two in sync.
 */
export interface ErrorSpec {
  /** HTTP status a client receives when this error ends its request (0: not sent to a client). */
  readonly status: number
  readonly description: string
}

export const ERRORS = {
  FERRY_ERR_CONFIG_INVALID: { status: 0, description: 'The configuration failed validation; every problem is listed with its field path.' },
  FERRY_ERR_CONFIG_READ: { status: 0, description: 'The configuration file could not be read or is not valid YAML.' },
  FERRY_ERR_UWS_FALLBACK: { status: 0, description: 'uWebSockets.js loaded its slow JavaScript fallback instead of the native binary; Ferry refuses to run on it.' },
  FERRY_ERR_LISTEN: { status: 0, description: 'A listener could not bind its host and port (in use, or not permitted).' },
  FERRY_ERR_WORKER: { status: 0, description: 'With gateway.workers above 1: a worker process could not start (the pod does not start), or it exited or stopped answering for gateway.workerHangMs while serving (it is restarted; counted in ferry_worker_restarts_total). docs/workers.md.' },
  FERRY_ERR_TLS_CERT: { status: 0, description: 'A certificate, key or passphrase file of listen.http.tls (or of a listen.tcp[].tls) is unreadable, not PEM, does not match its key, or is expired or not yet valid. At start the process does not start; on a reload or a file change the running certificates stay and the refusal is logged naming the field and counted in ferry_tls_cert_checks_total{result="refused"} (ferry_tcp_tls_cert_checks_total for a TCP listener). Likewise a file of an upstream\'s tls (caFile, certFile, keyFile, passphraseFile): at start the process does not start; a reload is refused naming the field and the running config stays.' },
  FERRY_ERR_BAD_REQUEST: { status: 400, description: 'The client request is malformed in a way Ferry checks (conflicting Content-Length, a Transfer-Encoding whose last coding is not chunked or that repeats chunked, bad Host, a target that is not origin-form or holds a fragment, a header name that is not a token, a control character in a header value); the connection is closed. Malformed input that uWebSockets.js refuses itself never reaches Ferry: see docs/edge.md.' },
  FERRY_ERR_URI_TOO_LONG: { status: 414, description: 'The request target (path and query) is longer than http.maxUrlBytes; the connection is closed.' },
  FERRY_ERR_HEADERS_TOO_LARGE: { status: 431, description: 'The request line and headers add up to more than http.maxHeaderBytes; the connection is closed. (uWebSockets.js 20.30 itself sends no response byte when a request head arrives in several reads and passes 4 KiB (closed at once), or has more than 48 header lines (it hangs until uWS closes the connection about 10 s after it opened).)' },
  FERRY_ERR_UNSUPPORTED_TRANSFER_CODING: { status: 501, description: 'The request uses a transfer coding other than chunked (gzip, chunked for instance); Ferry cannot pass it on (Transfer-Encoding is hop-by-hop). The connection is closed.' },
  FERRY_ERR_CLIENT_BODY_TIMEOUT: { status: 408, description: 'The client sent its request body too slowly: silent for longer than http.bodyIdleMs, not complete within http.bodyTimeoutMs, or (a streamed body, larger than http.bufferBodyBytes) below http.minBodyRateBytesPerSec over a minBodyRateWindowMs window. The backend request, if any, is aborted, its connection returned to the pool, and the client connection closed (408 if no response byte was sent yet).' },
  FERRY_ERR_PER_IP_LIMIT: { status: 429, description: 'The client IP already holds limits.maxRequestsInFlightPerIp HTTP requests, limits.maxStreamedBodiesPerIp streaming request bodies, limits.maxBufferedBodyBytesPerIp bytes of buffered request bodies, or limits.maxWebSocketSessionsPerIp WebSocket sessions; the request or upgrade is refused with Retry-After before anything is opened upstream (the connection is closed when body bytes are left unread).' },
  FERRY_ERR_GLOBAL_LIMIT: { status: 503, description: 'The gateway already serves limits.maxRequestsInFlight HTTP requests, holds limits.maxBufferedBodyBytes bytes of buffered request bodies, or holds limits.maxWebSocketSessions WebSocket sessions; the request or upgrade is refused with Retry-After before anything is opened upstream (the connection is closed when body bytes are left unread).' },
  FERRY_ERR_FD_RESERVE: { status: 0, description: 'Fewer file descriptors than limits.fdReserve were left: the HTTP/WebSocket listener stopped accepting (the kernel refuses new connections at once) and TCP listeners reset new connections as they arrive, until twice that many are free (docs/edge.md). Counted in ferry_accept_paused_total.' },
  FERRY_ERR_NO_ROUTE: { status: 404, description: 'No route matches the request host and path.' },
  FERRY_ERR_BODY_TOO_LARGE: { status: 413, description: 'The request body is larger than maxBodyBytes.' },
  FERRY_ERR_QUEUE_FULL: { status: 503, description: 'Every upstream connection is busy and the wait queue is at queueLimit; the response carries Retry-After.' },
  FERRY_ERR_QUEUE_TIMEOUT: { status: 503, description: 'The request waited queueTimeoutMs for an upstream connection; the response carries Retry-After.' },
  FERRY_ERR_UPSTREAM_CONNECT: { status: 502, description: 'Ferry could not connect to the upstream endpoint (refused, unreachable). For TCP: every endpoint tried within timeouts.connectBudgetMs failed; the client connection is closed.' },
  FERRY_ERR_UPSTREAM_CONNECT_TIMEOUT: { status: 504, description: 'Connecting to the upstream endpoint took longer than timeouts.connectMs.' },
  FERRY_ERR_UPSTREAM_TIMEOUT: { status: 504, description: 'The upstream sent no response headers within timeouts.responseMs.' },
  FERRY_ERR_UPSTREAM_BODY_TIMEOUT: { status: 504, description: 'The upstream response body stalled for longer than timeouts.bodyIdleMs.' },
  FERRY_ERR_UPSTREAM_RESET: { status: 502, description: 'The upstream closed or reset the connection before the response was complete.' },
  FERRY_ERR_UPSTREAM_TLS: { status: 502, description: 'The TLS handshake with an upstream endpoint (an upstream with tls, or https:// / wss:// endpoints) failed: its certificate does not chain to tls.caFile (or the public CAs) or has expired, it does not name tls.serverName (or the endpoint host), the backend refused Ferry\'s client certificate or wanted one, or it does not speak TLS. HTTP: 502 (an idempotent request is retried on another endpoint first); WebSocket upgrade: 502; TCP: the client connection is closed (after the other endpoints were tried); mux: the link is not made (sessions wait for another, then 502). Counts against the endpoint\'s passive health; counted in ferry_upstream_tls_failures_total by reason, and logged once per endpoint and reason (again at most every 5 minutes while it lasts, with the number not logged), not per request.' },
  FERRY_ERR_UPSTREAM_PROTOCOL: { status: 502, description: 'The upstream sent something that is not valid HTTP/1.1 (garbage, bad headers, wrong length), or a passthrough WebSocket backend broke the WebSocket protocol (its client is closed 1011).' },
  FERRY_ERR_CLIENT_ABORTED: { status: 0, description: 'The client went away before the response was complete; the upstream request is aborted.' },
  FERRY_ERR_UNFORWARDABLE: { status: 400, description: 'The HTTP client library Ferry forwards with (undici) refused to send the request (a part it cannot encode); only that request fails, its pool slot is released, and the endpoint\'s connection pool is replaced so no later request waits behind it (counted in ferry_http_pool_resets_total). The front\'s own checks are meant to catch such requests first.' },
  FERRY_ERR_HANDOFF_FAILED: { status: 0, description: 'A session could not be moved to another backend of its mux upstream (no endpoint with a ready link within timeouts.openMs, or the upstream is closing): its client is closed 1012 (reconnect). Counted in ferry_mux_handoffs_total{outcome="failed"}.' },
  FERRY_ERR_HANDOFF_TIMEOUT: { status: 0, description: 'A backend sent no HANDOFF within handoff.timeoutMs of the gateway\'s FREEZE: its stream is reset and the session moves to another backend as lost (no state).' },
  FERRY_ERR_CLIENT_BODY: { status: 400, description: 'The client request body could not be read to its end.' },
  FERRY_ERR_TCP_LIMIT: { status: 0, description: 'A TCP listener already held maxConnections client connections; the new one was closed at once.' },
  FERRY_ERR_TCP_IP_LIMIT: { status: 0, description: 'The client IP already held maxConnectionsPerIp connections on this TCP listener; the new one was closed at once.' },
  FERRY_ERR_TCP_PROXY_HEADER: { status: 0, description: 'A connection to a listener with acceptProxyProtocol (a TCP listener, or the HTTP front with `v1+v2`) sent no valid PROXY protocol header (garbage, oversized, unsupported, or plain HTTP/TLS without one; on the HTTP front also a connection to uWS\'s internal port that did not come through Ferry\'s reader); it was closed without a response.' },
  FERRY_ERR_TCP_PROXY_TIMEOUT: { status: 0, description: 'A connection to a listener with acceptProxyProtocol (a TCP listener, or the HTTP front with `v1+v2`) did not complete its PROXY header within proxyHeaderTimeoutMs; it was closed.' },
  FERRY_ERR_TCP_PROXY_UNTRUSTED: { status: 0, description: 'A peer outside trustedProxies connected to a listener with acceptProxyProtocol; it was closed before anything was read. On the HTTP front (peers outside `http.trustedProxies`): with `v1+v2` likewise; with `v2` (uWebSockets.js gives no hook at accept) at its first request or upgrade, closed without a response.' },
  FERRY_ERR_TCP_IDLE: { status: 0, description: 'No bytes moved either way on a TCP connection for idleTimeoutMs (this includes a peer that stopped reading); both sides were closed.' },
  FERRY_ERR_TCP_CLIENT_RESET: { status: 0, description: 'The TCP client reset the connection or it failed with a socket error; the backend connection was reset too.' },
  FERRY_ERR_TCP_SHUTDOWN: { status: 0, description: 'The gateway stopped and a TCP connection was still open after shutdownGraceMs; it was closed.' },
  FERRY_ERR_TCP_TLS_HANDSHAKE: { status: 0, description: 'A client of a TCP listener with `tls` did not complete the TLS handshake: it sent no ClientHello (garbage, plain HTTP or another protocol on the TLS port), offered only versions below tls.minVersion (TLS 1.0/1.1 get a protocol_version alert), had no cipher or ALPN protocol in common, or ended the connection part-way through the handshake (one that ends before sending a byte of it is a health check, counted as reason probe). It was closed (with an alert where OpenSSL sends one); nothing was sent to a backend.' },
  FERRY_ERR_TCP_TLS_TIMEOUT: { status: 0, description: 'A client of a TCP listener with `tls` did not complete the TLS handshake within tls.handshakeTimeoutMs (a client that stalls mid-handshake); it was closed and no backend connection was opened.' },
  FERRY_ERR_TCP_TLS_RENEGOTIATION: { status: 0, description: 'A client of a TCP listener with `tls` asked to renegotiate a TLS 1.2 session (a ClientHello after the handshake). Ferry refuses client-initiated renegotiation (no_renegotiation alert) and closes the connection and its backend connection. TLS 1.3 has no renegotiation.' },
  FERRY_ERR_TCP_SNI_CLIENT_HELLO: { status: 0, description: 'A client of a TCP listener with sniRoutes sent no readable TLS ClientHello (garbage, plain HTTP, a malformed server_name, or no complete ClientHello in the first 16 KiB); it was closed and nothing was sent to a backend.' },
  FERRY_ERR_TCP_SNI_TIMEOUT: { status: 0, description: 'A client of a TCP listener with sniRoutes did not send its complete ClientHello within clientHelloTimeoutMs; it was closed and no backend connection was opened.' },
  FERRY_ERR_TCP_SNI_UNKNOWN: { status: 0, description: 'A client of a TCP listener with sniRoutes and `sniUnmatched: refuse` sent no SNI name, or one no route lists: it got a TLS unrecognized_name alert and was closed; nothing was sent to a backend.' },
  FERRY_ERR_NOT_WEBSOCKET: { status: 400, description: 'The WebSocket upgrade request is malformed (bad Sec-WebSocket-Key or version). (An upgrade on a route to an http upstream is passed through to its endpoints.)' },
  FERRY_ERR_UPGRADE_REQUIRED: { status: 426, description: 'A plain HTTP request arrived for a route whose upstream takes WebSocket sessions only.' },
  FERRY_ERR_WS_UPSTREAM_HANDSHAKE: { status: 502, description: 'The passthrough backend refused the WebSocket handshake (non-101 answer) or picked a subprotocol the client did not offer.' },
  FERRY_ERR_WS_CLIENT_BACKPRESSURE: { status: 0, description: 'A WebSocket client stopped reading: its queued bytes (topic messages included) passed websocket.maxBackpressure; it was closed 1008 without delaying other sessions. (Checked every 64 KiB published to a topic and once a second; uWS itself cuts at twice the limit.)' },
  FERRY_ERR_WS_UPSTREAM_SLOW: { status: 0, description: 'The backend took no more of a session\'s messages (no mux credit, or a full passthrough socket) while the client kept sending past websocket.maxBufferedToUpstream; the client was closed 1013.' },
  FERRY_ERR_WS_MESSAGE_TOO_LARGE: { status: 0, description: 'A message is larger than allowed (client: websocket.maxPayloadLength; mux backend: flow.maxMessageBytes); the session was closed 1009. A client message over twice maxPayloadLength is refused by uWS itself, which drops the socket (the client sees 1006).' },
  FERRY_ERR_WS_UPSTREAM_LOST: { status: 0, description: 'The backend side of a WebSocket session went away without a close: a mux link was lost (the client is closed 1012, service restart: reconnect) or a passthrough backend socket reset (closed 1011).' },
  FERRY_ERR_MUX_NO_LINK: { status: 502, description: 'No mux link to any healthy endpoint became ready within timeouts.openMs; the upgrade is answered 502.' },
  FERRY_ERR_MUX_VERSION: { status: 0, description: 'A mux peer spoke a protocol version Ferry does not (frame header or HELLO); the link was closed.' },
  FERRY_ERR_MUX_BAD_FRAME: { status: 0, description: 'A mux peer sent a malformed frame (unknown type, wrong stream, bad payload). Framing errors close the link; a bad payload on a stream resets only that stream (its client is closed 1011).' },
  FERRY_ERR_MUX_FRAME_TOO_LARGE: { status: 0, description: 'A mux frame was larger than the receiver\'s announced maxFrameBytes; framing cannot be trusted, the link was closed.' },
  FERRY_ERR_MUX_FLOW_CONTROL: { status: 0, description: 'A mux peer sent more DATA than the credit it was granted; that stream was reset.' },
  FERRY_ERR_MUX_BAD_UTF8: { status: 0, description: 'A mux backend sent a text message that is not valid UTF-8; the stream was reset and the client closed 1011 (clients would reject the frame).' },
  FERRY_ERR_MUX_PING_TIMEOUT: { status: 0, description: 'A mux link answered no PING for two ping intervals; it was declared dead, its sessions closed 1012, and it reconnects.' },
  FERRY_ERR_MUX_STREAM_RESET: { status: 0, description: 'The backend reset a stream (RESET frame); its client was closed 1011.' },
  FERRY_ERR_WS_CLIENT_PROTOCOL: { status: 0, description: 'A client broke the WebSocket protocol: uWebSockets.js dropped it for invalid UTF-8 or a malformed frame (uWS 20.30 closes without a close frame, so the client sees 1006), or a ferry.v1 client sent a message of an unknown kind (closed 1002).' },
  FERRY_ERR_RESUME_BAD_ACK: { status: 0, description: 'A ferry.v1 client acknowledged messages it was never sent (or went backwards); it is closed 1008 and its backend session closed.' },
  FERRY_ERR_WS_IDLE: { status: 0, description: 'A WebSocket session had no traffic for websocket.idleTimeoutSec (automatic pings unanswered); uWS closed it.' },
  FERRY_ERR_GATEWAY_DRAINING: { status: 0, description: 'The gateway is draining (SIGTERM, POST /drain): the session was migrated, closed 1012 (ferry/client clients were first sent a migrate message and resume elsewhere); TCP connections still open at drain.deadlineMs were closed.' },
  FERRY_ERR_ADMISSION: { status: 503, description: 'A new WebSocket handshake came beyond admission.handshakesPerSec: 503 with Retry-After, or for ferry/client clients close 1013 with a retry-after-ms hint. Nothing was opened on a backend.' },
  FERRY_ERR_GATEWAY_STOPPING: { status: 503, description: 'The gateway is stopping: new WebSocket upgrades are refused and open sessions are closed 1001.' },
  FERRY_ERR_AUTH_MISSING: { status: 401, description: 'The route has an auth policy and the request (or WebSocket upgrade) carried no credential it accepts; nothing was sent to the backend. The response names what is expected (WWW-Authenticate for JWT).' },
  FERRY_ERR_AUTH_INVALID: { status: 401, description: 'The credential was refused: bad signature, wrong algorithm, issuer or audience, a required claim missing, not yet valid (nbf), an unknown API key or HMAC key, a malformed token or signature headers.' },
  FERRY_ERR_AUTH_EXPIRED: { status: 401, description: 'The JWT is past its `exp` (beyond clockSkewSec), or the HMAC signature\'s timestamp is outside windowSec.' },
  FERRY_ERR_AUTH_REPLAY: { status: 401, description: 'An HMAC-signed request reused a nonce already seen within windowSec (a replay).' },
  FERRY_ERR_AUTH_BODY_MISMATCH: { status: 401, description: 'An HMAC-signed request\'s body does not hash to its signed x-ferry-content-sha256; the backend request was aborted before its last byte (the backend never receives a complete forged request).' },
  FERRY_ERR_AUTH_UNAVAILABLE: { status: 503, description: 'Authentication could not be decided: the JWKS URL did not answer within jwksTimeoutMs, or the HMAC replay store (Redis, or a full memory store) could not record the nonce. Retry-After is set.' },
  FERRY_ERR_RATE_LIMITED: { status: 429, description: 'A rate limit policy of the route ran out for this key (IP, claim or header): 429 with Retry-After; ferry/client WebSocket clients are closed 1013 with a retry-after-ms hint.' },
  FERRY_ERR_RATE_LIMIT_UNAVAILABLE: { status: 503, description: 'A cluster-wide rate limit could not be checked (Redis down or slower than rateLimits.redis.timeoutMs) and rateLimits.redis.failMode is closed.' },
  FERRY_ERR_WS_MESSAGE_RATE: { status: 0, description: 'A WebSocket client sent messages faster than the route\'s websocket.messageRate; it was closed 1008.' },
  FERRY_ERR_INTERNAL: { status: 500, description: 'A bug in Ferry; the request is answered 500 and the process keeps running. Also counted, with no answer of its own, when an HTTP exchange refuses a state move its table does not allow (the request goes on in the state it had).' },
  // Service discovery and health checks (docs/discovery.md).
  FERRY_ERR_NO_HEALTHY_ENDPOINT: { status: 503, description: 'No endpoint of the upstream is healthy (all ejected or failing health checks) and its whenAllUnhealthy is fail, or its source (dns, registry) found no endpoints, or the operator drains every one of them: refused at once (HTTP 503 with Retry-After, upgrade 503, TCP connection closed).' },
  // Endpoint drain and admin states (docs/endpoint-drain.md).
  FERRY_ERR_ENDPOINT_DRAINING: { status: 0, description: 'The session\'s backend endpoint is leaving (drained by the operator, removed from the upstream\'s source, or failing its health): the session was closed 1012 with a `retry-after-ms` hint in a paced wave (upstream drain.maxMigrationsPerSec), and its backend side closed 1012; the client reconnects to another endpoint.' },
  FERRY_ERR_UNKNOWN_UPSTREAM: { status: 404, description: 'An admin request (POST /upstreams/NAME/endpoints/ADDR/drain or /ready) named an upstream the running config does not have; nothing was done.' },
  FERRY_ERR_UNKNOWN_ENDPOINT: { status: 404, description: 'An admin request (POST /upstreams/NAME/endpoints/ADDR/drain or /ready) named an address that is not an endpoint of that upstream now (not host:port, or not in its endpoint set); nothing was done.' },
  FERRY_ERR_DISCOVERY: { status: 0, description: 'An endpoint source could not refresh (DNS resolution failed or came back empty, the registry\'s Redis was unreachable); the upstream keeps its last good endpoint set and retries.' },
  // Admin listener and status console (docs/console.md).
  FERRY_ERR_ADMIN_UNAUTHORIZED: { status: 401, description: 'An admin request (/status, /events, POST /drain, POST /reload, POST /upstreams/NAME/endpoints/ADDR/drain or /ready; /metrics with admin.protectMetrics) carried no `Authorization: Bearer` token, or not the configured admin.token; nothing was done.' },
  FERRY_ERR_ACCESS_DENIED: { status: 403, description: 'The route\'s access list refuses the request: the client address is in `access.deny`, or not in a non-empty `access.allow`, or (a WebSocket upgrade) its Origin header is not in `access.origins`. Checked right after routing, before authentication, limits or any backend.' },
  FERRY_ERR_ADMIN_CROSS_ORIGIN: { status: 403, description: 'A POST to the admin listener came from a page of another origin (its Origin header names another host than the request\'s Host): refused, so a web page cannot make a browser drain or reload a gateway on its machine.' },
  FERRY_ERR_CONSOLE_FULL: { status: 503, description: 'admin.console.maxSubscribers live channels (/events) are already open; the new one is refused with Retry-After.' },
  FERRY_ERR_CONSOLE_SLOW: { status: 0, description: 'A console subscriber did not take its snapshots (its socket stayed full for admin.console.maxMissed pushes in a row); it was dropped (counted in ferry_console_dropped_total) and the others were not held up.' },
} as const satisfies Record<string, ErrorSpec>

export type FerryErrorCode = keyof typeof ERRORS

export class FerryError extends Error {
  override name = 'FerryError'
  constructor (readonly code: FerryErrorCode, message: string, options?: ErrorOptions) {
    super(message, options)
  }

  get status (): number {
    return ERRORS[this.code].status
  }
}

export function isFerryError (err: unknown): err is FerryError {
  return err instanceof FerryError
}

/** `err` itself when it is a FerryError (a refusal with its code); anything else is a bug: FERRY_ERR_INTERNAL. */
export function toFerryError (err: unknown, context: string): FerryError {
  return isFerryError(err) ? err : new FerryError('FERRY_ERR_INTERNAL', `${context}: ${(err as Error)?.stack ?? String(err)}`, { cause: err })
}
