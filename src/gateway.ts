import type { Logger } from 'pino'
import { AdminServer } from './admin/admin-server.js'
import { createHash } from 'node:crypto'
import { ConfigError, parseEndpoint, validateConfig, type Config } from './config/load.js'
import { HttpFront } from './front/http-front.js'
import { loadNativeUws, type Uws } from './front/uws.js'
import { Metrics, type TrafficTotals } from './observability/metrics.js'
import { connectionsOnPort, establishedOnPort } from './observability/sockets.js'
import { routeName, Router } from './routing/router.js'
import { SplitStats } from './routing/split.js'
import { subsetName } from './config/schema.js'
import { TcpListener } from './tcp/listener.js'
import { VERSION } from './version.js'
import { flushHttpMetrics, UpstreamRegistry, type UpstreamSet } from './upstream/registry.js'
import { canonicalJson, reloadRefusals } from './config/reload.js'
import { planSplitChange } from './config/split-change.js'
import type { RouteTable } from './front/route-table.js'
import { Edge } from './edge/guard.js'
import { DescriptorGuard, type AcceptControl } from './edge/descriptors.js'
import type { ListenSocket } from './front/listen.js'
import { createAffinityStore, type AffinityStore } from './affinity/index.js'
import { resolveResumeSecret, ResumeTokens, type SecretSource } from './sessions/token.js'
import { Admission } from './drain/admission.js'
import { DrainController, type DrainStatus, type DrainTarget } from './drain/controller.js'
import { EndpointDrainer, type AdminChange, type AdminState } from './drain/endpoint-drain.js'
import type { HttpLifecycle } from './contracts/http.js'
import { AdminToken, resolveAdminToken } from './admin/token.js'
import { PodDirectory, podBoardOf, type PodRecord } from './affinity/pods.js'
import { hostname } from 'node:os'
import { workerCount, workerShare, type Budget } from './planes/share.js'
import { ProcessState, type GatewayState } from './process-state.js'
import type { SharedBuckets } from './edge/rate-limit.js'
import type { PodIpCounts } from './planes/ip-counts.js'

/** Connections of a listener a reload removed continue until they end (the longest timer Node takes). */
const RETIRED_LISTENER_GRACE_MS = 2 ** 31 - 1
/** This machine's name, for the pod directory (read once, not per heartbeat). */
const HOST = hostname()

/** What a reload did, or why it was refused (field-named problems). */
export type ReloadResult =
  | { result: 'ok', version: string, added: string[], changed: string[], removed: string[], unchanged: string[] }
  | { result: 'refused', version?: string, errors: string[] }

/**
 * created ──start()──▶ starting ──▶ running ──drain()──▶ draining ──(drained)──▶ stopping ──▶ stopped
 *                                     └──────────────stop()──────────────────────▶ stopping
 * A drain requested while starting begins as soon as the gateway runs.
 */
export type { GatewayState } from './process-state.js'

export interface GatewayOptions {
  config: Config
  log: Logger
  /** Defaults to a fresh registry; pass one to share it. */
  metrics?: Metrics
  /** Reads the config again for a reload (throws ConfigError naming the fields); absent: reloads are refused. */
  source?: () => Config
  /** One data-plane worker of a pod (src/planes/): see WorkerRole. Absent: the whole gateway in this process. */
  worker?: WorkerRole
  /** The affinity store to use instead of the one `affinity.store` names (a pod's workers share the control plane's memory store). */
  store?: AffinityStore
  /** Where `scope: local` rate limits count instead of this process (a pod's workers share the control plane's buckets). */
  buckets?: SharedBuckets
  /** Where the per-IP figures (limits.*PerIp, listen.tcp[].maxConnectionsPerIp) are kept instead of this process (a pod's workers share the control plane's). */
  ipCounts?: PodIpCounts
}

/**
 * A data-plane worker of a pod: no admin listener and no pod directory (the control plane has them), its
 * share of the pod-wide budgets (src/planes/share.ts), the pod's resume secret (a random one is made once
 * per pod, so tokens resume on any worker). Its listening ports are shared with the other workers.
 */
export interface WorkerRole {
  index: number
  count: number
  resumeSecret: { secret: string, source: SecretSource }
  /** Its first share of the pod's concurrency limits (the control plane moves them later: setBudget). */
  budget: Budget
}

/** What `PUT /routes/NAME/split` did: the reload it made, or why not (`not_found`: no such route, or it has no split). */
export type SplitChangeResult = ReloadResult | { result: 'not_found', errors: string[] }

/** A short fingerprint of a config (the same config always has the same version). */
export function configVersion (cfg: Config): string {
  return createHash('sha256').update(canonicalJson(cfg)).digest('hex').slice(0, 12)
}

export interface BoundPorts {
  http: number
  admin: number
  /** Bound port of each `listen.tcp` listener, by name. */
  tcp: Record<string, number>
}

/**
 * Composes the stages for one config: front → routing → upstream pools, plus the admin API. Owns their
 * lifetimes: `start` builds and binds, `stop` closes in reverse order. One process, whatever
 * `gateway.workers` says (made in code with a count above 1, it logs so once): `ferry start` (src/cli.ts)
 * runs a pod of workers (src/planes/control.ts) instead.
 */
export class Gateway {
  private cfg: Config
  /** The unshared resume secret was warned about (warnUnsharedSecret). */
  private warnedSecret = false
  readonly metrics: Metrics
  private readonly log: Logger
  private readonly state: ProcessState
  private readonly uws: Uws
  /** Every upstream instance: the running config's, and those a reload retired while they finish (made at start). */
  private upstreams: UpstreamRegistry | undefined
  private tcpListeners: TcpListener[] = []
  /** Listeners a reload removed, while their connections last; and their closing, which a stop waits for. */
  private readonly oldListeners = new Set<TcpListener>()
  private readonly closingListeners = new Set<Promise<void>>()
  private front: HttpFront | undefined
  private admin: AdminServer | undefined
  /** Pauses accepting when file descriptors run low (limits.fdReserve). */
  private descriptors: DescriptorGuard | undefined
  private ports: BoundPorts | undefined
  private readonly startedAt = Date.now()
  private readonly source: (() => Config) | undefined
  private readonly role: WorkerRole | undefined
  /** A worker's share of the pod's concurrency limits now. */
  private budget: Budget | undefined
  private readonly givenStore: AffinityStore | undefined
  private readonly buckets: SharedBuckets | undefined
  private readonly ipCounts: PodIpCounts | undefined
  private readonly removeCollector: () => void
  private store: AffinityStore | undefined
  /** This pod's entry in the pod directory (Redis affinity store), for the console. */
  private pods: PodDirectory | undefined
  /** Auth policies, rate limits and their Redis connection for the running config. */
  private edge: Edge | undefined
  private secretSource: SecretSource | undefined
  private readonly lifecycle: HttpLifecycle = { draining: false, inFlight: 0, served: 0 }
  private readonly admission: Admission
  private readonly drainer: DrainController
  /** Moves sessions off leaving endpoints, holds the operator's admin states (src/drain/endpoint-drain.ts). */
  private readonly endpointDrainer: EndpointDrainer
  private drainRequested: string | undefined
  private resolveStopped!: () => void
  /** Resolves once the gateway has stopped (after a drain, or `stop()`). */
  readonly stopped: Promise<void>
  /** Fingerprint of the running config; when it was loaded; how the last reload went. */
  private version: string
  private readonly loadedAt = new Date().toISOString()
  private lastReload: { at: string, result: string, errors?: string[] } | undefined
  /** Reloads (and admin split changes, which are reloads) run one after the other. */
  private reloading: Promise<unknown> = Promise.resolve()
  /** Split counters by route and subset, kept across the reloads that rebuild the routes. */
  private readonly splitStats: SplitStats
  /** The router of the running config (for /status). */
  private router: Router | undefined
  /** Routes whose split weights the admin API set, and when (a reload from the file sets the file's again). */
  private readonly splitsByAdmin = new Map<string, string>()

  constructor (opts: GatewayOptions) {
    this.cfg = opts.config
    this.source = opts.source
    this.role = opts.worker
    this.budget = opts.worker?.budget
    this.givenStore = opts.store
    this.buckets = opts.buckets
    this.ipCounts = opts.ipCounts
    this.version = configVersion(opts.config)
    this.log = opts.log
    this.state = new ProcessState(this.log, 'gateway')
    this.metrics = opts.metrics ?? new Metrics()
    if (this.ipCounts !== undefined) this.ipCounts.onBorrow = (result) => { this.metrics.ipLeaseBorrows.labels(result).inc() }
    this.uws = loadNativeUws()
    this.metrics.configInfo.labels(this.config.gateway.id, VERSION).set(1)
    this.removeCollector = this.metrics.onCollect(() => this.collect())
    this.splitStats = new SplitStats(this.metrics)
    this.admission = new Admission(this.local(this.config).admission, this.metrics.admissionRefused)
    this.drainer = new DrainController(this.local(this.config).drain, this.drainTarget(), this.log.child({ component: 'drain' }), this.metrics)
    this.endpointDrainer = new EndpointDrainer(this.log.child({ component: 'endpoint-drain' }), this.metrics)
    this.stopped = new Promise((resolve) => { this.resolveStopped = resolve })
    const asked = this.role === undefined ? workerCount(opts.config) : 1
    if (asked > 1) this.log.warn({ workers: asked }, 'gateway.workers asks for several workers, but a Gateway made in code runs in this one process: `ferry start` runs a pod (docs/workers.md)')
  }

  /** The running config (a reload replaces it). */
  get config (): Config {
    return this.cfg
  }

  /** What this process enforces of `cfg`: all of it, or a worker's share of the pod-wide budgets. */
  private local (cfg: Config): Config {
    return this.role === undefined ? cfg : workerShare(cfg, this.role.count, this.budget)
  }

  /** A worker's new share of the pod's concurrency limits: applies to new requests and sessions at once. */
  setBudget (budget: Budget): void {
    this.budget = budget
    this.front?.limits.configure(this.local(this.cfg).limits)
  }

  get currentState (): GatewayState {
    return this.state.value
  }

  async start (): Promise<BoundPorts> {
    this.state.begin()
    const cfg = this.config
    const { secret, source } = this.role?.resumeSecret ?? resolveResumeSecret(cfg.resume)
    this.secretSource = source
    this.warnUnsharedSecret(cfg)
    const tokens = new ResumeTokens(secret, cfg.resume.tokenTtlMs)
    const store = this.givenStore ?? createAffinityStore(cfg.affinity, { logger: this.log.child({ component: 'affinity' }), metrics: this.metrics })
    this.store = store
    // Start in a known state: Redis connected, or found unreachable (then the store falls back).
    await store.ready(Math.min(2000, 20 * cfg.affinity.redis.lookupTimeoutMs))
    const ws = { gatewayId: cfg.gateway.id, store, ttlMs: cfg.affinity.ttlMs, tokens, routeSplit: (route: string) => this.router?.byName(route)?.split }
    // A pod's workers share one entry, which the control plane keeps.
    if (this.role === undefined) this.pods = new PodDirectory(podBoardOf(store), cfg.affinity.redis.podTtlMs, () => this.podRecord(), this.log.child({ component: 'pods' }))
    const upstreams = new UpstreamRegistry({ log: this.log, metrics: this.metrics, lifecycle: this.lifecycle, drainer: this.endpointDrainer, ws })
    this.upstreams = upstreams
    try {
      // A bad upstream TLS file throws here: the stop below closes what start opened (the affinity store).
      upstreams.commit(upstreams.build(this.local(cfg)))
      this.edge = new Edge(cfg, undefined, this.log, this.metrics, this.buckets)
      const admin = this.role === undefined ? await this.startAdmin(cfg) : 0
      this.front = new HttpFront({ uws: this.uws, config: cfg, table: this.table(this.local(cfg), upstreams.current), log: this.log, metrics: this.metrics, lifecycle: this.lifecycle, admission: this.admission, ipCounts: this.ipCounts })
      upstreams.bindPublisher(this.front.ws)
      const http = await this.front.listen()
      const tcp: Record<string, number> = {}
      for (const [i, lcfg] of cfg.listen.tcp.entries()) {
        const listener = new TcpListener(i, lcfg, upstreams.current.tcp.get(lcfg.upstream)!, this.log.child({ listener: lcfg.name }), this.metrics, this.ipCounts)
        listener.setSniRoutes(lcfg, (name) => upstreams.current.tcp.get(name)!)
        this.tcpListeners.push(listener)
        tcp[lcfg.name] = await listener.listen()
      }
      this.ports = { http, admin, tcp }
      this.descriptors = new DescriptorGuard(cfg.limits.fdReserve, this.acceptControl(), this.log.child({ component: 'descriptors' }), this.metrics)
    } catch (err) {
      await this.stop('abort')
      throw err
    }
    this.state.to('running')
    this.noteDiscoveredSplits(cfg)
    this.pods?.start()
    // A worker has no admin listener (the control plane's is logged by it).
    const admin = this.role === undefined ? { admin: `${cfg.listen.admin.host}:${this.ports.admin}` } : {}
    this.log.info({ http: `${cfg.listen.http.host}:${this.ports.http}`, ...admin, tcp: this.ports.tcp, gateway: cfg.gateway.id, version: VERSION }, this.role === undefined ? 'listening' : 'worker listening')
    if (this.drainRequested !== undefined) this.drain(this.drainRequested)
    return this.ports
  }

  /** The admin listener (not in a worker: the control plane has it). Returns its port. */
  private async startAdmin (cfg: Config): Promise<number> {
    const access = this.adminAccess(cfg)
    if (!access.token.required && !isLoopback(cfg.listen.admin.host)) this.log.warn({ admin: cfg.listen.admin.host }, 'the admin listener is not on a loopback address and admin.token is not set: anyone who reaches it can drain or reload this gateway')
    this.admin = new AdminServer(this.uws, {
      live: () => this.state.live,
      ready: () => this.state.ready,
      status: () => this.status(),
      drain: () => this.drain('POST /drain'),
      reload: async () => await this.reloadFromSource('POST /reload'),
      setSplit: async (route, weights) => await this.setSplitWeights(route, weights),
      endpointAdmin: (upstream, address, admin) => this.endpointAdmin(upstream, address, admin),
      totals: async () => await this.trafficTotals(),
    }, this.metrics, this.log, access, cfg.admin.console)
    return await this.admin.listen(cfg.listen.admin.host, cfg.listen.admin.port)
  }

  /** What the descriptor guard pauses: the front (HTTP/WebSocket and TCP listeners) and, last, the admin listener. */
  private acceptControl (): AcceptControl {
    return {
      pauseFront: () => {
        this.front?.pauseAccepting()
        for (const l of this.tcpListeners) l.pauseAccepting()
      },
      resumeFront: () => {
        this.front?.resumeAccepting()
        for (const l of this.tcpListeners) l.resumeAccepting()
      },
      pauseAdmin: () => { this.admin?.pauseAccepting() },
      resumeAdmin: () => { this.admin?.resumeAccepting() },
    }
  }

  /** The message and request counters the console's rates difference (a worker's, for its pod's console). */
  async trafficTotals (): Promise<TrafficTotals> {
    // The per-message counts kept as plain numbers go to their prom-client counters first (what a scrape does).
    this.front?.ws.collect()
    flushHttpMetrics(this.metrics)
    return await this.metrics.trafficTotals()
  }

  /**
   * POST /upstreams/NAME/endpoints/ADDR/drain (or /ready): the operator's intent for one endpoint of
   * the running config (src/drain/endpoint-drain.ts). `address` is normalised (`127.0.0.1:080` is
   * `127.0.0.1:80`).
   */
  endpointAdmin (upstream: string, address: string, admin: AdminState): AdminChange {
    if (!Object.hasOwn(this.cfg.upstreams, upstream)) return { ok: false, code: 'FERRY_ERR_UNKNOWN_UPSTREAM', message: `no upstream named ${upstream} (known: ${Object.keys(this.cfg.upstreams).join(', ') || 'none'})` }
    let normalised: string
    try {
      normalised = parseEndpoint(address).address
    } catch {
      return { ok: false, code: 'FERRY_ERR_UNKNOWN_ENDPOINT', message: `${address} is not host:port` }
    }
    return this.endpointDrainer.setAdmin(upstream, normalised, admin)
  }

  /** TCP connections open on current listeners and on those a reload removed. */
  private tcpOpen (): number {
    return [...this.tcpListeners, ...this.oldListeners].reduce((n, l) => n + l.open, 0)
  }

  private table (cfg: Config, set: UpstreamSet): RouteTable {
    this.router = new Router(cfg.routes, this.splitStats)
    return { config: cfg, router: this.router, upstreams: set.http, wsUpstreams: set.ws, edge: this.edge! }
  }

  /**
   * After a reload or an admin change: every route split with `rebalance` has its open sessions that are
   * outside their subset now moved there (mux upstreams, by backend handoff, paced by handoff.maxPerSec).
   */
  private rebalanceSplits (cfg: Config): void {
    for (const r of cfg.routes) {
      if (r.split?.rebalance !== true) continue
      const name = routeName(r)
      const upstream = this.upstreams?.current.ws.get(r.upstream)
      const sessions = this.front?.ws.splitSessions(name) ?? []
      const n = upstream?.rebalance?.(sessions) ?? 0
      if (n > 0) this.log.info({ route: name, upstream: r.upstream, sessions: n }, 'route split rebalance: open sessions outside the subset their key is assigned now move there by backend handoff')
    }
  }

  /**
   * A split of an upstream whose endpoints come from a registry cannot be checked against their labels
   * when the config is read: they are known once the backends register. Said once per config, so an
   * operator who sees fallbacks knows where to look.
   */
  private noteDiscoveredSplits (cfg: Config): void {
    for (const r of cfg.routes) {
      if (r.split === undefined || cfg.upstreams[r.upstream]?.registry === undefined) continue
      this.log.warn({ route: routeName(r), upstream: r.upstream, subsets: r.split.subsets.map((s) => subsetName(s)) },
        'route split of a registry upstream: its labels are checked only as backends register; until an endpoint carries a subset\'s labels, that subset\'s share goes to the other subsets, then to the whole upstream (ferry_split_fallbacks_total{reason="no_endpoints"})')
    }
  }

  /** Who may use the admin API under `cfg` (throws FERRY_ERR_CONFIG_INVALID for an unreadable tokenFile). */
  private adminAccess (cfg: Config): { token: AdminToken, protectMetrics: boolean } {
    const { token, source } = resolveAdminToken(cfg.admin)
    return { token: new AdminToken(token, source), protectMetrics: cfg.admin.protectMetrics }
  }

  private podRecord (): PodRecord {
    return { id: this.cfg.gateway.id, host: HOST, version: VERSION, sessions: this.front?.ws.sessionCount ?? 0, draining: this.state.value === 'draining', updatedAt: new Date().toISOString() }
  }

  /** `version` undefined: the file could not be read as a config, so it has none (the answer leaves it out). */
  private refused (errors: string[], version: string | undefined): ReloadResult {
    this.lastReload = { at: new Date().toISOString(), result: 'refused', errors }
    this.metrics.configReloads.labels('refused').inc()
    this.log.error({ errors, version }, 'config reload refused; the running config is kept')
    return { result: 'refused', version, errors }
  }

  /** Reloads from the gateway's config source (its file); one reload at a time. */
  async reloadFromSource (trigger: string): Promise<ReloadResult> {
    const run = async (): Promise<ReloadResult> => {
      if (this.source === undefined) return this.refused(['(config): the gateway runs on its embedded defaults; there is no file to reload'], this.version)
      let next: Config
      try {
        next = this.source()
      } catch (err) {
        return this.refused(err instanceof ConfigError ? err.problems : [(err as Error).message], undefined)
      }
      this.log.info({ trigger }, 'config reload requested')
      const r = await this.reload(next, configVersion(next))
      // The file's weights are the running ones again.
      if (r.result === 'ok') { this.splitsByAdmin.clear(); this.noteDiscoveredSplits(next); this.rebalanceSplits(next) }
      return r
    }
    return await this.serially(run)
  }

  /** Runs `fn` after the reloads (and split changes) asked before it. */
  private async serially<T> (fn: () => Promise<T>): Promise<T> {
    const p = this.reloading.then(fn, fn)
    this.reloading = p
    return await p
  }

  /**
   * `PUT /routes/NAME/split` on the admin listener: new weights for a route's split (`{ "v1": 50, "v2": 50 }`,
   * every subset by name, summing to 100), applied to this pod's running config as a reload would
   * (validated the same way; open sessions stay where they are). A reload from the file later sets the
   * file's weights again. Other pods are not told: each pod is changed on its own (or through the file).
   */
  async setSplitWeights (route: string, weights: unknown): Promise<SplitChangeResult> {
    return await this.serially(async () => {
      const plan = planSplitChange(this.cfg, route, weights)
      if (plan.result === 'not_found') return plan
      if (plan.result === 'refused') return this.refused(plan.errors, this.version)
      const { next } = plan
      this.log.info({ trigger: `PUT /routes/${plan.route}/split`, weights: plan.weights }, 'route split change requested')
      const res = await this.reload(next, configVersion(next))
      if (res.result !== 'ok') return res
      this.splitsByAdmin.set(plan.route, new Date().toISOString())
      this.rebalanceSplits(next)
      return { ...res, route: plan.route, ...this.splitStatus(next.routes[plan.index]!) }
    })
  }

  /**
   * Hot reload (SIGHUP, POST /reload): validates `next` against the running config, then swaps routes,
   * upstreams, listeners and limits at once. Requests and sessions under way keep the upstream they
   * got; upstreams whose config changed or that were removed finish their work in the background (mux
   * links: GOAWAY, closed once their streams are gone); unchanged ones are kept as they are. A refused
   * reload keeps the running config.
   */
  async reload (next: Config, version: string): Promise<ReloadResult> {
    const refuse = (errors: string[]): ReloadResult => this.refused(errors, version)
    const refusal = this.state.reloadRefusal
    if (refusal !== undefined) return refuse([refusal])
    const problems = reloadRefusals(this.cfg, next)
    if (problems.length > 0) return refuse(problems)
    // One process, not a pod: a new worker count takes a restart (a pod refuses the whole reload for it;
    // here the rest applies, and the log says what did not).
    if (this.role === undefined && workerCount(next) !== 1 && this.cfg.gateway.workers !== next.gateway.workers) {
      this.log.warn({ running: 1, setting: next.gateway.workers, workers: workerCount(next) }, 'gateway.workers changes with a restart: this process runs alone until then')
    }
    // Certificate files are read again on every reload, changed or not (a renewed certificate).
    const tls = this.front!.prepareTls(next.listen.http.tls)
    if ('problems' in tls) return refuse(tls.problems)
    let access: { token: AdminToken, protectMetrics: boolean }
    try {
      access = this.adminAccess(next)
    } catch (err) {
      return refuse([(err as Error).message])
    }
    let edge: Edge
    try {
      edge = new Edge(next, this.edge, this.log, this.metrics, this.buckets)
    } catch (err) {
      return refuse([(err as Error).message])
    }
    const upstreams = this.upstreams!
    let set: UpstreamSet
    try {
      set = upstreams.build(this.local(next))
    } catch (err) {
      // An upstream's TLS files (read again on every reload), each problem naming its field.
      void edge.retire(this.edge)
      return refuse((err as { problems?: string[] }).problems ?? [(err as Error).message])
    }
    const diff = upstreams.changes(set)
    // Moved HTTP or admin listener: bind the new address while the old one still accepts; the old one
    // closes once the reload succeeded (its established connections continue).
    const moved: { http?: ListenSocket, admin?: ListenSocket } = {}
    const unbind = (): void => { moved.http?.close(); moved.admin?.close() }
    try {
      if (this.cfg.listen.http.host !== next.listen.http.host || this.cfg.listen.http.port !== next.listen.http.port) moved.http = await this.front!.bindNew(next.listen.http.host, next.listen.http.port)
      if (this.admin !== undefined && canonicalJson(this.cfg.listen.admin) !== canonicalJson(next.listen.admin)) moved.admin = await this.admin!.bindNew(next.listen.admin.host, next.listen.admin.port)
    } catch (err) {
      unbind()
      upstreams.discard(set)
      void edge.retire(this.edge)
      return refuse([`${(err as Error).message} (the running listener keeps serving; a same-port move needs a restart)`])
    }
    // TCP listeners: kept (pointed at the new upstream) when their own config is the same but for the access
    // list and the certificates (both changed in place), else closed gracefully (open connections continue)
    // and bound anew. New ones are made (their certificate files read) before anything is changed.
    const plan = this.planTcp(next, set)
    if ('problems' in plan) {
      unbind()
      upstreams.discard(set)
      void edge.retire(this.edge)
      return refuse(plan.problems)
    }
    const keep: TcpListener[] = []
    for (const k of plan.keep) {
      k.listener.upstream = set.tcp.get(k.lcfg.upstream)!
      k.listener.setAccess(k.lcfg.access)
      k.listener.setSniRoutes(k.lcfg, (name) => set.tcp.get(name)!)
      k.apply()
      keep.push(k.listener)
    }
    const oldByName = new Map(this.tcpListeners.map((l) => [l.cfg.name, l]))
    for (const l of keep) oldByName.delete(l.cfg.name)
    // A removed listener's connections continue until they end (or a drain's deadline, or a stop).
    for (const old of oldByName.values()) {
      this.oldListeners.add(old)
      const closing: Promise<void> = old.close('flush', RETIRED_LISTENER_GRACE_MS)
        .catch((err: unknown) => { this.log.warn({ err }, 'closing a removed TCP listener failed') })
        .finally(() => { this.oldListeners.delete(old); this.closingListeners.delete(closing) })
      this.closingListeners.add(closing)
    }
    const tcpPorts: Record<string, number> = {}
    for (const l of keep) tcpPorts[l.cfg.name] = l.port ?? l.cfg.port
    const bound: TcpListener[] = []
    try {
      for (const l of plan.made) {
        tcpPorts[l.cfg.name] = await l.listen()
        bound.push(l)
      }
    } catch (err) {
      // A port that cannot be bound: undo (the old listeners it replaced are already closing).
      unbind()
      for (const l of plan.made) void l.close('abort')
      upstreams.discard(set)
      void edge.retire(this.edge)
      return refuse([(err as Error).message])
    }
    this.tcpListeners = [...keep, ...bound]
    if (this.descriptors?.frontPaused === true) for (const l of bound) l.pauseAccepting()
    if (moved.http !== undefined) this.front!.adopt(moved.http)
    if (moved.admin !== undefined) this.admin!.adopt(moved.admin)
    this.admin?.setAccess(access)
    if (this.ports !== undefined) this.ports = { http: moved.http?.port ?? this.ports.http, admin: moved.admin?.port ?? this.ports.admin, tcp: tcpPorts }
    this.cfg = next
    void this.edge?.retire(edge)
    this.edge = edge
    this.front?.setTable(this.table(this.local(next), set))
    tls.apply()
    this.admission.reconfigure(this.local(next).admission)
    this.descriptors?.configure(next.limits.fdReserve)
    this.drainer.reconfigure(this.local(next).drain)
    this.log.level = next.logging.level
    // What the new set does not use any more finishes in the background.
    upstreams.commit(set)
    this.version = version
    this.lastReload = { at: new Date().toISOString(), result: 'ok' }
    this.metrics.configReloads.labels('ok').inc()
    this.log.info({ version, ...diff }, 'config reloaded')
    this.warnUnsharedSecret(next)
    return { result: 'ok', version, ...diff }
  }

  /**
   * Which TCP listeners of `next` keep their socket (same settings but for `access`, `sniRoutes` entries,
   * `sniUnmatched` and the `tls` certificates, ciphers, minVersion and alpn; their certificate files read again now) and which are
   * made anew (not bound yet). Nothing running is changed; on problems what was made is closed.
   */
  private planTcp (next: Config, set: UpstreamSet): { keep: Array<{ listener: TcpListener, lcfg: Config['listen']['tcp'][number], apply: () => void }>, made: TcpListener[] } | { problems: string[] } {
    const rebindKey = (l: Config['listen']['tcp'][number]): string => canonicalJson({ ...l, access: undefined, tls: l.tls === undefined ? undefined : { handshakeTimeoutMs: l.tls.handshakeTimeoutMs }, sniRoutes: l.sniRoutes.length > 0, sniUnmatched: undefined })
    const oldByName = new Map(this.tcpListeners.map((l) => [l.cfg.name, l]))
    const keep: Array<{ listener: TcpListener, lcfg: Config['listen']['tcp'][number], apply: () => void }> = []
    const made: TcpListener[] = []
    const problems: string[] = []
    for (const [i, lcfg] of next.listen.tcp.entries()) {
      const old = oldByName.get(lcfg.name)
      if (old !== undefined && rebindKey(old.cfg) === rebindKey(lcfg)) {
        const r = old.prepareTls(lcfg.tls)
        if ('problems' in r) problems.push(...r.problems)
        else keep.push({ listener: old, lcfg, apply: r.apply })
        continue
      }
      try {
        const l = new TcpListener(i, lcfg, set.tcp.get(lcfg.upstream)!, this.log.child({ listener: lcfg.name }), this.metrics, this.ipCounts)
        l.setSniRoutes(lcfg, (name) => set.tcp.get(name)!)
        made.push(l)
      } catch (err) {
        // A FERRY_ERR_TLS_CERT lists its problems one a line under a heading.
        const lines = (err as Error).message.split('\n')
        problems.push(...(lines.length > 1 ? lines.slice(1).map((p) => p.trim()) : lines))
      }
    }
    if (problems.length === 0) return { keep, made }
    for (const l of made) void l.close('abort')
    return { problems }
  }

  /**
   * Once, when resume tokens would be issued (a mux upstream exists) under a per-process random secret:
   * they would not resume on another pod. Without a mux upstream no token is issued and nothing is said.
   */
  private warnUnsharedSecret (cfg: Config): void {
    if (this.secretSource !== 'random' || this.warnedSecret || this.role !== undefined) return
    if (!Object.values(cfg.upstreams).some((u) => u.protocol === 'mux')) return
    this.warnedSecret = true
    this.log.warn('resume.secret is not set: resume tokens work only on this process (set resume.secret, resume.secretFile or FERRY_RESUME_SECRET, shared by every pod)')
  }

  /**
   * Starts the drain (SIGTERM, POST /drain, `ferry drain`): see DrainController. Asking again is the
   * same drain. Asked while starting, it begins once the gateway runs. Returns its progress.
   */
  drain (reason: string): DrainStatus | { phase: 'pending' | 'stopped', reason: string } {
    const phase = this.state.drainPhase
    if (phase === 'pending') {
      this.drainRequested ??= reason
      this.log.info({ reason }, 'drain requested during start-up: it begins once the gateway runs')
      return { phase: 'pending', reason }
    }
    if (phase === 'stopped') return { phase, reason }
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
        if (this.state.value === 'running') this.state.to('draining')
        this.pods?.refresh()
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
      httpSending: () => this.ports === undefined ? undefined : connectionsOnPort(this.ports.http)?.sending,
      closeHttpConnections: () => { this.front?.closeConnections() },
      tcpOpen: () => this.tcpOpen(),
      forceClose: () => {
        const n = this.front?.ws.closeAll(1012, 'gateway drained: reconnect', 'FERRY_ERR_GATEWAY_DRAINING') ?? 0
        for (const l of [...this.tcpListeners, ...this.oldListeners]) void l.close('abort')
        return n
      },
      finish: async () => {
        if (this.state.ending) return
        this.state.to('stopping')
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
    if (this.state.ending) return
    this.drainer.cancel()
    this.state.to('stopping')
    this.front?.stopAccepting()
    this.front?.ws.closeAll(1001, 'gateway stopping')
    await this.closeStages(kind)
  }

  private async closeStages (kind: 'flush' | 'abort'): Promise<void> {
    this.endpointDrainer.close()
    this.front?.stopAccepting()
    this.front?.ws.close()
    for (const l of this.oldListeners) void l.close('abort')
    // TCP listeners stop accepting at once, then give open connections up to shutdownGraceMs ('flush').
    const listenersClosed = Promise.all([...this.closingListeners, ...this.tcpListeners.map(async (l) => { await l.close(kind) })])
    await (this.upstreams?.close(kind, listenersClosed) ?? listenersClosed)
    await this.pods?.close()
    await this.store?.close(kind)
    await this.edge?.retire(undefined)
    this.descriptors?.close()
    this.admin?.close()
    this.removeCollector()
    this.state.to('stopped')
    this.resolveStopped()
  }

  private collect (): void {
    const m = this.metrics
    if (this.ports !== undefined) {
      const clients = establishedOnPort(this.ports.http)
      if (clients !== undefined) m.upstreamConnections.labels('client', 'http', '').set(clients)
    }
    this.front?.ws.collect()
    this.endpointDrainer.collect()
    this.upstreams?.collect()
    const tcpClients = new Map<string, number>()
    for (const l of this.tcpListeners) {
      l.collect()
      tcpClients.set(l.upstream.name, (tcpClients.get(l.upstream.name) ?? 0) + l.open)
    }
    for (const name of this.upstreams?.current.tcp.keys() ?? []) m.upstreamConnections.labels('client', 'tcp', name).set(tcpClients.get(name) ?? 0)
  }

  /** A route's split in /status: subsets, weights, their endpoints now, and what was assigned where. */
  private splitStatus (r: Config['routes'][number]): object {
    if (r.split === undefined) return {}
    const name = routeName(r)
    const split = this.router?.list().find((x) => x.name === name)?.split
    if (split === undefined) return {}
    const labelled = this.upstreams?.labelled(r.upstream)
    const by = this.splitsByAdmin.get(name)
    return { split: { ...split.status(labelled), setBy: by === undefined ? 'config' : 'admin', ...(by !== undefined ? { setAt: by } : {}) } }
  }

  status (): object {
    return {
      gateway: this.config.gateway.id,
      version: VERSION,
      state: this.state.value,
      uptimeSeconds: Math.round((Date.now() - this.startedAt) / 1000),
      pid: process.pid,
      listeners: {
        http: { host: this.config.listen.http.host, port: this.ports?.http },
        admin: { host: this.config.listen.admin.host, port: this.ports?.admin },
        tcp: this.tcpListeners.map((l) => l.status()),
      },
      routes: this.config.routes.map((r) => ({ name: routeName(r), host: r.match.host, path: r.match.path, upstream: r.upstream, kind: this.config.upstreams[r.upstream]?.protocol === 'http' ? 'http' : 'websocket', auth: r.auth ?? null, rateLimits: r.rateLimits, ...this.splitStatus(r) })),
      edge: this.edge?.status(),
      websocket: this.front?.ws.status(),
      clients: { httpRequestsInFlight: this.lifecycle.inFlight, httpRequestsServed: this.lifecycle.served, webSocketSessions: this.front?.ws.sessionCount ?? 0, tcpConnections: this.tcpOpen() },
      affinity: this.store?.status(),
      pods: this.pods?.status(),
      config: { version: this.version, loadedAt: this.loadedAt, lastReload: this.lastReload ?? null },
      drain: this.drainer.status(),
      admission: this.admission.status(),
      limits: this.front?.limits.status(),
      descriptors: this.descriptors?.status(),
      resume: { secret: this.secretSource, tokenTtlMs: this.config.resume.tokenTtlMs },
      upstreams: this.upstreams?.status() ?? [],
    }
  }
}

function isLoopback (host: string): boolean {
  return host === 'localhost' || host === '::1' || host.startsWith('127.')
}
