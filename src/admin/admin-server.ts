import type { HttpResponse, TemplatedApp } from 'uWebSockets.js'
import type { Logger } from 'pino'
import { listen, type ListenSocket } from '../front/listen.js'
import type { Uws } from '../front/uws.js'
import type { Metrics } from '../observability/metrics.js'

/** What the admin API reads from the gateway; kept narrow so the admin never reaches into stages. */
export interface AdminSource {
  readonly live: () => boolean
  readonly ready: () => boolean
  readonly status: () => object
  /** Starts (or joins) the drain; returns its progress. */
  readonly drain: () => object
  /** Reloads the config file; `result` is 'ok' or 'refused' (with field-named errors). */
  readonly reload: () => Promise<{ result: string }>
}

/** Admin HTTP API on its own listener: /healthz /readyz /metrics /status, POST /drain /reload. */
export class AdminServer {
  private readonly app: TemplatedApp
  private socket: ListenSocket | undefined

  constructor (private readonly uws: Uws, private readonly source: AdminSource, private readonly metrics: Metrics, private readonly log: Logger) {
    this.app = uws.App()
    this.app.get('/healthz', (res) => {
      const ok = this.source.live()
      res.writeStatus(ok ? '200 OK' : '503 Service Unavailable').writeHeader('content-type', 'text/plain').end(ok ? 'ok\n' : 'not live\n')
    })
    this.app.get('/readyz', (res) => {
      const ok = this.source.ready()
      res.writeStatus(ok ? '200 OK' : '503 Service Unavailable').writeHeader('content-type', 'text/plain').end(ok ? 'ready\n' : 'not ready\n')
    })
    this.app.get('/status', (res) => {
      res.writeHeader('content-type', 'application/json').end(JSON.stringify(this.source.status(), null, 2))
    })
    this.app.get('/metrics', (res) => this.serveMetrics(res))
    this.app.post('/drain', (res) => {
      res.onAborted(() => {})
      const progress = this.source.drain()
      res.writeStatus('202 Accepted').writeHeader('content-type', 'application/json').end(JSON.stringify(progress, null, 2))
    })
    this.app.post('/reload', (res) => {
      let aborted = false
      res.onAborted(() => { aborted = true })
      this.source.reload().then((r) => {
        if (aborted) return
        res.cork(() => res.writeStatus(r.result === 'ok' ? '200 OK' : '400 Bad Request').writeHeader('content-type', 'application/json').end(JSON.stringify(r, null, 2)))
      }, (err: unknown) => {
        this.log.error({ err }, 'reload failed')
        if (!aborted) res.cork(() => res.writeStatus('500 Internal Server Error').end())
      })
    })
    this.app.any('/*', (res) => {
      res.writeStatus('404 Not Found').writeHeader('content-type', 'text/plain').end('admin endpoints: GET /healthz /readyz /metrics /status, POST /drain /reload\n')
    })
  }

  private serveMetrics (res: HttpResponse): void {
    let aborted = false
    res.onAborted(() => { aborted = true })
    this.metrics.render().then((text) => {
      if (aborted) return
      res.cork(() => res.writeHeader('content-type', this.metrics.registry.contentType).end(text))
    }, (err: unknown) => {
      this.log.error({ err }, 'metrics render failed')
      if (!aborted) res.cork(() => res.writeStatus('500 Internal Server Error').end())
    })
  }

  async listen (host: string, port: number): Promise<number> {
    this.socket = await listen(this.uws, this.app, 'listen.admin', host, port)
    return this.socket.port
  }

  /** A reload moves the admin listener: bind the new address first, then `adopt` it. */
  async bindNew (host: string, port: number): Promise<ListenSocket> {
    return await listen(this.uws, this.app, 'listen.admin', host, port)
  }

  adopt (socket: ListenSocket): void {
    this.socket?.close()
    this.socket = socket
  }

  close (): void {
    this.socket?.close()
    this.socket = undefined
  }
}
