/**
 * Endpoint choice for one upstream. Policies see endpoints only through this narrow view, so HTTP pools
 * (and later mux link pools and TCP upstreams) share one implementation.
 */
export interface Balanced {
  /** Requests (or streams, or connections) this endpoint carries now. */
  readonly inflight: number
  /** Operator intent and passive health folded into one answer: may it take new work at `now`? */
  acceptsAt: (now: number) => boolean
}

export type BalancePolicy = 'round-robin' | 'least-connections'

export class Balancer<E extends Balanced> {
  private next = 0

  constructor (private readonly endpoints: readonly E[], private readonly policy: BalancePolicy) {}

  /**
   * Picks an endpoint with `inflight < capacity`, skipping `exclude`. Ejected endpoints are used only when
   * every endpoint is ejected ("panic": serving on a maybe-bad endpoint beats refusing everything).
   */
  pick (capacity: number, now: number, exclude?: E): E | undefined {
    return this.scan(capacity, now, exclude, false) ?? this.scan(capacity, now, exclude, true)
  }

  private scan (capacity: number, now: number, exclude: E | undefined, panic: boolean): E | undefined {
    const n = this.endpoints.length
    if (panic && this.endpoints.some((e) => e !== exclude && e.acceptsAt(now))) return undefined
    const start = this.next
    let best: E | undefined
    let bestIdx = 0
    for (let i = 0; i < n; i++) {
      const idx = (start + i) % n
      const e = this.endpoints[idx]!
      if (e === exclude || e.inflight >= capacity) continue
      if (!panic && !e.acceptsAt(now)) continue
      if (this.policy === 'round-robin') { best = e; bestIdx = idx; break }
      if (best === undefined || e.inflight < best.inflight) { best = e; bestIdx = idx }
    }
    if (best !== undefined) this.next = (bestIdx + 1) % n
    return best
  }
}
