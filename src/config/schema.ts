import { isIP } from 'node:net'
import { z } from 'zod'

/**
 * The configuration schema: the single source of truth for validation, defaults and the config
 * reference (docs/config.md is rendered from it by `ferry config-reference`; a test keeps it in sync).
 * Every object is strict: an unknown key is an error that names it.
 */

const port = z.number().int().min(0).max(65535)
const positiveInt = z.number({ error: 'must be a positive integer' }).int({ error: 'must be a positive integer' }).positive({ error: 'must be a positive integer' })
const nonNegativeInt = z.number({ error: 'must be a non-negative integer' }).int({ error: 'must be a non-negative integer' }).min(0, { error: 'must be a non-negative integer' })
const durationMs = (def: number, what: string) => positiveInt.default(def).describe(what)

/** `host:port`, `[v6]:port` or `http://host:port`. */
export const ENDPOINT_RE = /^(?:http:\/\/)?(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+):(\d{1,5})\/?$/

const endpoint = z.string().refine((s) => {
  const p = Number(ENDPOINT_RE.exec(s)?.[2])
  return p > 0 && p < 65536
}, { error: 'must be host:port, [ipv6]:port or http://host:port with a port of 1-65535' })

const listener = (defHost: string, defPort: number) => z.strictObject({
  host: z.string().min(1).default(defHost).describe('Address to bind (0.0.0.0, 127.0.0.1, ::, ::1).'),
  port: port.default(defPort).describe('TCP port; 0 picks a free one (logged at start).'),
})

const httpPool = z.strictObject({
  maxConnections: positiveInt.default(16).describe('Hard cap of keep-alive connections Ferry opens to each endpoint of this upstream; the backend never sees more.'),
  queueLimit: nonNegativeInt.default(1000).describe('Requests that may wait for a free connection; beyond it the client gets 503 with Retry-After.'),
  queueTimeoutMs: durationMs(5000, 'How long a request may wait in the queue before 503 with Retry-After.'),
  keepAliveTimeoutMs: durationMs(60000, 'Idle time after which Ferry closes a pooled backend connection (capped by the backend\'s Keep-Alive hint).'),
}).prefault({})

const httpTimeouts = z.strictObject({
  connectMs: durationMs(2000, 'TCP connect budget per attempt; exceeded → 504 (or a retry on another endpoint).'),
  responseMs: durationMs(30000, 'Time from sending the request until the response headers arrive; exceeded → 504.'),
  bodyIdleMs: durationMs(30000, 'Longest silence between response body chunks; exceeded → the client connection is closed (504 if nothing was sent).'),
}).prefault({})

const ejection = z.strictObject({
  consecutiveFailures: positiveInt.default(5).describe('Connect failures, resets or timeouts in a row that eject an endpoint.'),
  ejectMs: durationMs(10000, 'How long an ejected endpoint gets no new requests (it is retried after). When every endpoint is ejected, all are used.'),
}).prefault({})

const httpUpstream = z.strictObject({
  protocol: z.literal('http').describe('Plain HTTP/1.1 with keep-alive towards the backend.'),
  endpoints: z.array(endpoint).min(1, { error: 'must list at least one endpoint' }).describe('Backend addresses, `host:port`.'),
  balance: z.enum(['round-robin', 'least-connections']).default('round-robin').describe('How a request picks among healthy endpoints.'),
  pool: httpPool.describe('Connection pool per endpoint.'),
  timeouts: httpTimeouts.describe('Deadlines Ferry enforces towards the backend.'),
  retry: z.strictObject({
    idempotent: z.boolean().default(true).describe('Retry GET/HEAD/OPTIONS/PUT/DELETE once on another endpoint when the connection failed before any response byte.'),
  }).prefault({}).describe('Retry policy.'),
  ejection: ejection.describe('Passive health: endpoints that keep failing are taken out for a while.'),
})

/** `host:port` or `[v6]:port`: a TCP upstream has no scheme. */
const tcpEndpoint = z.string().refine((s) => {
  const p = Number(ENDPOINT_RE.exec(s)?.[2])
  return !s.startsWith('http://') && p > 0 && p < 65536
}, { error: 'must be host:port or [ipv6]:port with a port of 1-65535' })

const tcpUpstream = z.strictObject({
  protocol: z.literal('tcp').describe('Raw TCP passthrough: each client connection gets its own backend connection (see `listen.tcp`).'),
  endpoints: z.array(tcpEndpoint).min(1, { error: 'must list at least one endpoint' }).describe('Backend addresses, `host:port`.'),
  balance: z.enum(['round-robin', 'least-connections', 'hash']).default('round-robin')
    .describe('How a connection picks among healthy endpoints. `hash`: rendezvous hash of the client IP (the PROXY header\'s source when one is accepted), so a client keeps its endpoint while that endpoint is healthy.'),
  timeouts: z.strictObject({
    connectMs: durationMs(2000, 'TCP connect budget per attempt (per endpoint tried).'),
    connectBudgetMs: durationMs(5000, 'Total time to get a backend connection for one client connection, failovers included; then the client connection is closed.'),
  }).prefault({}).describe('Deadlines Ferry enforces towards the backend.'),
  ejection: z.strictObject({
    consecutiveFailures: positiveInt.default(5).describe('Failed or timed-out connects in a row that eject an endpoint (a reset of an established connection does not count).'),
    ejectMs: durationMs(10000, 'How long an ejected endpoint gets no new connections (then one is tried again). When every endpoint is ejected, all are used.'),
  }).prefault({}).describe('Passive health: endpoints whose connects keep failing are taken out for a while.'),
})

export const upstreamSchema = z.discriminatedUnion('protocol', [httpUpstream, tcpUpstream]).describe('One backend service; `protocol` selects its kind.')

/** An address, or address/prefix within the family's width; zone ids (`%eth0`) are not addresses. */
function isCidr (s: string): boolean {
  const [ip = '', prefix, extra] = s.split('/')
  const family = ip.includes('%') ? 0 : isIP(ip)
  if (family === 0 || extra !== undefined) return false
  return prefix === undefined || (/^\d{1,3}$/.test(prefix) && Number(prefix) <= (family === 4 ? 32 : 128))
}

const cidr = z.string().refine(isCidr, { error: 'must be an IP address or CIDR (10.0.0.0/8, ::1/128)' })

const tcpListener = z.strictObject({
  name: z.string().regex(/^[A-Za-z0-9_-]+$/, { error: 'listener names use letters, digits, _ and -' }).describe('Name in logs, metrics (`listener` label) and /status.'),
  host: z.string().min(1).default('0.0.0.0').describe('Address to bind (0.0.0.0, 127.0.0.1, ::, ::1).'),
  port: port.describe('TCP port; 0 picks a free one (logged at start and shown in /status).'),
  upstream: z.string().min(1).describe('Name of an entry in `upstreams` with `protocol: tcp`.'),
  proxyProtocol: z.enum(['off', 'v1', 'v2']).default('off').describe('Send a PROXY protocol header (HAProxy v1 text or v2 binary) with the client\'s address to the backend before any data.'),
  acceptProxyProtocol: z.boolean().default(false).describe('Expect a PROXY header (v1 or v2) from a load balancer in front and use the client address it carries. Peers outside `trustedProxies` and malformed headers are closed and counted.'),
  trustedProxies: z.array(cidr).default(['127.0.0.0/8', '::1/128']).describe('Peers allowed to send a PROXY header when `acceptProxyProtocol` is on (addresses or CIDRs).'),
  proxyHeaderTimeoutMs: durationMs(5000, 'With `acceptProxyProtocol`: time for the complete PROXY header to arrive.'),
  maxConnections: positiveInt.default(10000).describe('Client connections this listener holds at once; beyond it new ones are closed at once and counted.'),
  maxConnectionsPerIp: nonNegativeInt.default(0).describe('Client connections one IP address may hold at once (the PROXY source when accepted); beyond it new ones are closed at once and counted. 0: no limit.'),
  idleTimeoutMs: nonNegativeInt.default(3600000).describe('A connection with no bytes moving either way for this long is closed (checked coarsely, within a quarter of it). 0: never.'),
  noDelay: z.boolean().default(true).describe('TCP_NODELAY on both the client and the backend socket.'),
  keepAlive: z.boolean().default(true).describe('TCP keep-alive probes on both sockets, so dead peers are found.'),
  keepAliveDelayMs: durationMs(30000, 'Idle time before the first keep-alive probe.'),
  shutdownGraceMs: nonNegativeInt.default(5000).describe('On gateway stop: how long open connections may continue before they are closed.'),
})

const routeSchema = z.strictObject({
  match: z.strictObject({
    host: z.string().regex(/^(\*\.)?[A-Za-z0-9.-]+$/, { error: 'must be a host name or *.suffix' }).optional()
      .describe('Host header to match (port ignored, case-insensitive); `*.example.com` matches subdomains. Absent: any host.'),
    path: z.string().startsWith('/', { error: 'must start with /' }).default('/')
      .describe('Path prefix. `/api` matches `/api`, `/api/…` and `/api?…`, not `/apix`; `/api/` matches anything under it.'),
  }).prefault({}).describe('What requests this route takes. The most specific route wins: host routes before host-less ones, then the longest path; ties keep file order.'),
  upstream: z.string().min(1).describe('Name of an entry in `upstreams`.'),
  maxBodyBytes: positiveInt.optional().describe('Overrides `http.maxBodyBytes` for this route.'),
})

export const configSchema = z.strictObject({
  gateway: z.strictObject({
    id: z.string().min(1).optional().describe('This pod\'s id in logs, /status and affinity records. Default: the host name.'),
  }).prefault({}).describe('Identity of this gateway process.'),
  listen: z.strictObject({
    http: listener('0.0.0.0', 8080).prefault({}).describe('The HTTP and WebSocket front (uWebSockets.js).'),
    admin: listener('127.0.0.1', 9901).prefault({}).describe('Admin API: /healthz /readyz /metrics /status. Keep it off public interfaces.'),
    tcp: z.array(tcpListener).default([]).describe('Raw TCP passthrough ports, each forwarding to a `protocol: tcp` upstream.'),
  }).prefault({}).describe('Listening sockets.'),
  http: z.strictObject({
    maxBodyBytes: positiveInt.default(10 * 1024 * 1024).describe('Largest request body accepted (streamed, never buffered whole); larger → 413.'),
    requestIdHeader: z.string().regex(/^[a-z0-9-]+$/, { error: 'must be a lower-case header name' }).default('x-request-id')
      .describe('Header carrying the request id; generated when the client sent none, forwarded upstream and logged.'),
    trustForwardedFor: z.boolean().default(false).describe('Append to an incoming X-Forwarded-For instead of replacing it (only behind a trusted load balancer).'),
  }).prefault({}).describe('HTTP front behaviour.'),
  upstreams: z.record(z.string().regex(/^[A-Za-z0-9_-]+$/, { error: 'upstream names use letters, digits, _ and -' }), upstreamSchema)
    .describe('Named backends. Each has a `protocol`; this release supports `http` and `tcp`.'),
  routes: z.array(routeSchema).min(1, { error: 'must have at least one route' }).describe('Request routing, see `match`.'),
  logging: z.strictObject({
    level: z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']).default('info').describe('pino log level.'),
    accessLog: z.boolean().default(true).describe('One JSON line per HTTP request (id, method, path, status, upstream, duration, bytes).'),
    pretty: z.boolean().default(false).describe('Human-readable logs (pino-pretty) instead of JSON lines.'),
  }).prefault({}).describe('Logs (pino, JSON lines on stdout).'),
}).superRefine((cfg, ctx) => {
  const ofProtocol = (protocol: string): string => {
    const names = Object.keys(cfg.upstreams).filter((n) => cfg.upstreams[n]!.protocol === protocol)
    return names.length > 0 ? names.join(', ') : 'none'
  }
  cfg.routes.forEach((r, i) => {
    if (!Object.hasOwn(cfg.upstreams, r.upstream)) {
      const known = Object.keys(cfg.upstreams)
      ctx.addIssue({ code: 'custom', path: ['routes', i, 'upstream'], input: r.upstream,
        message: `names no upstream (known: ${known.length ? known.join(', ') : 'none'})` })
    } else if (cfg.upstreams[r.upstream]!.protocol !== 'http') {
      ctx.addIssue({ code: 'custom', path: ['routes', i, 'upstream'], input: r.upstream,
        message: `names upstream ${r.upstream} of protocol ${cfg.upstreams[r.upstream]!.protocol}; routes need an http upstream (known: ${ofProtocol('http')})` })
    }
  })
  const names = new Map<string, number>()
  // Listeners on one port clash when their hosts can overlap (equal, or either a wildcard).
  const bound: Array<{ path: string, host: string, port: number }> = [
    { path: 'listen.http', host: cfg.listen.http.host, port: cfg.listen.http.port },
    { path: 'listen.admin', host: cfg.listen.admin.host, port: cfg.listen.admin.port },
  ]
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
  })
})

export type ConfigInput = z.input<typeof configSchema>
export type ParsedConfig = z.output<typeof configSchema>
export type UpstreamConfig = z.output<typeof upstreamSchema>
export type HttpUpstreamConfig = Extract<UpstreamConfig, { protocol: 'http' }>
export type TcpUpstreamConfig = Extract<UpstreamConfig, { protocol: 'tcp' }>
export type TcpListenerConfig = ParsedConfig['listen']['tcp'][number]
export type RouteConfig = ParsedConfig['routes'][number]
