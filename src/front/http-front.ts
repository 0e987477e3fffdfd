import { randomBytes } from 'node:crypto'
import type { HttpRequest, HttpResponse, TemplatedApp } from 'uWebSockets.js'
import type { Logger } from 'pino'
import type { Config } from '../config/load.js'
import { ERRORS, FerryError, isFerryError, toFerryError } from '../errors.js'
import type { Metrics } from '../observability/metrics.js'
import type { Admission as EdgeAdmission, BodyPolicy, HttpLifecycle, HttpTarget, Refusal } from '../contracts/http.js'
import { sendError } from '../net/error-response.js'
import { applyAdmitted, refusalHeader, type Admitted } from '../edge/guard.js'
import { readClientRequest, type RequestOptions } from './http-request.js'
import { listen, type ListenSocket } from './listen.js'
import type { Uws } from './uws.js'
import { WsFront } from './ws-front.js'
import type { RouteTable } from './route-table.js'
import type { Admission } from '../drain/admission.js'
import { ConnectionLimits } from '../edge/limits.js'
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
    this.limits = new ConnectionLimits(deps.table.config.limits, deps.metrics)
    this.bodyPolicy = bodyPolicy(deps.table.config, this.limits)
    // WebSocket behaviors first: their GET handlers yield non-upgrade requests to `any`.
    this.ws = new WsFront(this.app, { uws: deps.uws, table: deps.table, log: deps.log, metrics: deps.metrics, admission: deps.admission, limits: this.limits, routes, proto: this.proto, gate: this.gate })
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

  private onRequest (res: HttpResponse, req: HttpRequest): void {
    let requestId = ''
    try {
      // A refused PROXY peer is closed before anything is read: it gets no response.
      const peer = this.gate.peer(res)
      if (peer === '') return
      const creq = readClientRequest(req, this.reqOpts, peer)
      requestId = creq.requestId
      const close = creq.close || this.deps.lifecycle.draining
      // A refusal from here on is written while uWS still reads this request's head (sendError, atHead).
      const atHead = (creq.contentLength ?? 0) > 0
      const table = this.table
      const route = table.router.match(creq.host, creq.path)
      if (route === undefined) {
        this.noRoute.inc()
        sendError(res, 404, new FerryError('FERRY_ERR_NO_ROUTE', `no route for ${creq.host}${creq.path}`), requestId, this.reqOpts.requestIdHeader, close || creq.contentLength !== 0, undefined, atHead)
        return
      }
      // Access lists before anything else: a refused client costs no auth, limit or backend.
      const denied = route.access?.refusesIp(creq.clientIp)
      if (denied !== undefined) {
        this.deps.metrics.accessDenied.labels(route.name, denied).inc()
        sendError(res, 403, new FerryError('FERRY_ERR_ACCESS_DENIED', `route ${route.name} does not admit ${creq.clientIp}`), requestId, this.reqOpts.requestIdHeader, close || creq.contentLength !== 0, undefined, atHead)
        return
      }
      const ctx = table.upstreams.get(route.upstream)
      if (ctx === undefined) {
        // A ws/mux route: only upgrades belong here.
        this.deps.metrics.httpErrors.labels('FERRY_ERR_UPGRADE_REQUIRED', route.upstream).inc()
        sendError(res, 426, new FerryError('FERRY_ERR_UPGRADE_REQUIRED', `route ${route.name} takes WebSocket upgrades only`), requestId, this.reqOpts.requestIdHeader, close || creq.contentLength !== 0, ['upgrade', 'websocket'], atHead)
        return
      }
      const maxBody = route.maxBodyBytes ?? table.config.http.maxBodyBytes
      if (creq.contentLength !== undefined && creq.contentLength > maxBody) {
        this.refuse(res, ctx, route, new FerryError('FERRY_ERR_BODY_TOO_LARGE', `request body of ${creq.contentLength} bytes exceeds maxBodyBytes ${maxBody}`), requestId, true, undefined, atHead)
        return
      }
      // ---- edge: concurrency limits (src/edge/limits.ts); the exchange releases the slot when it ends ----
      const refused = this.limits.takeRequest(creq.clientIp)
      if (refused !== undefined) {
        this.refuse(res, ctx, route, refused, requestId, close || creq.contentLength !== 0, this.limits.retryAfter, atHead)
        return
      }
      const clientIp = creq.clientIp
      const release = (): void => { this.limits.releaseRequest(clientIp) }
      const size = { maxBytes: maxBody, bufferBytes: route.bufferBodyBytes ?? table.config.http.bufferBodyBytes }
      const exchange = ctx.exchange(res, creq, route, size, this.bodyPolicy, release)
      // ---- end edge ----
      const guard = table.edge.guard(route)
      if (guard === undefined) { exchange.start(); return }
      // Auth and rate limits decide before anything goes upstream: synchronously when they can.
      const q = creq.target.indexOf('?')
      // HMAC signatures cover the target the client sent; everything else reads the canonical one.
      const edgeReq = { method: creq.method, host: creq.host, target: creq.rawTarget, query: q === -1 ? '' : creq.target.slice(q + 1), headers: creq.headers, clientIp: creq.clientIp, hasBody: creq.chunked || (creq.contentLength ?? 0) > 0 }
      const admission = (a: Admitted): EdgeAdmission => ({ headers: applyAdmitted(creq.headers, a), bodySha256: a.principal?.bodySha256 })
      let verdict: Admitted | Promise<Admitted>
      try {
        verdict = guard.check(edgeReq)
      } catch (err) {
        // The exchange never started, so it will not release the concurrency slot itself.
        release()
        if (!isFerryError(err)) throw err
        this.refuse(res, ctx, route, err, requestId, close || creq.contentLength !== 0, refusalHeader(err, guard.challenge), atHead)
        return
      }
      exchange.start(verdict instanceof Promise
        ? verdict.then(admission, (err: unknown): never => {
          const ferr = toFerryError(err, 'edge check failed')
          if (ferr.code === 'FERRY_ERR_INTERNAL') this.deps.log.error({ err: ferr }, 'edge check failed')
          throw { err: ferr, header: refusalHeader(ferr, guard.challenge) } satisfies Refusal
        })
        : admission(verdict), guard.verifiesBody)
    } catch (err) {
      this.onHandlerError(res, err, requestId)
    }
  }

  /** A request refused before its exchange exists (size cap, concurrency limit, edge check): answered and counted on its route. */
  private refuse (res: HttpResponse, ctx: HttpTarget, route: { readonly name: string }, err: FerryError, requestId: string, close: boolean, header?: readonly [string, string], atHead = false): void {
    ctx.metrics.error(err.code)
    ctx.metrics.requests(route.name, err.status)
    sendError(res, err.status, err, requestId, this.reqOpts.requestIdHeader, close, header, atHead)
  }

  private onHandlerError (res: HttpResponse, err: unknown, requestId: string): void {
    const ferr = toFerryError(err, 'unexpected')
    if (ferr.code === 'FERRY_ERR_INTERNAL') { this.internal.inc(); this.deps.log.error({ err: ferr }, 'request handler failed') } else {
      let c = this.clientErrors.get(ferr.code)
      if (c === undefined) { c = this.deps.metrics.httpErrors.labels(ferr.code, ''); this.clientErrors.set(ferr.code, c) }
      c.inc()
    }
    try {
      // A 4xx here always closes: the framing of whatever follows on this connection cannot be trusted.
      sendError(res, ERRORS[ferr.code].status || 500, ferr, requestId === '' ? '-' : requestId, this.reqOpts.requestIdHeader, true)
    } catch {
      try { res.close() } catch { /* already gone */ }
    }
  }
}

function bodyPolicy (cfg: Config, limits: ConnectionLimits): BodyPolicy {
  const h = cfg.http
  return { idleMs: h.bodyIdleMs, totalMs: h.bodyTimeoutMs, minRate: h.minBodyRateBytesPerSec, rateWindowMs: h.minBodyRateWindowMs, limits }
}
