import { isIP } from 'node:net'
import { z } from 'zod'
import { parseCidr } from '../net/address.js'
import { LABEL_KEY_RE, LABEL_VALUE_RE, labelsMatch, labelsText, MAX_LABELS, type Labels } from './labels.js'

/**
 * The configuration schema: the single source of truth for validation, defaults and the config
 * reference (docs/config.md is rendered from it by `ferry config-reference`; a test keeps it in sync).
 * Every object is strict: an unknown key is an error that names it.
 */

const port = z.number().int().min(0).max(65535)
const positiveInt = z.number({ error: 'must be a positive integer' }).int({ error: 'must be a positive integer' }).positive({ error: 'must be a positive integer' })
const nonNegativeInt = z.number({ error: 'must be a non-negative integer' }).int({ error: 'must be a non-negative integer' }).min(0, { error: 'must be a non-negative integer' })
const durationMs = (def: number, what: string) => positiveInt.default(def).describe(what)

/**
 * `host:port` or `[v6]:port`, optionally after a scheme: `http://` or `https://` (http upstreams),
 * `ws://` or `wss://` (ws upstreams). Which scheme an upstream kind allows is checked by its schema.
 */
export const ENDPOINT_RE = /^(?:(https?|wss?):\/\/)?(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+):(\d{1,5})\/?$/

/** The scheme an endpoint string is written with (`https`, `wss`, ...), '' without one; undefined when it is no endpoint. */
export function endpointScheme (s: string): string | undefined {
  const m = ENDPOINT_RE.exec(s)
  const p = Number(m?.[3])
  return m !== null && p > 0 && p < 65536 ? m[1] ?? '' : undefined
}

/** An endpoint string whose scheme is one of `schemes` ('' for none). */
const endpointWith = (schemes: readonly string[], error: string) => z.string({ error }).refine((s) => schemes.includes(endpointScheme(s) ?? '-'), { error })

const endpoint = endpointWith(['', 'http', 'https'], 'must be host:port, [ipv6]:port, http://host:port or https://host:port with a port of 1-65535')

const listener = (defHost: string, defPort: number) => z.strictObject({
  host: z.string().min(1).default(defHost).describe('Address to bind (0.0.0.0, 127.0.0.1, ::, ::1).'),
  port: port.default(defPort).describe('TCP port; 0 picks a free one (logged at start).'),
})

/** A TLS server name pattern as uWebSockets.js matches it: a DNS name, its labels optionally `*`. */
const serverName = z.string().regex(/^(?=.{1,253}$)(\*|[A-Za-z0-9_]([A-Za-z0-9_-]*[A-Za-z0-9])?)(\.(\*|[A-Za-z0-9_]([A-Za-z0-9_-]*[A-Za-z0-9])?))*$/, { error: 'must be a DNS name, a label may be * (*.example.com)' })

const certPair = {
  certFile: z.string().min(1).describe('PEM certificate file: the server certificate first, then its intermediates. Read again on every reload and when it changes (watched).'),
  keyFile: z.string().min(1).describe('PEM private key file of that certificate (checked to match it at load).'),
}

const passphraseFile = z.string().min(1).optional().describe('File holding the passphrase of an encrypted `keyFile` (and of the `sni` keys); trailing newlines are ignored.')
const sniCerts = z.array(z.strictObject({
  serverNames: z.array(serverName).min(1).describe('Names this certificate is served for (the client\'s SNI); a label may be `*`.'),
  ...certPair,
})).default([]).describe('More certificates, chosen by the name the client sends (SNI). A name no entry lists gets the top-level pair.')
const watchIntervalMs = z.number().int().min(1000, { error: 'must be an integer of 1000-3600000' }).max(3600000, { error: 'must be an integer of 1000-3600000' }).default(5000).describe('How often the certificate, key and passphrase files are checked for changes (a renewed certificate is applied without a reload). Every reload checks them too.')
const cipherList = z.string().min(1).regex(/^[A-Za-z0-9:+!@=._-]+$/, { error: 'must be an OpenSSL cipher list (ECDHE-ECDSA-AES128-GCM-SHA256:...)' })

const httpTls = z.strictObject({
  ...certPair,
  passphraseFile,
  sni: sniCerts,
  minVersion: z.enum(['TLSv1.2']).default('TLSv1.2').describe('Oldest TLS version accepted. uWebSockets.js 20.30 fixes it at TLS 1.2 (its BoringSSL contexts answer a TLS 1.0 or 1.1 ClientHello with a protocol_version alert) and has no option to raise it, so TLSv1.2 is the only value; TLS 1.3 is offered too. See docs/tls.md.'),
  ciphers: cipherList.optional().describe('TLS 1.2 cipher list (OpenSSL syntax, as BoringSSL reads it), for every certificate; uWS passes it as ssl_ciphers. TLS 1.3 suites are not configurable (BoringSSL). A list BoringSSL finds nothing in stops the start. Default: BoringSSL\'s.'),
  watchIntervalMs,
}).describe('Terminate TLS on the HTTP/WebSocket front (HTTPS and WSS): docs/tls.md. Certificates are checked at start (readable, PEM, key matches, not expired) and the process does not start on a bad one; a changed file is applied live, a bad one refused naming its field (the running one stays).')

const alpnId = z.string().regex(/^[\x21-\x7e]{1,255}$/, { error: 'must be an ALPN protocol id of 1-255 printable ASCII characters (h2, mqtt, postgresql)' })

const tcpTls = z.strictObject({
  ...certPair,
  passphraseFile,
  sni: sniCerts,
  minVersion: z.enum(['TLSv1.2', 'TLSv1.3']).default('TLSv1.2').describe('Oldest TLS version accepted (Node\'s OpenSSL); an older ClientHello (TLS 1.0, 1.1) gets a protocol_version alert and is counted as FERRY_ERR_TCP_TLS_HANDSHAKE.'),
  ciphers: cipherList.optional().describe('OpenSSL cipher list for TLS 1.2 (TLS 1.3 suites may be named too, as Node\'s `ciphers` takes them). A list OpenSSL finds nothing in stops the start (a reload is refused) naming this field. Default: Node\'s.'),
  alpn: z.array(alpnId).min(1).optional().describe('ALPN protocols offered, in preference order; a client that offers ALPN with none of them in common is refused with a no_application_protocol alert. Absent: no ALPN (what the client offers is ignored).'),
  handshakeTimeoutMs: durationMs(10000, 'Time from the start of the TLS handshake (after the PROXY header, if any) until it completes; a client that stalls is closed and counted as FERRY_ERR_TCP_TLS_TIMEOUT (checked coarsely, within a quarter of it).'),
  watchIntervalMs,
}).describe('Terminate TLS on this listener (TLS offload: MQTT over TLS, databases, any TCP protocol): the client\'s TLS ends here and the plaintext goes to `upstream` (which may itself use TLS to its endpoints). The access list, per-IP limit and an accepted PROXY header come first, in the clear. Certificates are checked like listen.http.tls\'s and rotated live (a reload or a changed file; open connections keep theirs). Client-initiated renegotiation is refused. docs/tcp.md, docs/tls.md.')

const httpListener = z.strictObject({
  host: z.string().min(1).default('0.0.0.0').describe('Address to bind (0.0.0.0, 127.0.0.1, ::, ::1).'),
  port: port.default(8080).describe('TCP port; 0 picks a free one (logged at start).'),
  tls: httpTls.optional(),
  redirectHttpPort: port.optional().describe('With `tls`: also listen on this port (same host) for plain HTTP and answer every request with 308 to the same URL over https on `port`. 0 picks a free one.'),
  acceptProxyProtocol: z.enum(['off', 'v2', 'v1+v2']).default('off').describe('Take the client address from the PROXY protocol header an L4 load balancer sends before the first byte (docs/edge.md). Only peers in `http.trustedProxies` may connect; any other peer is closed without a response and counted in ferry_tcp_closed_total{listener="listen.http"}. `v2`: read by uWebSockets.js itself at no measurable cost; plain HTTP only (uWS looks for it inside TLS, where no load balancer puts it); v2 only, address block and TLVs together at most 36 bytes; a trusted peer that sends no header is taken as the client; the peer is refused at its first request. `v1+v2`: read by Ferry in front of uWS (v1 and v2, TLVs up to 4 KiB, TLS too; a missing or malformed header is closed and counted at once) at a cost: Ferry spends about 1.6 to 2.6 times the CPU per keep-alive request or WebSocket message, about 5 times per new connection (docs/edge.md). The header\'s source is the client for limits, rate limits, access lists, logs, X-Forwarded-For and `hash` balancing, for HTTP requests and WebSocket upgrades.'),
  proxyHeaderTimeoutMs: durationMs(5000, 'With `acceptProxyProtocol: v1+v2`: time for the complete PROXY header to arrive; then the connection is closed and counted.'),
})

const httpPool = z.strictObject({
  maxConnections: positiveInt.default(16).describe('Hard cap of keep-alive connections each Ferry process opens to each endpoint of this upstream for ordinary (short) requests: with one process the backend never sees more of them; with `gateway.workers` N (the default, `auto`, is the usable cores) each worker has its own pool, so up to N × this (docs/workers.md). Long-held requests (SSE, long polling, streaming responses) have their own budget, `longHeld.maxConnections`, so they never take these (docs/http.md).'),
  queueLimit: nonNegativeInt.default(1000).describe('Requests that may wait for a free connection; beyond it the client gets 503 with Retry-After.'),
  queueTimeoutMs: durationMs(5000, 'How long a request may wait in the queue before 503 with Retry-After.'),
  keepAliveTimeoutMs: durationMs(60000, 'Idle time after which Ferry closes a pooled backend connection (capped by the backend\'s Keep-Alive hint).'),
  longHeld: z.strictObject({
    maxConnections: nonNegativeInt.default(1024).describe('Connections per endpoint and per worker process (as `maxConnections`), besides `maxConnections`, for long-held requests: Server-Sent Events (`Accept: text/event-stream`), Engine.IO (Socket.IO) long-polling GETs, and every request of a route with `longHeld: true`. They never wait for or take a short request\'s connection. Full: such a request gets 503 with Retry-After at once. 0: off (they share `maxConnections`).'),
  }).prefault({}).describe('The budget for requests that stay open (docs/http.md).'),
}).prefault({})

const httpTimeouts = z.strictObject({
  connectMs: durationMs(2000, 'TCP connect budget per attempt; exceeded → 504 (or a retry on another endpoint).'),
  responseMs: durationMs(30000, 'Time from sending the request (a body streamed upstream: from its last byte) until the response headers arrive; exceeded → 504, within a few ms of the figure.'),
  bodyIdleMs: durationMs(30000, 'Longest silence between response body chunks; exceeded → the client connection is closed (504 if nothing was sent). Checked on undici\'s clock, which ticks every 0.5 s: it acts up to about 0.5 s before or after the figure.'),
}).prefault({})

const maxEjectMs = durationMs(300000, 'Cap of the ejection time. An endpoint ejected again soon after it came back (or on its first try after an ejection) stays out twice as long as the time before, up to this; the doubling is forgotten once it stayed up as long as its last ejection lasted.')

const ejection = z.strictObject({
  consecutiveFailures: positiveInt.default(5).describe('Connect failures, resets or timeouts in a row that eject an endpoint.'),
  ejectMs: durationMs(10000, 'How long an ejected endpoint gets no new requests (it is retried after). When every endpoint is ejected, see `whenAllUnhealthy`.'),
  maxEjectMs,
}).prefault({})

// ---- endpoint sources and health (docs/discovery.md) ---------------------------------------------

const hostName = z.string().regex(/^(?=.{1,253}$)[A-Za-z0-9_]([A-Za-z0-9_-]*[A-Za-z0-9])?(\.[A-Za-z0-9_]([A-Za-z0-9_-]*[A-Za-z0-9])?)*\.?$/, { error: 'must be a DNS name' })

/** A DNS server: an IP address, optionally with a port (`10.0.0.10`, `127.0.0.1:5353`, `[::1]:53`). */
const dnsServer = z.string().refine((s) => {
  const m = /^\[([0-9a-fA-F:.]+)\]:(\d{1,5})$/.exec(s) ?? /^([0-9.]+):(\d{1,5})$/.exec(s)
  if (m !== null) return isIP(m[1]!) !== 0 && Number(m[2]) > 0 && Number(m[2]) < 65536
  return isIP(s) !== 0
}, { error: 'must be an IP address, optionally with :port ([v6]:port)' })

const dnsSource = z.strictObject({
  name: hostName.describe('The name to resolve, e.g. a Kubernetes headless Service `chat.default.svc.cluster.local` (one A/AAAA record per ready pod) or an SRV name `_mux._tcp.chat.default.svc.cluster.local`.'),
  type: z.enum(['A', 'AAAA', 'SRV']).default('A').describe('`A`/`AAAA`: each address with `port`; `SRV`: each target (resolved to its A records) with the port the record gives.'),
  port: z.number().int().min(1).max(65535).optional().describe('Port of every endpoint; required with `A`/`AAAA`, ignored with `SRV`.'),
  servers: z.array(dnsServer).min(1).optional().describe('DNS servers to ask (`ip` or `ip:port`). Absent: the system resolver configuration (/etc/resolv.conf).'),
  minTtlMs: durationMs(1000, 'Shortest time between resolutions, whatever TTL the records carry.'),
  maxTtlMs: durationMs(30000, 'Longest time between resolutions, whatever TTL the records carry. A record\'s TTL between the two decides.'),
  intervalMs: durationMs(5000, 'Time between resolutions when the answer carries no TTL (SRV), and between retries after a failed resolution (the last good set is kept meanwhile).'),
  timeoutMs: durationMs(2000, 'Budget of one query (one try per server).'),
}).describe('Endpoints from DNS, re-resolved as the records\' TTL says (clamped by minTtlMs/maxTtlMs). A failed or empty resolution keeps the last good set (counted in ferry_discovery_refreshes_total, logged).')

const registrySource = z.strictObject({
  redis: z.string().regex(/^rediss?:\/\//, { error: 'must be a redis:// or rediss:// URL' }).describe('The Redis where backends register (`ferry/backend`\'s `register.redis`).'),
  service: z.string().regex(/^[A-Za-z0-9_.:-]{1,128}$/, { error: 'use letters, digits and _ . : -' }).describe('The service name the backends register under.'),
  keyPrefix: z.string().min(1).default('ferry:reg:').describe('Prefix of the registry keys (the same as the backends\').'),
  scanIntervalMs: durationMs(5000, 'A full read of the registry this often, besides the pub/sub notices: it sees backends whose registration expired (crashed without deregistering) and notices lost while Redis was unreachable.'),
}).describe('Endpoints that register themselves in Redis (`ferry/backend` createMuxServer `register`, or any process following docs/discovery.md): a key per endpoint kept alive by a TTL heartbeat, a pub/sub notice on register and deregister.')

const httpCheck = z.strictObject({
  path: z.string().startsWith('/', { error: 'must start with /' }).default('/').describe('Path of the health check GET.'),
  expectStatus: z.array(z.number().int().min(100).max(599)).min(1).default([200]).describe('Status codes that pass.'),
})

const checkShape = {
  intervalMs: durationMs(5000, 'Time between checks of each endpoint (a new endpoint is checked at once).'),
  timeoutMs: durationMs(2000, 'A check with no answer within this fails.'),
  healthyThreshold: positiveInt.default(2).describe('Passed checks in a row that bring a down endpoint back (a new endpoint needs one).'),
  unhealthyThreshold: positiveInt.default(3).describe('Failed checks in a row that take an endpoint out.'),
}

const checkWhat = (what: string): string => `Active health checks (${what}). An endpoint takes new work while it passes them and passive ejection has not taken it out; a new endpoint waits for its first passed check. Absent: passive ejection only.`

const healthCheckHttp = z.strictObject({ ...checkShape, http: httpCheck.prefault({}).describe('The HTTP check.') }).optional()
  .describe(checkWhat('an HTTP GET of `http.path` on a connection of its own; passes on a status in `http.expectStatus`'))
const healthCheckWs = z.strictObject({ ...checkShape, http: httpCheck.optional().describe('Check with an HTTP GET instead of a TCP connect.') }).optional()
  .describe(checkWhat('a TCP connect, or an HTTP GET when `http` is given'))
const healthCheckTcp = z.strictObject(checkShape).optional().describe(checkWhat('a TCP connect'))
const healthCheckMux = z.strictObject(checkShape).optional()
  .describe(checkWhat('a PING on a ready link of the endpoint, passed when its PONG arrives; an endpoint without a ready link fails'))

const whenAllUnhealthy = z.enum(['panic', 'fail']).default('panic')
  .describe('No endpoint healthy (all ejected or failing checks): `panic` uses them all (a maybe-bad endpoint beats refusing everything); `fail` refuses at once with FERRY_ERR_NO_HEALTHY_ENDPOINT (HTTP 503, upgrade 503, TCP connection closed).')

const boundedLoadFactor = z.number().min(1).max(100).optional()
  .describe('With `balance: hash` and for affinity keys: hashing with bounded load. An endpoint already carrying more than this × the average load is passed over for the next one in the key\'s rendezvous order (e.g. 1.25). Absent: no bound (a hot key can load one endpoint without limit).')

// ---- endpoint labels and route splits (docs/canary.md) --------------------------------------------

export const labelMap = z.record(
  z.string().regex(LABEL_KEY_RE, { error: 'label keys are names of letters, digits, - _ . (at most 63, an optional dns-name/ prefix)' }),
  z.string().regex(LABEL_VALUE_RE, { error: 'label values are letters, digits, - _ . (1-63, starting and ending with a letter or digit)' }),
).refine((m) => Object.keys(m).length <= MAX_LABELS, { error: `at most ${MAX_LABELS} labels` })

/** An endpoint of a static list: its address, or its address with labels (what a route's `split` selects on). */
const labelled = (address: z.ZodType<string>) => z.union([
  address,
  z.strictObject({
    address: address.describe('`host:port` of the endpoint (the forms a plain entry takes).'),
    labels: labelMap.default({}).describe('Labels of this endpoint, e.g. `{ version: v2 }`: a route\'s `split` sends shares of its traffic to the endpoints whose labels match.'),
  }),
], { error: 'must be an address string or { address, labels }' })
/** Pacing of moving sessions off leaving endpoints (docs/endpoint-drain.md). */
const drainPacing = {
  maxMigrationsPerSec: positiveInt.default(200).describe('At most this many sessions per second are moved off the leaving endpoints of this upstream, all of them together (each closed 1012 with a `retry-after-ms` hint; the new one goes to another endpoint).'),
  spreadMs: nonNegativeInt.default(20000).describe('Each leaving endpoint\'s sessions are moved evenly over this long (at least one per second), or slower when maxMigrationsPerSec says so. 0: as fast as maxMigrationsPerSec allows.'),
}

const onUnhealthy = z.enum(['drain', 'keep']).default('drain')
  .describe('`drain`: the sessions of an endpoint failing its health (active checks down, or ejected by passive health) are moved off like those of a removed one, as long as another endpoint is healthy; `keep`: they stay until they end (what HAProxy and Envoy do unless told otherwise).')

const endpointDrainWs = z.strictObject({ ...drainPacing, onUnhealthy }).prefault({})
  .describe('Sessions of an endpoint that leaves (removed from the source, failing its health, or drained by the operator with POST /upstreams/NAME/endpoints/ADDR/drain) are closed 1012 in paced waves; new sessions go to the other endpoints at once.')
const endpointDrainHttp = z.strictObject({ ...drainPacing, onUnhealthy }).prefault({})
  .describe('For the WebSocket sessions passed through to this upstream\'s endpoints: those of an endpoint that leaves (removed from the source, failing its health, or drained by the operator with POST /upstreams/NAME/endpoints/ADDR/drain) are closed 1012 in paced waves. HTTP requests under way finish; new ones, like new sessions, go to the other endpoints at once.')

/** The source fields every upstream kind has: exactly one of them (checked in configSchema). */
const sources = <T extends z.ZodOptional<z.ZodType<unknown[]>>>(endpointList: T) => ({
  endpoints: endpointList,
  dns: dnsSource.optional(),
  registry: registrySource.optional(),
})

/**
 * TLS towards an upstream's endpoints, one shape for the four kinds (nginx's proxy_ssl_*, Envoy's
 * UpstreamTlsContext): what to trust, what to present, which name to ask for and check. The files are
 * read and checked when the upstream is built (start, every reload), each problem naming its field.
 */
const upstreamTls = z.strictObject({
  enabled: z.boolean().default(true).describe('Speak TLS to the endpoints. `false` keeps the block but speaks plain.'),
  caFile: z.string().min(1).optional().describe('PEM file of the CA certificate(s) an endpoint\'s certificate must chain to (nginx `proxy_ssl_trusted_certificate`, Envoy `trusted_ca`). Absent: Node\'s bundled public CAs (plus `NODE_EXTRA_CA_CERTS`).'),
  certFile: z.string().min(1).optional().describe('Client certificate Ferry presents when an endpoint asks for one (mutual TLS; nginx `proxy_ssl_certificate`): PEM, the certificate first, then its intermediates. Needs `keyFile`; checked at load (PEM, matches its key, valid now).'),
  keyFile: z.string().min(1).optional().describe('PEM private key of `certFile` (nginx `proxy_ssl_certificate_key`).'),
  passphraseFile: z.string().min(1).optional().describe('File holding the passphrase of an encrypted `keyFile` (nginx `proxy_ssl_password_file`); trailing newlines are ignored.'),
  serverName: hostName.optional().describe('Name sent as SNI and checked against the endpoint\'s certificate (nginx `proxy_ssl_name`, Envoy `sni`). Absent: the endpoint\'s host when it is a DNS name; for an IP address no SNI is sent and the certificate must carry that IP address.'),
  rejectUnauthorized: z.boolean().default(true).describe('Verify each endpoint\'s certificate (its chain to `caFile` or the public CAs, its dates, and its name). `false` encrypts without knowing who answers: a warning is logged when the upstream is built.'),
})

const tlsOf = (what: string, scheme?: string): z.ZodOptional<typeof upstreamTls> => upstreamTls.optional().describe(`TLS towards the endpoints: ${what} (docs/tls.md, "TLS to upstreams"). The files are read and checked when the upstream is built: at start a bad one stops the process; a reload reads them again, refuses a bad one naming its field (the running config stays), and rebuilds an upstream whose files changed. Absent: plain${scheme !== undefined ? `, unless the endpoints are written ${scheme}://host:port` : ''}.`)

const httpUpstream = z.strictObject({
  protocol: z.literal('http').describe('HTTP/1.1 with keep-alive towards the backend (over TLS with `tls`, or `https://` endpoints).'),
  ...sources(z.array(labelled(endpoint)).min(1, { error: 'must list at least one endpoint' }).optional().describe('Backend addresses, `host:port`, `http://host:port` or `https://host:port` (https: TLS, see `tls`), or `{ address, labels }` for an endpoint a route\'s `split` selects by label (a static set). Give exactly one of `endpoints`, `dns`, `registry`.')),
  balance: z.enum(['round-robin', 'least-connections']).default('round-robin').describe('How a request picks among healthy endpoints.'),
  healthCheck: healthCheckHttp,
  whenAllUnhealthy,
  pool: httpPool.describe('Connection pool per endpoint.'),
  timeouts: httpTimeouts.describe('Deadlines Ferry enforces towards the backend.'),
  retry: z.strictObject({
    idempotent: z.boolean().default(true).describe('Retry GET/HEAD/OPTIONS/PUT/DELETE once on another endpoint when the connection failed before any response byte.'),
  }).prefault({}).describe('Retry policy.'),
  ejection: ejection.describe('Passive health: endpoints that keep failing are taken out for a while.'),
  drain: endpointDrainHttp,
  tls: tlsOf('https for requests, WebSocket upgrades passed through (wss) and health checks', 'https'),
})

/** `host:port` or `[v6]:port`: a TCP upstream has no scheme (TLS is its `tls`). */
const tcpEndpoint = z.string({ error: 'must be host:port (labels are for routes to http, ws and mux upstreams; a tcp upstream has no route to split it)' })
  .refine((s) => endpointScheme(s) === '', { error: 'must be host:port or [ipv6]:port with a port of 1-65535 (no scheme: TLS is set by tls)' })

const tcpUpstream = z.strictObject({
  protocol: z.literal('tcp').describe('Raw TCP passthrough: each client connection gets its own backend connection (see `listen.tcp`).'),
  ...sources(z.array(tcpEndpoint).min(1, { error: 'must list at least one endpoint' }).optional().describe('Backend addresses, `host:port` (a static set). Give exactly one of `endpoints`, `dns`, `registry`.')),
  balance: z.enum(['round-robin', 'least-connections', 'hash']).default('round-robin')
    .describe('How a connection picks among healthy endpoints. `hash`: rendezvous hash of the client IP (the PROXY header\'s source when one is accepted), so a client keeps its endpoint while that endpoint is healthy.'),
  boundedLoadFactor,
  healthCheck: healthCheckTcp,
  whenAllUnhealthy,
  timeouts: z.strictObject({
    connectMs: durationMs(2000, 'TCP connect budget per attempt (per endpoint tried).'),
    connectBudgetMs: durationMs(5000, 'Total time to get a backend connection for one client connection, failovers included; then the client connection is closed.'),
  }).prefault({}).describe('Deadlines Ferry enforces towards the backend.'),
  ejection: z.strictObject({
    consecutiveFailures: positiveInt.default(5).describe('Failed or timed-out connects in a row that eject an endpoint (a reset of an established connection does not count).'),
    ejectMs: durationMs(10000, 'How long an ejected endpoint gets no new connections (then one is tried again). When every endpoint is ejected, see `whenAllUnhealthy`.'),
    maxEjectMs,
  }).prefault({}).describe('Passive health: endpoints whose connects keep failing are taken out for a while.'),
  tls: tlsOf('each backend connection is a TLS connection that carries the client\'s bytes (a PROXY header goes before the handshake, in the clear); health checks complete a handshake'),
})

/** `host:port`, `[v6]:port`, `ws://host:port` or `wss://host:port`: a passthrough WebSocket backend. */
const wsEndpoint = endpointWith(['', 'ws', 'wss'], 'must be host:port, [ipv6]:port, ws://host:port or wss://host:port with a port of 1-65535')

const wsUpstream = z.strictObject({
  protocol: z.literal('ws').describe('WebSocket passthrough: each client session gets its own WebSocket to an unmodified backend (path, query, subprotocols and `websocket.forwardHeaders` forwarded; close codes propagated).'),
  ...sources(z.array(labelled(wsEndpoint)).min(1, { error: 'must list at least one endpoint' }).optional().describe('Backend addresses, `host:port`, `ws://host:port` or `wss://host:port` (wss: TLS, see `tls`), or `{ address, labels }` for an endpoint a route\'s `split` selects by label (a static set). Give exactly one of `endpoints`, `dns`, `registry`.')),
  balance: z.enum(['round-robin', 'least-connections', 'hash']).default('round-robin')
    .describe('How a session picks among healthy endpoints. `hash`: rendezvous hash of the client IP.'),
  boundedLoadFactor,
  healthCheck: healthCheckWs,
  whenAllUnhealthy,
  timeouts: z.strictObject({
    connectMs: durationMs(5000, 'Budget for the backend TCP connect and WebSocket handshake; exceeded → the client\'s upgrade is answered 502 (or 504).'),
  }).prefault({}).describe('Deadlines Ferry enforces towards the backend.'),
  ejection: ejection.describe('Passive health: endpoints whose handshakes keep failing are taken out for a while.'),
  drain: endpointDrainWs,
  tls: tlsOf('wss for sessions and health checks', 'wss'),
})

const muxUpstream = z.strictObject({
  protocol: z.literal('mux').describe('Ferry\'s mux protocol (docs/mux-protocol.md) to backends using `ferry/backend`: client sessions become streams over a few long-lived links.'),
  ...sources(z.array(labelled(tcpEndpoint)).min(1, { error: 'must list at least one endpoint' }).optional().describe('Backend addresses, `host:port`, or `{ address, labels }` for an endpoint a route\'s `split` selects by label (a static set). Give exactly one of `endpoints`, `dns`, `registry`.')),
  balance: z.enum(['least-streams', 'round-robin', 'hash']).default('least-streams')
    .describe('How a new session picks an endpoint among healthy ones (within an endpoint, the link with the fewest streams). `hash`: rendezvous hash of the client IP.'),
  boundedLoadFactor,
  healthCheck: healthCheckMux,
  whenAllUnhealthy,
  pool: z.strictObject({
    links: z.number().int().min(1).max(64).default(4).describe('Links (TCP connections) each worker process keeps open to each endpoint (`gateway.workers` N: N × this, docs/workers.md); every session of this upstream is a stream on one of its worker\'s links.'),
  }).prefault({}).describe('Links per endpoint.'),
  tls: tlsOf('each link is a TLS connection (`ferry/backend` serves one with createMuxServer\'s `tls` option)'),
  flow: z.strictObject({
    initialWindow: z.number().int().min(16384).max(16 * 1024 * 1024).default(262144)
      .describe('Per-stream credit in bytes Ferry grants the backend (and asks for); a stream whose client is not reading stops at this many bytes in flight.'),
    maxFrameBytes: z.number().int().min(1024).max(1024 * 1024).default(65536).describe('Largest frame payload Ferry accepts (announced in HELLO); larger messages travel as fragments.'),
    maxMessageBytes: positiveInt.default(16 * 1024 * 1024).describe('Largest backend→client message Ferry reassembles; beyond it the stream is reset and the client closed 1009.'),
  }).prefault({}).describe('Flow control (see docs/mux-protocol.md).'),
  timeouts: z.strictObject({
    connectMs: durationMs(2000, 'Budget for a link\'s TCP (and TLS) connect plus the HELLO exchange.'),
    pingIntervalMs: durationMs(15000, 'Link PING period; a link with no PONG for two periods is declared dead and its streams closed 1012.'),
    openMs: durationMs(5000, 'How long a new session may wait for a usable link (while links connect) before its upgrade is answered 502.'),
  }).prefault({}).describe('Deadlines for links.'),
  reconnect: z.strictObject({
    minDelayMs: durationMs(100, 'First reconnect delay after a link is lost or fails to connect.'),
    maxDelayMs: durationMs(5000, 'Cap of the exponential, fully jittered reconnect delay.'),
  }).prefault({}).describe('Link reconnect backoff.'),
  ejection: ejection.describe('Passive health: endpoints whose links keep failing to connect are taken out for a while.'),
  handoff: z.strictObject({
    maxPerSec: positiveInt.default(200).describe('Sessions this gateway reopens on another endpoint of this upstream per second, at most (handoffs from a draining backend and crash failovers alike), so the backends that take them are never flooded. Beyond it they wait their turn, their client messages held. An operator\'s drain of an endpoint (POST /upstreams/NAME/endpoints/ADDR/drain) moves its sessions at this pace too.'),
    timeoutMs: durationMs(5000, 'How long the old backend may take to answer FREEZE with HANDOFF (its last messages, then the state). Past it the session moves as `lost` (no state).'),
    failover: z.boolean().default(true).describe('A session whose backend link dies (process killed) is reopened on another endpoint with `handoff: { lost: true }` instead of its client being closed 1012. Messages the dead process had received but not processed are gone.'),
  }).prefault({}).describe('Backend handoff (docs/backend-handoff.md): sessions outlive the backend process they are on. Plain WebSocket clients of this upstream keep their connection while `ferry/backend`\'s `server.drain()` moves them, or when a backend dies. Resumable `ferry/client` sessions move too, with their resume state, when a drain or an operator moves them; when their backend dies they are closed 1012 and resume (their state died with it).'),
})

export const upstreamSchema = z.discriminatedUnion('protocol', [httpUpstream, wsUpstream, muxUpstream, tcpUpstream]).describe('One backend service; `protocol` selects its kind.')

/** An address, or address/prefix within the family's width; zone ids (`%eth0`) are not addresses. */
/** `https://chat.example.com`, `https://*.example.com`, with an optional port; or `null` (opaque origins). */
const ORIGIN_RE = /^(?:null|https?:\/\/(?:\*\.)?[A-Za-z0-9.-]+(?::\d{1,5})?)$/
const cidr = z.string().refine((s) => parseCidr(s) !== undefined, { error: 'must be an IP address or CIDR (10.0.0.0/8, ::1/128)' })

const tcpListener = z.strictObject({
  name: z.string().regex(/^[A-Za-z0-9_-]+$/, { error: 'listener names use letters, digits, _ and -' }).describe('Name in logs, metrics (`listener` label) and /status.'),
  host: z.string().min(1).default('0.0.0.0').describe('Address to bind (0.0.0.0, 127.0.0.1, ::, ::1).'),
  port: port.describe('TCP port; 0 picks a free one (logged at start and shown in /status).'),
  upstream: z.string().min(1).describe('Name of an entry in `upstreams` with `protocol: tcp`.'),
  proxyProtocol: z.enum(['off', 'v1', 'v2']).default('off').describe('Send a PROXY protocol header (HAProxy v1 text or v2 binary) with the client\'s address to the backend before any data.'),
  acceptProxyProtocol: z.boolean().default(false).describe('Expect a PROXY header (v1 or v2) from a load balancer in front and use the client address it carries. Peers outside `trustedProxies` and malformed headers are closed and counted.'),
  trustedProxies: z.array(cidr).default(['127.0.0.0/8', '::1/128']).describe('Peers allowed to send a PROXY header when `acceptProxyProtocol` is on (addresses or CIDRs).'),
  proxyHeaderTimeoutMs: durationMs(5000, 'With `acceptProxyProtocol`: time for the complete PROXY header to arrive.'),
  maxConnections: positiveInt.default(10000).describe('Client connections this listener holds at once in each worker process (`gateway.workers`: each worker counts the connections it accepted); beyond it new ones are closed at once and counted.'),
  maxConnectionsPerIp: nonNegativeInt.default(0).describe('Client connections one IP address may hold at once (the PROXY source when accepted); beyond it new ones are closed at once and counted. 0: no limit.'),
  idleTimeoutMs: nonNegativeInt.default(3600000).describe('A connection with no bytes moving either way for this long is closed (checked coarsely, within a quarter of it). 0: never.'),
  noDelay: z.boolean().default(true).describe('TCP_NODELAY on both the client and the backend socket.'),
  keepAlive: z.boolean().default(true).describe('TCP keep-alive probes on both sockets, so dead peers are found.'),
  keepAliveDelayMs: durationMs(30000, 'Idle time before the first keep-alive probe.'),
  access: z.strictObject({
    allow: z.array(cidr).default([]).describe('Client addresses (IP or CIDR; the PROXY source when accepted) that may connect; empty: any.'),
    deny: z.array(cidr).default([]).describe('Client addresses (IP or CIDR) refused, checked before `allow`.'),
  }).optional().describe('Access list, checked before anything else: a refused connection is closed at once (nothing is sent to a backend) and counted as FERRY_ERR_ACCESS_DENIED. Changed by a reload without rebinding the port.'),
  shutdownGraceMs: nonNegativeInt.optional().describe('How long open connections may continue once the listener stops accepting (a drain, or a stop), before what they have queued is flushed and they are closed. Default: until the drain\'s deadline (drain.deadlineMs); 5 s on an in-process stop.'),
  tls: tcpTls.optional(),
  sniRoutes: z.array(z.strictObject({
    serverNames: z.array(serverName).min(1).describe('SNI names (from the client\'s ClientHello) routed to `upstream`; a label may be `*` (one label).'),
    upstream: z.string().min(1).describe('Name of an entry in `upstreams` with `protocol: tcp`; it receives the client\'s bytes untouched, ClientHello included, and does the TLS itself.'),
  })).default([]).describe('TLS passthrough chosen by SNI, without terminating TLS: Ferry reads the client\'s ClientHello (at most 16 KiB, within clientHelloTimeoutMs), picks the upstream of the route listing its server name (exact names first, then `*` patterns), and passes every byte through untouched. No SNI, or a name no route lists: `upstream` (or a refusal, see sniUnmatched). Not combinable with `tls`. Routes change on a reload without rebinding. docs/tcp.md.'),
  sniUnmatched: z.enum(['upstream', 'refuse']).default('upstream').describe('With `sniRoutes`: where a ClientHello without SNI, or with a name no route lists, goes: `upstream`, or `refuse`: a TLS unrecognized_name alert and a close, counted as FERRY_ERR_TCP_SNI_UNKNOWN.'),
  clientHelloTimeoutMs: durationMs(10000, 'With `sniRoutes`: time for the complete ClientHello to arrive (after the PROXY header, if any); a client that stalls is closed and counted as FERRY_ERR_TCP_SNI_TIMEOUT (checked coarsely, within a quarter of it).'),
})

/** uWS aborts the process on other values: validate here. */
const idleTimeoutSec = z.number().int().refine((n) => n === 0 || (n >= 8 && n <= 960), { error: 'must be 0 (off) or 8-960 seconds' })

export const DEFAULT_FORWARD_HEADERS = ['authorization', 'cookie', 'origin', 'user-agent', 'accept-language', 'x-request-id']

const websocketRoute = z.strictObject({
  maxPayloadLength: positiveInt.default(1024 * 1024).describe('Largest client message in bytes; larger → close 1009.'),
  idleTimeoutSec: idleTimeoutSec.default(120).describe('A session with no traffic either way for this long is closed; Ferry pings idle clients automatically before that. 0: never.'),
  compression: z.enum(['off', 'shared', 'dedicated']).default('off').describe('permessage-deflate towards clients: `shared` (one compressor, low memory) or `dedicated` (per session, better ratio, ~300 KiB each).'),
  maxBackpressure: positiveInt.default(1024 * 1024).describe('Bytes queued towards one client (topic messages included) beyond which that client is closed (a client that stopped reading).'),
  maxBufferedToUpstream: positiveInt.default(1024 * 1024).describe('Client→backend bytes Ferry holds for one session while the backend grants no credit (mux) or its socket is full (ws); beyond it (and beyond `maxPayloadLength`: one maximal message always fits) the client is closed 1013.'),
  messageRate: z.strictObject({
    perSec: z.number().positive({ error: 'must be a positive number' }).describe('Sustained client messages per second.'),
    burst: positiveInt.describe('Messages a client may send at once above the rate.'),
  }).optional().describe('Per-session limit of client→backend messages (token bucket); past it the session is closed 1008. Absent: no limit.'),
  subprotocols: z.array(z.string().regex(/^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/, { error: 'must be a token' })).default([])
    .describe('mux: subprotocols Ferry accepts, in preference order (the first the client also offers is selected; none → no subprotocol). ws: ignored, the backend chooses.'),
  forwardHeaders: z.array(z.string().regex(/^[a-z0-9-]+$/, { error: 'must be a lower-case header name' })).default(DEFAULT_FORWARD_HEADERS)
    .describe('Client handshake headers passed to the backend (ws: on its handshake; mux: in OPEN metadata). X-Forwarded-For/-Proto/-Host are always added.'),
})


// ---- edge protection: auth policies and rate limits (docs/edge.md) ---------------------------------

/** Where a credential or key is read from: `header:NAME`, `cookie:NAME` or `query:NAME`. */
const credentialSource = z.string().regex(/^(header|cookie|query):[A-Za-z0-9_.~!$&'*+^`|-]{1,128}$/, { error: 'must be header:NAME, cookie:NAME or query:NAME' })
const claimMap = z.record(z.string().regex(/^[A-Za-z0-9_.:-]{1,128}$/, { error: 'claim names use letters, digits, _ . : -' }), z.string().max(1024))

export const JWT_ALGORITHMS = ['HS256', 'HS384', 'HS512', 'RS256', 'RS384', 'RS512', 'PS256', 'PS384', 'PS512', 'ES256', 'ES384', 'ES512', 'EdDSA'] as const
const stringOrList = z.union([z.string().min(1), z.array(z.string().min(1)).min(1)])

const jwtAuth = z.strictObject({
  algorithms: z.array(z.enum(JWT_ALGORITHMS)).min(1, { error: 'must list at least one algorithm' })
    .describe('Algorithms accepted (the token\'s `alg` must be one). HMAC ones (HS*) need `secret`/`secretFile`; the others `publicKeyFile`, `jwksFile` or `jwksUrl`. Mixing the two families is refused (algorithm confusion).'),
  secret: z.string().min(32, { error: 'must be at least 32 characters' }).optional().describe('HS*: the shared secret.'),
  secretFile: z.string().min(1).optional().describe('HS*: read the secret from this file (surrounding whitespace ignored).'),
  publicKeyFile: z.string().min(1).optional().describe('RS*/PS*/ES*/EdDSA: a PEM public key (SPKI) or certificate.'),
  jwksFile: z.string().min(1).optional().describe('A JWKS document on disk (`{"keys": [...]}`); the token\'s `kid` picks the key. Read at start and on reload.'),
  jwksUrl: z.string().regex(/^https?:\/\//, { error: 'must be an http:// or https:// URL' }).optional()
    .describe('A JWKS URL, fetched on first use and cached; an unknown `kid` refetches (at most once per jwksCooldownMs).'),
  jwksCacheMs: durationMs(600000, 'How long a fetched JWKS is used before it is fetched again.'),
  jwksCooldownMs: durationMs(30000, 'Least time between two fetches of the JWKS URL (an unknown `kid` cannot make Ferry hammer it).'),
  jwksTimeoutMs: durationMs(2000, 'Budget of one JWKS fetch; a request waiting for it past that gets 401.'),
  issuer: stringOrList.optional().describe('Accepted `iss` value(s). Absent: not checked.'),
  audience: stringOrList.optional().describe('Accepted `aud` value(s) (the token must name one). Absent: not checked.'),
  clockSkewSec: nonNegativeInt.default(30).describe('Tolerance for `exp` and `nbf` (and `iat` in the future).'),
  requiredClaims: z.array(z.string().min(1)).default([]).describe('Claims the token must carry (besides `exp`, which is always required).'),
  from: z.array(credentialSource).min(1).default(['header:authorization'])
    .describe('Where the token is read, first found wins. `header:authorization` expects `Bearer TOKEN`; others carry the bare token (`query:access_token` for browsers\' WebSocket handshakes, which cannot set headers).'),
  maxTokenBytes: positiveInt.default(8192).describe('Longer tokens are refused without parsing.'),
  cacheEntries: nonNegativeInt.default(10000).describe('Verified tokens remembered (until their `exp`, at most 60 s) so a client\'s repeated requests skip the signature check. 0: no cache.'),
}).superRefine((j, ctx) => {
  const hs = j.algorithms.filter((a) => a.startsWith('HS'))
  const sources = (['secret', 'secretFile', 'publicKeyFile', 'jwksFile', 'jwksUrl'] as const).filter((k) => j[k] !== undefined)
  if (sources.length !== 1) {
    ctx.addIssue({ code: 'custom', path: sources.length === 0 ? ['algorithms'] : [sources[1]!], input: sources, message: `give exactly one key source of secret, secretFile, publicKeyFile, jwksFile, jwksUrl (got ${sources.length === 0 ? 'none' : sources.join(', ')})` })
    return
  }
  const symmetric = sources[0] === 'secret' || sources[0] === 'secretFile'
  if (symmetric && hs.length !== j.algorithms.length) {
    ctx.addIssue({ code: 'custom', path: ['algorithms'], input: j.algorithms, message: `with ${sources[0]} only HS256/HS384/HS512 are allowed (a public-key algorithm verified with a shared secret is the algorithm-confusion attack)` })
  } else if (!symmetric && hs.length > 0) {
    ctx.addIssue({ code: 'custom', path: ['algorithms'], input: j.algorithms, message: `${hs.join(', ')} need secret or secretFile; with ${sources[0]} use public-key algorithms only` })
  }
})

const apiKeyEntry = z.strictObject({
  id: z.string().min(1).max(128).describe('The key\'s name: becomes the `sub` claim (and shows in logs instead of the key).'),
  sha256: z.string().regex(/^[0-9a-f]{64}$/, { error: 'must be 64 lower-case hex digits' }).optional().describe('SHA-256 of the key, hex (so the config holds no usable key).'),
  key: z.string().min(16, { error: 'must be at least 16 characters' }).optional().describe('The key itself (prefer `sha256`).'),
  claims: claimMap.default({}).describe('Claims this key carries (e.g. `tenant: acme`), forwarded like JWT claims.'),
}).refine((k) => (k.sha256 === undefined) !== (k.key === undefined), { error: 'give exactly one of sha256 and key' })

const apiKeyAuth = z.strictObject({
  from: z.array(credentialSource).min(1).default(['header:x-api-key']).describe('Where the key is read, first found wins.'),
  keys: z.array(apiKeyEntry).default([]).describe('Accepted keys.'),
  keysFile: z.string().min(1).optional().describe('A YAML/JSON file holding more keys (a list shaped like `keys`); read at start and on reload.'),
})

const hmacAuth = z.strictObject({
  keys: z.array(z.strictObject({
    id: z.string().regex(/^[A-Za-z0-9_.-]{1,128}$/, { error: 'key ids use letters, digits, _ . -' }).describe('Sent by the client in `x-ferry-key-id`; becomes the `sub` claim.'),
    secret: z.string().min(32, { error: 'must be at least 32 characters' }).describe('The shared signing secret.'),
    claims: claimMap.default({}).describe('Claims this key carries, forwarded like JWT claims.'),
  })).min(1, { error: 'must list at least one key' }).describe('Signing keys.'),
  windowSec: positiveInt.default(300).describe('A signature\'s `x-ferry-timestamp` may be this far from Ferry\'s clock; its nonce is remembered this long, so a replay is refused.'),
  replayStore: z.enum(['memory', 'redis']).default('memory').describe('Where used nonces are remembered: this pod only, or Redis (`rateLimits.redis`; every pod refuses a replay).'),
  maxNonces: positiveInt.default(1000000).describe('memory: nonces remembered at most; when full of unexpired ones new signatures are refused (fail closed).'),
})

const authPolicy = z.strictObject({
  jwt: jwtAuth.optional().describe('JSON Web Tokens (verified with fast-jwt on node:crypto; JWKS keys resolved with jose).'),
  apiKey: apiKeyAuth.optional().describe('Static API keys.'),
  hmac: hmacAuth.optional().describe('HMAC-SHA256 request signatures (docs/edge.md: headers and the string signed).'),
  optional: z.boolean().default(false).describe('Requests with no credential at all pass unauthenticated (no claims forwarded); a credential that fails is still refused.'),
  forward: z.strictObject({
    claims: z.record(z.string().min(1), z.string().regex(/^[a-z0-9-]+$/, { error: 'must be a lower-case header name' }))
      .default({ sub: 'x-auth-subject' })
      .describe('Verified claim → header sent to the backend (HTTP request headers; WebSocket: backend handshake headers / mux OPEN metadata). The client\'s own headers of these names are always removed. Non-string claims are sent as JSON; values with control characters are dropped.'),
    methodHeader: z.string().regex(/^[a-z0-9-]+$/, { error: 'must be a lower-case header name' }).default('x-auth-method')
      .describe('Header naming the method that authenticated the request (jwt, apiKey, hmac); removed from client requests too.'),
    credentials: z.boolean().default(true).describe('Pass the credential itself (Authorization header, API key header) on to the backend.'),
  }).prefault({}).describe('What the backend learns about the caller.'),
}).refine((p) => p.jwt !== undefined || p.apiKey !== undefined || p.hmac !== undefined, { error: 'an auth policy needs at least one of jwt, apiKey, hmac' })

const rateLimitPolicy = z.strictObject({
  key: z.string().regex(/^(ip|claim:[A-Za-z0-9_.:-]{1,128}|header:[a-z0-9-]{1,128})$/, { error: 'must be ip, claim:NAME or header:NAME' })
    .describe('What is counted: `ip` (the client address), `claim:NAME` (a verified claim, e.g. `claim:tenant`; API keys and HMAC keys carry `sub` = their id) or `header:NAME`. A request without the key is not limited by this policy.'),
  ratePerSec: z.number({ error: 'must be a positive number' }).positive({ error: 'must be a positive number' }).describe('Sustained requests (HTTP requests and WebSocket handshakes) per second per key.'),
  burst: positiveInt.describe('Requests a key may make at once above the rate (the bucket\'s size).'),
  scope: z.enum(['local', 'redis']).default('local').describe('`local`: each pod counts alone (a pod with several workers counts in its control plane, a message per request unless `leaseTokens` > 1: docs/workers.md). `redis`: one bucket per key shared by every pod (`rateLimits.redis`), a round trip per request unless `leaseTokens` > 1.'),
  leaseTokens: z.number().int({ error: 'must be a whole number from 1 to 10000' }).min(1, { error: 'must be a whole number from 1 to 10000' }).max(10000, { error: 'must be a whole number from 1 to 10000' }).default(1)
    .describe('redis (and local in a pod with several workers, where the pod\'s buckets are the control plane\'s): tokens a pod (a worker) takes from the shared bucket per round trip (at most `burst`) and spends locally within 1 s; while the bucket is empty the pod refuses locally until its next token is due. 1: a round trip per request, exact. More: fewer round trips; the fleet still never admits more than the limit, but may admit less by the tokens other pods hold unspent (at most pods × (leaseTokens − 1)).'),
  maxKeys: positiveInt.default(100000).describe('Keys tracked at most (local buckets; redis leases); the least recently seen are forgotten first (a forgotten local key starts again with a full bucket).'),
})

const rateLimits = z.strictObject({
  redis: z.strictObject({
    url: z.string().regex(/^rediss?:\/\//, { error: 'must be a redis:// or rediss:// URL' }).default('redis://127.0.0.1:6379').describe('Redis for `scope: redis` limits and `hmac.replayStore: redis`.'),
    timeoutMs: durationMs(25, 'Budget of one Redis check; past it (or while Redis is down) `failMode` decides.'),
    failMode: z.enum(['open', 'closed']).default('open').describe('When Redis cannot answer: `open` lets the request through (counted), `closed` refuses it with 503.'),
    keyPrefix: z.string().min(1).default('ferry:rl:').describe('Prefix of the Redis keys.'),
  }).prefault({}).describe('The shared store of cluster-wide limits.'),
  policies: z.record(z.string().regex(/^[A-Za-z0-9_-]+$/, { error: 'policy names use letters, digits, _ and -' }), rateLimitPolicy).default({})
    .describe('Named token-bucket limits; routes list them in `rateLimits`.'),
})

/** A subset's name when it gives none: its label values in key order, joined with `,` (`{ version: v2 }` → `v2`). */
export function subsetName (s: { readonly name?: string | undefined, readonly labels: Readonly<Record<string, string>> }): string {
  return s.name ?? Object.keys(s.labels).sort().map((k) => s.labels[k]).join(',')
}

export const SUBSET_NAME_RE = /^[A-Za-z0-9_.,-]{1,64}$/

const splitSubset = z.strictObject({
  name: z.string().regex(SUBSET_NAME_RE, { error: 'subset names use letters, digits and _ . , - (at most 64)' }).optional()
    .describe('The subset\'s name: the `subset` label of its metrics, its key in /status and in the admin API, and the value that pins to it. Default: its label values in key order, joined with `,` (`{ version: v2 }` → `v2`).'),
  labels: labelMap.refine((m) => Object.keys(m).length > 0, { error: 'must name at least one label' })
    .describe('The endpoints of this subset: those of the route\'s upstream that carry every one of these labels (and maybe others).'),
  weight: z.number({ error: 'must be an integer of 0-100' }).int({ error: 'must be an integer of 0-100' }).min(0, { error: 'must be an integer of 0-100' }).max(100, { error: 'must be an integer of 0-100' })
    .describe('Percent of the route\'s new sessions and requests; a split\'s weights sum to 100. 0: pinned and fallback traffic only.'),
})

const routeSplit = z.strictObject({
  subsets: z.array(splitSubset).min(1, { error: 'must list at least one subset' }).max(16, { error: 'at most 16 subsets' })
    .describe('The label subsets and their weights (e.g. `[{ labels: { version: v1 }, weight: 90 }, { labels: { version: v2 }, weight: 10 }]`). A key goes to the subset that weighted rendezvous hashing picks for it, so every pod agrees without coordination and a weight change moves only the keys it must. Within the subset the upstream\'s `balance` picks the endpoint. When the subset has no healthy endpoint, the next subset in the key\'s order takes it, then the whole upstream (counted in ferry_split_fallbacks_total).'),
  key: credentialSource.optional()
    .describe('What keeps one client on one subset: `header:NAME`, `cookie:NAME` or `query:NAME`. Default: the route\'s `affinity.key` when it names one, else the client IP. Requests and sessions without the key use the client IP.'),
  pin: credentialSource.optional()
    .describe('A header, cookie or query parameter whose value names a subset (e.g. `header:x-canary` with `x-canary: v2`): such a request or session goes to that subset whatever the weights (weight 0 included). Other values are ignored. Read after the route\'s `auth`: a header the auth policy forwards from a verified claim (and strips from clients) pins by that claim.'),
  rebalance: z.boolean().default(false)
    .describe('Routes to `mux` upstreams: after every reload and admin change, open sessions whose endpoint is outside the subset their key is assigned now move there by backend handoff (docs/backend-handoff.md), their clients connected throughout, at most the upstream\'s `handoff.maxPerSec` a second. Resumable `ferry/client` sessions move with their resume state where the new backend resumes sessions. Off: open sessions stay where they are.'),
}).describe('Version-aware routing (docs/canary.md): split new requests and sessions of this route between label subsets of its upstream\'s endpoints, sticky per key. The weights can change by a reload or `PUT /routes/NAME/split` on the admin listener; open sessions stay where they are unless `rebalance`.')

const routeSchema = z.strictObject({
  match: z.strictObject({
    host: z.string().regex(/^(\*\.)?[A-Za-z0-9.-]+$/, { error: 'must be a host name or *.suffix' }).optional()
      .describe('Host header to match (port ignored, case-insensitive); `*.example.com` matches subdomains. Absent: any host.'),
    path: z.string().startsWith('/', { error: 'must start with /' }).default('/')
      .describe('Path prefix. `/api` matches `/api`, `/api/…` and `/api?…`, not `/apix`; `/api/` matches anything under it.'),
  }).prefault({}).describe('What requests this route takes. The most specific route wins: host routes before host-less ones, then the longest path; ties keep file order.'),
  upstream: z.string().min(1).describe('Name of an entry in `upstreams`.'),
  maxBodyBytes: positiveInt.optional().describe('Overrides `http.maxBodyBytes` for this route.'),
  bufferBodyBytes: nonNegativeInt.optional().describe('Overrides `http.bufferBodyBytes` for this route (0: stream every body, e.g. a route whose backend consumes uploads as they arrive).'),
  access: z.strictObject({
    allow: z.array(cidr).default([]).describe('Client addresses (IP or CIDR) that may use this route; empty: any. The client is the address `http.trustedProxies` resolves (what limits and logs use).'),
    deny: z.array(cidr).default([]).describe('Client addresses (IP or CIDR) refused, checked before `allow`.'),
    origins: z.array(z.string().regex(ORIGIN_RE, { error: 'must be an origin like https://chat.example.com, https://*.example.com (optional :port), or null' })).default([])
      .describe('WebSocket upgrades whose Origin header is not listed are refused (cross-site WebSocket hijacking); `https://*.example.com` matches its subdomains. Empty: any origin. An upgrade without Origin (not from a browser) passes.'),
  }).optional().describe('Access list, checked right after routing and before anything else: refused → 403 FERRY_ERR_ACCESS_DENIED, counted in ferry_access_denied_total (docs/edge.md). Reloadable.'),
  longHeld: z.boolean().default(false).describe('Routes to `http` upstreams: every request of this route is long-held (long polling, streaming): it takes a connection from the upstream\'s `pool.longHeld` budget, never one of the `maxConnections` short ones. SSE (`Accept: text/event-stream`) and Engine.IO polling GETs are long-held on any route.'),
  websocket: websocketRoute.optional().describe('WebSocket session settings; only for routes to `ws` or `mux` upstreams (which get these defaults when absent).'),
  auth: z.string().min(1).optional().describe('Name of an entry in `auth.policies`: requests and WebSocket upgrades must authenticate before anything is sent to the backend (401 otherwise).'),
  rateLimits: z.array(z.string().min(1)).default([]).describe('Names of entries in `rateLimits.policies`, all checked (429 with Retry-After past any; ferry/client WebSocket clients: close 1013 with retry-after-ms).'),
  affinity: z.strictObject({
    key: z.string().regex(/^(?:(cookie|header|query):[A-Za-z0-9_.~!$&'*+^`|-]{1,128}|token)$/, { error: 'must be cookie:NAME, header:NAME, query:NAME or token' })
      .describe('Where a request\'s or WebSocket session\'s affinity key comes from. Requests and sessions with the same key go to the same backend endpoint from any Ferry pod (the `affinity` store remembers it; without an entry, rendezvous hashing of the key picks it, so pods agree). When that endpoint is unhealthy or gone, the key goes to the next healthy endpoint in its rendezvous order and the record follows it. Those without the key are balanced normally. Routes to `http` upstreams with a `cookie:NAME` key: a backend response that sets NAME records its value for that endpoint (the backend\'s own session cookie, e.g. Socket.IO\'s `cookie` option; shared between pods only by the `redis` store). `token` (routes to `ws` or `mux` upstreams): only the key Ferry issues to `ferry/client` clients (inside their resume token; what those clients get anyway when no other key is set). Routes to `http` upstreams: sticky sessions (docs/http.md); WebSocket upgrades on the route use the same key and records, so the upgrade after Socket.IO or SockJS polling reaches the endpoint that served the polls.'),
    setCookie: z.boolean().default(false)
      .describe('Routes to `http` upstreams with `key: cookie:NAME`: a request without the cookie gets a random key (22 characters) that routes it, and its response sets it: `Set-Cookie: NAME=KEY; Path=/; HttpOnly; SameSite=Lax` (plus `Secure` when the client reached Ferry over https: a TLS front, or a trusted proxy saying `X-Forwarded-Proto: https`). Use a cookie name the backend does not set itself.'),
  }).optional().describe('Session affinity (sticky sessions) for routes to `http`, `ws` or `mux` upstreams.'),
  split: routeSplit.optional(),
})

const WORKERS = 'must be an integer of 1-64, or auto'

export const configSchema = z.strictObject({
  gateway: z.strictObject({
    id: z.string().min(1).optional().describe('This pod\'s id in logs, /status and affinity records. Default: the host name.'),
    workers: z.union([z.literal('auto', { error: WORKERS }), z.number({ error: WORKERS }).int({ error: WORKERS }).min(1, { error: WORKERS }).max(64, { error: WORKERS })], { error: WORKERS }).default('auto')
      .describe('Data-plane worker processes (docs/workers.md). `auto` (the default): the cores this process may use (its CPUs, capped by a cgroup CPU quota such as a Kubernetes CPU limit, rounded up). A count of 1 (set, or `auto` with one usable core): one process does everything. More: a control plane (config, reload, admin API and console, drain, metrics) forks this many workers, each running the HTTP/WebSocket front, the TCP listeners and its own upstream pools and links on the same ports; a crashed or hung worker is restarted. More than the cores is allowed and logged.'),
    workerHangMs: z.number({ error: 'must be an integer of 1000-600000 ms' }).int({ error: 'must be an integer of 1000-600000 ms' }).min(1000, { error: 'must be an integer of 1000-600000 ms' }).max(600000, { error: 'must be an integer of 1000-600000 ms' }).default(5000)
      .describe('With `workers` above 1: a worker whose event loop has not answered the control plane for this long is killed and restarted (counted in ferry_worker_restarts_total{reason="hung"}).'),
  }).prefault({}).describe('Identity of this gateway process, and its workers.'),
  listen: z.strictObject({
    http: httpListener.prefault({}).describe('The HTTP and WebSocket front (uWebSockets.js).'),
    admin: listener('127.0.0.1', 9901).prefault({}).describe('Admin API and status console: /healthz /readyz /metrics /status /events, POST /drain /reload, POST /upstreams/NAME/endpoints/ADDR/drain and /ready, PUT /routes/NAME/split, the console at /. Keep it off public interfaces, and set `admin.token` when it is reachable by anyone else.'),
    tcp: z.array(tcpListener).default([]).describe('Raw TCP passthrough ports, each forwarding to a `protocol: tcp` upstream.'),
  }).prefault({}).describe('Listening sockets.'),
  http: z.strictObject({
    maxBodyBytes: positiveInt.default(10 * 1024 * 1024).describe('Largest request body accepted; larger → 413. Bodies up to `bufferBodyBytes` are buffered, larger ones streamed.'),
    bufferBodyBytes: nonNegativeInt.default(64 * 1024).describe('Request bodies up to this size (declared by Content-Length, or chunked bodies that end within it) are read whole into memory before a backend connection is taken, so a client sending slowly never holds one (docs/edge.md). Larger bodies stream to the backend as they arrive and must keep `minBodyRateBytesPerSec`. Memory is bounded by `limits.maxBufferedBodyBytes[PerIp]`. 0: stream every body.'),
    minBodyRateBytesPerSec: nonNegativeInt.default(1024).describe('Least rate a streamed request body (one larger than `bufferBodyBytes`) must keep while it holds a backend connection: checked at the end of every `minBodyRateWindowMs` (the first window is the grace), not counting windows in which Ferry held the client back; slower → 408 FERRY_ERR_CLIENT_BODY_TIMEOUT, the backend request aborted and the connection returned to the pool. 0: no minimum.'),
    minBodyRateWindowMs: durationMs(5000, 'The window over which `minBodyRateBytesPerSec` is measured; also the grace a streamed body gets before its first check.'),
    requestIdHeader: z.string().regex(/^[a-z0-9-]+$/, { error: 'must be a lower-case header name' }).default('x-request-id')
      .describe('Header carrying the request id; generated when the client sent none, forwarded upstream and logged.'),
    trustedProxies: z.array(cidr).default([]).describe('Load balancers or proxies in front of Ferry (addresses or CIDRs). From a peer in this list, X-Forwarded-For is walked right to left skipping trusted addresses and the first other address is the client (all trusted: the leftmost); the chain is forwarded with the peer appended. An entry that is not an IP address stops the walk at the nearest valid address. From any other peer, the peer is the client and its X-Forwarded-For is replaced. The client address is what connection limits, rate limits, logs and `hash` balancing use (HTTP and WebSocket). Empty: X-Forwarded-For is never trusted. With `listen.http.acceptProxyProtocol`, these are also the only peers that may connect, and the PROXY header\'s source takes the peer\'s place above.'),
    maxUrlBytes: positiveInt.default(8192).describe('Longest request target (path and query, in bytes); longer → 414 and the connection is closed.'),
    mergeSlashes: z.boolean().default(true).describe('Merge runs of `/` in request paths (`/a//b` → `/a/b`) before routing, like nginx\'s `merge_slashes`. Either way the path is made canonical once (dot segments removed, unreserved `%XX` decoded, non-ASCII percent-encoded) and routing, auth, limits and the backend all see that one form (docs/edge.md).'),
    maxHeaderBytes: positiveInt.default(16384).describe('Largest request head Ferry accepts (request line plus every header line); larger → 431 and the connection is closed. uWebSockets.js 20.30 has its own, fixed limits below this one, answered without a response byte: a head that arrives in several reads and passes 4 KiB is closed at once; more than 48 header lines hang until uWS closes the connection about 10 s after it opened (docs/edge.md).'),
    bodyIdleMs: z.number({ error: 'must be an integer of 100-9000 ms' }).int({ error: 'must be an integer of 100-9000 ms' }).min(100, { error: 'must be an integer of 100-9000 ms' }).max(9000, { error: 'must be an integer of 100-9000 ms (uWebSockets.js drops a request body that is silent for 10 s without a response)' }).default(8000)
      .describe('Longest silence between two chunks of a request body; exceeded → 408 (when no response byte was sent yet), the backend request is aborted and the client connection closed. At most 9000: uWebSockets.js itself drops the connection, without a response, after 10 s of silence.'),
    bodyTimeoutMs: nonNegativeInt.default(300000).describe('Time the whole request body may take from the request head on (a slow drip that never stays silent for bodyIdleMs); exceeded → as bodyIdleMs. 0: no total limit.'),
  }).prefault({}).describe('HTTP front behaviour.'),
  limits: z.strictObject({
    maxRequestsInFlight: nonNegativeInt.default(0).describe('HTTP requests (to http upstreams) this gateway serves at once; beyond it → 503 with Retry-After, nothing is sent upstream. 0: no limit (each upstream\'s pool queue still bounds what waits).'),
    maxRequestsInFlightPerIp: nonNegativeInt.default(0).describe('HTTP requests one client IP (see http.trustedProxies) may have in flight at once; beyond it → 429 with Retry-After. 0: no limit.'),
    maxStreamedBodiesPerIp: nonNegativeInt.default(8).describe('HTTP requests one client IP may have streaming a request body (one larger than http.bufferBodyBytes) at once, from when it starts to stream (its head, or when a chunked body outgrows the buffer) until its last byte: each can hold a backend connection while its body arrives. Beyond it → 429 with Retry-After. The default keeps one address at half of the default pool (16 connections per endpoint); keep it below pool.maxConnections × endpoints. 0: no limit.'),
    maxBufferedBodyBytes: nonNegativeInt.default(64 * 1024 * 1024).describe('Bytes of request bodies this gateway holds in memory at once while they are read (http.bufferBodyBytes) and while they wait for a backend connection. A body that would pass it → 503 with Retry-After (it is never streamed instead: that would hand the backend connections back to slow clients). 0: no limit.'),
    maxBufferedBodyBytesPerIp: nonNegativeInt.default(8 * 1024 * 1024).describe('Bytes of request bodies one client IP may have buffered at once (see maxBufferedBodyBytes); beyond it → 429 with Retry-After, so one address cannot take the whole budget. 0: no limit.'),
    maxWebSocketSessions: nonNegativeInt.default(0).describe('WebSocket sessions (open or in their handshake) this gateway holds at once; beyond it the upgrade is refused 503 with Retry-After before anything is opened upstream. 0: no limit.'),
    maxWebSocketSessionsPerIp: nonNegativeInt.default(0).describe('WebSocket sessions one client IP (see http.trustedProxies) may hold at once; beyond it the upgrade is refused 429 with Retry-After. 0: no limit.'),
    retryAfterSec: positiveInt.default(1).describe('The Retry-After value (seconds) sent with these refusals.'),
    fdReserve: nonNegativeInt.max(65536, { error: 'must be an integer of 0-65536' }).default(64).describe('File descriptors kept free for the admin listener and for work under way. When fewer would be free, the HTTP/WebSocket listener stops accepting (the kernel refuses new connections at once) and TCP listeners reset new connections, until twice this many are free; checked every 100 ms. At most a quarter of the process\'s descriptor limit is kept (RLIMIT_NOFILE). 0: off (at the limit, uWebSockets.js retries accept() in a tight loop).'),
  }).prefault({}).describe('Concurrency and request-body memory limits of the HTTP/WebSocket front, per client IP and for the whole gateway (TCP listeners have their own: listen.tcp[].maxConnections, maxConnectionsPerIp). uWebSockets.js 20.30 gives no hook when a connection is accepted, so requests and sessions are limited, not idle keep-alive connections.'),
  upstreams: z.record(z.string().regex(/^[A-Za-z0-9_-]+$/, { error: 'upstream names use letters, digits, _ and -' }), upstreamSchema)
    .describe('Named backends. Each has a `protocol`: `http`, `ws` (WebSocket passthrough), `mux` (WebSocket sessions over Ferry links) or `tcp`.'),
  routes: z.array(routeSchema).default([]).describe('Request routing, see `match`. Routes to `http` upstreams take HTTP requests; routes to `ws`/`mux` upstreams take WebSocket upgrades (a plain request gets 426).'),
  affinity: z.strictObject({
    store: z.enum(['memory', 'redis']).default('memory').describe('Where affinity records live: `memory` (this process only; the embedded default) or `redis` (shared by every pod).'),
    ttlMs: durationMs(600000, 'How long a record outlives its last session (refreshed while sessions with the key are open).'),
    maxEntries: positiveInt.default(100000).describe('memory: records kept at most; the least recently used go first.'),
    redis: z.strictObject({
      url: z.string().regex(/^rediss?:\/\//, { error: 'must be a redis:// or rediss:// URL' }).default('redis://127.0.0.1:6379').describe('Redis to use (`redis://[user:password@]host:port[/db]`).'),
      lookupTimeoutMs: durationMs(50, 'Budget of a lookup on the connection path; past it (or while Redis is down) Ferry uses rendezvous hashing of the key, logs the transition once and sets ferry_affinity_fallback. The pod directory\'s calls (console pod list, heartbeat) get at least 1 s and never cause the fallback.'),
      keyPrefix: z.string().min(1).default('ferry:aff:').describe('Prefix of the Redis keys.'),
      podsKeyPrefix: z.string().min(1).default('ferry:pods:').describe('Prefix of the pod directory keys: every pod announces itself (id, host, version, sessions, draining) under `<podsKeyPrefix>pod:<id>` with `podTtlMs`, indexed in `<podsKeyPrefix>index`, so the status console lists the pods sharing this Redis. Keep it apart from keyPrefix (session keys come from clients).'),
      podTtlMs: z.number({ error: 'must be an integer of 1000-600000 ms' }).int({ error: 'must be an integer of 1000-600000 ms' }).min(1000, { error: 'must be an integer of 1000-600000 ms' }).max(600000, { error: 'must be an integer of 1000-600000 ms' }).default(15000)
        .describe('A pod\'s announcement lives this long; it is renewed every third of it and removed when the pod stops. A pod that vanished drops out of the list after this.'),
    }).prefault({}).describe('With `store: redis`.'),
  }).prefault({}).describe('The session affinity store (see a route\'s `affinity.key`).'),
  resume: z.strictObject({
    secret: z.string().min(32, { error: 'must be at least 32 characters' }).optional()
      .describe('Key that seals resume tokens; every pod must share it so a client can resume through any of them. Default: the FERRY_RESUME_SECRET environment variable, else a random key per process (tokens then only work on the pod that issued them; logged as a warning).'),
    secretFile: z.string().min(1).optional().describe('Read the secret from this file instead (a mounted Kubernetes Secret); surrounding whitespace is ignored.'),
    tokenTtlMs: durationMs(3600000, 'How long a resume token is valid; live sessions get a fresh token every half of it.'),
  }).prefault({}).describe('Resumable sessions for `ferry/client` clients on routes to `mux` upstreams (docs/resume.md).'),
  drain: z.strictObject({
    acceptGraceMs: nonNegativeInt.default(5000).describe('After a drain starts (SIGTERM, POST /drain, `ferry drain`), /readyz answers 503 but the listeners keep accepting for this long, while load balancers and Kubernetes endpoints catch up.'),
    spreadMs: nonNegativeInt.default(20000).describe('WebSocket sessions are migrated (ferry/client: a `migrate` message, then close 1012; plain clients: close 1012) evenly over this long, so their reconnects do not arrive at once; but at least one a second (a few sessions go sooner). In a pod each worker spreads its own sessions (docs/drain.md).'),
    maxMigrationsPerSec: positiveInt.default(200).describe('Upper bound of sessions migrated per second, whatever spreadMs says (a pod with many sessions takes longer). In a pod of several workers each has its share (split evenly, rounded up).'),
    deadlineMs: positiveInt.default(60000).describe('Counted from the end of the accept grace: by then everything still open (sessions, TCP connections, HTTP requests) is closed and the process exits 0. Kubernetes\' terminationGracePeriodSeconds must exceed acceptGraceMs + deadlineMs.'),
  }).prefault({}).describe('Graceful drain before the process exits (docs/drain.md). A second SIGTERM shortens the schedule; a third exits at once.'),
  reload: z.strictObject({
    watch: z.boolean().default(false).describe('Reload by itself when the config file changes (checked by polling its status, which also sees a Kubernetes ConfigMap update swapping the mounted file). SIGHUP, POST /reload and `ferry reload` work either way. Read at start-up.'),
    watchIntervalMs: durationMs(2000, 'How often the file is checked when `watch` is on.'),
  }).prefault({}).describe('Hot reload (docs/reload.md).'),
  admin: z.strictObject({
    token: z.string().min(16, { error: 'must be at least 16 characters' }).optional()
      .describe('Bearer token the admin listener requires (`Authorization: Bearer TOKEN`) for /status, the POSTs (/drain, /reload, an endpoint\'s /drain and /ready), PUT /routes/NAME/split and the console\'s live channel /events (docs/console.md). /healthz and /readyz stay open for probes; /metrics too unless `protectMetrics`. Default: the FERRY_ADMIN_TOKEN environment variable, else none (the admin API is open: keep listen.admin on 127.0.0.1). Compared in constant time.'),
    tokenFile: z.string().min(1).optional().describe('Read the token from this file instead (a mounted Kubernetes Secret); surrounding whitespace is ignored. Read at start and on reload.'),
    protectMetrics: z.boolean().default(false).describe('Require the token for /metrics too (Prometheus: `authorization: { credentials_file: ... }`). Off by default: metrics carry no secrets and no per-client labels, and most scrapers are set up without credentials.'),
    console: z.strictObject({
      enabled: z.boolean().default(true).describe('Serve the status console at / on the admin listener (static page; its data needs the token when one is set).'),
      intervalMs: z.number({ error: 'must be an integer of 100-5000 ms' }).int({ error: 'must be an integer of 100-5000 ms' }).min(100, { error: 'must be an integer of 100-5000 ms' }).max(5000, { error: 'must be an integer of 100-5000 ms (uWebSockets.js closes a response that sends nothing for 10 s)' }).default(1000)
        .describe('How often one timer pushes a snapshot to every console subscriber (and samples the message and request rates the charts draw).'),
      maxSubscribers: positiveInt.default(32).describe('Live channels (/events) open at once; beyond it a new one is refused 503.'),
      maxMissed: positiveInt.default(5).describe('A subscriber that has not taken its previous snapshot (its socket is full) misses the next ones; after this many missed in a row it is dropped (counted in ferry_console_dropped_total) so it never holds memory or stalls the others.'),
    }).prefault({}).describe('The status console (docs/console.md).'),
  }).prefault({}).describe('Access to the admin listener (listen.admin) and its status console.'),
  admission: z.strictObject({
    handshakesPerSec: nonNegativeInt.default(2000).describe('New WebSocket handshakes this pod takes per second (token bucket), so pods receiving a drained pod\'s sessions are not overrun. Beyond it: ferry/client clients are closed 1013 with a `retry-after-ms` hint, other clients get 503 with Retry-After. 0: no limit.'),
    burst: positiveInt.default(4000).describe('Handshakes that may arrive at once above the rate (the bucket\'s size).'),
    retryAfterMs: positiveInt.default(1000).describe('The retry hint given to refused handshakes is between this and twice this (jittered so retries spread out).'),
  }).prefault({}).describe('Admission control of new WebSocket sessions.'),
  auth: z.strictObject({
    policies: z.record(z.string().regex(/^[A-Za-z0-9_-]+$/, { error: 'policy names use letters, digits, _ and -' }), authPolicy).default({})
      .describe('Named auth policies; a route names one in `auth`.'),
  }).prefault({}).describe('Authentication at the edge (docs/edge.md).'),
  rateLimits: rateLimits.prefault({}).describe('Token-bucket rate limits, per pod or cluster-wide (docs/edge.md).'),
  logging: z.strictObject({
    level: z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']).default('info').describe('pino log level.'),
    accessLog: z.boolean().default(true).describe('One JSON line per HTTP request (id, method, path, status, upstream, duration, bytes).'),
    pretty: z.boolean().default(false).describe('Human-readable logs (pino-pretty) instead of JSON lines.'),
  }).prefault({}).describe('Logs (pino, JSON lines on stdout).'),
}).superRefine((cfg, ctx) => {
  if (cfg.drain.spreadMs >= cfg.drain.deadlineMs) {
    ctx.addIssue({ code: 'custom', path: ['drain', 'spreadMs'], input: cfg.drain.spreadMs, message: `must be less than drain.deadlineMs (${cfg.drain.deadlineMs}): sessions still open at the deadline are closed at once` })
  }
  if (cfg.admin.token !== undefined && cfg.admin.tokenFile !== undefined) {
    ctx.addIssue({ code: 'custom', path: ['admin', 'tokenFile'], input: cfg.admin.tokenFile, message: 'give either admin.token or admin.tokenFile, not both' })
  }
  if (cfg.resume.secret !== undefined && cfg.resume.secretFile !== undefined) {
    ctx.addIssue({ code: 'custom', path: ['resume', 'secretFile'], input: cfg.resume.secretFile, message: 'give either resume.secret or resume.secretFile, not both' })
  }
  for (const [name, u] of Object.entries(cfg.upstreams)) {
    const given = (['endpoints', 'dns', 'registry'] as const).filter((k) => u[k] !== undefined)
    if (given.length !== 1) {
      ctx.addIssue({ code: 'custom', path: ['upstreams', name], input: given,
        message: given.length === 0 ? 'needs its endpoints: give `endpoints` (a list), `dns` or `registry`' : `gives ${given.join(' and ')}; give exactly one endpoint source` })
    }
    if (u.dns !== undefined && u.dns.type !== 'SRV' && u.dns.port === undefined) {
      ctx.addIssue({ code: 'custom', path: ['upstreams', name, 'dns', 'port'], input: undefined, message: `is required with type ${u.dns.type} (records carry addresses only)` })
    }
    if (u.dns !== undefined && u.dns.minTtlMs > u.dns.maxTtlMs) {
      ctx.addIssue({ code: 'custom', path: ['upstreams', name, 'dns', 'minTtlMs'], input: u.dns.minTtlMs, message: `must not exceed dns.maxTtlMs (${u.dns.maxTtlMs})` })
    }
    if (u.ejection.ejectMs > u.ejection.maxEjectMs) {
      ctx.addIssue({ code: 'custom', path: ['upstreams', name, 'ejection', 'maxEjectMs'], input: u.ejection.maxEjectMs, message: `must be at least ejection.ejectMs (${u.ejection.ejectMs})` })
    }
    checkUpstreamTls(name, u, ctx)
  }
  // A body larger than what the buffer budgets allow one client could never be buffered: every such request would be refused.
  const budget = Math.min(...[cfg.limits.maxBufferedBodyBytes, cfg.limits.maxBufferedBodyBytesPerIp].filter((n) => n > 0))
  const budgetField = cfg.limits.maxBufferedBodyBytesPerIp > 0 && cfg.limits.maxBufferedBodyBytesPerIp <= (cfg.limits.maxBufferedBodyBytes || Infinity) ? 'limits.maxBufferedBodyBytesPerIp' : 'limits.maxBufferedBodyBytes'
  if (cfg.http.bufferBodyBytes > budget) {
    ctx.addIssue({ code: 'custom', path: ['http', 'bufferBodyBytes'], input: cfg.http.bufferBodyBytes, message: `must not exceed ${budgetField} (${budget})` })
  }
  cfg.routes.forEach((r, i) => {
    if (r.bufferBodyBytes !== undefined && r.bufferBodyBytes > budget) {
      ctx.addIssue({ code: 'custom', path: ['routes', i, 'bufferBodyBytes'], input: r.bufferBodyBytes, message: `must not exceed ${budgetField} (${budget})` })
    }
  })
  const ofProtocol = (protocol: string): string => {
    const names = Object.keys(cfg.upstreams).filter((n) => cfg.upstreams[n]!.protocol === protocol)
    return names.length > 0 ? names.join(', ') : 'none'
  }
  if (cfg.routes.length === 0 && cfg.listen.tcp.length === 0) {
    ctx.addIssue({ code: 'custom', path: ['routes'], input: cfg.routes, message: 'must have at least one route (or a listen.tcp listener)' })
  }
  // uWS settings (payload limit, idle timeout, compression) attach to a URL pattern, not a host, so
  // WebSocket routes that share a path must share their settings.
  const wsByPath = new Map<string, { index: number, settings: string }>()
  cfg.routes.forEach((r, i) => {
    if (r.auth !== undefined && !Object.hasOwn(cfg.auth.policies, r.auth)) {
      ctx.addIssue({ code: 'custom', path: ['routes', i, 'auth'], input: r.auth, message: `names no auth policy (known: ${Object.keys(cfg.auth.policies).join(', ') || 'none'})` })
    }
    r.rateLimits.forEach((name, j) => {
      if (!Object.hasOwn(cfg.rateLimits.policies, name)) {
        ctx.addIssue({ code: 'custom', path: ['routes', i, 'rateLimits', j], input: name, message: `names no rate limit policy (known: ${Object.keys(cfg.rateLimits.policies).join(', ') || 'none'})` })
      }
    })
    const proto = Object.hasOwn(cfg.upstreams, r.upstream) ? cfg.upstreams[r.upstream]!.protocol : undefined
    if (proto === undefined) {
      const known = Object.keys(cfg.upstreams)
      ctx.addIssue({ code: 'custom', path: ['routes', i, 'upstream'], input: r.upstream,
        message: `names no upstream (known: ${known.length ? known.join(', ') : 'none'})` })
    } else if (proto === 'tcp') {
      ctx.addIssue({ code: 'custom', path: ['routes', i, 'upstream'], input: r.upstream,
        message: `names upstream ${r.upstream} of protocol tcp; routes need an http, ws or mux upstream (tcp upstreams are used by listen.tcp)` })
    } else if (proto === 'http' && r.affinity?.key === 'token') {
      ctx.addIssue({ code: 'custom', path: ['routes', i, 'affinity', 'key'], input: r.affinity.key,
        message: `token is for routes to ws or mux upstreams (ferry/client sessions); ${r.upstream} is http: use cookie:NAME, header:NAME or query:NAME` })
    } else if (r.affinity?.setCookie === true && (proto !== 'http' || !r.affinity.key.startsWith('cookie:'))) {
      ctx.addIssue({ code: 'custom', path: ['routes', i, 'affinity', 'setCookie'], input: true,
        message: proto !== 'http' ? `is for routes to http upstreams; ${r.upstream} is ${proto}` : `needs key: cookie:NAME (the cookie Ferry sets), got ${r.affinity.key}` })
    } else if (proto === 'http' && r.websocket !== undefined) {
      ctx.addIssue({ code: 'custom', path: ['routes', i, 'websocket'], input: r.websocket,
        message: `is for routes to ws or mux upstreams; ${r.upstream} is http (known: ${[ofProtocol('ws'), ofProtocol('mux')].filter((x) => x !== 'none').join(', ') || 'none'})` })
    } else if (proto === 'ws' || proto === 'mux') {
      const settings = JSON.stringify(r.websocket ?? null)
      const first = wsByPath.get(r.match.path)
      if (first === undefined) wsByPath.set(r.match.path, { index: i, settings })
      else if (first.settings !== settings) {
        ctx.addIssue({ code: 'custom', path: ['routes', i, 'websocket'], input: r.websocket,
          message: `differs from routes[${first.index}] which has the same path ${r.match.path}; WebSocket routes sharing a path must share their websocket settings` })
      }
    }
    if (r.longHeld && proto !== undefined && proto !== 'http') {
      ctx.addIssue({ code: 'custom', path: ['routes', i, 'longHeld'], input: r.longHeld, message: `is for routes to http upstreams; ${r.upstream} is ${proto}` })
    }
  })
  cfg.routes.forEach((r, i) => { if (r.split !== undefined) checkSplit(r.split, r.upstream, cfg.upstreams[r.upstream], ['routes', i, 'split'], ctx) })
  const names = new Map<string, number>()
  // Listeners on one port clash when their hosts can overlap (equal, or either a wildcard).
  const bound: Array<{ path: string, host: string, port: number }> = [
    { path: 'listen.http', host: cfg.listen.http.host, port: cfg.listen.http.port },
    { path: 'listen.admin', host: cfg.listen.admin.host, port: cfg.listen.admin.port },
  ]
  const redirect = cfg.listen.http.redirectHttpPort
  if (redirect !== undefined) {
    if (cfg.listen.http.tls === undefined) ctx.addIssue({ code: 'custom', path: ['listen', 'http', 'redirectHttpPort'], input: redirect, message: 'needs listen.http.tls (it redirects to https)' })
    if (redirect !== 0 && (redirect === cfg.listen.http.port || redirect === cfg.listen.admin.port)) ctx.addIssue({ code: 'custom', path: ['listen', 'http', 'redirectHttpPort'], input: redirect, message: `port ${redirect} is also bound by ${redirect === cfg.listen.http.port ? 'listen.http' : 'listen.admin'}` })
    else if (redirect !== 0) bound.push({ path: 'listen.http.redirectHttpPort', host: cfg.listen.http.host, port: redirect })
  }
  const proxy = cfg.listen.http.acceptProxyProtocol
  if (proxy !== 'off' && cfg.http.trustedProxies.length === 0) {
    ctx.addIssue({ code: 'custom', path: ['listen', 'http', 'acceptProxyProtocol'], input: proxy, message: 'needs http.trustedProxies: the load balancers that may send a PROXY header (every other peer is refused)' })
  }
  if (proxy === 'v2' && cfg.listen.http.tls !== undefined) {
    ctx.addIssue({ code: 'custom', path: ['listen', 'http', 'acceptProxyProtocol'], input: proxy, message: 'v2 cannot be used with listen.http.tls: uWebSockets.js 20.30 looks for the header inside the TLS stream, a load balancer sends it before the ClientHello; use v1+v2 (docs/edge.md)' })
  }
  checkSniNames(cfg.listen.http.tls?.sni, ['listen', 'http', 'tls'], ctx)
  const wildcard = (h: string): boolean => h === '0.0.0.0' || h === '::'
  cfg.listen.tcp.forEach((l, i) => {
    const first = names.get(l.name)
    if (first !== undefined) {
      ctx.addIssue({ code: 'custom', path: ['listen', 'tcp', i, 'name'], input: l.name, message: `duplicates the name of listen.tcp[${first}]` })
    } else names.set(l.name, i)
    if (!Object.hasOwn(cfg.upstreams, l.upstream)) {
      ctx.addIssue({ code: 'custom', path: ['listen', 'tcp', i, 'upstream'], input: l.upstream,
        message: `names no upstream (known tcp upstreams: ${ofProtocol('tcp')})` })
    } else if (cfg.upstreams[l.upstream]!.protocol !== 'tcp') {
      ctx.addIssue({ code: 'custom', path: ['listen', 'tcp', i, 'upstream'], input: l.upstream,
        message: `names upstream ${l.upstream} of protocol ${cfg.upstreams[l.upstream]!.protocol}; a tcp listener needs a tcp upstream (known: ${ofProtocol('tcp')})` })
    }
    if (l.port !== 0) {
      const clash = bound.find((b) => b.port === l.port && (b.host === l.host || wildcard(b.host) || wildcard(l.host)))
      if (clash !== undefined) {
        ctx.addIssue({ code: 'custom', path: ['listen', 'tcp', i, 'port'], input: l.port, message: `port ${l.port} is also bound by ${clash.path}` })
      }
    }
    bound.push({ path: `listen.tcp[${i}]`, host: l.host, port: l.port })
    checkSniNames(l.tls?.sni, ['listen', 'tcp', i, 'tls'], ctx)
    checkSniNames(l.sniRoutes, ['listen', 'tcp', i], ctx, 'sniRoutes')
    if (l.sniRoutes.length > 0 && l.tls !== undefined) ctx.addIssue({ code: 'custom', path: ['listen', 'tcp', i, 'sniRoutes'], input: l.sniRoutes.length, message: 'cannot be combined with tls on the same listener (sniRoutes pass TLS through untouched; tls terminates it)' })
    if (l.sniUnmatched === 'refuse' && l.sniRoutes.length === 0) ctx.addIssue({ code: 'custom', path: ['listen', 'tcp', i, 'sniUnmatched'], input: l.sniUnmatched, message: 'refuse needs sniRoutes (without them no ClientHello is read)' })
    l.sniRoutes.forEach((r, j) => {
      const u = cfg.upstreams[r.upstream]
      if (u === undefined || !Object.hasOwn(cfg.upstreams, r.upstream)) ctx.addIssue({ code: 'custom', path: ['listen', 'tcp', i, 'sniRoutes', j, 'upstream'], input: r.upstream, message: `names no upstream (known tcp upstreams: ${ofProtocol('tcp')})` })
      else if (u.protocol !== 'tcp') ctx.addIssue({ code: 'custom', path: ['listen', 'tcp', i, 'sniRoutes', j, 'upstream'], input: r.upstream, message: `names upstream ${r.upstream} of protocol ${u.protocol}; an SNI route needs a tcp upstream (known: ${ofProtocol('tcp')})` })
    })
  })
})

type IssueSink = { addIssue: (i: { code: 'custom', path: Array<string | number>, input: unknown, message: string }) => void }

/** A server name is listed once across a tls block's `sni` entries (case-insensitive), else the first would silently win. */
function checkSniNames (sni: ReadonlyArray<{ serverNames: readonly string[] }> | undefined, at: Array<string | number>, ctx: IssueSink, key = 'sni'): void {
  sni?.forEach((e, i) => e.serverNames.forEach((n, j) => {
    const k = sni.findIndex((o) => o.serverNames.some((m) => m.toLowerCase() === n.toLowerCase()))
    const first = sni[k]!.serverNames.findIndex((m) => m.toLowerCase() === n.toLowerCase())
    if (k !== i || first !== j) ctx.addIssue({ code: 'custom', path: [...at, key, i, 'serverNames', j], input: n, message: `${n} is also listed by ${at.map((p, x) => typeof p === 'number' ? `[${p}]` : `${x === 0 ? '' : '.'}${p}`).join('')}.${key}[${k}]` })
  }))
}

/** The scheme of TLS endpoints and of plain ones, for the kinds whose endpoints may say it. */
const SCHEMES: Partial<Record<UpstreamConfig['protocol'], { secure: string, plain: string }>> = { http: { secure: 'https', plain: 'http' }, ws: { secure: 'wss', plain: 'ws' } }

/**
 * An upstream's `tls` block and its endpoints' schemes agree: a client key goes with its certificate,
 * and an endpoint written `https://` (`wss://`) is not on an upstream whose tls says `enabled: false`,
 * nor one written `http://` (`ws://`) on an upstream that speaks TLS.
 */
function checkUpstreamTls (name: string, u: UpstreamConfig, ctx: IssueSink): void {
  const tls = u.tls
  const at = (field: string): Array<string | number> => ['upstreams', name, 'tls', field]
  if (tls?.certFile !== undefined && tls.keyFile === undefined) ctx.addIssue({ code: 'custom', path: at('keyFile'), input: undefined, message: 'is required with tls.certFile (the client certificate\'s private key)' })
  if (tls?.keyFile !== undefined && tls.certFile === undefined) ctx.addIssue({ code: 'custom', path: at('certFile'), input: undefined, message: 'is required with tls.keyFile (the client certificate the key belongs to)' })
  if (tls?.passphraseFile !== undefined && tls.keyFile === undefined) ctx.addIssue({ code: 'custom', path: at('passphraseFile'), input: tls.passphraseFile, message: 'opens an encrypted tls.keyFile; give keyFile and certFile with it' })
  const schemes = SCHEMES[u.protocol]
  if (schemes === undefined || u.endpoints === undefined) return
  const written = u.endpoints.map((e) => endpointScheme(endpointEntry(e).address))
  const secure = tls !== undefined ? tls.enabled : written.includes(schemes.secure)
  u.endpoints.forEach((e, i) => {
    const path: Array<string | number> = typeof e === 'string' ? ['upstreams', name, 'endpoints', i] : ['upstreams', name, 'endpoints', i, 'address']
    const address = endpointEntry(e).address
    if (written[i] === schemes.secure && !secure) ctx.addIssue({ code: 'custom', path, input: address, message: `says ${schemes.secure}:// but tls.enabled is false` })
    if (written[i] === schemes.plain && secure) ctx.addIssue({ code: 'custom', path, input: address, message: `says ${schemes.plain}:// but the upstream speaks TLS (${tls !== undefined ? 'its tls block' : `another endpoint is written ${schemes.secure}://`}); write host:port or ${schemes.secure}://host:port` })
  })
}

/** TLS settings of an upstream whose endpoints say `https://` or `wss://` and that has no `tls` block. */
const IMPLIED_TLS = upstreamTls.parse({})

/**
 * The TLS an upstream speaks: its `tls` block when enabled, the defaults (public CAs, verification on)
 * when it has none and its endpoints are written `https://` or `wss://`, else undefined (plain).
 */
export function upstreamTlsSettings (u: UpstreamConfig): UpstreamTlsConfig | undefined {
  if (u.tls !== undefined) return u.tls.enabled ? u.tls : undefined
  const secure = SCHEMES[u.protocol]?.secure
  return secure !== undefined && u.endpoints?.some((e) => endpointScheme(endpointEntry(e).address) === secure) === true ? IMPLIED_TLS : undefined
}

/** A static endpoint list entry's address and labels (a plain string has none). */
export function endpointEntry (e: string | { readonly address: string, readonly labels: Readonly<Record<string, string>> }): { address: string, labels: Readonly<Record<string, string>> } {
  return typeof e === 'string' ? { address: e, labels: {} } : e
}

function describeLabels (l: Labels): string {
  return Object.keys(l).length === 0 ? '(none)' : labelsText(l)
}

type SplitInput = z.output<typeof routeSplit>

/**
 * A route's split against its upstream: weights summing to 100, distinct subset names, and (static
 * endpoints) every subset's labels carried by some endpoint. DNS endpoints carry no labels, so a split of
 * a dns upstream could never match; a registry's labels appear at run time (the gateway warns).
 */
export function checkSplit (split: SplitInput, upstreamName: string, u: { protocol: string, endpoints?: ReadonlyArray<string | { address: string, labels: Readonly<Record<string, string>> }> | undefined, dns?: unknown } | undefined, path: Array<string | number>, ctx: IssueSink): void {
  const sum = split.subsets.reduce((n, s) => n + s.weight, 0)
  if (sum !== 100) {
    ctx.addIssue({ code: 'custom', path: [...path, 'subsets'], input: split.subsets.map((s) => s.weight), message: `weights must sum to 100 (got ${sum}: ${split.subsets.map((s) => `${subsetName(s)} ${s.weight}`).join(' + ')})` })
  }
  const seen = new Map<string, number>()
  split.subsets.forEach((s, j) => {
    const name = subsetName(s)
    const first = seen.get(name)
    if (first !== undefined) ctx.addIssue({ code: 'custom', path: [...path, 'subsets', j, s.name !== undefined ? 'name' : 'labels'], input: name, message: `gives the subset the name of subsets[${first}] (${name}${s.name === undefined ? ', from its label values' : ''}); give the subsets distinct names` })
    else seen.set(name, j)
  })
  if (u === undefined || (u.protocol !== 'http' && u.protocol !== 'ws' && u.protocol !== 'mux')) return // the route's own check names it
  if (split.rebalance && u.protocol !== 'mux') {
    ctx.addIssue({ code: 'custom', path: [...path, 'rebalance'], input: true, message: `moves open sessions by backend handoff, which only mux upstreams have; ${upstreamName} is ${u.protocol}` })
  }
  if (u.dns !== undefined) {
    ctx.addIssue({ code: 'custom', path, input: upstreamName, message: `upstream ${upstreamName} takes its endpoints from dns, which carry no labels; a split needs static endpoints with labels or a registry whose backends announce them` })
    return
  }
  if (u.endpoints === undefined) return // registry: labels are known once backends register
  const have = u.endpoints.map((e) => endpointEntry(e).labels)
  split.subsets.forEach((s, j) => {
    if (have.some((l) => labelsMatch(s.labels, l))) return
    const known = [...new Set(have.map(describeLabels))].join('; ')
    ctx.addIssue({ code: 'custom', path: [...path, 'subsets', j, 'labels'], input: s.labels, message: `no endpoint of upstream ${upstreamName} carries ${describeLabels(s.labels)} (its endpoints carry: ${known})` })
  })
}

export type ConfigInput = z.input<typeof configSchema>
export type ParsedConfig = z.output<typeof configSchema>
export type UpstreamConfig = z.output<typeof upstreamSchema>
export type HttpUpstreamConfig = Extract<UpstreamConfig, { protocol: 'http' }>
export type TcpUpstreamConfig = Extract<UpstreamConfig, { protocol: 'tcp' }>
export type WsUpstreamConfig = Extract<UpstreamConfig, { protocol: 'ws' }>
export type MuxUpstreamConfig = Extract<UpstreamConfig, { protocol: 'mux' }>
export type UpstreamTlsConfig = z.output<typeof upstreamTls>
export type WebSocketRouteConfig = z.output<typeof websocketRoute>
export type TcpListenerConfig = ParsedConfig['listen']['tcp'][number]
export type HttpTlsConfig = NonNullable<ParsedConfig['listen']['http']['tls']>
export type TcpTlsConfig = NonNullable<TcpListenerConfig['tls']>
export type RouteConfig = ParsedConfig['routes'][number]
export type RouteSplitConfig = NonNullable<RouteConfig['split']>
export type { Labels } from './labels.js'
export type AuthPolicyConfig = z.output<typeof authPolicy>
export type JwtAuthConfig = z.output<typeof jwtAuth>
export type ApiKeyEntry = z.output<typeof apiKeyEntry>
export type RateLimitPolicyConfig = z.output<typeof rateLimitPolicy>
export type RateLimitsConfig = z.output<typeof rateLimits>
/** A keysFile holds a list of API key entries. */
export const apiKeyList = z.array(apiKeyEntry)
