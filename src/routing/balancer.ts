import { labelsMatch, type Labels } from '../config/labels.js'

/**
 * Endpoint choice for one upstream. Policies see endpoints only through this narrow view, so HTTP pools
 * (and later mux link pools and TCP upstreams) share one implementation.
 */
export interface Balanced {
  /** Requests (or streams, or connections) this endpoint carries now. */
  readonly inflight: number
  /** Operator intent and passive health folded into one answer: may it take new work at `now`? */
  acceptsAt: (now: number) => boolean
  /** Stable identity for the 'hash' policy (`host:port`); without it the position in the list is used. */
  readonly address?: string
  /** The endpoint's labels (a route's split picks within the endpoints whose labels match a subset). */
  readonly labels?: Labels
}

/** The candidates of a pick narrowed to a label subset (a route split's choice, src/routing/split.ts). */
export interface LabelSelector {
  readonly labels: Labels
}

/** `e` is a candidate of `within` (every endpoint is when there is no subset). */
export function within (e: Balanced, subset: LabelSelector | undefined): boolean {
  return subset === undefined || labelsMatch(subset.labels, e.labels)
}

export type BalancePolicy = 'round-robin' | 'least-connections' | 'hash'

/** Endpoints to skip: the one that just failed (HTTP retry) or every one already tried (TCP failover). */
export type Exclusion<E> = E | ReadonlySet<E> | undefined

/** 32-bit FNV-1a of a string: the affinity key (e.g. a client IP) for the 'hash' policy, computed once per connection. */
export function hashKey (s: string): number {
  let h = 0x811c9dc5
  for (let i = 0; i < s.length; i++) {
    h ^= s.charCodeAt(i)
    h = Math.imul(h, 0x01000193)
  }
  return h >>> 0
}

/** murmur3's 32-bit finaliser: spreads (key ^ endpoint seed) into a rendezvous weight. */
export function mix (h: number): number {
  h ^= h >>> 16
  h = Math.imul(h, 0x85ebca6b)
  h ^= h >>> 13
  h = Math.imul(h, 0xc2b2ae35)
  h ^= h >>> 16
  return h >>> 0
}

/**
 * A live endpoint list (an upstream's EndpointSet): `generation` changes whenever `active` is replaced,
 * so a balancer recomputes what it derives from the list (hash seeds) only then.
 */
export interface EndpointList<E> {
  readonly active: readonly E[]
  readonly generation: number
}

export interface BalancerOptions {
  /**
   * What to do when no endpoint accepts (all ejected or failing checks): `true` (panic, the default):
   * use them all; `false`: pick nothing (the caller fails fast).
   */
  readonly panic?: boolean
  /**
   * 'hash' with bounded load (Mirrokni et al., "consistent hashing with bounded loads"): an endpoint
   * already carrying more than `factor` × the average load (counting the new one) is passed over for the
   * next in the key's rendezvous order. Undefined: no bound.
   */
  readonly boundedLoadFactor?: number
}

export class Balancer<E extends Balanced> {
  private next = 0
  private seeds = new Uint32Array(0)
  private seededGeneration = -1
  private readonly list: EndpointList<E>
  private readonly panic: boolean
  private readonly bound: number | undefined

  constructor (endpoints: readonly E[] | EndpointList<E>, private readonly policy: BalancePolicy, opts: BalancerOptions = {}) {
    this.list = Array.isArray(endpoints) ? { active: endpoints as readonly E[], generation: 0 } : endpoints as EndpointList<E>
    this.panic = opts.panic ?? true
    this.bound = opts.boundedLoadFactor
  }

  private get endpoints (): readonly E[] {
    const l = this.list
    if (l.generation !== this.seededGeneration) {
      this.seeds = Uint32Array.from(l.active, (e, i) => hashKey(e.address ?? `#${i}`))
      this.seededGeneration = l.generation
      if (this.next >= l.active.length) this.next = 0
    }
    return l.active
  }

  /**
   * Picks an endpoint with `inflight < capacity`, skipping `exclude`. Ejected endpoints are used only when
   * every endpoint is ejected ("panic": serving on a maybe-bad endpoint beats refusing everything), unless
   * the balancer was built with `panic: false`.
   * 'hash' needs `key` (see hashKey): rendezvous hashing, so a key keeps its endpoint while that endpoint
   * is healthy, and only the keys of an endpoint that goes away move; without a key it is round-robin.
   * `subset`: only endpoints whose labels match are candidates (the policy, panic and the load bound all
   * apply among them), for a route split that chose this subset.
   */
  pick (capacity: number, now: number, exclude?: Exclusion<E>, key?: number, subset?: LabelSelector): E | undefined {
    return this.scan(capacity, now, exclude, false, key, subset) ?? (this.panic ? this.scan(capacity, now, exclude, true, key, subset) : undefined)
  }

  /** Some endpoint (not excluded, of `subset`) accepts new work at `now`: false means the next pick is panic or nothing. */
  anyAccepts (now: number, exclude?: Exclusion<E>, subset?: LabelSelector): boolean {
    // A loop, not some(): a full pool's every failed pick (each slot released while requests queue) asks this.
    for (const e of this.endpoints) if (!this.excluded(e, exclude) && within(e, subset) && e.acceptsAt(now)) return true
    return false
  }

  private excluded (e: E, exclude: Exclusion<E>): boolean {
    if (exclude === undefined) return false
    return exclude instanceof Set ? exclude.has(e) : e === exclude
  }

  private scan (capacity: number, now: number, exclude: Exclusion<E>, panic: boolean, key: number | undefined, subset: LabelSelector | undefined): E | undefined {
    const endpoints = this.endpoints
    const n = endpoints.length
    if (n === 0) return undefined
    if (panic && this.anyAccepts(now, exclude, subset)) return undefined
    const hashing = this.policy === 'hash' && key !== undefined
    // Bounded load: the ceiling any one endpoint may carry, from the load of the candidates.
    let ceiling = Infinity
    if (hashing && this.bound !== undefined) {
      let load = 0
      let m = 0
      for (const e of endpoints) {
        if (this.excluded(e, exclude) || !within(e, subset) || (!panic && !e.acceptsAt(now))) continue
        load += e.inflight
        m++
      }
      if (m > 0) ceiling = Math.ceil(this.bound * (load + 1) / m)
    }
    const start = this.next % n
    let best: E | undefined
    let bestIdx = 0
    let bestWeight = -1
    // Hashing with a bound: the best-weighted endpoint over the ceiling, in case every one is over it.
    let over: E | undefined
    let overWeight = -1
    for (let i = 0; i < n; i++) {
      const idx = (start + i) % n
      const e = endpoints[idx]!
      if (this.excluded(e, exclude) || e.inflight >= capacity || !within(e, subset)) continue
      if (!panic && !e.acceptsAt(now)) continue
      if (hashing) {
        const w = mix(key ^ this.seeds[idx]!)
        if (e.inflight >= ceiling) {
          if (w > overWeight) { over = e; overWeight = w }
          continue
        }
        if (w > bestWeight || (w === bestWeight && idx < bestIdx)) { best = e; bestIdx = idx; bestWeight = w }
        continue
      }
      if (this.policy !== 'least-connections') { best = e; bestIdx = idx; break }
      if (best === undefined || e.inflight < best.inflight) { best = e; bestIdx = idx }
    }
    if (hashing) return best ?? over
    if (best !== undefined) this.next = (bestIdx + 1) % n
    return best
  }
}
