import type { Logger } from 'pino'
import { FerryError } from '../errors.js'
import { parseEndpoint, type Endpoint } from '../config/load.js'
import type { EndpointSource, SourceEndpoint } from '../discovery/source.js'
import { labelsText, type Labels } from '../config/labels.js'
import type { Metrics } from '../observability/metrics.js'
import type { Balanced, EndpointList } from '../routing/balancer.js'
import type { AdminView, DrainableEndpoints } from '../drain/endpoint-drain.js'
import { ActiveHealth, type PassiveHealth } from './health.js'

/** Active health checks of an upstream (config `healthCheck`). */
export interface HealthCheckConfig {
  readonly intervalMs: number
  readonly timeoutMs: number
  readonly healthyThreshold: number
  readonly unhealthyThreshold: number
  readonly http?: { readonly path: string, readonly expectStatus: readonly number[] } | undefined
}

/** What the set needs of an endpoint of any upstream kind. */
export interface SetMember extends Balanced {
  readonly address: string
  readonly endpoint: Endpoint
  readonly passive: PassiveHealth
  /** Set by the EndpointSet when the upstream has active health checks. */
  checked: ActiveHealth | undefined
  /** Set by the EndpointSet from its source (and updated when the source's labels for the address change). */
  labels: Labels
}

/** Healthy by both passive ejection and active checks (a member still `starting` its checks is not). */
export function healthyAt (e: SetMember, now: number): boolean {
  return e.passive.acceptsAt(now) && (e.checked === undefined || e.checked.up)
}

/**
 * How one upstream kind makes, drains and closes its endpoints: the only code that touches their
 * pools, links and sockets. The set decides when.
 */
export interface MemberKind<E extends SetMember> {
  create: (endpoint: Endpoint) => E
  /** Removed from the set: take no new work; what it carries finishes (pool closes after in-flight requests, links GOAWAY). */
  retire: (e: E) => void
  /** A retired member carries nothing any more. */
  idle: (e: E) => boolean
  /** Releases what the member still holds ('flush': after what is in flight; 'abort': now). */
  close: (e: E, kind: 'flush' | 'abort') => Promise<void>
  /** One active health check of `e`; resolves when it passed, rejects (with the reason) when not. */
  probe: (e: E, timeoutMs: number) => Promise<void>
  /** The set changed (new members may take work now: wake waiters). */
  changed?: () => void
  /**
   * Another set's active checks of the same address, used instead of probing it again (an HTTP
   * upstream's WebSocket twin reads the HTTP upstream's checks). Only without a `healthCheck` of its own.
   */
  sharedHealth?: (address: string) => ActiveHealth | undefined
}

/**
 * A member's row in /status: active (takes new work when healthy), draining (leaving: the operator
 * drains it, its source removed it, or it fails its health, and something is still open on it),
 * drained (leaving, nothing left on it). See src/drain/endpoint-drain.ts.
 */
export type MemberState = 'active' | 'draining' | 'drained'

/** How often draining members are looked at (a coarse timer: draining takes as long as sessions last). */
const DRAIN_CHECK_MS = 250

/**
 * The endpoints of one upstream, following its source: added addresses become members (and take work
 * once healthy), removed ones are retired and drain, then are closed. Runs the active health checks
 * (one interval timer for the set). The balancers of the upstream read `active` through EndpointList;
 * `generation` changes with every new `active` array (never mutated in place). A member the operator
 * drains (admin state `drain`, read from the bound AdminView) stays in the set, checked, but out of
 * `active`: nothing new is placed on it, not even in panic or by an affinity record.
 */
export class EndpointSet<E extends SetMember> implements EndpointList<E>, DrainableEndpoints {
  /** Members that take new work: in the source's set and not drained by the operator. */
  active: readonly E[] = []
  generation = 0
  /** Removed from the source's set, finishing what they carry. */
  private readonly draining = new Set<E>()
  /** Every member in the source's set, held by the operator or not. */
  private readonly byAddr = new Map<string, E>()
  private admin: AdminView | undefined
  private unsubscribe: (() => void) | undefined
  private checkTimer: NodeJS.Timeout | undefined
  private drainTimer: NodeJS.Timeout | undefined
  private readonly probing = new Set<E>()
  private state: 'open' | 'retiring' | 'closed' = 'open'
  private idleWaiters: Array<() => void> = []

  constructor (
    readonly upstream: string,
    readonly source: EndpointSource,
    private readonly kind: MemberKind<E>,
    private readonly healthCheck: HealthCheckConfig | undefined,
    private readonly log: Logger,
    private readonly metrics: Metrics,
  ) {
    this.unsubscribe = source.subscribe((endpoints) => { this.apply(endpoints) })
    if (healthCheck !== undefined) {
      this.checkTimer = setInterval(() => { this.checkAll() }, healthCheck.intervalMs)
      this.checkTimer.unref()
    }
  }

  get size (): number {
    return this.active.length
  }

  /** The active member at `address` (`host:port`), if any: not one the operator drains (a placement must not go there). */
  get (address: string): E | undefined {
    const e = this.byAddr.get(address)
    return e === undefined || this.admin?.held(address) === true ? undefined : e
  }

  /** The member at `address` while it is in the source's set, drained by the operator or not. */
  member (address: string): E | undefined {
    return this.byAddr.get(address)
  }

  /** Every address with a member: in the source's set, or removed and finishing. */
  * addresses (): Iterable<string> {
    yield * this.byAddr.keys()
    for (const e of this.draining) if (!this.byAddr.has(e.address)) yield e.address
  }

  /** What the members at `address` still carry (in the set or removed and finishing). */
  carried (address: string): number {
    let n = this.byAddr.get(address)?.inflight ?? 0
    for (const e of this.draining) if (e.address === address) n += e.inflight
    return n
  }

  /**
   * The member at `address` is ejected or checked down while another member that takes new work is
   * healthy (so its sessions have somewhere to go). One still `starting` its checks is not: it is new.
   */
  unhealthy (address: string, now: number): boolean {
    const e = this.byAddr.get(address)
    if (e === undefined || (e.passive.acceptsAt(now) && e.checked?.state !== 'down')) return false
    return this.active.some((o) => o !== e && healthyAt(o, now))
  }

  /** Reads the operator's intent from `view` from now on (see src/drain/endpoint-drain.ts). */
  bindAdmin (view: AdminView): void {
    this.admin = view
    this.adminChanged()
  }

  /** The operator's intent changed: members it drains leave `active` (the balancers), members made ready come back. */
  adminChanged (): void {
    const next = this.takingWork()
    if (next.length === this.active.length && next.every((e, i) => e === this.active[i])) return
    this.active = next
    this.generation++
    this.kind.changed?.()
  }

  private takingWork (): E[] {
    const admin = this.admin
    const all = [...this.byAddr.values()]
    return admin === undefined ? all : all.filter((e) => !admin.held(e.address))
  }

  /** Some active member is healthy at `now` (false: no members, or every one ejected or failing checks). */
  anyHealthy (now: number): boolean {
    return this.active.some((e) => healthyAt(e, now))
  }

  /**
   * Why new work (a request, session or connection) is refused at once: the set is empty, or no member
   * is healthy and the upstream's `whenAllUnhealthy` is `fail`. Counted; undefined when work may go on.
   */
  refusal (now: number, whenAllUnhealthy: 'panic' | 'fail'): FerryError | undefined {
    if (this.size > 0 && (whenAllUnhealthy === 'panic' || this.anyHealthy(now))) return undefined
    this.metrics.noHealthyEndpoint.labels(this.upstream).inc()
    return new FerryError('FERRY_ERR_NO_HEALTHY_ENDPOINT', this.size > 0
      ? `no endpoint of upstream ${this.upstream} is healthy (whenAllUnhealthy: fail)`
      : this.byAddr.size > 0
        ? `every endpoint of upstream ${this.upstream} is drained by the operator (POST /upstreams/NAME/endpoints/ADDR/ready brings one back)`
        : `upstream ${this.upstream} has no endpoints (its ${this.source.kind} source found none)`)
  }

  /** Every member: in the set (held by the operator or not) and removed ones finishing (for totals and close). */
  all (): E[] {
    return [...this.byAddr.values(), ...this.draining]
  }

  private apply (endpoints: readonly SourceEndpoint[]): void {
    if (this.state !== 'open') return
    // Members are keyed on the normalised `host:port` (`127.0.0.1:080` is `127.0.0.1:80`), so the source's
    // strings are normalised before they are compared with them.
    const next = new Map<string, { endpoint: Endpoint, labels: Labels }>()
    for (const { address: a, labels } of endpoints) {
      try {
        const endpoint = parseEndpoint(a)
        next.set(endpoint.address, { endpoint, labels })
      } catch {
        this.log.warn({ upstream: this.upstream, endpoint: a }, 'source gave an address that is not host:port; ignored')
      }
    }
    const added: E[] = []
    const removed: E[] = []
    // The same address with other labels (a registry entry replaced in place): the member stays, what it
    // carries stays; new work follows its new labels.
    let relabelled = 0
    for (const [a, { labels }] of next) {
      const e = this.byAddr.get(a)
      if (e === undefined || labelsText(e.labels) === labelsText(labels)) continue
      this.log.info({ upstream: this.upstream, endpoint: a, from: labelsText(e.labels), to: labelsText(labels) }, 'endpoint labels changed')
      e.labels = labels
      relabelled++
    }
    for (const [a, { endpoint, labels }] of next) {
      if (this.byAddr.has(a)) continue
      const e = this.kind.create(endpoint)
      e.labels = labels
      if (this.healthCheck !== undefined) e.checked = new ActiveHealth(this.upstream, e.address, this.healthCheck, this.log, this.metrics)
      else if (this.kind.sharedHealth !== undefined) e.checked = this.kind.sharedHealth(e.address)
      this.byAddr.set(e.address, e)
      added.push(e)
    }
    for (const [a, e] of this.byAddr) {
      if (next.has(a)) continue
      this.byAddr.delete(a)
      removed.push(e)
    }
    if (added.length === 0 && removed.length === 0) {
      if (relabelled > 0) { this.active = this.takingWork(); this.generation++ }
      return
    }
    this.active = this.takingWork()
    this.generation++
    for (const e of removed) this.retireMember(e)
    if (added.length > 0) this.metrics.discoveryChanges.labels(this.upstream, 'added').inc(added.length)
    if (removed.length > 0) this.metrics.discoveryChanges.labels(this.upstream, 'removed').inc(removed.length)
    if (this.generation > 1 || removed.length > 0) {
      this.log.info({ upstream: this.upstream, source: this.source.kind, added: added.map((e) => e.address), removed: removed.map((e) => e.address), endpoints: this.active.length }, 'upstream endpoints changed')
    }
    for (const e of added) this.check(e)
    this.kind.changed?.()
    this.admin?.membershipChanged()
  }

  private retireMember (e: E): void {
    this.draining.add(e)
    this.kind.retire(e)
    if (this.drainTimer === undefined) {
      this.drainTimer = setInterval(() => { this.reapDrained() }, DRAIN_CHECK_MS)
      this.drainTimer.unref()
    }
    this.reapDrained()
  }

  private reapDrained (): void {
    for (const e of [...this.draining]) {
      if (!this.kind.idle(e)) continue
      this.draining.delete(e)
      void this.kind.close(e, 'flush').catch((err: unknown) => { this.log.warn({ err, endpoint: e.address }, 'closing a drained endpoint failed') })
      // Its series go away with it, unless the address came back meanwhile (a new member owns them).
      if (!this.byAddr.has(e.address)) {
        this.metrics.endpointUp.remove(this.upstream, e.address)
        this.metrics.endpointCheckedUp.remove(this.upstream, e.address)
      }
      this.log.info({ upstream: this.upstream, endpoint: e.address }, 'removed endpoint drained')
    }
    if (this.draining.size === 0) {
      if (this.drainTimer !== undefined) clearInterval(this.drainTimer)
      this.drainTimer = undefined
      const w = this.idleWaiters
      this.idleWaiters = []
      for (const fn of w) fn()
    }
  }

  /** Members the operator drains are checked too: their health shows, and holds when they are made ready. */
  private checkAll (): void {
    for (const e of this.byAddr.values()) this.check(e)
  }

  /**
   * One health check of `e` now, unless one is still under way (a slow endpoint is not probed twice at
   * once). Also for the upstream kind: a mux endpoint whose first link became ready is checked at once
   * rather than at the next interval.
   */
  check (e: E): void {
    const hc = this.healthCheck
    if (hc === undefined || this.probing.has(e) || this.state === 'closed') return
    this.probing.add(e)
    const started = performance.now()
    let timer: NodeJS.Timeout | undefined
    const deadline = new Promise<never>((_resolve, reject) => {
      timer = setTimeout(() => { reject(new Error(`no answer within timeoutMs ${hc.timeoutMs}`)) }, hc.timeoutMs)
    })
    void Promise.race([this.kind.probe(e, hc.timeoutMs), deadline]).then(
      () => undefined,
      (err: unknown) => err instanceof Error ? err.message : String(err),
    ).then((error) => {
      clearTimeout(timer)
      this.probing.delete(e)
      if (this.byAddr.get(e.address) !== e) return // removed meanwhile
      const wasUp = e.checked!.up
      e.checked!.record(error, Math.round(performance.now() - started))
      // A passed check ends a passive ejection (Envoy's successful_active_health_check_uneject_host): the
      // check proved what the ejection waits to find out.
      if (error === undefined && e.passive.health === 'ejected') e.passive.succeeded('health check passed')
      if (!wasUp && e.checked!.up) this.kind.changed?.()
    })
  }

  /** A reload replaced the upstream: every member drains; resolves once all are idle and closed. */
  async retireAll (): Promise<void> {
    if (this.state !== 'open') return
    this.state = 'retiring'
    this.stopWatching()
    const members = [...this.byAddr.values()]
    this.active = []
    this.byAddr.clear()
    this.generation++
    for (const e of members) this.retireMember(e)
    if (this.draining.size === 0) return
    await new Promise<void>((resolve) => { this.idleWaiters.push(resolve) })
  }

  private stopWatching (): void {
    this.unsubscribe?.()
    this.unsubscribe = undefined
    if (this.checkTimer !== undefined) clearInterval(this.checkTimer)
    this.checkTimer = undefined
  }

  /** Closes every member, active and draining. */
  async close (kind: 'flush' | 'abort'): Promise<void> {
    if (this.state === 'closed') return
    this.state = 'closed'
    this.stopWatching()
    if (this.drainTimer !== undefined) clearInterval(this.drainTimer)
    this.drainTimer = undefined
    const members = this.all()
    this.draining.clear()
    await Promise.all(members.map(async (e) => { await this.kind.close(e, kind).catch(() => {}) }))
    const w = this.idleWaiters
    this.idleWaiters = []
    for (const fn of w) fn()
  }

  /** The active members' labels and whether each takes new work now (a route split's /status). */
  labelled (now: number): Array<{ labels: Labels, healthy: boolean }> {
    return this.active.map((e) => ({ labels: e.labels, healthy: e.acceptsAt(now) }))
  }

  collect (): void {
    this.metrics.upstreamEndpoints.labels(this.upstream, 'active').set(this.active.length)
    this.metrics.upstreamEndpoints.labels(this.upstream, 'held').set(this.byAddr.size - this.active.length)
    this.metrics.upstreamEndpoints.labels(this.upstream, 'draining').set(this.draining.size)
  }

  /**
   * /status rows: every member with its state (and, while it is leaving, its drain's progress), the
   * operator's intent (`admin`), its health and what `detail` adds (connections, links, streams).
   */
  status (detail: (e: E) => object): object[] {
    const now = Date.now()
    const row = (e: E, removed: boolean): object => {
      const drain = this.admin?.drain(e.address)
      const state: MemberState = drain?.state ?? (removed ? 'draining' : 'active')
      return {
        address: e.address,
        state,
        labels: e.labels,
        admin: this.admin?.held(e.address) === true ? 'drain' : 'ready',
        ...(drain !== undefined ? { drain } : {}),
        ...e.passive.status(now),
        ...(e.checked !== undefined ? e.checked.status() : {}),
        ...detail(e),
      }
    }
    return [...[...this.byAddr.values()].map((e) => row(e, false)), ...[...this.draining].map((e) => row(e, true))]
  }

  sourceStatus (): object {
    return this.source.status()
  }
}
