import { randomBytes } from 'node:crypto'
import type { HttpRequest, HttpResponse, TemplatedApp } from 'uWebSockets.js'
import type { Logger } from 'pino'
import type { Config } from '../config/load.js'
import { ERRORS, toFerryError, type FerryError } from '../errors.js'
import type { Metrics } from '../observability/metrics.js'
import type { Admission as EdgeAdmission, BodyPolicy, ClientRequest, HttpLifecycle } from '../contracts/http.js'
import { sendError } from '../net/error-response.js'
import { applyAdmitted, type Admitted, type RouteGuard } from '../edge/guard.js'
import { Admit, isRefused, type Refused } from './admit.js'
import { readClientRequest, refusedRequestId, type RequestOptions } from './http-request.js'
import { listen, type ListenSocket } from './listen.js'
import type { Uws } from './uws.js'
import { WsFront } from './ws-front.js'
import type { RouteTable } from './route-table.js'
import type { Route } from '../routing/router.js'
import type { Admission } from '../drain/admission.js'
import { ConnectionLimits } from '../edge/limits.js'
import type { PodIpCounts } from '../planes/ip-counts.js'
import { Networks } from '../net/address.js'
import { redirectApp, TlsFront } from './tls.js'
import type { HttpTlsConfig } from '../config/schema.js'
import { ProxyGate, ProxyRefusals } from './proxy-gate.js'
import { ProxyReader } from './proxy-reader.js'

export interface FrontDeps {
  readonly uws: Uws
  /** The config the front started with: its listener. */
  readonly config: Config
  readonly table: RouteTable
  readonly log: Logger
  readonly metrics: Metrics
  /** Draining flag and in-flight count, shared with the exchanges. */
  readonly lifecycle: HttpLifecycle
  readonly admission: Admission
  /** A worker of a pod: the pod's per-IP figures (src/planes/ip-counts.ts). */
  readonly ipCounts?: PodIpCounts | undefined
}

/**
 * The uWebSockets.js HTTP front: owns the app and its listen socket. Each request is read synchronously,
 * routed, and handed to an HttpExchange; nothing here throws into uWS (an exception in a uWS callback
 * would take the process down), every failure becomes a response.
 */
export class HttpFront {
  private readonly app: TemplatedApp
  private socket: ListenSocket | undefined
  /** listen.http.tls: the certificates and their watch (absent: plain HTTP). */
  readonly tls: TlsFront | undefined
  /** listen.http.redirectHttpPort: the plain listener that redirects to https. */
  private redirect: { app: TemplatedApp, socket: ListenSocket | undefined } | undefined
  /** listen.http.acceptProxyProtocol v1+v2: the public listener is Ferry's PROXY reader, uWS listens behind it on loopback. */
  private readonly reader: ProxyReader | undefined
  /** Who spoke HTTP: the TCP peer or a PROXY header's source, per request and upgrade. */
  private readonly gate: ProxyGate
  /** closeConnections() ran: every client connection was closed (the end of a drain). */
  private connectionsClosed = false
  private reqOpts: RequestOptions
  /** How request bodies are read (http.body*, minBodyRate*, the body limits), shared by every exchange (made once per config). */
  private bodyPolicy: BodyPolicy
  private readonly noRoute: { inc: () => void }
  /** ferry_errors_total children of the client errors readClientRequest throws, resolved on first use. */
  private readonly clientErrors = new Map<string, { inc: () => void }>()
  private readonly internal: { inc: () => void }
  readonly ws: WsFront
  /** Concurrency limits per client IP and gateway-wide (config `limits`), shared with the WebSocket front. */
  readonly limits: ConnectionLimits
  /** The admission pipeline, shared with the WebSocket front. */
  private readonly admit: Admit
  private table: RouteTable
  private readonly nextRequestId: () => string

  constructor (private readonly deps: FrontDeps) {
    const tls = deps.config.listen.http.tls
    this.tls = tls === undefined ? undefined : new TlsFront({ uws: deps.uws, log: deps.log.child({ component: 'tls' }), metrics: deps.metrics }, tls)
    this.app = this.tls?.app ?? deps.uws.App()
    const routes = this.tls === undefined ? (fn: (app: TemplatedApp) => void) => { fn(this.app) } : this.tls.register.bind(this.tls)
    const prefix = randomBytes(4).toString('hex')
    let n = 0
    this.nextRequestId = () => `${prefix}-${(++n).toString(36)}`
    this.table = deps.table
    this.reqOpts = this.requestOptions(deps.table.config)
    const refusals = new ProxyRefusals(deps.log, deps.metrics)
    const mode = deps.config.listen.http.acceptProxyProtocol
    if (mode === 'v1+v2') this.reader = new ProxyReader({ uws: deps.uws, app: this.app, log: deps.log, refusals }, this.reqOpts.trusted, deps.config.listen.http.proxyHeaderTimeoutMs)
    this.gate = new ProxyGate(mode, this.reqOpts.trusted, refusals, this.reader === undefined ? undefined : (a) => this.reader!.clientOf(a))
    this.noRoute = deps.metrics.httpErrors.labels('FERRY_ERR_NO_ROUTE', '')
    this.internal = deps.metrics.httpErrors.labels('FERRY_ERR_INTERNAL', '')
    this.limits = new ConnectionLimits(deps.table.config.limits, deps.metrics, deps.ipCounts)
    this.bodyPolicy = bodyPolicy(deps.table.config, this.limits)
    this.admit = new Admit({ metrics: deps.metrics, log: deps.log, limits: this.limits, admission: deps.admission })
    // WebSocket behaviors first: their GET handlers yield non-upgrade requests to `any`.
    this.ws = new WsFront(this.app, { uws: deps.uws, table: deps.table, log: deps.log, metrics: deps.metrics, admit: this.admit, routes, proto: this.proto, gate: this.gate })
    routes((app) => { app.any('/*', (res, req) => this.onRequest(res, req)) })
  }

  private requestOptions (cfg: Config): RequestOptions {
    const h = cfg.http
    return { requestIdHeader: h.requestIdHeader, trusted: new Networks(h.trustedProxies), maxUrlBytes: h.maxUrlBytes, maxHeaderBytes: h.maxHeaderBytes, mergeSlashes: h.mergeSlashes, nextRequestId: this.nextRequestId, proto: this.proto }
  }

  /** What X-Forwarded-Proto says: the scheme the client used to reach this front. */
  private get proto (): 'http' | 'https' {
    return this.deps.config.listen.http.tls === undefined ? 'http' : 'https'
  }

  /**
   * A reload's TLS files, checked before anything else of the reload is applied: problems refuse the
   * reload (the running certificates stay); `apply` runs once the reload goes ahead. Every reload reads
   * the files again, so a renewed certificate is picked up even when the config text did not change.
   */
  prepareTls (next: HttpTlsConfig | undefined): { problems: string[] } | { apply: () => void } {
    if (this.tls === undefined || next === undefined) return { apply: () => {} }
    const r = this.tls.prepare(next)
    if ('problems' in r) this.tls.refused(r.problems)
    return r
  }

  /** A reload: requests and upgrades from now on are routed with `table`; those under way keep theirs. */
  setTable (table: RouteTable): void {
    this.table = table
    this.reqOpts = this.requestOptions(table.config)
    // `off` ⇄ `v2` switch live; `v1+v2` is set up at start (src/config/reload.ts refuses a change to or from it).
    this.gate.configure(table.config.listen.http.acceptProxyProtocol, this.reqOpts.trusted)
    this.reader?.configure(this.reqOpts.trusted, table.config.listen.http.proxyHeaderTimeoutMs)
    this.bodyPolicy = bodyPolicy(table.config, this.limits)
    this.limits.configure(table.config.limits)
    this.ws.setTable(table)
  }

  async listen (): Promise<number> {
    const { host, port } = this.deps.config.listen.http
    let bound: number
    if (this.reader !== undefined) {
      bound = await this.reader.listen(host, port)
      this.deps.log.info({ http: `${host}:${bound}`, uws: `127.0.0.1:${this.reader.internalPort!}` }, 'reading PROXY protocol headers (v1+v2) in front of uWebSockets.js')
    } else {
      this.socket = await listen(this.deps.uws, this.app, 'listen.http', host, port)
      bound = this.socket.port
    }
    const redirectPort = this.deps.config.listen.http.redirectHttpPort
    if (redirectPort !== undefined) {
      const app = redirectApp(this.deps.uws, () => this.reader?.port ?? this.socket?.port ?? port)
      this.redirect = { app, socket: await listen(this.deps.uws, app, 'listen.http.redirectHttpPort', host, redirectPort) }
      this.deps.log.info({ redirect: `${host}:${this.redirect.socket!.port}`, to: bound }, 'redirecting plain HTTP to https')
    }
    return bound
  }

  /** A reload moves the listener: binds the new address (the old one still accepts). */
  async bindNew (host: string, port: number): Promise<ListenSocket> {
    return await listen(this.deps.uws, this.app, 'listen.http', host, port)
  }

  /** …then takes it and closes the old one (its established connections continue). A paused front stays paused. */
  adopt (socket: ListenSocket): void {
    const paused = this.socket?.state === 'paused'
    this.socket?.close()
    this.socket = socket
    if (paused) socket.pause()
  }

  /** Descriptors ran low (DescriptorGuard): new connections are refused by the kernel until resumed. */
  pauseAccepting (): void {
    this.socket?.pause()
    this.reader?.pause()
  }

  /** Binds the listener's address again after a pause (throws FERRY_ERR_LISTEN; a stopped front stays stopped). */
  resumeAccepting (): void {
    this.socket?.resume()
    this.reader?.resume()
  }

  /** Stops accepting new connections; requests in flight continue. */
  stopAccepting (): void {
    this.ws.stopAccepting()
    this.socket?.close()
    this.socket = undefined
    this.reader?.stopAccepting()
    this.redirect?.socket?.close()
    if (this.redirect !== undefined) this.redirect.socket = undefined
    this.tls?.close()
  }

  /**
   * The end of a drain: closes every client connection left on the HTTP port, which by then are idle
   * keep-alive connections (uWS would keep each up to its 10 s idle timer, and 20.30 has no handle per
   * HTTP connection to close them one by one). app.close() closes every socket of the app, WebSockets
   * included: the caller makes sure no request and no session is left, and nothing is still leaving.
   */
  closeConnections (): void {
    this.stopAccepting()
    if (this.connectionsClosed) return
    this.connectionsClosed = true
    // The typings lack close(); the 20.30 binary has it (us_socket_context_close on the HTTP and WebSocket contexts).
    const app = this.app as TemplatedApp & { close: () => void }
    app.close()
    // The reader's pipes follow uWS closing its side; those still reading a header go now.
    this.reader?.closeAll()
    if (this.redirect !== undefined) (this.redirect.app as TemplatedApp & { close: () => void }).close()
  }

  /** read → admit (src/front/admit.ts: route, access, kind, shape, limit, guard) → the upstream's exchange. */
  private onRequest (res: HttpResponse, req: HttpRequest): void {
    let requestId = ''
    let peer = ''
    try {
      // A refused PROXY peer is closed before anything is read: it gets no response.
      peer = this.gate.peer(res)
      if (peer === '') return
      const creq = readClientRequest(req, this.reqOpts, peer)
      requestId = creq.requestId
      const table = this.table
      const pass = this.admit.http(table, creq)
      if (isRefused(pass)) { this.refuse(res, table, creq, pass); return }
      const { route, upstream } = pass
      const size = { maxBytes: pass.maxBody, bufferBytes: route.bufferBodyBytes ?? table.config.http.bufferBodyBytes }
      // The exchange owns the concurrency slot from here: it calls `release` once when it ends.
      const exchange = upstream.exchange(res, creq, route, size, this.bodyPolicy, pass.release)
      const guard = this.admit.guardOf(table, route)
      const held = pass.held
      if (guard === undefined && held === undefined) { exchange.start(); return }
      if (held !== undefined) {
        // A worker of a pod borrows the per-IP slot from its control plane first; the exchange waits
        // in `gated` and answers a refusal, and releases the slot when it ends.
        exchange.start(held.then((r) => {
          if (r !== undefined) throw r
          if (guard === undefined) return undefined
          const c = this.check(guard, route, creq)
          if (isRefused(c)) throw c
          return c
        }), guard?.verifiesBody ?? false)
        return
      }
      const c = this.check(guard!, route, creq)
      if (isRefused(c)) {
        // The exchange never started, so it will not release the concurrency slot itself.
        pass.release()
        this.refuse(res, table, creq, c)
        return
      }
      exchange.start(c, guard!.verifiesBody)
    } catch (err) {
      this.onHandlerError(res, req, err, requestId, peer)
    }
  }

  /** Stage `guard` of a request: its decision (or a promise of it), or its refusal. */
  private check (guard: RouteGuard, route: Route, creq: ClientRequest): EdgeAdmission | Promise<EdgeAdmission> | Refused {
    const q = creq.target.indexOf('?')
    // HMAC signatures cover the target the client sent; everything else reads the canonical one.
    const verdict = this.admit.guard(guard, route, { method: creq.method, host: creq.host, target: creq.rawTarget, query: q === -1 ? '' : creq.target.slice(q + 1), headers: creq.headers, clientIp: creq.clientIp, hasBody: creq.chunked || (creq.contentLength ?? 0) > 0 })
    if (isRefused(verdict)) return verdict
    const a = verdict.admitted
    return a instanceof Promise ? a.then((x) => admissionOf(creq, x)) : admissionOf(creq, a)
  }

  /**
   * A request the pipeline refused before its exchange started: answered, and counted where its stage
   * says (no route; a WebSocket-only route; else on the route's upstream). Written while uWS may still
   * read the request's head (atHead), and the connection closes when body bytes are left unread.
   */
  private refuse (res: HttpResponse, table: RouteTable, creq: ClientRequest, r: Refused): void {
    // A body too large is never read: the connection always closes after it.
    const close = r.stage === 'shape' || creq.close || this.deps.lifecycle.draining || creq.contentLength !== 0
    const atHead = (creq.contentLength ?? 0) > 0
    if (r.stage === 'route') this.noRoute.inc()
    else if (r.stage === 'kind') this.deps.metrics.httpErrors.labels(r.err.code, r.route!.upstream).inc()
    else if (r.stage !== 'access') {
      const ctx = table.upstreams.get(r.route!.upstream)!
      ctx.metrics.error(r.err.code)
      ctx.metrics.requests(r.route!.name, r.err.status)
    }
    sendError(res, r.err.status, r.err, creq.requestId, this.reqOpts.requestIdHeader, close, r.header, atHead)
    if (this.table.config.logging.accessLog) this.accessLine(creq.requestId, creq.method, creq.path, r.err, creq.clientIp, r.route)
  }

  /**
   * A request the handler could not take: mostly one readClientRequest refused (its head breaks a rule).
   * Still synchronous in the handler, so `req` is valid: the request id is read from it once more here
   * (refusedRequestId), never on the way of requests that pass.
   */
  private onHandlerError (res: HttpResponse, req: HttpRequest, err: unknown, readId: string, peer: string): void {
    const ferr = toFerryError(err, 'unexpected')
    let requestId = readId
    let method = ''
    let path = ''
    try {
      if (requestId === '') requestId = refusedRequestId(req, this.reqOpts)
      method = req.getCaseSensitiveMethod()
      path = req.getUrl()
    } catch {
      // Not expected (req is valid here); the answer matters more than the id.
      if (requestId === '') requestId = this.nextRequestId()
    }
    if (ferr.code === 'FERRY_ERR_INTERNAL') { this.internal.inc(); this.deps.log.error({ err: ferr, reqId: requestId }, 'request handler failed') } else {
      let c = this.clientErrors.get(ferr.code)
      if (c === undefined) { c = this.deps.metrics.httpErrors.labels(ferr.code, ''); this.clientErrors.set(ferr.code, c) }
      c.inc()
    }
    try {
      // A 4xx here always closes: the framing of whatever follows on this connection cannot be trusted.
      sendError(res, ERRORS[ferr.code].status || 500, ferr, requestId, this.reqOpts.requestIdHeader, true)
    } catch {
      try { res.close() } catch { /* already gone */ }
    }
    // A target may be up to the size of a head: the line keeps its first 200 characters.
    if (this.table.config.logging.accessLog) this.accessLine(requestId, method, path.length > 200 ? `${path.slice(0, 200)}…` : path, ferr, peer, undefined)
  }

  /** The access line of a request the front answered itself (the exchange writes those it started). */
  private accessLine (reqId: string, method: string, path: string, err: FerryError, client: string, route: Route | undefined): void {
    this.deps.log.info({ reqId, method, path, status: ERRORS[err.code].status || 500, route: route?.name, upstream: route?.upstream, client, err: err.code }, 'access')
  }
}

function bodyPolicy (cfg: Config, limits: ConnectionLimits): BodyPolicy {
  const h = cfg.http
  return { idleMs: h.bodyIdleMs, totalMs: h.bodyTimeoutMs, minRate: h.minBodyRateBytesPerSec, rateWindowMs: h.minBodyRateWindowMs, limits }
}

/** What the edge admitted, as the exchange takes it: the request headers it sets, and a body digest to check. */
function admissionOf (creq: ClientRequest, a: Admitted): EdgeAdmission {
  return { headers: applyAdmitted(creq.headers, a), bodySha256: a.principal?.bodySha256 }
}
