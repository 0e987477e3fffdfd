import { Pool } from 'undici'
import type { Logger } from 'pino'
import { NO_LABELS, type Labels } from '../../config/labels.js'
import type { HttpUpstreamConfig } from '../../config/schema.js'
import type { Endpoint } from '../../config/load.js'
import type { EndpointSource } from '../../discovery/source.js'
import { FerryError } from '../../errors.js'
import type { Metrics } from '../../observability/metrics.js'
import { Balancer, hashKey, within } from '../../routing/balancer.js'
import type { AffinityPlacement } from '../../affinity/placement.js'
import type { SplitAsk, Subset } from '../../routing/split.js'
import { EndpointSet, healthyAt, type SetMember } from '../endpoint-set.js'
import { PassiveHealth, type ActiveHealth } from '../health.js'
import { httpProbe } from '../probes.js'
import { interimSkippingConnector } from './interim.js'
import type { Upstream } from '../../contracts/upstream.js'
import type { UpstreamTlsClient } from '../tls.js'

/** How much longer undici's headersTimeout runs than timeouts.responseMs (see newPool). */
const HEADERS_BACKSTOP_MS = 1000

/**
 * One backend endpoint: its undici Pool (capped at `maxConnections` sockets, pipelining 1), a second
 * one for long-held requests (capped at `longHeld.maxConnections`, made on first use) and the
 * bookkeeping the balancer reads. `inflight` and `held` are counted here, not by undici, so the wait
 * queue is ours: undici's own queue never holds a request (we only dispatch when inflight <
 * maxConnections, or held < longHeld.maxConnections). Two pools, not one with both caps added: a
 * request dispatched the moment another's response ended finds undici's connection not yet free and,
 * below the pool's cap, would open another one; the backend must never see more than maxConnections
 * for short requests.
 */
export class HttpEndpoint implements SetMember {
  /** Short requests on it now (the balancer's load; at most pool.maxConnections). */
  inflight = 0
  /** Long-held requests on it now (at most pool.longHeld.maxConnections). */
  held = 0
  private current: Pool
  private currentLong: Pool | undefined
  /** Pools replaced by `reset`: closing while what they still carry finishes. */
  private readonly replaced = new Set<Pool>()
  checked: ActiveHealth | undefined
  labels: Labels = NO_LABELS
  /** The pool's close, once the endpoint was removed from the set (in-flight requests finish first). */
  closing: Promise<void> | undefined

  constructor (readonly upstream: string, readonly endpoint: Endpoint, private readonly cfg: HttpUpstreamConfig, readonly passive: PassiveHealth, private readonly resets?: { inc: () => void }, readonly tls?: UpstreamTlsClient) {
    this.current = this.newPool()
  }

  private newPool (connections = this.cfg.pool.maxConnections): Pool {
    const cfg = this.cfg
    return new Pool(this.tls !== undefined ? `https://${this.endpoint.address}` : this.endpoint.origin, {
      connections,
      pipelining: 1,
      connect: interimSkippingConnector(cfg.timeouts.connectMs, this.tls?.options(this.endpoint)),
      keepAliveTimeout: cfg.pool.keepAliveTimeoutMs,
      keepAliveMaxTimeout: cfg.pool.keepAliveTimeoutMs,
      // The 504 of responseMs is BackendSide's own timer; undici's, checked on its 0.5 s clock (early or late by
      // up to ~0.5 s), only bounds the upload of a streamed body, so it must never come first.
      headersTimeout: cfg.timeouts.responseMs + HEADERS_BACKSTOP_MS,
      bodyTimeout: cfg.timeouts.bodyIdleMs,
      strictContentLength: true,
    })
  }

  get pool (): Pool {
    return this.current
  }

  /** The pool of long-held requests (SSE, long polling): its own connections, never the short ones. */
  get longPool (): Pool {
    return this.currentLong ??= this.newPool(this.cfg.pool.longHeld.maxConnections)
  }

  /**
   * undici refused a request before sending it. Its client marks itself as needing a drain that never
   * comes (undici 7 dispatcher-base/pool-base), so that connection would take no request again and the
   * pool would shrink by one per such request until nothing dispatches. Requests are only ever handed to
   * `pool`: a fresh one takes over now; the old one closes once what it carries has finished.
   */
  reset (long = false): void {
    if (this.closing !== undefined) return
    const old = long ? this.longPool : this.current
    if (long) this.currentLong = this.newPool(this.cfg.pool.longHeld.maxConnections)
    else this.current = this.newPool()
    this.replaced.add(old)
    void old.close().catch(() => {}).finally(() => this.replaced.delete(old))
    this.resets?.inc()
  }

  /** Closes the current pool and any replaced one: 'flush' lets requests under way finish, 'abort' destroys now. */
  async closePools (kind: 'flush' | 'abort'): Promise<void> {
    const all = [this.current, ...(this.currentLong !== undefined ? [this.currentLong] : []), ...this.replaced]
    if (kind === 'abort') await Promise.all(all.map(async (p) => { await p.destroy().catch(() => {}) }))
    else await Promise.all(all.map(async (p) => { await p.close().catch(() => {}) }))
  }

  get address (): string {
    return this.endpoint.address
  }

  acceptsAt (now: number): boolean {
    return healthyAt(this, now)
  }

  get connected (): number {
    return this.pool.stats.connected + (this.currentLong?.stats.connected ?? 0)
  }
}

/** Why a request is long-held (pool.longHeld). */
export type LongHeldWhy = 'sse' | 'route' | 'polling'

/** What the pool hands a slot to: an HTTP exchange waiting to dispatch. */
export interface SlotWaiter {
  /**
   * The request may be dispatched on `ep` now, on `ep.longPool` when `long`, else `ep.pool`; the waiter
   * must call `release(ep, …, long)` exactly once.
   */
  onSlot: (ep: HttpEndpoint, long: boolean) => void
  /** No slot: queue full or waited too long. */
  onNoSlot: (err: FerryError) => void
}

interface QueueEntry {
  waiter: SlotWaiter | undefined
  deadline: number
  exclude: HttpEndpoint | undefined
  /** The label subset the request's route split chose: it waits for a slot there. */
  subset: Subset | undefined
  /** A sticky request's endpoint: it waits for a slot there, while that endpoint takes work. */
  pin: HttpEndpoint | undefined
  /** The key of a sticky request (re-pinned by it if its endpoint stops taking work while it waits). */
  sticky: StickyAsk | undefined
}

/**
 * A request on a route with `affinity` (sticky sessions): its key, and where the affinity store says the
 * key lives (`home`, `host:port`; undefined: no record or the store is falling back).
 */
export interface StickyAsk {
  readonly key: string
  readonly home: string | undefined
  /** Ferry made the key for this request (it sets the cookie): counted as `issued`, not `miss`. */
  readonly issued: boolean
}

/** How a sticky request's endpoint was chosen (ferry_http_affinity_total's outcome). */
export type StickyOutcome = 'hit' | 'miss' | 'fallback' | 'issued' | 'keyless' | 'learned'

export type SlotOutcome = 'ok' | 'failed' | 'neutral'

/**
 * open: takes requests. retiring: a reload replaced it; the front sends it nothing new, but the
 * exchanges that already hold it keep it (queued ones get their slot here, under their own deadline;
 * a retry stays here too); it closes once the last one ended and its slots are back. closed: released.
 */
export type HttpUpstreamState = 'open' | 'retiring' | 'closed'

/**
 * An HTTP upstream: its endpoints, the balancer, and the bounded FIFO of requests waiting for a slot.
 * One timer serves the whole queue: entries share one timeout, so the head always expires first.
 * Requests a route split sent to a label subset wait in that subset's lane of the queue: first come first
 * served within a lane, and a full subset never holds up requests for another one (nor for the rest).
 */
export class HttpUpstream implements Upstream {
  /** The endpoints, following the upstream's source (added ones take requests, removed ones drain). */
  readonly set: EndpointSet<HttpEndpoint>
  private readonly balancer: Balancer<HttpEndpoint>
  private queue: QueueEntry[] = []
  private head = 0
  private queued = 0
  /** Queued entries per lane (split subset, or undefined for requests without one); lanes with none are deleted. */
  private readonly lanes = new Map<Subset | undefined, number>()
  /** Queued sticky requests: each waits for its own endpoint, in no lane. */
  private stickyQueued = 0
  /** drainQueue is running (a slot handed out may come back at once): a nested call makes it go round again. */
  private draining = false
  private drainAgain = false
  private timer: NodeJS.Timeout | undefined
  private state: HttpUpstreamState = 'open'
  /** Exchanges between their start and their end (enter/leave): a retiring upstream waits for them. */
  private users = 0
  /** Resolves `retire()` once the retiring upstream is idle, or closed. */
  private retired: (() => void) | undefined
  private readonly longHeldCounts: Record<LongHeldWhy | 'refused', { inc: () => void }>
  private readonly longHeldNow: { inc: () => void, dec: () => void }
  /** Rendezvous hashing of sticky keys (the ws twin hashes the same way, so an upgrade follows the polls). */
  private readonly byKey: Balancer<HttpEndpoint>
  private readonly stickyCounts: Record<StickyOutcome, { inc: () => void }>

  constructor (
    readonly name: string,
    readonly cfg: HttpUpstreamConfig,
    log: Logger,
    private readonly metrics: Metrics,
    source: EndpointSource,
    /** Where sticky keys live (the gateway's affinity store); without it keys are placed by rendezvous hashing alone. */
    readonly placement?: AffinityPlacement,
    /** TLS towards the endpoints (https); undefined: plain HTTP. */
    readonly tls?: UpstreamTlsClient,
  ) {
    this.set = new EndpointSet<HttpEndpoint>(name, source, {
      create: (endpoint) => new HttpEndpoint(name, endpoint, cfg, new PassiveHealth(name, endpoint.address, cfg.ejection, log, metrics), metrics.httpPoolResets.labels(name), tls),
      retire: (e) => { e.closing ??= e.closePools('flush') },
      idle: (e) => e.inflight === 0 && e.held === 0,
      close: async (e, kind) => {
        if (kind === 'abort') await e.closePools('abort')
        else await (e.closing ??= e.closePools('flush'))
      },
      probe: async (e, timeoutMs) => { await httpProbe(e.endpoint, cfg.healthCheck!.http, timeoutMs, tls) },
      // A new or recovered endpoint takes queued requests at once.
      changed: () => { if (this.state !== 'closed') this.drainQueue() },
    }, cfg.healthCheck, log, metrics)
    this.balancer = new Balancer(this.set, cfg.balance, { panic: cfg.whenAllUnhealthy === 'panic' })
    this.byKey = new Balancer(this.set, 'hash', { panic: cfg.whenAllUnhealthy === 'panic' })
    const sticky = (o: string): { inc: () => void } => metrics.httpAffinity.labels(name, o)
    this.stickyCounts = { hit: sticky('hit'), miss: sticky('miss'), fallback: sticky('fallback'), issued: sticky('issued'), keyless: sticky('keyless'), learned: sticky('learned') }
    const why = (w: string): { inc: () => void } => metrics.httpLongHeld.labels(name, w)
    this.longHeldCounts = { sse: why('sse'), route: why('route'), polling: why('polling'), refused: why('refused') }
    this.longHeldNow = metrics.httpLongHeldNow.labels(name)
  }

  /** Active endpoints (in the set now); draining ones are in `set.all()`. */
  get endpoints (): readonly HttpEndpoint[] {
    return this.set.active
  }

  get queueDepth (): number {
    return this.queued
  }

  /**
   * Gives `waiter` a slot now, queues it, or refuses it (503). `exclude`: the endpoint that just failed it
   * (a retry). `split`: the route's split decides the label subset first (counted once: not for a retry).
   * `long`: a long-held request (SSE, a long-held route, long polling) takes a slot of the long-held
   * budget at once or is refused; it never waits in the queue nor takes a short slot.
   * `sticky`: a request of a route with affinity goes to its key's endpoint (the recorded one while it takes
   * work, else the key's rendezvous choice among those that do) and only there: it waits in the queue for
   * a slot on that endpoint rather than going elsewhere (its session lives there), and a long-held one is
   * refused (503) when that endpoint's long-held budget is full.
   */
  acquire (waiter: SlotWaiter, exclude?: HttpEndpoint, split?: SplitAsk, long?: LongHeldWhy, sticky?: StickyAsk): QueueEntry | undefined {
    if (this.state === 'closed') {
      waiter.onNoSlot(new FerryError('FERRY_ERR_QUEUE_FULL', `upstream ${this.name} is shut down`))
      return undefined
    }
    const now = Date.now()
    const refused = this.set.refusal(now, this.cfg.whenAllUnhealthy)
    if (refused !== undefined) {
      waiter.onNoSlot(refused)
      return undefined
    }
    const subset = split?.split.assign(split, this.set.active, now, exclude, exclude === undefined)
    const pin = sticky !== undefined ? this.stickyPick(sticky, now, exclude, subset, exclude === undefined) : undefined
    if (long !== undefined && this.cfg.pool.longHeld.maxConnections > 0) { this.acquireLong(waiter, now, exclude, subset, long, pin); return undefined }
    // Queued requests of the same lane go first (a sticky request competes only for its endpoint's slots).
    const ep = pin !== undefined
      ? (pin.inflight < this.cfg.pool.maxConnections ? pin : undefined)
      : !this.lanes.has(subset) ? this.balancer.pick(this.cfg.pool.maxConnections, now, exclude, undefined, subset) : undefined
    if (ep !== undefined) {
      ep.inflight++
      waiter.onSlot(ep, false)
      return undefined
    }
    if (this.queued >= this.cfg.pool.queueLimit) {
      waiter.onNoSlot(new FerryError('FERRY_ERR_QUEUE_FULL', `upstream ${this.name}: all ${this.endpoints.length * this.cfg.pool.maxConnections} connections busy and ${this.queued} requests queued (queueLimit ${this.cfg.pool.queueLimit})`))
      return undefined
    }
    const entry: QueueEntry = { waiter, deadline: now + this.cfg.pool.queueTimeoutMs, exclude, subset, pin, sticky: pin !== undefined ? sticky : undefined }
    this.queue.push(entry)
    this.queued++
    if (entry.sticky !== undefined) this.stickyQueued++
    else this.lanes.set(subset, (this.lanes.get(subset) ?? 0) + 1)
    if (this.timer === undefined) this.armTimer()
    return entry
  }

  /** The waiter went away while queued (client aborted). */
  cancel (entry: QueueEntry): void {
    if (entry.waiter === undefined) return
    entry.waiter = undefined
    this.dequeued(entry)
  }

  /** `entry` left the queue (served, expired, cancelled): its counts go. */
  private dequeued (entry: QueueEntry): void {
    this.queued--
    if (entry.sticky !== undefined) { this.stickyQueued--; return }
    const n = (this.lanes.get(entry.subset) ?? 1) - 1
    if (n <= 0) this.lanes.delete(entry.subset)
    else this.lanes.set(entry.subset, n)
  }

  /**
   * The endpoint of a sticky request: the key's recorded one while it takes work and is in the route
   * split's subset, else the first in the key's rendezvous order that takes work (what every pod and the
   * ws twin compute). Undefined only when no endpoint is left to pick. `count`: a first attempt, counted
   * by how it was placed; a retry is counted as a fallback.
   */
  private stickyPick (sticky: StickyAsk, now: number, exclude: HttpEndpoint | undefined, subset: Subset | undefined, count: boolean): HttpEndpoint | undefined {
    const home = sticky.home !== undefined ? this.set.get(sticky.home) : undefined
    if (home !== undefined && home !== exclude && home.acceptsAt(now) && within(home, subset)) {
      if (count) this.stickyCounts.hit.inc()
      return home
    }
    // A retry (not `count`) leaves the endpoint that just failed it: a fallback too.
    if (!count) this.stickyCounts.fallback.inc()
    else (sticky.issued ? this.stickyCounts.issued : sticky.home === undefined ? this.stickyCounts.miss : this.stickyCounts.fallback).inc()
    return this.byKey.pick(Infinity, now, exclude, hashKey(sticky.key), subset)
  }

  /** `keyless`: a request on a route with affinity had no key and got none (balanced normally); `learned`: a backend's Set-Cookie gave a key. */
  countSticky (outcome: 'keyless' | 'learned'): void {
    this.stickyCounts[outcome].inc()
  }

  /** A queued sticky request's endpoint, or another by its key once that one takes no work (drained, removed, ejected). */
  private repin (entry: QueueEntry, now: number): HttpEndpoint | undefined {
    const pin = entry.pin
    if (pin !== undefined && this.set.get(pin.address) === pin && pin.acceptsAt(now)) return pin
    const next = this.byKey.pick(Infinity, now, entry.exclude, hashKey(entry.sticky!.key), entry.subset)
    if (next !== undefined && next !== pin) this.stickyCounts.fallback.inc()
    entry.pin = next
    return next
  }

  /**
   * A long-held slot on the endpoint the balancer prefers if it has room, else any that has; else 503.
   * `pin` (a sticky request): that endpoint only.
   */
  private acquireLong (waiter: SlotWaiter, now: number, exclude: HttpEndpoint | undefined, subset: Subset | undefined, why: LongHeldWhy, pin?: HttpEndpoint): void {
    const max = this.cfg.pool.longHeld.maxConnections
    let ep = pin ?? this.balancer.pick(Infinity, now, exclude, undefined, subset)
    if (ep !== undefined && ep.held >= max) ep = pin !== undefined ? undefined : this.set.active.find((e) => e !== exclude && e.held < max && e.acceptsAt(now) && within(e, subset))
    if (ep === undefined) {
      this.longHeldCounts.refused.inc()
      const where = pin !== undefined ? `${pin.address}'s ${max}` : `all ${this.endpoints.length * max}`
      waiter.onNoSlot(new FerryError('FERRY_ERR_QUEUE_FULL', `upstream ${this.name}: ${where} long-held connections busy (pool.longHeld.maxConnections ${max})`))
      return
    }
    ep.held++
    this.longHeldCounts[why].inc()
    this.longHeldNow.inc()
    waiter.onSlot(ep, true)
  }

  /** Returns a slot (`long`: a long-held one); `outcome` feeds passive health. Then hands free slots to queued waiters. */
  release (ep: HttpEndpoint, outcome: SlotOutcome, long = false): void {
    if (long) {
      ep.held--
      this.longHeldNow.dec()
    } else ep.inflight--
    if (outcome === 'ok') ep.passive.succeeded('request succeeded')
    else if (outcome === 'failed') ep.passive.failed('failures')
    this.drainQueue()
    if (this.state === 'retiring') this.checkRetired()
  }

  /** An exchange starts using this upstream; it calls `leave()` exactly once when it ends. */
  enter (): void {
    this.users++
  }

  leave (): void {
    this.users--
    if (this.state === 'retiring') this.checkRetired()
  }

  /**
   * A reload replaced this upstream: it keeps serving the exchanges that hold it (the queue still gets
   * slots, a retry still finds an endpoint) and closes ('flush') once the last has ended and every slot
   * is back. Resolves when closed. No queued request is failed for it.
   */
  async retire (): Promise<void> {
    if (this.state !== 'open') return
    this.state = 'retiring'
    const idle = new Promise<void>((resolve) => { this.retired = resolve })
    this.checkRetired()
    await idle
    await this.close('flush')
  }

  private checkRetired (): void {
    if (this.users > 0 || this.queued > 0) return
    for (const ep of this.set.all()) if (ep.inflight > 0 || ep.held > 0) return
    const done = this.retired
    this.retired = undefined
    done?.()
  }

  private drainQueue (): void {
    if (this.draining) { this.drainAgain = true; return }
    this.draining = true
    try {
      do {
        this.drainAgain = false
        this.drainPass()
      } while (this.drainAgain && this.queued > 0)
    } finally {
      this.draining = false
    }
  }

  /**
   * Hands free slots to queued entries in queue order, lane by lane: an entry whose lane has no free slot
   * blocks that lane for the rest of the pass (its later entries would not get one either), not the
   * others; the pass ends once every lane is blocked. Without splits there is one lane: plain FIFO.
   */
  private drainPass (): void {
    if (this.queued === 0) return
    const now = Date.now()
    const q = this.queue
    let blocked: Set<Subset | undefined> | undefined
    for (let i = this.head; i < q.length && this.queued > 0; i++) {
      const entry = q[i]!
      const w = entry.waiter
      if (w === undefined) continue
      if (entry.sticky !== undefined) {
        // A sticky request waits for its own endpoint and holds up no one else in its lane.
        const pin = this.repin(entry, now)
        if (pin === undefined || pin.inflight >= this.cfg.pool.maxConnections) continue
        entry.waiter = undefined
        this.dequeued(entry)
        pin.inflight++
        w.onSlot(pin, false)
        continue
      }
      if (blocked?.has(entry.subset) === true) continue
      const ep = this.balancer.pick(this.cfg.pool.maxConnections, now, entry.exclude, undefined, entry.subset)
      if (ep === undefined) {
        // A retry that excludes an endpoint says nothing about the lane's other entries.
        if (entry.exclude !== undefined) continue
        // One lane and no sticky entry (no split: every queue): it is blocked, the pass is over. This runs
        // on every slot released while requests queue, so no Set is made for it.
        if (this.lanes.size <= 1 && this.stickyQueued === 0) break
        ;(blocked ??= new Set()).add(entry.subset)
        if (blocked.size >= this.lanes.size && this.stickyQueued === 0) break
        continue
      }
      entry.waiter = undefined
      this.dequeued(entry)
      ep.inflight++
      w.onSlot(ep, false)
    }
    // Served entries at the head go; the array is compacted as shift() would have.
    this.peek()
    this.compact()
  }

  /** First live entry, dropping cancelled and served ones. */
  private peek (): QueueEntry | undefined {
    while (this.head < this.queue.length) {
      const e = this.queue[this.head]!
      if (e.waiter !== undefined) return e
      this.head++
    }
    this.compact()
    return undefined
  }

  private shift (entry: QueueEntry): void {
    this.head++
    this.dequeued(entry)
    this.compact()
  }

  private compact (): void {
    if (this.head > 1024 && this.head * 2 > this.queue.length) {
      this.queue = this.queue.slice(this.head)
      this.head = 0
    } else if (this.head === this.queue.length) {
      this.queue.length = 0
      this.head = 0
    }
  }

  private armTimer (): void {
    const entry = this.peek()
    if (entry === undefined) { this.timer = undefined; return }
    this.timer = setTimeout(() => this.expire(), Math.max(1, entry.deadline - Date.now()))
    this.timer.unref()
  }

  private expire (): void {
    const now = Date.now()
    for (let e = this.peek(); e !== undefined && e.deadline <= now; e = this.peek()) {
      const w = e.waiter!
      this.shift(e)
      w.onNoSlot(new FerryError('FERRY_ERR_QUEUE_TIMEOUT', `upstream ${this.name}: no free connection within queueTimeoutMs ${this.cfg.pool.queueTimeoutMs}`))
    }
    this.armTimer()
  }

  labelled (): Array<{ labels: Labels, healthy: boolean }> {
    return this.set.labelled(Date.now())
  }

  /** Queue depth and open connections, counting those of `replaced` instances (they serve the requests that started on them). */
  collect (replaced: readonly Upstream[]): void {
    let queued = this.queueDepth
    let connected = 0
    for (const ep of this.set.all()) connected += ep.connected
    for (const r of replaced) {
      if (!(r instanceof HttpUpstream)) continue
      queued += r.queueDepth
      for (const ep of r.set.all()) connected += ep.connected
    }
    this.metrics.upstreamQueueDepth.labels(this.name).set(queued)
    this.set.collect()
    this.metrics.upstreamConnections.labels('upstream', 'http', this.name).set(connected)
  }

  status (): object {
    return {
      name: this.name,
      protocol: 'http',
      balance: this.cfg.balance,
      maxConnectionsPerEndpoint: this.cfg.pool.maxConnections,
      queued: this.queued,
      queueLimit: this.cfg.pool.queueLimit,
      whenAllUnhealthy: this.cfg.whenAllUnhealthy,
      source: this.set.sourceStatus(),
      tls: this.tls?.status() ?? null,
      longHeld: this.cfg.pool.longHeld.maxConnections,
      endpoints: this.set.status((ep) => ({ inflight: ep.inflight, held: ep.held, connected: ep.connected })),
    }
  }

  /**
   * The gateway stops (or a refused reload discards it): 'flush' lets in-flight requests finish (undici
   * close), 'abort' destroys sockets now. Either way queued requests are answered 503.
   */
  async close (kind: 'flush' | 'abort'): Promise<void> {
    if (this.state === 'closed') return
    this.state = 'closed'
    this.placement?.stop()
    if (this.timer !== undefined) clearTimeout(this.timer)
    this.timer = undefined
    for (let e = this.peek(); e !== undefined; e = this.peek()) {
      const w = e.waiter!
      this.shift(e)
      w.onNoSlot(new FerryError('FERRY_ERR_QUEUE_FULL', `upstream ${this.name} is shutting down`))
    }
    // A retire() still waiting ends with this close.
    const done = this.retired
    this.retired = undefined
    done?.()
    await this.set.close(kind)
  }
}
