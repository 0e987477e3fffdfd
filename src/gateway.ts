import type { Logger } from 'pino'
import { AdminServer } from './admin/admin-server.js'
import type { Config } from './config/load.js'
import { HttpFront } from './front/http-front.js'
import { loadNativeUws, type Uws } from './front/uws.js'
import { Metrics } from './observability/metrics.js'
import { establishedOnPort } from './observability/sockets.js'
import { Router } from './routing/router.js'
import type { ExchangeContext } from './upstream/http/exchange.js'
import { upstreamMetrics } from './upstream/http/metrics.js'
import { HttpUpstream } from './upstream/http/pool.js'
import { TcpListener } from './tcp/listener.js'
import { TcpUpstream } from './upstream/tcp/upstream.js'
import { VERSION } from './version.js'
import type { WsUpstream } from './front/ws-types.js'
import { createWsUpstream } from './upstream/ws-upstreams.js'
import { createAffinityStore, type AffinityStore } from './affinity/index.js'
import { resolveResumeSecret, ResumeTokens, type SecretSource } from './sessions/token.js'
import { Admission } from './drain/admission.js'
import { DrainController, type DrainStatus, type DrainTarget } from './drain/controller.js'
import type { HttpLifecycle } from './upstream/http/exchange.js'

/**
 * created ──start()──▶ starting ──▶ running ──drain()──▶ draining ──(drained)──▶ stopping ──▶ stopped
 *                                     └──────────────stop()──────────────────────▶ stopping
 * A drain requested while starting begins as soon as the gateway runs.
 */
export type GatewayState = 'created' | 'starting' | 'running' | 'draining' | 'stopping' | 'stopped'

export interface GatewayOptions {
  config: Config
  log: Logger
  /** Defaults to a fresh registry; pass one to share it. */
  metrics?: Metrics
}

export interface BoundPorts {
  http: number
  admin: number
  /** Bound port of each `listen.tcp` listener, by name. */
  tcp: Record<string, number>
}

/**
 * Composes the stages for one config: front → routing → upstream pools, plus the admin API. Owns their
 * lifetimes: `start` builds and binds, `stop` closes in reverse order.
 */
export class Gateway {
  readonly config: Config
  readonly metrics: Metrics
  private readonly log: Logger
  private state: GatewayState = 'created'
  private readonly uws: Uws
  private readonly upstreams = new Map<string, HttpUpstream>()
  private readonly tcpUpstreams = new Map<string, TcpUpstream>()
  private readonly wsUpstreams = new Map<string, WsUpstream>()
  private readonly tcpListeners: TcpListener[] = []
  private front: HttpFront | undefined
  private admin: AdminServer | undefined
  private ports: BoundPorts | undefined
  private readonly startedAt = Date.now()
  private readonly removeCollector: () => void
  private store: AffinityStore | undefined
  private secretSource: SecretSource | undefined
  private readonly lifecycle: HttpLifecycle = { draining: false, inFlight: 0 }
  private readonly admission: Admission
  private readonly drainer: DrainController
  private drainRequested: string | undefined
  private resolveStopped!: () => void
  /** Resolves once the gateway has stopped (after a drain, or `stop()`). */
  readonly stopped: Promise<void>

  constructor (opts: GatewayOptions) {
    this.config = opts.config
    this.log = opts.log
    this.metrics = opts.metrics ?? new Metrics()
    this.uws = loadNativeUws()
    this.metrics.configInfo.labels(this.config.gateway.id, VERSION).set(1)
    this.removeCollector = this.metrics.onCollect(() => this.collect())
    this.admission = new Admission(this.config.admission, this.metrics.admissionRefused)
    this.drainer = new DrainController(this.config.drain, this.drainTarget(), this.log.child({ component: 'drain' }), this.metrics)
    this.stopped = new Promise((resolve) => { this.resolveStopped = resolve })
  }

  get currentState (): GatewayState {
    return this.state
  }

  private transition (next: GatewayState): void {
    this.log.info({ from: this.state, to: next }, `gateway ${next}`)
    this.state = next
  }

  async start (): Promise<BoundPorts> {
    if (this.state !== 'created') throw new Error(`start() in state ${this.state}`)
    this.transition('starting')
    const cfg = this.config
    const contexts = new Map<string, ExchangeContext>()
    const { secret, source } = resolveResumeSecret(cfg.resume)
    this.secretSource = source
    if (source === 'random') this.log.warn('resume.secret is not set: resume tokens work only on this process (set resume.secret, resume.secretFile or FERRY_RESUME_SECRET, shared by every pod)')
    const tokens = new ResumeTokens(secret, cfg.resume.tokenTtlMs)
    const store = createAffinityStore(cfg.affinity, { logger: this.log.child({ component: 'affinity' }), metrics: this.metrics })
    this.store = store
    // Start in a known state: Redis connected, or found unreachable (then the store falls back).
    await store.ready(Math.min(2000, 20 * cfg.affinity.redis.lookupTimeoutMs))
    const wsDeps = { gatewayId: cfg.gateway.id, store, ttlMs: cfg.affinity.ttlMs, tokens }
    for (const [name, ucfg] of Object.entries(cfg.upstreams)) {
      const log = this.log.child({ upstream: name })
      if (ucfg.protocol === 'tcp') {
        this.tcpUpstreams.set(name, new TcpUpstream(name, ucfg, log, this.metrics))
        continue
      }
      if (ucfg.protocol === 'ws' || ucfg.protocol === 'mux') {
        this.wsUpstreams.set(name, createWsUpstream(name, ucfg, log, this.metrics, wsDeps))
        continue
      }
      // WebSocket upgrades on routes to this HTTP upstream go to its endpoints 1:1 (what nginx does with
      // Upgrade headers), as a passthrough upstream of its own (metrics label `NAME:ws`).
      this.wsUpstreams.set(name, createWsUpstream(`${name}:ws`, {
        protocol: 'ws',
        endpoints: ucfg.endpoints.map((e) => e.replace(/^http:\/\//, '')),
        balance: ucfg.balance,
        timeouts: { connectMs: ucfg.timeouts.connectMs + ucfg.timeouts.responseMs },
        ejection: ucfg.ejection,
      }, log, this.metrics, wsDeps))
      const upstream = new HttpUpstream(name, ucfg, log, this.metrics)
      this.upstreams.set(name, upstream)
      contexts.set(name, {
        upstream,
        metrics: upstreamMetrics(this.metrics, name),
        log: this.log,
        lifecycle: this.lifecycle,
        accessLog: cfg.logging.accessLog,
        requestIdHeader: cfg.http.requestIdHeader,
        retryIdempotent: ucfg.retry.idempotent,
      })
    }
    try {
      this.admin = new AdminServer(this.uws, {
        live: () => this.state === 'starting' || this.state === 'running' || this.state === 'draining' || this.state === 'stopping',
        ready: () => this.state === 'running',
        status: () => this.status(),
        drain: () => this.drain('POST /drain'),
      }, this.metrics, this.log)
      const admin = await this.admin.listen(cfg.listen.admin.host, cfg.listen.admin.port)
      this.front = new HttpFront({ uws: this.uws, config: cfg, router: new Router(cfg.routes), upstreams: contexts, wsUpstreams: this.wsUpstreams, log: this.log, metrics: this.metrics, lifecycle: this.lifecycle, admission: this.admission })
      for (const u of this.wsUpstreams.values()) u.bindPublisher?.(this.front.ws)
      const http = await this.front.listen()
      const tcp: Record<string, number> = {}
      for (const [i, lcfg] of cfg.listen.tcp.entries()) {
        const listener = new TcpListener(i, lcfg, this.tcpUpstreams.get(lcfg.upstream)!, this.log.child({ listener: lcfg.name }), this.metrics)
        this.tcpListeners.push(listener)
        tcp[lcfg.name] = await listener.listen()
      }
      this.ports = { http, admin, tcp }
    } catch (err) {
      await this.stop('abort')
      throw err
    }
    this.transition('running')
    this.log.info({ http: `${cfg.listen.http.host}:${this.ports.http}`, admin: `${cfg.listen.admin.host}:${this.ports.admin}`, tcp: this.ports.tcp, gateway: cfg.gateway.id, version: VERSION }, 'listening')
    if (this.drainRequested !== undefined) this.drain(this.drainRequested)
    return this.ports
  }

  /**
   * Starts the drain (SIGTERM, POST /drain, `ferry drain`): see DrainController. Asking again is the
   * same drain. Asked while starting, it begins once the gateway runs. Returns its progress.
   */
  drain (reason: string): DrainStatus | { phase: 'pending' | 'stopped', reason: string } {
    if (this.state === 'created' || this.state === 'starting') {
      this.drainRequested ??= reason
      this.log.info({ reason }, 'drain requested during start-up: it begins once the gateway runs')
      return { phase: 'pending', reason }
    }
    if (this.state === 'stopping' || this.state === 'stopped') return { phase: 'stopped', reason }
    return this.drainer.start(reason)
  }

  /** A second drain signal: shortens what is left of the schedule (see DrainController.hurry). */
  hurryDrain (): void {
    this.drainer.hurry()
  }

  private drainTarget (): DrainTarget {
    return {
      notReady: () => {
        this.lifecycle.draining = true
        if (this.state === 'running') this.transition('draining')
      },
      closeListeners: (graceMs) => {
        this.front?.stopAccepting()
        // TCP connections get their listener's shutdownGraceMs, else until the deadline.
        for (const l of this.tcpListeners) void l.close('flush', graceMs)
      },
      sessions: () => this.front?.ws.sessionCount ?? 0,
      migrate: (n) => this.front?.ws.migrate(n) ?? { resumable: 0, plain: 0 },
      httpInFlight: () => this.lifecycle.inFlight,
      idleHttpConnections: () => this.ports === undefined ? undefined : establishedOnPort(this.ports.http),
      tcpOpen: () => this.tcpListeners.reduce((n, l) => n + l.open, 0),
      forceClose: () => {
        const n = this.front?.ws.closeAll(1012, 'gateway drained: reconnect', 'FERRY_ERR_GATEWAY_DRAINING') ?? 0
        for (const l of this.tcpListeners) void l.close('abort')
        return n
      },
      finish: async () => {
        if (this.state === 'stopping' || this.state === 'stopped') return
        this.transition('stopping')
        await this.closeStages('flush')
      },
    }
  }

  /**
   * Stops now, without the drain schedule (in-process use, tests): 'flush' stops accepting, closes
   * sessions 1001 and lets in-flight requests and TCP connections finish (bounded by the upstream
   * timeouts and shutdownGraceMs), then closes pools. 'abort': close everything now.
   */
  async stop (kind: 'flush' | 'abort' = 'flush'): Promise<void> {
    if (this.state === 'stopping' || this.state === 'stopped') return
    this.drainer.cancel()
    this.transition('stopping')
    this.front?.stopAccepting()
    this.front?.ws.closeAll(1001, 'gateway stopping')
    await this.closeStages(kind)
  }

  private async closeStages (kind: 'flush' | 'abort'): Promise<void> {
    this.front?.stopAccepting()
    this.front?.ws.close()
    await Promise.all([
      ...[...this.wsUpstreams.values()].map(async (u) => { await u.close(kind) }),
      ...[...this.upstreams.values()].map(async (u) => { await u.close(kind) }),
      // TCP listeners stop accepting at once, then give open connections up to shutdownGraceMs ('flush').
      ...this.tcpListeners.map(async (l) => { await l.close(kind) }),
    ])
    for (const u of this.tcpUpstreams.values()) u.close(kind)
    await this.store?.close(kind)
    this.admin?.close()
    this.removeCollector()
    this.transition('stopped')
    this.resolveStopped()
  }

  private collect (): void {
    const m = this.metrics
    if (this.ports !== undefined) {
      const clients = establishedOnPort(this.ports.http)
      if (clients !== undefined) m.upstreamConnections.labels('client', 'http', '').set(clients)
    }
    this.front?.ws.collect()
    for (const u of this.wsUpstreams.values()) u.collect()
    for (const u of this.upstreams.values()) {
      m.upstreamQueueDepth.labels(u.name).set(u.queueDepth)
      let connected = 0
      for (const ep of u.endpoints) connected += ep.connected
      m.upstreamConnections.labels('upstream', 'http', u.name).set(connected)
    }
    const tcpClients = new Map<string, number>()
    for (const l of this.tcpListeners) {
      l.collect()
      tcpClients.set(l.upstream.name, (tcpClients.get(l.upstream.name) ?? 0) + l.open)
    }
    for (const u of this.tcpUpstreams.values()) {
      m.upstreamConnections.labels('client', 'tcp', u.name).set(tcpClients.get(u.name) ?? 0)
      m.upstreamConnections.labels('upstream', 'tcp', u.name).set(u.connectedCount)
    }
  }

  status (): object {
    return {
      gateway: this.config.gateway.id,
      version: VERSION,
      state: this.state,
      uptimeSeconds: Math.round((Date.now() - this.startedAt) / 1000),
      pid: process.pid,
      listeners: {
        http: { host: this.config.listen.http.host, port: this.ports?.http },
        admin: { host: this.config.listen.admin.host, port: this.ports?.admin },
        tcp: this.tcpListeners.map((l) => l.status()),
      },
      routes: this.config.routes.map((r) => ({ host: r.match.host, path: r.match.path, upstream: r.upstream, kind: this.config.upstreams[r.upstream]?.protocol === 'http' ? 'http' : 'websocket' })),
      websocket: this.front?.ws.status(),
      affinity: this.store?.status(),
      drain: this.drainer.status(),
      admission: this.admission.status(),
      resume: { secret: this.secretSource, tokenTtlMs: this.config.resume.tokenTtlMs },
      upstreams: [
        ...[...this.upstreams.values()].map((u) => u.status()),
        ...[...this.wsUpstreams.entries()].filter(([name]) => this.config.upstreams[name]?.protocol !== 'http').map(([, u]) => u.status()),
        ...[...this.tcpUpstreams.values()].map((u) => u.status()),
      ],
    }
  }
}
