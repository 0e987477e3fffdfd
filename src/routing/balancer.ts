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
function mix (h: number): number {
  h ^= h >>> 16
  h = Math.imul(h, 0x85ebca6b)
  h ^= h >>> 13
  h = Math.imul(h, 0xc2b2ae35)
  h ^= h >>> 16
  return h >>> 0
}

export class Balancer<E extends Balanced> {
  private next = 0
  private readonly seeds: Uint32Array

  constructor (private readonly endpoints: readonly E[], private readonly policy: BalancePolicy) {
    this.seeds = Uint32Array.from(endpoints, (e, i) => hashKey(e.address ?? `#${i}`))
  }

  /**
   * Picks an endpoint with `inflight < capacity`, skipping `exclude`. Ejected endpoints are used only when
   * every endpoint is ejected ("panic": serving on a maybe-bad endpoint beats refusing everything).
   * 'hash' needs `key` (see hashKey): rendezvous hashing, so a key keeps its endpoint while that endpoint
   * is healthy, and only the keys of an endpoint that goes away move; without a key it is round-robin.
   */
  pick (capacity: number, now: number, exclude?: Exclusion<E>, key?: number): E | undefined {
    return this.scan(capacity, now, exclude, false, key) ?? this.scan(capacity, now, exclude, true, key)
  }

  private excluded (e: E, exclude: Exclusion<E>): boolean {
    if (exclude === undefined) return false
    return exclude instanceof Set ? exclude.has(e) : e === exclude
  }

  private scan (capacity: number, now: number, exclude: Exclusion<E>, panic: boolean, key: number | undefined): E | undefined {
    const n = this.endpoints.length
    if (panic && this.endpoints.some((e) => !this.excluded(e, exclude) && e.acceptsAt(now))) return undefined
    const hashing = this.policy === 'hash' && key !== undefined
    const start = this.next
    let best: E | undefined
    let bestIdx = 0
    let bestWeight = -1
    for (let i = 0; i < n; i++) {
      const idx = (start + i) % n
      const e = this.endpoints[idx]!
      if (this.excluded(e, exclude) || e.inflight >= capacity) continue
      if (!panic && !e.acceptsAt(now)) continue
      if (hashing) {
        const w = mix(key ^ this.seeds[idx]!)
        if (w > bestWeight || (w === bestWeight && idx < bestIdx)) { best = e; bestIdx = idx; bestWeight = w }
        continue
      }
      if (this.policy !== 'least-connections') { best = e; bestIdx = idx; break }
      if (best === undefined || e.inflight < best.inflight) { best = e; bestIdx = idx }
    }
    if (best !== undefined && !hashing) this.next = (bestIdx + 1) % n
    return best
  }
}
