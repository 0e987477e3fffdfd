import cluster, { type Worker } from 'node:cluster'
import { hostname } from 'node:os'
import { usableCores, type Cores } from './cores.js'
import { fileURLToPath } from 'node:url'
import type { Logger } from 'pino'
import { AggregatorRegistry, type MetricObjectWithValues, type MetricValue } from 'prom-client'
import { AdminServer } from '../admin/admin-server.js'
import { AdminToken, resolveAdminToken } from '../admin/token.js'
import { createAffinityStore, MemoryAffinityStore, type AffinityStore } from '../affinity/index.js'
import { serveAffinity } from './affinity.js'
import { PodBucketStore } from './buckets.js'
import { PodDirectory, podBoardOf, type PodRecord } from '../affinity/pods.js'
import { ConfigError, type Config } from '../config/load.js'
import { canonicalJson, reloadRefusals } from '../config/reload.js'
import { planSplitChange } from '../config/split-change.js'
import type { AdminChange, AdminState } from '../drain/endpoint-drain.js'
import { PHASE_VALUE, type DrainPhase } from '../drain/controller.js'
import { ERRORS, FerryError, type FerryErrorCode } from '../errors.js'
import { loadNativeUws } from '../front/uws.js'
import { configVersion, type BoundPorts, type ReloadResult, type WorkerRole } from '../gateway.js'
import { ProcessState, type GatewayState } from '../process-state.js'
import { Metrics, type TrafficTotals } from '../observability/metrics.js'
import { resolveResumeSecret } from '../sessions/token.js'
import { VERSION } from '../version.js'
import { BEAT_MS, type FromWorker, type ToWorker, type WorkerStatus } from './messages.js'
import { freePort, PortLock } from './port-lock.js'
import { PodIpTable } from './ip-counts.js'
import { podAdmission, podLimits, podSessions, podUpstreams } from './pod-status.js'
import { BUDGETS, initialBudget, NONE, rebalance, workerCount, type Budget, type BudgetName } from './share.js'

/** How long a worker may take from its fork to listening. */
const START_TIMEOUT_MS = 30_000
/** How long a reload, split or endpoint change may take in a worker. */
const ASK_TIMEOUT_MS = 30_000
/** How long the console's sampling waits for a worker's counters (src/admin/console-feed.ts). */
const TOTALS_TIMEOUT_MS = BEAT_MS
/** Restart backoff: doubles from the first to the cap; a worker that ran this long starts the count again. */
const RESTART_FIRST_MS = 100
const RESTART_MAX_MS = 5000
const RESTART_RESET_MS = 30_000
const PHASES: DrainPhase[] = ['idle', 'grace', 'migrating', 'finishing', 'done']

/**
 * A worker slot: starting ──ready──▶ running ──drain──▶ draining ──exit──▶ exited
 *                  └───────exit (not draining)──▶ restarting ──backoff──▶ starting
 */
type SlotState = 'starting' | 'running' | 'draining' | 'restarting' | 'exited'
type RestartReason = 'crash' | 'hung' | 'start_failed'

interface Slot {
  readonly index: number
  state: SlotState
  worker: Worker | undefined
  startedAt: number
  lastBeat: number
  status: WorkerStatus | undefined
  /** The config version this worker runs. */
  version: string
  restarts: number
  /** Restarts in a row without a worker that ran RESTART_RESET_MS (the backoff's exponent). */
  failures: number
  killedFor: 'hung' | undefined
  backoff: NodeJS.Timeout | undefined
  lastExit: { at: string, code: number | null, signal: string | null, reason: string } | undefined
  /** Its share of the pod's concurrency limits, as last sent. */
  budget: Budget
  /** Its traffic counters as last asked (the console's rates), and those of its processes that exited: the pod's never go back. */
  totals: TrafficTotals
  exitedTotals: TrafficTotals
}

/** A pod's reload (or split change) can leave its workers on different configs: `partial` says which. */
export type PodReloadResult = ReloadResult | { result: 'partial', version: string, errors: string[], workers: Array<{ worker: number, result: string, errors?: string[] }> }

export interface PodOptions {
  config: Config
  log: Logger
  /** Reads the config file again for a reload; absent: reloads are refused. */
  source?: () => Config
}

/**
 * The control plane of a pod with `gateway.workers` above 1 (docs/workers.md): forks the data-plane
 * workers (cluster processes running src/planes/worker.ts), sends them the config, restarts one that
 * crashes or hangs, fans reloads, split and endpoint changes and the drain out to them, and serves the
 * admin API, console and /metrics for the whole pod. It never touches a client connection: the workers
 * share the listening ports (HTTP: SO_REUSEPORT, guarded by a PortLock; TCP: the cluster module's
 * shared handle, accepted by the workers themselves).
 */
export class Pod {
  private cfg: Config
  private version: string
  private readonly state: ProcessState
  readonly metrics = new Metrics()
  private readonly log: Logger
  private readonly source: (() => Config) | undefined
  private readonly count: number
  /** What `auto` counted (the CPUs and the cgroup quota), read once at construction. */
  private readonly cores: Cores
  private readonly slots: Slot[] = []
  private readonly locks: PortLock[] = []
  /** listen.http's port and redirectHttpPort as the workers bind them (port 0 is chosen once, here). */
  private pinned: { port: number, redirect: number | undefined } = { port: 0, redirect: undefined }
  private role!: Omit<WorkerRole, 'index' | 'budget'>
  private admin: AdminServer | undefined
  private adminPort = 0
  private store: AffinityStore | undefined
  /** With affinity.store memory: the one store every worker uses. */
  private readonly affinity: AffinityStore
  /** rateLimits with scope local: the pod's buckets, shared by every worker. */
  private readonly buckets = new PodBucketStore()
  /** The per-IP figures (limits.*PerIp, listen.tcp[].maxConnectionsPerIp): the pod's per client IP, lent to the workers. */
  private readonly ips: PodIpTable
  private pods: PodDirectory | undefined
  private watchdog: NodeJS.Timeout | undefined
  /** When the watchdog last ran (it skips a tick that ran late). */
  private lastWatch = Date.now()
  private readonly startedAt = Date.now()
  private readonly loadedAt = new Date().toISOString()
  private lastReload: { at: string, result: string, errors?: string[] } | undefined
  private reloading: Promise<unknown> = Promise.resolve()
  private drainReason: string | undefined
  private drainStartedAt: string | undefined
  private nextAsk = 1
  private readonly asks = new Map<number, { slot: Slot, resolve: (body: unknown) => void }>()
  private resolveStopped!: () => void
  readonly stopped: Promise<void>

  constructor (opts: PodOptions) {
    this.cfg = opts.config
    this.version = configVersion(opts.config)
    this.log = opts.log
    this.state = new ProcessState(this.log, 'pod')
    this.source = opts.source
    this.cores = usableCores()
    this.count = workerCount(opts.config, this.cores)
    this.ips = new PodIpTable(this.count, (w, batch) => { const s = this.slots[w]; if (s !== undefined) this.send(s, { t: 'ip', batch }) })
    this.stopped = new Promise((resolve) => { this.resolveStopped = resolve })
    this.metrics.configInfo.labels(this.cfg.gateway.id, VERSION).set(1)
    this.metrics.onCollect(() => {
      this.countWorkers()
      // The pod's phase (its aggregator is `first`, the control plane's own registry: see renderMetrics).
      this.metrics.drainPhase.set(PHASE_VALUE[this.drainStatus().phase])
    })
    this.affinity = new MemoryAffinityStore(opts.config.affinity, { logger: this.log.child({ component: 'affinity' }), metrics: this.metrics })
  }

  get currentState (): GatewayState {
    return this.state.value
  }

  async start (): Promise<BoundPorts> {
    this.state.begin()
    const cfg = this.cfg
    const cores = this.cores
    this.log.info({ workers: this.count, setting: cfg.gateway.workers, cores: cores.usable, cpus: cores.affinity, cpuQuota: cores.quota ?? 'none' }, 'starting the workers')
    if (this.count > cores.usable) this.log.warn({ workers: this.count, cores: cores.usable }, 'gateway.workers is more than the cores this process may use: the workers share them')
    const resume = resolveResumeSecret(cfg.resume)
    if (resume.source === 'random' && Object.values(cfg.upstreams).some((u) => u.protocol === 'mux')) {
      this.log.warn('resume.secret is not set: resume tokens work only on this pod (its workers share one random key; set resume.secret, resume.secretFile or FERRY_RESUME_SECRET, shared by every pod)')
    }
    this.role = { count: this.count, resumeSecret: resume }
    try {
      // The workers and the admin listener need the native binary: refuse a fallback here, once, by its
      // own code (as a single process does), before any worker is forked.
      const uws = loadNativeUws()
      await this.pinPorts(cfg)
      cluster.schedulingPolicy = cluster.SCHED_NONE
      cluster.setupPrimary({ exec: workerFile(), serialization: 'advanced' })
      for (let i = 0; i < this.count; i++) this.slots.push(this.newSlot(i))
      // From the first fork on: a worker that does not start in time (or hangs later) is killed.
      this.watchdog = setInterval(() => { this.watch() }, BEAT_MS)
      const ready = await Promise.all(this.slots.map(async (s) => await this.fork(s)))
      const access = { token: adminToken(cfg), protectMetrics: cfg.admin.protectMetrics }
      this.admin = new AdminServer(uws, {
        live: () => this.state.live,
        ready: () => this.state.ready,
        status: () => this.status(),
        drain: () => this.drain('POST /drain'),
        reload: async () => await this.reloadFromSource('POST /reload'),
        setSplit: async (route, weights) => await this.setSplitWeights(route, weights),
        endpointAdmin: async (upstream, address, admin) => await this.endpointAdmin(upstream, address, admin),
        totals: async () => await this.trafficTotals(),
        renderMetrics: async () => await this.renderMetrics(),
      }, this.metrics, this.log, access, cfg.admin.console)
      this.adminPort = await this.admin.listen(cfg.listen.admin.host, cfg.listen.admin.port)
      if (cfg.affinity.store === 'redis') {
        // The pod's entry in the pod directory (the workers do not announce themselves).
        const redis = createAffinityStore(cfg.affinity, { logger: this.log.child({ component: 'affinity' }), metrics: this.metrics })
        this.store = redis
        this.pods = new PodDirectory(podBoardOf(redis), cfg.affinity.redis.podTtlMs, () => this.podRecord(), this.log.child({ component: 'pods' }))
        this.pods.start()
      }
      this.state.to('running')
      const ports = { ...ready[0]!, admin: this.adminPort }
      this.log.info({ http: `${cfg.listen.http.host}:${ports.http}`, admin: `${cfg.listen.admin.host}:${ports.admin}`, tcp: ports.tcp, gateway: cfg.gateway.id, workers: this.count, version: VERSION }, 'listening')
      if (this.drainReason !== undefined) this.drain(this.drainReason)
      return ports
    } catch (err) {
      this.abort()
      throw err
    }
  }

  /** Port 0 becomes one free port for every worker; each HTTP port gets its lock. */
  private async pinPorts (cfg: Config): Promise<void> {
    const { host, port, redirectHttpPort } = cfg.listen.http
    const p = port === 0 ? await freePort('listen.http', host) : port
    this.locks.push(await PortLock.take('listen.http', host, p))
    let r: number | undefined
    if (redirectHttpPort !== undefined) {
      r = redirectHttpPort === 0 ? await freePort('listen.http.redirectHttpPort', host) : redirectHttpPort
      this.locks.push(await PortLock.take('listen.http.redirectHttpPort', host, r))
    }
    this.pinned = { port: p, redirect: r }
  }

  /** `cfg` as the workers run it: its HTTP ports the pinned ones (a reload cannot move them, see reload). */
  private forWorkers (cfg: Config): Config {
    const http = { ...cfg.listen.http, port: this.pinned.port, ...(this.pinned.redirect !== undefined ? { redirectHttpPort: this.pinned.redirect } : {}) }
    return { ...cfg, listen: { ...cfg.listen, http } }
  }

  private newSlot (index: number): Slot {
    return { index, state: 'starting', worker: undefined, startedAt: 0, lastBeat: 0, status: undefined, version: this.version, restarts: 0, failures: 0, killedFor: undefined, backoff: undefined, lastExit: undefined, budget: initialBudget(this.cfg, index, this.count), totals: { messages: 0, requests: 0 }, exitedTotals: { messages: 0, requests: 0 } }
  }

  /** Forks the slot's worker; resolves with its ports once it listens, rejects if it fails first. */
  private async fork (slot: Slot): Promise<BoundPorts> {
    const worker = cluster.fork({ FERRY_WORKER: String(slot.index) })
    slot.worker = worker
    slot.state = 'starting'
    slot.startedAt = Date.now()
    slot.lastBeat = Date.now()
    slot.status = undefined
    slot.killedFor = undefined
    slot.version = this.version
    const started = new Promise<BoundPorts>((resolve, reject) => {
      worker.on('message', (m: FromWorker) => {
        if (m.t === 'ready') resolve(m.ports)
        else if (m.t === 'failed') reject(new FerryError(Object.hasOwn(ERRORS, m.code) ? m.code as FerryErrorCode : 'FERRY_ERR_WORKER', `worker ${slot.index}: ${m.message}`))
        this.onMessage(slot, worker, m)
      })
      worker.on('exit', (code, signal) => {
        reject(new FerryError('FERRY_ERR_WORKER', `worker ${slot.index} exited while starting (code ${String(code)}, signal ${String(signal)})`))
        this.onExit(slot, worker, code, signal)
      })
    })
    return await started
  }

  private send (slot: Slot, m: ToWorker): void {
    const w = slot.worker
    if (w === undefined || !w.isConnected()) return
    try {
      w.send(m)
    } catch (err) {
      this.log.warn({ err, worker: slot.index }, 'a message to a worker could not be sent')
    }
  }

  private onMessage (slot: Slot, worker: Worker, m: FromWorker): void {
    if (slot.worker !== worker) return
    switch (m.t) {
      case 'hello':
        this.send(slot, { t: 'start', config: this.forWorkers(this.cfg), role: { ...this.role, index: slot.index, budget: slot.budget } })
        return
      case 'ready':
        slot.lastBeat = Date.now()
        if (this.state.value === 'draining' || this.state.value === 'stopping') {
          slot.state = 'draining'
          this.send(slot, { t: 'drain', reason: this.drainReason ?? 'pod draining' })
        } else slot.state = 'running'
        if (slot.restarts > 0) this.log.info({ worker: slot.index, pid: worker.process.pid }, 'worker restarted and serving')
        return
      case 'beat':
        slot.lastBeat = Date.now()
        slot.status = m.status
        return
      case 'answer': case 'metrics': {
        const ask = this.asks.get(m.id)
        if (ask === undefined) return
        this.asks.delete(m.id)
        ask.resolve(m.t === 'answer' ? m.body : m.metrics)
        return
      }
      case 'affinity':
        // The pod's memory store, the workers' one (src/planes/affinity.ts).
        serveAffinity(this.affinity, m.call).then((body) => { this.send(slot, { t: 'affinity-answer', id: m.id, body }) }, (err: unknown) => {
          this.log.error({ err, worker: slot.index, op: m.call.op }, 'an affinity call of a worker failed')
        })
        return
      case 'bucket':
        // The pod's rate-limit buckets for scope: local policies (src/planes/buckets.ts).
        this.send(slot, { t: 'bucket-answer', id: m.id, body: this.buckets.take(m.call) })
        return
      case 'ip': {
        // The pod's per-IP leases (src/planes/ip-counts.ts): grants and cede requests go back in batches.
        this.ips.serve(slot.index, m.calls)
        return
      }
      case 'failed':
        this.log.error({ worker: slot.index, code: m.code, message: m.message }, 'worker could not start')
    }
  }

  private onExit (slot: Slot, worker: Worker, code: number | null, signal: string | null): void {
    if (slot.worker !== worker) return
    slot.worker = undefined
    for (const [id, ask] of this.asks) if (ask.slot === slot) { this.asks.delete(id); ask.resolve(undefined) }
    const planned = slot.state === 'draining' || this.state.value === 'draining' || this.state.ending
    const reason: RestartReason = slot.killedFor ?? (slot.state === 'starting' ? 'start_failed' : 'crash')
    slot.lastExit = { at: new Date().toISOString(), code, signal, reason: planned ? 'drained' : reason }
    // Its requests and sessions are gone with it; what it counted stays counted.
    this.ips.drop(slot.index)
    slot.exitedTotals = addTotals(slot.exitedTotals, slot.totals)
    slot.totals = { messages: 0, requests: 0 }
    if (planned || this.state.value === 'starting') {
      slot.state = 'exited'
      this.log.info({ worker: slot.index, code, signal }, 'worker exited')
      this.maybeStopped()
      return
    }
    // Unexpected: the pod keeps serving on the others while this one comes back.
    slot.failures = Date.now() - slot.startedAt >= RESTART_RESET_MS ? 1 : slot.failures + 1
    const delay = Math.min(RESTART_MAX_MS, RESTART_FIRST_MS * 2 ** (slot.failures - 1))
    slot.state = 'restarting'
    slot.restarts++
    // What it held is free now; it comes back with nothing and gets its share as the others release some.
    slot.budget = emptyBudget(this.cfg)
    this.metrics.workerRestarts.labels(reason).inc()
    this.log.error({ worker: slot.index, pid: worker.process.pid, code, signal, reason, restartInMs: delay }, 'worker exited unexpectedly; restarting it')
    slot.backoff = setTimeout(() => {
      slot.backoff = undefined
      if (slot.state !== 'restarting') return
      this.fork(slot).catch((err: unknown) => { this.log.error({ err, worker: slot.index }, 'worker restart failed') })
    }, delay)
  }

  /** Every BEAT_MS: a worker that stopped answering (event loop blocked, stopped) is killed; its exit restarts it. */
  private watch (): void {
    this.rebalance()
    const now = Date.now()
    // This process was held up itself (CPU starved, a long GC): the heartbeats that waited meanwhile are
    // read after this timer, so silence is judged at the next tick, not now.
    const late = now - this.lastWatch > 2 * BEAT_MS
    this.lastWatch = now
    if (late) return
    for (const slot of this.slots) {
      const w = slot.worker
      if (w === undefined || slot.killedFor !== undefined) continue
      const silentMs = now - slot.lastBeat
      const limit = slot.state === 'starting' ? START_TIMEOUT_MS : this.cfg.gateway.workerHangMs
      if (silentMs < limit) continue
      slot.killedFor = 'hung'
      this.log.error({ worker: slot.index, pid: w.process.pid, silentMs, state: slot.state }, 'worker stopped answering; killing it')
      w.process.kill('SIGKILL')
    }
  }

  /**
   * Every BEAT_MS: the pod's concurrency limits follow the load (src/planes/share.ts, rebalance). A
   * worker's heartbeat says what it uses and the share it enforces; a share sent but not yet reported
   * counts as held.
   */
  private rebalance (): void {
    const live = this.slots.filter((s) => s.worker !== undefined && (s.state === 'starting' || s.state === 'running' || s.state === 'draining'))
    if (live.length === 0) return
    const changed = new Set<Slot>()
    for (const k of BUDGETS) {
      const total = this.cfg.limits[k]
      if (total === 0) continue
      const rows = live.map((s) => {
        const limits = s.status?.limits as Record<string, number> | undefined
        if (s.state === 'starting' || limits === undefined) return { used: 0, applied: s.budget[k], fixed: true }
        return { used: limits[USED[k]] ?? 0, applied: Math.max(limits[k] ?? 0, s.budget[k]), fixed: false }
      })
      const next = rebalance(total, rows)
      live.forEach((s, i) => {
        if (next[i] === s.budget[k]) return
        s.budget = { ...s.budget, [k]: next[i]! }
        changed.add(s)
      })
    }
    for (const s of changed) this.send(s, { t: 'budget', budget: s.budget })
  }

  /** Asks every live worker; resolves with each one's answer (undefined: it died or did not answer within `timeoutMs`). */
  private async askAll (make: (id: number, slot: Slot) => ToWorker, timeoutMs = ASK_TIMEOUT_MS): Promise<Array<{ slot: Slot, body: unknown }>> {
    const live = this.slots.filter((s) => s.worker !== undefined && (s.state === 'running' || s.state === 'draining'))
    return await Promise.all(live.map(async (slot) => {
      const id = this.nextAsk++
      const body = await new Promise<unknown>((resolve) => {
        const timer = setTimeout(() => { this.asks.delete(id); resolve(undefined) }, timeoutMs)
        this.asks.set(id, { slot, resolve: (b) => { clearTimeout(timer); resolve(b) } })
        this.send(slot, make(id, slot))
      })
      return { slot, body }
    }))
  }

  /** `version` undefined: the file could not be read as a config, so it has none (the answer leaves it out). */
  private refused (errors: string[], version: string | undefined): ReloadResult {
    this.lastReload = { at: new Date().toISOString(), result: 'refused', errors }
    this.metrics.configReloads.labels('refused').inc()
    this.log.error({ errors, version }, 'config reload refused; the running config is kept')
    return { result: 'refused', version, errors }
  }

  private async serially<T> (fn: () => Promise<T>): Promise<T> {
    const p = this.reloading.then(fn, fn)
    this.reloading = p
    return await p
  }

  async reloadFromSource (trigger: string): Promise<PodReloadResult> {
    return await this.serially(async () => {
      if (this.source === undefined) return this.refused(['(config): the gateway runs on its embedded defaults; there is no file to reload'], this.version)
      let next: Config
      try {
        next = this.source()
      } catch (err) {
        return this.refused(err instanceof ConfigError ? err.problems : [(err as Error).message], undefined)
      }
      this.log.info({ trigger }, 'config reload requested')
      return await this.reload(next, configVersion(next))
    })
  }

  /** What no worker can change in place with others serving beside it: said before any worker is asked. */
  private podRefusals (next: Config): string[] {
    const problems = reloadRefusals(this.cfg, next)
    const was = this.cfg.listen.http
    const now = next.listen.http
    if (was.host !== now.host || was.port !== now.port) problems.push(`listen.http: a pod with gateway.workers above 1 cannot move its HTTP listener in a reload (${was.host}:${was.port} → ${now.host}:${now.port}); restart it`)
    if (was.redirectHttpPort !== now.redirectHttpPort) problems.push('listen.http.redirectHttpPort: a pod with gateway.workers above 1 cannot change it in a reload; restart it')
    if (canonicalJson(this.cfg.gateway.workers) !== canonicalJson(next.gateway.workers)) problems.push(`gateway.workers: changes with a restart (running ${String(this.cfg.gateway.workers)})`)
    return problems
  }

  /** Applies `next` on every worker (see PodReloadResult); the pod's config is `next` once one took it. */
  private async reload (next: Config, version: string, apply?: (id: number, slot: Slot) => ToWorker): Promise<PodReloadResult> {
    const refusal = this.state.reloadRefusal
    if (refusal !== undefined) return this.refused([refusal], version)
    const problems = this.podRefusals(next)
    if (problems.length > 0) return this.refused(problems, version)
    let token: AdminToken
    try {
      token = adminToken(next)
    } catch (err) {
      return this.refused([(err as Error).message], version)
    }
    // New limits start from the even split (a limit that did not change keeps the shares it has).
    const budgets = new Map(this.slots.map((s) => [s, reshare(this.cfg, next, s.budget, s.index, this.count)]))
    const answers = await this.askAll(apply ?? ((id, slot) => ({ t: 'reload', id, config: this.forWorkers(next), version, budget: budgets.get(slot)! })))
    for (const s of this.slots) s.budget = budgets.get(s)!
    const results = answers.map(({ slot, body }) => ({ slot, r: body as { result: string, errors?: string[] } | undefined }))
    const took = results.filter((x) => x.r?.result === 'ok')
    const refusedBy = results.filter((x) => x.r !== undefined && x.r.result !== 'ok')
    if (took.length === 0 && refusedBy.length > 0) {
      const errors = [...new Set(refusedBy.flatMap((x) => x.r!.errors ?? []))]
      return this.refused(errors, version)
    }
    for (const { slot } of took) slot.version = version
    this.cfg = next
    this.version = version
    this.admin?.setAccess({ token, protectMetrics: next.admin.protectMetrics })
    this.log.level = next.logging.level
    if (refusedBy.length === 0) {
      this.lastReload = { at: new Date().toISOString(), result: 'ok' }
      this.metrics.configReloads.labels('ok').inc()
      this.log.info({ version, workers: took.length }, 'config reloaded')
      return { ...(took[0]?.r as ReloadResult & { result: 'ok' } | undefined ?? { result: 'ok', added: [], changed: [], removed: [], unchanged: [] }), version }
    }
    // Some took it, some refused (a file that changed between them, a port one could not bind): the
    // refusers keep their config until the next reload; said, counted and shown per worker.
    const errors = [...new Set(refusedBy.flatMap((x) => x.r!.errors ?? []))]
    this.lastReload = { at: new Date().toISOString(), result: 'partial', errors }
    this.metrics.configReloads.labels('partial').inc()
    this.log.error({ version, took: took.map((x) => x.slot.index), refused: refusedBy.map((x) => x.slot.index), errors }, 'config reload taken by some workers only; the others keep the config they run')
    return { result: 'partial', version, errors, workers: results.map(({ slot, r }) => ({ worker: slot.index, result: r?.result ?? 'no_answer', ...(r?.errors !== undefined ? { errors: r.errors } : {}) })) }
  }

  /** PUT /routes/NAME/split: checked here, then applied by every worker as its reload. */
  async setSplitWeights (route: string, weights: unknown): Promise<{ result: string }> {
    return await this.serially(async () => {
      const plan = planSplitChange(this.cfg, route, weights)
      if (plan.result === 'not_found') return plan
      if (plan.result === 'refused') return this.refused(plan.errors, this.version)
      this.log.info({ trigger: `PUT /routes/${plan.route}/split`, weights: plan.weights }, 'route split change requested')
      const r = await this.reload(plan.next, configVersion(plan.next), (id) => ({ t: 'split', id, route: plan.route, weights: plan.weights }))
      return r.result === 'ok' ? { ...r, route: plan.route } : r
    })
  }

  /** POST /upstreams/NAME/endpoints/ADDR/drain|ready: every worker holds the operator's intent; the first one's answer is the pod's. */
  private async endpointAdmin (upstream: string, address: string, admin: AdminState): Promise<AdminChange> {
    const answers = await this.askAll((id) => ({ t: 'endpoint', id, upstream, address, admin }))
    const first = answers.find((a) => a.body !== undefined)?.body as AdminChange | undefined
    return first ?? { ok: false, code: 'FERRY_ERR_UNKNOWN_UPSTREAM', message: 'no worker answered' }
  }

  /**
   * Starts the pod's drain (SIGTERM, POST /drain): every worker drains on its own schedule with its
   * share of the pace (src/planes/share.ts); a worker waiting to restart is not restarted. The pod
   * stops once every worker has exited.
   */
  drain (reason: string): object {
    const phase = this.state.drainPhase
    if (phase === 'pending') {
      this.drainReason ??= reason
      this.log.info({ reason }, 'drain requested during start-up: it begins once the gateway runs')
      return { phase, reason }
    }
    if (phase === 'stopped') return { phase, reason }
    if (this.state.value === 'running') {
      this.drainReason = reason
      this.drainStartedAt = new Date().toISOString()
      this.state.to('draining')
      this.pods?.refresh()
      for (const slot of this.slots) {
        if (slot.state === 'restarting') {
          clearTimeout(slot.backoff)
          slot.state = 'exited'
        } else if (slot.worker !== undefined) {
          // A worker still starting drains as soon as it runs (its Gateway keeps the request).
          slot.state = 'draining'
          this.send(slot, { t: 'drain', reason })
        }
      }
      this.maybeStopped()
    }
    return this.drainStatus()
  }

  hurryDrain (): void {
    for (const slot of this.slots) this.send(slot, { t: 'hurry' })
  }

  /** Stops every worker now (tests, a failed start): their sessions close 1001. */
  async stop (): Promise<void> {
    if (this.state.ending) { await this.stopped; return }
    this.state.to('stopping')
    for (const slot of this.slots) {
      clearTimeout(slot.backoff)
      if (slot.worker === undefined) slot.state = 'exited'
      else this.send(slot, { t: 'stop' })
    }
    this.maybeStopped()
    await this.stopped
  }

  private abort (): void {
    for (const slot of this.slots) {
      clearTimeout(slot.backoff)
      slot.state = 'exited'
      slot.worker?.process.kill('SIGKILL')
    }
    this.finish()
  }

  private maybeStopped (): void {
    if (this.state.value !== 'draining' && this.state.value !== 'stopping') return
    if (this.slots.some((s) => s.state !== 'exited')) return
    this.finish()
  }

  private finish (): void {
    if (this.state.value === 'stopped') return
    if (this.state.value !== 'stopping') this.state.to('stopping')
    clearInterval(this.watchdog)
    this.admin?.close()
    for (const l of this.locks) l.release()
    void (async () => {
      await this.pods?.close()
      await this.store?.close('flush')
    })().catch((err: unknown) => { this.log.warn({ err }, 'closing the pod directory failed') }).finally(() => {
      this.state.to('stopped')
      this.resolveStopped()
    })
  }

  private podRecord (): PodRecord {
    return { id: this.cfg.gateway.id, host: hostname(), version: VERSION, sessions: this.sum((c) => c.webSocketSessions), draining: this.state.value === 'draining', updatedAt: new Date().toISOString() }
  }

  private sum (f: (c: WorkerStatus['clients']) => number): number {
    return this.slots.reduce((n, s) => n + (s.status !== undefined && s.worker !== undefined ? f(s.status.clients) : 0), 0)
  }

  private countWorkers (): void {
    const by = new Map<string, number>([['starting', 0], ['running', 0], ['draining', 0], ['restarting', 0]])
    for (const s of this.slots) if (by.has(s.state)) by.set(s.state, by.get(s.state)! + 1)
    for (const [state, n] of by) this.metrics.workers.labels(state).set(n)
  }

  /**
   * The pod's /metrics: every worker's registry and the control plane's, combined by each metric's
   * aggregator (prom-client's cluster aggregation; sum unless src/observability/metrics.ts says min, max
   * or first). The control plane's registry comes first: `first` is its figure.
   */
  private async renderMetrics (): Promise<string> {
    const answers = await this.askAll((id) => ({ t: 'metrics', id }))
    const sets = answers.map((a) => a.body).filter((b): b is Array<MetricObjectWithValues<MetricValue<string>>> => Array.isArray(b))
    const own = await this.metrics.json()
    return await AggregatorRegistry.aggregate([own, ...sets]).metrics()
  }

  /**
   * The pod's traffic counters for the console's rates: every worker's now (one that does not answer
   * within TOTALS_TIMEOUT_MS counts what it said last, so a busy worker never holds the console up)
   * and what exited workers had counted.
   */
  private async trafficTotals (): Promise<TrafficTotals> {
    const answers = await this.askAll((id) => ({ t: 'totals', id }), TOTALS_TIMEOUT_MS)
    for (const { slot, body } of answers) if (body !== undefined) slot.totals = body as TrafficTotals
    return this.slots.reduce((n, s) => addTotals(n, addTotals(s.totals, s.exitedTotals)), { messages: 0, requests: 0 })
  }

  private drainStatus (): { phase: DrainPhase } & Record<string, unknown> {
    const live = this.slots.filter((s) => s.worker !== undefined && s.status !== undefined).map((s) => s.status!.drain as unknown as { phase: DrainPhase, migrated: Record<string, number>, remaining: Record<string, number>, ratePerSec: number, sessionsAtStart: number, deadlineAt?: string, listenersCloseAt?: string })
    const draining = this.state.value === 'draining' || this.state.ending
    // A worker whose last heartbeat predates the drain still says idle: it has been told, so it is in grace at least.
    const GRACE = PHASES.indexOf('grace')
    const phase: DrainPhase = !draining ? 'idle' : live.length === 0 ? 'done' : PHASES[Math.min(...live.map((d) => Math.max(GRACE, PHASES.indexOf(d.phase))))]!
    const add = (k: 'migrated' | 'remaining'): Record<string, number> => {
      const out: Record<string, number> = {}
      for (const d of live) for (const [key, v] of Object.entries(d[k])) out[key] = (out[key] ?? 0) + v
      return out
    }
    return {
      phase,
      reason: this.drainReason,
      startedAt: this.drainStartedAt,
      listenersCloseAt: live[0]?.listenersCloseAt,
      deadlineAt: live[0]?.deadlineAt,
      // A worker that has not beaten since it was told has not counted its start: its sessions now are.
      sessionsAtStart: live.reduce((n, d) => n + (d.phase === 'idle' ? d.remaining.sessions ?? 0 : d.sessionsAtStart), 0),
      migrated: add('migrated'),
      remaining: add('remaining'),
      ratePerSec: live.reduce((n, d) => n + Math.max(0, d.ratePerSec), 0),
    }
  }

  /** The pod's /status: the first live worker's view of routes and upstreams (their counts the pod's), the pod's counts and figures (src/planes/pod-status.ts), and each worker. */
  status (): object {
    const statuses = this.slots.filter((s) => s.worker !== undefined && s.status !== undefined).map((s) => s.status!)
    const base = statuses[0] ?? {}
    const listeners = (base as { listeners?: object }).listeners ?? {}
    return {
      ...base,
      gateway: this.cfg.gateway.id,
      version: VERSION,
      state: this.state.value,
      uptimeSeconds: Math.round((Date.now() - this.startedAt) / 1000),
      pid: process.pid,
      listeners: { ...listeners, admin: { host: this.cfg.listen.admin.host, port: this.adminPort } },
      clients: { httpRequestsInFlight: this.sum((c) => c.httpRequestsInFlight), httpRequestsServed: this.sum((c) => c.httpRequestsServed), webSocketSessions: this.sum((c) => c.webSocketSessions), tcpConnections: this.sum((c) => c.tcpConnections) },
      websocket: podSessions(statuses),
      admission: podAdmission(this.cfg, statuses),
      limits: podLimits(this.cfg, statuses),
      upstreams: podUpstreams(statuses),
      pod: { workers: this.count, cores: this.cores.usable, workerHangMs: this.cfg.gateway.workerHangMs, restarts: this.slots.reduce((n, s) => n + s.restarts, 0), perIp: this.ips.status() },
      workers: this.slots.map((s) => ({
        index: s.index,
        pid: s.worker?.process.pid ?? null,
        state: s.state,
        configVersion: s.version,
        restarts: s.restarts,
        lastExit: s.lastExit ?? null,
        heartbeatAgeMs: s.worker === undefined ? null : Date.now() - s.lastBeat,
        clients: s.worker === undefined ? null : s.status?.clients ?? null,
        drain: s.status?.drain.phase ?? null,
        // Its share of each pod-wide concurrency limit now (-1: none of it; 0: the limit is off).
        budget: s.budget,
        // Its share of the pod's admission rate and burst, and the tokens it holds.
        admission: s.worker === undefined ? null : s.status?.admission ?? null,
      })),
      pods: this.pods?.status(),
      ...(this.cfg.affinity.store === 'memory' ? { affinity: { ...this.affinity.status(), sharedBy: 'the pod\'s workers (kept by the control plane)' } } : {}),
      config: { version: this.version, loadedAt: this.loadedAt, lastReload: this.lastReload ?? null },
      drain: this.drainStatus(),
      resume: { secret: this.role?.resumeSecret.source, tokenTtlMs: this.cfg.resume.tokenTtlMs },
    }
  }
}

/** Where a worker's /status `limits` says how much of each budget it uses now. */
const USED: Record<BudgetName, string> = { maxRequestsInFlight: 'httpInFlight', maxWebSocketSessions: 'wsSessions', maxBufferedBodyBytes: 'bufferedBodyBytes' }

function addTotals (a: TrafficTotals, b: TrafficTotals): TrafficTotals {
  return { messages: a.messages + b.messages, requests: a.requests + b.requests }
}

/** A share of nothing of every limit (a limit of 0, no limit, stays 0). */
function emptyBudget (cfg: Config): Budget {
  const b = {} as Budget
  for (const k of BUDGETS) b[k] = cfg.limits[k] === 0 ? 0 : NONE
  return b
}

/** A worker's share after a reload: kept for a limit that did not change, the even split for one that did. */
function reshare (was: Config, next: Config, budget: Budget, index: number, n: number): Budget {
  const even = initialBudget(next, index, n)
  const b = {} as Budget
  for (const k of BUDGETS) b[k] = was.limits[k] === next.limits[k] ? budget[k] : even[k]
  return b
}

function adminToken (cfg: Config): AdminToken {
  const { token, source } = resolveAdminToken(cfg.admin)
  return new AdminToken(token, source)
}

/** The worker's entry: the compiled file beside this one, or the TypeScript source when run from it (tests under tsx). */
function workerFile (): string {
  const here = import.meta.url
  return fileURLToPath(new URL(here.endsWith('.ts') ? './worker.ts' : './worker.js', here))
}
