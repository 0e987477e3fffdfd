import type { HttpRequest, HttpResponse, TemplatedApp } from 'uWebSockets.js'
import type { Logger } from 'pino'
import { ERRORS, type FerryErrorCode } from '../errors.js'
import { listen, type ListenSocket } from '../front/listen.js'
import type { Uws } from '../front/uws.js'
import type { Metrics, TrafficTotals } from '../observability/metrics.js'
import { loadConsoleAssets, type Asset } from './console-assets.js'
import { ConsoleFeed, type FeedOptions, type Subscription } from './console-feed.js'
import type { AdminToken } from './token.js'
import type { AdminChange, AdminState } from '../drain/endpoint-drain.js'

/** What the admin API reads from the gateway; kept narrow so the admin never reaches into stages. */
export interface AdminSource {
  readonly live: () => boolean
  readonly ready: () => boolean
  readonly status: () => object
  /** Starts (or joins) the drain; returns its progress. */
  readonly drain: () => object
  /** Reloads the config file; `result` is 'ok' or 'refused' (with field-named errors). */
  readonly reload: () => Promise<{ result: string }>
  /** New weights for a route's split (PUT /routes/NAME/split); `result` 'ok', 'refused' (field-named errors) or 'not_found'. */
  readonly setSplit: (route: string, weights: unknown) => Promise<{ result: string }>
  /** The operator's intent for one endpoint of an upstream (`address` as the client wrote it). */
  readonly endpointAdmin: (upstream: string, address: string, admin: AdminState) => AdminChange | Promise<AdminChange>
  /** The message and request counters the console's rates difference (src/admin/console-feed.ts). */
  readonly totals: () => Promise<TrafficTotals>
  /** The /metrics text; absent: `metrics` rendered (a pod's control plane adds its workers'). */
  readonly renderMetrics?: () => Promise<string>
}

/** Who may use the admin API (reloadable) and the console's settings (read at start-up). */
export interface AdminAccess {
  token: AdminToken
  protectMetrics: boolean
}

export interface AdminConsoleOptions extends FeedOptions {
  enabled: boolean
}

const JSON_TYPE = 'application/json'
/** The largest request body the admin API reads (a split's weights are a few dozen bytes). */
const MAX_ADMIN_BODY = 64 * 1024

/** Headers of every console file: nothing from elsewhere, never framed, never cached (it is tiny). */
const ASSET_HEADERS: Array<[string, string]> = [
  ['content-security-policy', "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"],
  ['x-content-type-options', 'nosniff'],
  ['referrer-policy', 'no-referrer'],
  ['cache-control', 'no-cache'],
]

function errorBody (code: FerryErrorCode, message: string): string {
  return JSON.stringify({ error: { code, message } })
}

/** A path parameter as written (`[::1]:80` may come percent-encoded); undefined when not valid percent-encoding. */
function decodeParameter (s: string): string | undefined {
  try {
    return decodeURIComponent(s)
  } catch {
    return undefined
  }
}

/**
 * Admin HTTP API on its own listener: /healthz /readyz /metrics /status /events, POST /drain /reload,
 * POST /upstreams/NAME/endpoints/ADDR/drain and /ready (an endpoint's admin state), and the status
 * console at /. With a token (admin.token) everything but the probes (and /metrics
 * unless protectMetrics) needs `Authorization: Bearer TOKEN`; POSTs from a page of another origin are
 * refused whatever the token.
 */
export class AdminServer {
  private readonly app: TemplatedApp
  private socket: ListenSocket | undefined
  private readonly feed: ConsoleFeed
  private readonly assets: Map<string, Asset> | undefined

  constructor (private readonly uws: Uws, private readonly source: AdminSource, private readonly metrics: Metrics, private readonly log: Logger,
    private access: AdminAccess, consoleOpts: AdminConsoleOptions) {
    this.feed = new ConsoleFeed(consoleOpts, { snapshot: () => this.status(), totals: source.totals }, metrics, log.child({ component: 'console' }))
    this.assets = consoleOpts.enabled ? loadConsoleAssets() : undefined
    this.app = uws.App()
    this.app.get('/healthz', (res) => {
      const ok = this.source.live()
      res.writeStatus(ok ? '200 OK' : '503 Service Unavailable').writeHeader('content-type', 'text/plain').end(ok ? 'ok\n' : 'not live\n')
    })
    this.app.get('/readyz', (res) => {
      const ok = this.source.ready()
      res.writeStatus(ok ? '200 OK' : '503 Service Unavailable').writeHeader('content-type', 'text/plain').end(ok ? 'ready\n' : 'not ready\n')
    })
    this.app.get('/status', (res, req) => {
      if (!this.authorized(res, req, '/status')) return
      res.writeHeader('content-type', JSON_TYPE).end(JSON.stringify(this.status(), null, 2))
    })
    this.app.get('/metrics', (res, req) => {
      if (this.access.protectMetrics && !this.authorized(res, req, '/metrics')) return
      this.serveMetrics(res)
    })
    this.app.get('/events', (res, req) => {
      if (!this.authorized(res, req, '/events')) return
      this.subscribe(res)
    })
    this.app.post('/drain', (res, req) => {
      if (!this.sameOrigin(res, req) || !this.authorized(res, req, '/drain')) return
      res.onAborted(() => {})
      const progress = this.source.drain()
      res.writeStatus('202 Accepted').writeHeader('content-type', JSON_TYPE).end(JSON.stringify(progress, null, 2))
    })
    this.app.post('/reload', (res, req) => {
      if (!this.sameOrigin(res, req) || !this.authorized(res, req, '/reload')) return
      let aborted = false
      res.onAborted(() => { aborted = true })
      this.source.reload().then((r) => {
        if (aborted) return
        res.cork(() => res.writeStatus(r.result === 'ok' ? '200 OK' : '400 Bad Request').writeHeader('content-type', JSON_TYPE).end(JSON.stringify(r, null, 2)))
      }, (err: unknown) => {
        this.log.error({ err }, 'reload failed')
        if (!aborted) res.cork(() => res.writeStatus('500 Internal Server Error').end())
      })
    })
    this.app.put('/routes/*', (res, req) => {
      if (!this.sameOrigin(res, req) || !this.authorized(res, req, '/routes')) return
      this.putSplit(res, req.getUrl())
    })
    for (const admin of ['drain', 'ready'] as const) {
      this.app.post(`/upstreams/:upstream/endpoints/:address/${admin}`, (res, req) => {
        if (!this.sameOrigin(res, req) || !this.authorized(res, req, `/upstreams/endpoints/${admin}`)) return
        let aborted = false
        res.onAborted(() => { aborted = true })
        const upstream = decodeParameter(req.getParameter(0) ?? '')
        const address = decodeParameter(req.getParameter(1) ?? '')
        const answer = (r: AdminChange): void => {
          if (aborted) return
          if (!r.ok) {
            res.cork(() => res.writeStatus(`${ERRORS[r.code].status} Not Found`).writeHeader('content-type', JSON_TYPE).end(errorBody(r.code, r.message)))
            return
          }
          // A drain that starts is accepted (the sessions leave paced, after this answer); asking again is 200 and says so.
          const result = admin === 'drain' ? (r.changed ? 'draining' : 'already_draining') : (r.changed ? 'ready' : 'already_ready')
          const body = { result, upstream: r.upstream, endpoint: r.endpoint, admin: r.admin, state: r.state, drain: r.drain }
          res.cork(() => res.writeStatus(admin === 'drain' && r.changed ? '202 Accepted' : '200 OK').writeHeader('content-type', JSON_TYPE).end(JSON.stringify(body, null, 2)))
        }
        const r = upstream === undefined || address === undefined
          ? { ok: false as const, code: 'FERRY_ERR_UNKNOWN_ENDPOINT' as const, message: 'the upstream name or endpoint address is not valid percent-encoding' }
          : this.source.endpointAdmin(upstream, address, admin)
        if (!(r instanceof Promise)) { answer(r); return }
        r.then(answer, (err: unknown) => {
          this.log.error({ err }, 'endpoint admin change failed')
          if (!aborted) res.cork(() => res.writeStatus('500 Internal Server Error').end())
        })
      })
    }
    for (const [path, asset] of this.assets ?? []) {
      this.app.get(path, (res) => {
        res.writeHeader('content-type', asset.type)
        for (const [k, v] of ASSET_HEADERS) res.writeHeader(k, v)
        res.end(asset.body)
      })
    }
    this.app.any('/*', (res) => {
      res.writeStatus('404 Not Found').writeHeader('content-type', 'text/plain').end(`admin endpoints: GET /healthz /readyz /metrics /status /events${this.assets === undefined ? '' : ' / (console)'}, POST /drain /reload /upstreams/NAME/endpoints/ADDR/drain /upstreams/NAME/endpoints/ADDR/ready, PUT /routes/NAME/split\n`)
    })
  }

  /** Starts the console's sampling timer and binds the listener. */
  async listen (host: string, port: number): Promise<number> {
    this.feed.start()
    this.socket = await listen(this.uws, this.app, 'listen.admin', host, port)
    return this.socket.port
  }

  /** A reload may change the token: live channels opened with another token are ended (they reconnect and ask). */
  setAccess (access: AdminAccess): void {
    const changed = !access.token.same(this.access.token)
    this.access = access
    if (changed) this.feed.closeAll('flush')
  }

  /** The gateway's status plus the admin listener's own. */
  private status (): object {
    return { ...this.source.status(), admin: { token: this.access.token.source, protectMetrics: this.access.protectMetrics, console: this.feed.status() } }
  }

  /**
   * PUT /routes/NAME/split with `{"weights": {"v1": 50, "v2": 50}}`: NAME is the route's name as /status
   * shows it (`*\/chat`, `api.example.com/v1`), so the URL reads `/routes/*\/chat/split`. 200 with the
   * new split, 400 with field-named errors (the running config is kept), 404 for no such route or split.
   */
  private putSplit (res: HttpResponse, url: string): void {
    let aborted = false
    res.onAborted(() => { aborted = true })
    const answer = (status: string, body: object): void => {
      if (aborted) return
      res.cork(() => res.writeStatus(status).writeHeader('content-type', JSON_TYPE).end(JSON.stringify(body, null, 2)))
    }
    const m = /^\/routes\/(.+)\/split$/.exec(url)
    let route: string | undefined
    try { route = m === null ? undefined : decodeURIComponent(m[1]!) } catch { route = undefined }
    if (route === undefined) {
      answer('404 Not Found', { result: 'not_found', errors: [`${url}: PUT /routes/NAME/split, with NAME as /status names the route (e.g. /routes/*/chat/split)`] })
      return
    }
    const chunks: Buffer[] = []
    let size = 0
    res.onData((chunk, isLast) => {
      if (size < 0) return
      size += chunk.byteLength
      if (size > MAX_ADMIN_BODY) {
        size = -1
        answer('413 Payload Too Large', { result: 'refused', errors: [`request body: larger than ${MAX_ADMIN_BODY} bytes`] })
        return
      }
      chunks.push(Buffer.from(chunk.slice(0))) // uWS neuters the chunk after this callback
      if (!isLast) return
      let body: unknown
      try { body = JSON.parse(Buffer.concat(chunks).toString('utf8')) } catch (err) {
        answer('400 Bad Request', { result: 'refused', errors: [`request body: not JSON (${(err as Error).message})`] })
        return
      }
      const extra = body !== null && typeof body === 'object' ? Object.keys(body).filter((k) => k !== 'weights') : []
      if (body === null || typeof body !== 'object' || Array.isArray(body) || extra.length > 0) {
        answer('400 Bad Request', { result: 'refused', errors: [extra.length > 0 ? `${extra[0]!}: unknown key (the body is {"weights": {"SUBSET": WEIGHT, …}})` : 'request body: must be {"weights": {"SUBSET": WEIGHT, …}}'] })
        return
      }
      this.source.setSplit(route!, (body as { weights?: unknown }).weights).then((r) => {
        answer(r.result === 'ok' ? '200 OK' : r.result === 'not_found' ? '404 Not Found' : '400 Bad Request', r)
      }, (err: unknown) => {
        this.log.error({ err }, 'split change failed')
        answer('500 Internal Server Error', { result: 'error' })
      })
    })
  }

  /** Answers 401 (and counts it) unless the request carries the token; `path` is a fixed label. */
  private authorized (res: HttpResponse, req: HttpRequest, path: string): boolean {
    if (this.access.token.allows(req.getHeader('authorization'))) return true
    this.metrics.adminUnauthorized.labels(path).inc()
    res.writeStatus(`${ERRORS.FERRY_ERR_ADMIN_UNAUTHORIZED.status} Unauthorized`)
      .writeHeader('www-authenticate', 'Bearer realm="ferry-admin"')
      .writeHeader('content-type', JSON_TYPE)
      .end(errorBody('FERRY_ERR_ADMIN_UNAUTHORIZED', `${path} needs the admin token: Authorization: Bearer TOKEN`))
    return false
  }

  /**
   * A browser sends Origin with every POST; one naming another host than the request's is a page of
   * another site submitting a form to this machine (no token is needed for that when none is set).
   */
  private sameOrigin (res: HttpResponse, req: HttpRequest): boolean {
    const origin = req.getHeader('origin')
    if (origin === '') return true
    let host: string | undefined
    try { host = new URL(origin).host } catch { host = undefined }
    if (host !== undefined && host === req.getHeader('host')) return true
    res.writeStatus(`${ERRORS.FERRY_ERR_ADMIN_CROSS_ORIGIN.status} Forbidden`).writeHeader('content-type', JSON_TYPE)
      .end(errorBody('FERRY_ERR_ADMIN_CROSS_ORIGIN', `a POST from ${origin} to the admin listener of ${req.getHeader('host')} is refused`))
    return false
  }

  /** The live channel: Server-Sent Events, one snapshot per console.intervalMs (see ConsoleFeed). */
  private subscribe (res: HttpResponse): void {
    if (this.feed.full) {
      res.writeStatus('503 Service Unavailable').writeHeader('retry-after', '5').writeHeader('content-type', JSON_TYPE)
        .end(errorBody('FERRY_ERR_CONSOLE_FULL', 'too many console subscribers (admin.console.maxSubscribers)'))
      return
    }
    let sub: Subscription | undefined
    let ended = false
    res.onAborted(() => {
      ended = true
      if (sub !== undefined) this.feed.unsubscribe(sub)
    })
    res.writeStatus('200 OK').writeHeader('content-type', 'text/event-stream').writeHeader('cache-control', 'no-store').writeHeader('x-content-type-options', 'nosniff')
    sub = this.feed.subscribe({
      write: (chunk) => {
        if (ended) return true
        let ok = true
        // Outside the handler a write must be corked (and uWS 20.30 can lose ≥ 16 KiB uncorked sends).
        res.cork(() => { ok = res.write(chunk) })
        return ok
      },
      close: (kind) => {
        if (ended) return
        ended = true
        if (kind === 'flush') res.cork(() => res.end()); else res.close()
      },
    })
    res.onWritable(() => {
      if (sub !== undefined) this.feed.writable(sub)
      return true
    })
  }

  private serveMetrics (res: HttpResponse): void {
    let aborted = false
    res.onAborted(() => { aborted = true })
    ;(this.source.renderMetrics ?? (async () => await this.metrics.render()))().then((text) => {
      if (aborted) return
      res.cork(() => res.writeHeader('content-type', this.metrics.registry.contentType).end(text))
    }, (err: unknown) => {
      this.log.error({ err }, 'metrics render failed')
      if (!aborted) res.cork(() => res.writeStatus('500 Internal Server Error').end())
    })
  }

  /** A reload moves the admin listener: bind the new address first, then `adopt` it. */
  async bindNew (host: string, port: number): Promise<ListenSocket> {
    return await listen(this.uws, this.app, 'listen.admin', host, port)
  }

  adopt (socket: ListenSocket): void {
    const paused = this.socket?.state === 'paused'
    this.socket?.close()
    this.socket = socket
    if (paused) socket.pause()
  }

  /**
   * Only when the descriptors are all but gone (DescriptorGuard 'exhausted'): a connection nobody can
   * accept would make uWS retry accept() in a tight loop; refused by the kernel instead until resumed.
   */
  pauseAccepting (): void {
    this.socket?.pause()
  }

  resumeAccepting (): void {
    this.socket?.resume()
  }

  close (): void {
    this.feed.close()
    this.socket?.close()
    this.socket = undefined
  }
}
