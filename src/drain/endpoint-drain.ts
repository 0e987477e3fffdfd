import type { Logger } from 'pino'
import type { Metrics } from '../observability/metrics.js'

/**
 * Endpoint drain (docs/endpoint-drain.md). An endpoint leaves when the operator drains it (POST
 * /upstreams/NAME/endpoints/ADDR/drain), when its source removed it, or when it fails its health while
 * another endpoint is healthy. New work goes elsewhere at once (its endpoint set keeps an operator-drained
 * endpoint out of the balancers; removed and unhealthy ones already were); its sessions are moved off in
 * paced waves, never all at once, within the upstream's budget (config `upstreams.NAME.drain`).
 *
 *   active ──(operator drain | removed | unhealthy)──▶ draining ──nothing left open──▶ drained
 *     ▲                                                   │                               │
 *     └──────(ready | back in the set | healthy again; a removed one goes when released)──┘
 *
 * One EndpointDrainer per gateway: it holds the operator's intent per upstream + address (HAProxy's
 * admin state, `ready | drain`: operator intent, kept apart from health), owns the one timer and the
 * per-upstream budgets, and reaches the upstreams only through EndpointCarrier.
 */

/** Operator intent for one endpoint (HAProxy's words; `maint` is not offered). */
export type AdminState = 'ready' | 'drain'
/** Why an endpoint is leaving. */
export type DrainCause = 'operator' | 'removed' | 'unhealthy'
/** What /status and metrics say of an endpoint. */
export type EndpointState = 'active' | 'draining' | 'drained'

/** How fast sessions leave the endpoints of one upstream (config `upstreams.NAME.drain`). */
export interface EndpointDrainBudget {
  readonly maxMigrationsPerSec: number
  readonly spreadMs: number
}

/** One endpoint as the drainer sees it: its address and everything it still has open. */
export interface CarriedEndpoint {
  readonly address: string
  /** Sessions, handshakes, closing sockets, requests or connections still open on it: 0 is drained. */
  readonly inflight: number
}

/** The endpoint set of one upstream instance, as far as a drain needs it (EndpointSet implements it). */
export interface DrainableEndpoints {
  /** The endpoint at `address` while it is in the source's set (ready or held by the operator). */
  member: (address: string) => CarriedEndpoint | undefined
  /** Every address it still has a member at: in the set, or removed and finishing. */
  addresses: () => Iterable<string>
  /** What the members at `address` still have open (0 when none). */
  carried: (address: string) => number
  /** The member at `address` is not healthy (ejected or failing checks) while another member that takes new work is. */
  unhealthy: (address: string, now: number) => boolean
  /** Reads the operator's intent from `view` from now on (held members leave the balancers). */
  bindAdmin: (view: AdminView) => void
  /** The operator's intent changed: members drained by the operator take no new work, members made ready again do. */
  adminChanged: () => void
}

/**
 * What the drainer needs of one upstream instance, whatever its kind. An HTTP upstream and its
 * WebSocket twin are two carriers of one upstream name; a reload's retired instance stays one until
 * its last user is gone.
 */
export interface EndpointCarrier {
  /** The upstream's name in the config (the admin API's NAME); an HTTP upstream's twin answers its HTTP upstream's. */
  readonly upstream: string
  readonly endpoints: DrainableEndpoints
  /** Why this kind moves sessions off an endpoint (empty: it has none to move; what it carries ends by itself). */
  readonly movesFor: ReadonlySet<DrainCause>
  /** Its pacing (config), for kinds that move sessions. */
  readonly budget: EndpointDrainBudget | undefined
  /** Sessions on the endpoint(s) at `address` that can be moved now. */
  sessionsOn: (address: string) => number
  /** Moves up to `n` sessions off `address` (today: closes them 1012 with endpointDrainReason()); returns how many. */
  moveSessionsOff: (address: string, n: number) => number
}

/** What an endpoint set reads of the operator's intent and of its endpoints' drains. */
export interface AdminView {
  /** The operator drains the endpoint at `address`: it takes no new work. */
  held: (address: string) => boolean
  /** The drain of the endpoint at `address`, while it is leaving. */
  drain: (address: string) => EndpointDrainStatus | undefined
  /** The set's membership changed (its source added or removed endpoints): a removed one's drain starts now. */
  membershipChanged: () => void
}

/** /status of a leaving endpoint. */
export interface EndpointDrainStatus {
  state: 'draining' | 'drained'
  cause: DrainCause
  startedAt: string
  drainedAt: string | null
  sessionsAtStart: number
  /** Sessions moved off it by this drain. */
  moved: number
  sessionsLeft: number
  /** Everything still open on it (sessions, handshakes, closing sockets, HTTP requests, TCP connections). */
  open: number
  /** The pace of its moves now (sessions per second; its upstream's budget is shared by its leaving endpoints). */
  ratePerSec: number
}

/** The answer to an operator's drain or ready. */
export type AdminChange =
  | { ok: true, changed: boolean, upstream: string, endpoint: string, admin: AdminState, state: EndpointState, drain: EndpointDrainStatus | null }
  | { ok: false, code: 'FERRY_ERR_UNKNOWN_UPSTREAM' | 'FERRY_ERR_UNKNOWN_ENDPOINT', message: string }

/** While sessions are being moved: a wave every this long. */
const MOVE_TICK_MS = 100
/** Otherwise: how often health and membership are looked at (a health-driven drain starts within this). */
const WATCH_MS = 500
/** The most a budget may bank: this much of a second's rate (so no window of 1 s sees more than 1.1 × the rate). */
const BURST_S = 0.1
/** A moved session's retry hint is between 0 and this (jittered, so one wave's reconnects spread out). */
const RETRY_SPREAD_MS = 1000

const STATE_VALUE: Record<EndpointState, number> = { active: 0, draining: 1, drained: 2 }

/** The close reason (with code 1012) of a session moved off a leaving endpoint: a reconnect hint in `retry-after-ms=N`, the convention of Ferry's 1013 refusals. */
export function endpointDrainReason (): string {
  return `endpoint draining: reconnect; retry-after-ms=${Math.floor(Math.random() * RETRY_SPREAD_MS)}`
}

interface Episode {
  readonly upstream: string
  readonly address: string
  cause: DrainCause
  state: 'draining' | 'drained'
  readonly startedAt: number
  drainedAt: number
  sessionsAtStart: number
  /** The most sessions seen on it during this drain (its pace is set from it). */
  peak: number
  moved: number
  sessionsLeft: number
  open: number
  rate: number
  allowance: number
}

interface Registered {
  current: boolean
}

export class EndpointDrainer {
  private readonly carriers = new Map<EndpointCarrier, Registered>()
  /** Operator intent: upstream → addresses drained by the operator (→ since when). Absent: ready. */
  private readonly intents = new Map<string, Map<string, number>>()
  /** Leaving endpoints, by upstream + address. */
  private readonly episodes = new Map<string, Episode>()
  /** Each upstream's allowance of moves (token bucket at its maxMigrationsPerSec). */
  private readonly budgets = new Map<string, number>()
  /** (upstream, endpoint) pairs with a state series, so those that went away are removed. */
  private series = new Map<string, [string, string]>()
  private timer: NodeJS.Timeout | undefined
  private lastTick = performance.now()
  private closed = false

  constructor (private readonly log: Logger, private readonly metrics: Metrics) {}

  /** A new upstream instance: it reads the operator's intent from now on. */
  attach (c: EndpointCarrier): void {
    this.carriers.set(c, { current: true })
    c.endpoints.bindAdmin(this.view(c.upstream))
    this.arm(0)
  }

  /** A reload replaced or removed the instance: it keeps finishing what it carries (and what leaves it still moves). */
  retire (c: EndpointCarrier): void {
    const r = this.carriers.get(c)
    if (r !== undefined) r.current = false
    this.arm(0)
  }

  /** The instance is closed. */
  detach (c: EndpointCarrier): void {
    this.carriers.delete(c)
  }

  private view (upstream: string): AdminView {
    return {
      held: (address) => this.intents.get(upstream)?.has(address) === true,
      drain: (address) => {
        const e = this.episodes.get(key(upstream, address))
        return e === undefined ? undefined : this.episodeStatus(e)
      },
      membershipChanged: () => { this.arm(0) },
    }
  }

  private of (upstream: string, currentOnly: boolean): EndpointCarrier[] {
    const out: EndpointCarrier[] = []
    for (const [c, r] of this.carriers) if (c.upstream === upstream && (r.current || !currentOnly)) out.push(c)
    return out
  }

  /**
   * The operator's intent for one endpoint: `drain` takes it out of new work at once and moves its
   * sessions off, paced; `ready` brings it back. Asking twice changes nothing (`changed: false`).
   * `address` is normalised `host:port`.
   */
  setAdmin (upstream: string, address: string, admin: AdminState): AdminChange {
    const current = this.of(upstream, true)
    if (current.length === 0) return { ok: false, code: 'FERRY_ERR_UNKNOWN_UPSTREAM', message: `no upstream named ${upstream}` }
    if (!current.some((c) => c.endpoints.member(address) !== undefined)) {
      return { ok: false, code: 'FERRY_ERR_UNKNOWN_ENDPOINT', message: `upstream ${upstream} has no endpoint ${address} (known: ${this.listed(current).join(', ') || 'none'})` }
    }
    let intents = this.intents.get(upstream)
    const was: AdminState = intents?.has(address) === true ? 'drain' : 'ready'
    if (was !== admin) {
      if (admin === 'drain') {
        if (intents === undefined) { intents = new Map(); this.intents.set(upstream, intents) }
        intents.set(address, Date.now())
      } else {
        intents!.delete(address)
        if (intents!.size === 0) this.intents.delete(upstream)
      }
      for (const c of this.of(upstream, false)) c.endpoints.adminChanged()
      this.log.info({ upstream, endpoint: address, admin, from: was }, admin === 'drain' ? 'endpoint drained by the operator: no new work, its sessions move off' : 'endpoint made ready by the operator: it takes new work')
      this.tick()
    }
    const e = this.episodes.get(key(upstream, address))
    return { ok: true, changed: was !== admin, upstream, endpoint: address, admin, state: e?.state ?? 'active', drain: e === undefined ? null : this.episodeStatus(e) }
  }

  private listed (carriers: EndpointCarrier[]): string[] {
    const out = new Set<string>()
    for (const c of carriers) for (const a of c.endpoints.addresses()) if (c.endpoints.member(a) !== undefined) out.add(a)
    return [...out]
  }

  private arm (delayMs: number): void {
    if (this.closed) return
    if (this.timer !== undefined) clearTimeout(this.timer)
    this.timer = setTimeout(() => { this.timer = undefined; this.tick() }, delayMs)
    this.timer.unref()
  }

  /** Why the endpoint at `address` of `upstream` is leaving now, if it is (and a drain follows it). */
  private causeOf (upstream: string, address: string, current: EndpointCarrier[], all: EndpointCarrier[], now: number): DrainCause | undefined {
    if (this.intents.get(upstream)?.has(address) === true) return 'operator'
    // An upstream the config no longer has: its sessions continue until they end (as before).
    if (current.length === 0) return undefined
    if (!current.some((c) => c.endpoints.member(address) !== undefined)) {
      return all.some((c) => c.movesFor.has('removed')) ? 'removed' : undefined
    }
    if (current.some((c) => c.movesFor.has('unhealthy') && c.endpoints.unhealthy(address, now))) return 'unhealthy'
    return undefined
  }

  /** One pass: causes looked at, intents of gone endpoints forgotten, drains started, paced, finished. */
  private tick (): void {
    if (this.closed) return
    const t = performance.now()
    const dt = Math.min(1000, Math.max(0, t - this.lastTick))
    this.lastTick = t
    const now = Date.now()
    let moving = false
    const names = new Set<string>([...this.intents.keys()])
    for (const c of this.carriers.keys()) names.add(c.upstream)
    for (const e of this.episodes.values()) names.add(e.upstream)
    for (const upstream of names) {
      const all = this.of(upstream, false)
      const current = all.filter((c) => this.carriers.get(c)!.current)
      const addresses = new Set<string>()
      for (const c of all) for (const a of c.endpoints.addresses()) addresses.add(a)
      this.forgetGone(upstream, addresses, current.length > 0)
      const budget = (current.find((c) => c.budget !== undefined) ?? all.find((c) => c.budget !== undefined))?.budget
      let bank = 0
      if (budget !== undefined) {
        const r = budget.maxMigrationsPerSec
        bank = Math.min((this.budgets.get(upstream) ?? 0) + dt * r / 1000, Math.max(1, r * BURST_S))
      }
      for (const address of new Set([...addresses, ...this.episodesOf(upstream)])) {
        const k = key(upstream, address)
        const cause = addresses.has(address) ? this.causeOf(upstream, address, current, all, now) : undefined
        let e = this.episodes.get(k)
        if (cause === undefined) {
          if (e !== undefined) this.end(e, addresses.has(address) ? 'it takes new work again' : 'released')
          continue
        }
        const movers = all.filter((c) => c.movesFor.has(cause))
        const sessions = (): number => movers.reduce((n, c) => n + c.sessionsOn(address), 0)
        if (e === undefined) e = this.start(upstream, address, cause, sessions(), budget)
        else if (e.cause !== cause) {
          this.log.info({ upstream, endpoint: address, from: e.cause, to: cause }, 'endpoint drain: cause changed')
          e.cause = cause
        }
        e.sessionsLeft = sessions()
        e.peak = Math.max(e.peak, e.sessionsLeft)
        if (budget !== undefined) e.rate = paceOf(budget, e.peak)
        if (e.sessionsLeft > 0 && budget !== undefined) {
          moving = true
          e.allowance = Math.min(e.allowance + dt * e.rate / 1000, Math.max(1, e.rate * BURST_S))
          const n = Math.floor(Math.min(e.allowance, bank))
          let moved = 0
          for (const c of movers) {
            if (moved >= n) break
            if (c.sessionsOn(address) > 0) moved += c.moveSessionsOff(address, n - moved)
          }
          if (moved > 0) {
            e.moved += moved
            e.allowance -= moved
            bank -= moved
            this.metrics.endpointDrainMoved.labels(upstream, cause).inc(moved)
            e.sessionsLeft = sessions()
          }
          // Sessions still in their handshake cannot move yet: no allowance is banked for them.
          if (moved < n) e.allowance = Math.min(e.allowance, 1)
        }
        e.open = all.reduce((n, c) => n + c.endpoints.carried(address), 0)
        this.to(e, e.open === 0 && e.sessionsLeft === 0 ? 'drained' : 'draining')
      }
      if (budget !== undefined) this.budgets.set(upstream, bank)
      if (all.length === 0 && !this.intents.has(upstream)) this.budgets.delete(upstream)
    }
    if (this.carriers.size > 0 || this.episodes.size > 0) this.arm(moving ? MOVE_TICK_MS : WATCH_MS)
  }

  private *episodesOf (upstream: string): Iterable<string> {
    for (const e of this.episodes.values()) if (e.upstream === upstream) yield e.address
  }

  /**
   * The operator's intent is kept across reloads and discovery changes while the endpoint stays: it is
   * forgotten once no instance of the upstream has anything at the address any more (it left the set
   * and what it carried is gone), or the config no longer has the upstream.
   */
  private forgetGone (upstream: string, addresses: Set<string>, configured: boolean): void {
    const intents = this.intents.get(upstream)
    if (intents === undefined) return
    for (const address of [...intents.keys()]) {
      if (configured && addresses.has(address)) continue
      intents.delete(address)
      this.log.info({ upstream, endpoint: address }, configured ? 'operator drain of an endpoint that left the upstream forgotten' : 'operator drain of an upstream the config no longer has forgotten')
    }
    if (intents.size === 0) this.intents.delete(upstream)
  }

  private start (upstream: string, address: string, cause: DrainCause, sessions: number, budget: EndpointDrainBudget | undefined): Episode {
    const e: Episode = {
      upstream, address, cause, state: 'draining', startedAt: Date.now(), drainedAt: 0,
      sessionsAtStart: sessions, peak: sessions, moved: 0, sessionsLeft: sessions, open: 0,
      rate: budget === undefined ? 0 : paceOf(budget, sessions), allowance: 0,
    }
    this.episodes.set(key(upstream, address), e)
    this.log.info({ upstream, endpoint: address, cause, sessions, ratePerSec: round(e.rate) }, 'endpoint draining: no new work, its sessions move off paced')
    return e
  }

  /** The one place an episode's state moves (logged). */
  private to (e: Episode, state: 'draining' | 'drained'): void {
    if (e.state === state) return
    e.state = state
    if (state === 'drained') {
      e.drainedAt = Date.now()
      this.log.info({ upstream: e.upstream, endpoint: e.address, cause: e.cause, moved: e.moved, seconds: round((e.drainedAt - e.startedAt) / 1000) }, 'endpoint drained: nothing left on it')
    } else {
      this.log.info({ upstream: e.upstream, endpoint: e.address, cause: e.cause }, 'endpoint draining again: something opened on it')
    }
  }

  private end (e: Episode, why: string): void {
    this.episodes.delete(key(e.upstream, e.address))
    this.metrics.endpointDrainRemaining.remove(e.upstream, e.address)
    this.log.info({ upstream: e.upstream, endpoint: e.address, cause: e.cause, moved: e.moved, why }, 'endpoint drain ended')
  }

  private episodeStatus (e: Episode): EndpointDrainStatus {
    const iso = (t: number): string | null => t > 0 ? new Date(t).toISOString() : null
    return {
      state: e.state, cause: e.cause, startedAt: iso(e.startedAt)!, drainedAt: iso(e.drainedAt),
      sessionsAtStart: e.sessionsAtStart, moved: e.moved, sessionsLeft: e.sessionsLeft, open: e.open, ratePerSec: round(e.rate),
    }
  }

  /** Scrape time: every endpoint's state, and the sessions left on leaving ones. */
  collect (): void {
    const seen = new Map<string, [string, string]>()
    for (const [c, r] of this.carriers) {
      for (const address of c.endpoints.addresses()) {
        const k = key(c.upstream, address)
        const e = this.episodes.get(k)
        const listed = r.current && c.endpoints.member(address) !== undefined
        // The current instance's view wins over a retired one's for the same address.
        if (seen.has(k) && e === undefined && !listed) continue
        seen.set(k, [c.upstream, address])
        this.metrics.endpointState.labels(c.upstream, address).set(STATE_VALUE[e?.state ?? (listed ? 'active' : 'draining')])
      }
    }
    for (const e of this.episodes.values()) this.metrics.endpointDrainRemaining.labels(e.upstream, e.address).set(e.sessionsLeft)
    for (const [k, [u, a]] of this.series) if (!seen.has(k)) this.metrics.endpointState.remove(u, a)
    this.series = seen
  }

  close (): void {
    this.closed = true
    if (this.timer !== undefined) clearTimeout(this.timer)
    this.timer = undefined
  }
}

function key (upstream: string, address: string): string {
  return `${upstream}\u0001${address}`
}

/** An endpoint's pace: its sessions evenly over spreadMs (at least 1/s), never above maxMigrationsPerSec. */
function paceOf (b: EndpointDrainBudget, sessions: number): number {
  const spread = b.spreadMs / 1000
  return spread > 0 ? Math.min(b.maxMigrationsPerSec, Math.max(1, sessions / spread)) : b.maxMigrationsPerSec
}

function round (n: number): number {
  return Math.round(n * 10) / 10
}

/**
 * A kind with no sessions to move (HTTP pools, TCP upstreams): an operator drain keeps new requests or
 * connections off the endpoint at once; those under way end by themselves, then it is drained.
 */
export function carrierWithoutSessions (upstream: string, endpoints: DrainableEndpoints): EndpointCarrier {
  return { upstream, endpoints, movesFor: new Set(), budget: undefined, sessionsOn: () => 0, moveSessionsOff: () => 0 }
}
