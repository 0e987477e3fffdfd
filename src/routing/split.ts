import type { Counter } from 'prom-client'
import { labelsMatch, type Labels } from '../config/labels.js'
import { subsetName, type RouteSplitConfig } from '../config/schema.js'
import { readSource } from '../edge/source.js'
import type { Metrics } from '../observability/metrics.js'
import { hashKey, mix, type Balanced, type Exclusion, type LabelSelector } from './balancer.js'

/**
 * Version-aware routing (docs/canary.md): a route's `split` sends each new request or session to a label
 * subset of its upstream's endpoints. Which subset is decided here, from the key alone (weighted
 * rendezvous hashing), so every pod agrees without talking to the others; which endpoint of the subset
 * is the upstream's balancer's business (`Balancer.pick(…, subset)`), as for any other pick.
 */

/** How a request or session came to its subset (the `by` label of ferry_split_assigned_total). */
export type AssignedBy = 'weight' | 'pin' | 'fallback'
/** Why the key's first subset did not take it (the `reason` label of ferry_split_fallbacks_total). */
export type FallbackReason = 'unhealthy' | 'no_endpoints'

/** The subset label of assignments that fell back to the whole upstream (no subset had a healthy endpoint). */
export const WHOLE_UPSTREAM = '*'

const TWO_32 = 4294967296

/** Counts of one subset (or of WHOLE_UPSTREAM) of one route, kept across reloads for /status. */
export interface SubsetCounts {
  weight: number
  pin: number
  fallback: number
  /** Times this subset was the key's choice but had no healthy endpoint. */
  unhealthy: number
  /** Times this subset was the key's choice but no endpoint carried its labels. */
  noEndpoints: number
  /** Open sessions a rebalance started moving to this subset. */
  rebalanced: number
}

interface SubsetCounters {
  readonly counts: SubsetCounts
  readonly assigned: Record<AssignedBy, Counter.Internal | undefined>
  readonly fallbacks: Record<FallbackReason, Counter.Internal | undefined>
  readonly rebalanced: Counter.Internal | undefined
}

/**
 * The gateway's split counters: plain numbers for /status, metric children resolved once per (route,
 * subset). Owned by the gateway, so the counts of a route outlive the reloads that rebuild its split.
 */
export class SplitStats {
  private readonly byKey = new Map<string, SubsetCounters>()

  constructor (private readonly metrics: Metrics | undefined) {}

  counters (route: string, subset: string): SubsetCounters {
    const k = `${route}\0${subset}`
    let c = this.byKey.get(k)
    if (c === undefined) {
      const m = this.metrics
      c = {
        counts: { weight: 0, pin: 0, fallback: 0, unhealthy: 0, noEndpoints: 0, rebalanced: 0 },
        assigned: {
          weight: m?.splitAssigned.labels(route, subset, 'weight'),
          pin: m?.splitAssigned.labels(route, subset, 'pin'),
          fallback: m?.splitAssigned.labels(route, subset, 'fallback'),
        },
        fallbacks: {
          unhealthy: m?.splitFallbacks.labels(route, subset, 'unhealthy'),
          no_endpoints: m?.splitFallbacks.labels(route, subset, 'no_endpoints'),
        },
        rebalanced: m?.splitRebalanced.labels(route, subset),
      }
      this.byKey.set(k, c)
    }
    return c
  }
}

/** One subset of a split: the endpoints carrying `labels`, and its share of new keys. */
export class Subset implements LabelSelector {
  /** Its rendezvous seed: the same on every pod (a hash of its name). */
  readonly seed: number
  readonly counters: SubsetCounters

  constructor (readonly name: string, readonly labels: Labels, readonly weight: number, counters: SubsetCounters) {
    this.seed = hashKey(name)
    this.counters = counters
  }

  matches (labels: Labels | undefined): boolean {
    return labelsMatch(this.labels, labels)
  }

  assigned (by: AssignedBy): void {
    this.counters.counts[by]++
    this.counters.assigned[by]?.inc()
  }

  /** A rebalance started moving an open session here. */
  rebalanced (): void {
    this.counters.counts.rebalanced++
    this.counters.rebalanced?.inc()
  }
}

/** What one request or session asks of its route's split: the key that keeps it sticky, and a pin value if it sent one. */
export interface SplitAsk {
  readonly split: RouteSplit
  readonly key: string
  readonly pin: string | undefined
}

/** A subset's endpoints right now: some accepts new work, some exist but none accepts, or none carries its labels. */
type SubsetState = 'ok' | FallbackReason

/**
 * One route's split, built from its config (a reload or an admin change builds a new one): the subsets,
 * where the sticky key and the pin are read, and the assignment of a key to a subset.
 */
export class RouteSplit {
  readonly subsets: readonly Subset[]
  private readonly byName: ReadonlyMap<string, Subset>
  private readonly whole: SubsetCounters

  constructor (
    readonly route: string,
    readonly cfg: RouteSplitConfig,
    /** Where the sticky key is read: `split.key`, else the route's affinity key (a source), else none (client IP). */
    readonly keySource: string | undefined,
    stats: SplitStats,
  ) {
    this.subsets = cfg.subsets.map((s) => {
      const name = subsetName(s)
      return new Subset(name, s.labels, s.weight, stats.counters(route, name))
    })
    this.byName = new Map(this.subsets.map((s) => [s.name, s]))
    this.whole = stats.counters(route, WHOLE_UPSTREAM)
  }

  get pinSource (): string | undefined {
    return this.cfg.pin
  }

  /**
   * The subsets in the order `key` tries them: the pinned one first (when `pin` names one), then by
   * weighted rendezvous score, highest first. Score = -weight / ln(u), u the key's hash with the subset's
   * seed in (0, 1): the first subset is subset i with probability weight_i / 100, every pod computes the
   * same order, and raising a weight only moves keys to that subset. Weight 0 subsets come last.
   */
  order (key: string, pin: string | undefined): { subsets: Subset[], pinned: boolean } {
    const k = hashKey(key)
    const scored = this.subsets.map((s) => {
      const u = (mix(k ^ s.seed) + 0.5) / TWO_32
      return { s, score: s.weight === 0 ? 0 : -s.weight / Math.log(u), u }
    })
    scored.sort((a, b) => b.score - a.score || b.u - a.u)
    const out = scored.map((x) => x.s)
    const pinned = pin === undefined ? undefined : this.byName.get(pin)
    if (pinned === undefined) return { subsets: out, pinned: false }
    return { subsets: [pinned, ...out.filter((s) => s !== pinned)], pinned: true }
  }

  /**
   * The subset a new request or session goes to, given the upstream's endpoints now: the key's first
   * subset if one of its endpoints accepts new work, else the next in the key's order that has one (a
   * fallback, counted with why the first could not), else undefined: the whole upstream (its balancer's
   * usual pick, panic included). `count` false: a retry of the same request or session, not counted again.
   */
  assign<E extends Balanced>(ask: SplitAsk, endpoints: readonly E[], now: number, exclude?: Exclusion<E>, count = true): Subset | undefined {
    const { subsets, pinned } = this.order(ask.key, ask.pin)
    let first: SubsetState = 'ok'
    for (let i = 0; i < subsets.length; i++) {
      const s = subsets[i]!
      const state = stateOf(s, endpoints, now, exclude)
      if (state === 'ok') {
        if (count) {
          if (i === 0) s.assigned(pinned ? 'pin' : 'weight')
          else { s.assigned('fallback'); fellBack(subsets[0]!, first) }
        }
        return s
      }
      if (i === 0) first = state
    }
    if (count) {
      fellBack(subsets[0]!, first)
      this.whole.counts.fallback++
      this.whole.assigned.fallback?.inc()
    }
    return undefined
  }

  /** /status: the subsets with their weights and counts. */
  status (endpoints: ReadonlyArray<{ readonly labels?: Labels, readonly healthy: boolean }> | undefined): object {
    const row = (name: string, c: SubsetCounts): object => ({ assigned: { weight: c.weight, pin: c.pin, fallback: c.fallback }, fallbacksFrom: { unhealthy: c.unhealthy, noEndpoints: c.noEndpoints }, rebalanced: c.rebalanced, name })
    return {
      key: this.keySource ?? 'client-ip',
      pin: this.cfg.pin ?? null,
      rebalance: this.cfg.rebalance,
      subsets: this.subsets.map((s) => {
        const mine = endpoints?.filter((e) => s.matches(e.labels))
        return {
          ...row(s.name, s.counters.counts),
          labels: s.labels,
          weight: s.weight,
          ...(mine !== undefined ? { endpoints: mine.length, healthy: mine.filter((e) => e.healthy).length } : {}),
        }
      }),
      wholeUpstream: { fallback: this.whole.counts.fallback },
    }
  }
}

function fellBack (s: Subset, why: SubsetState): void {
  if (why === 'ok') return
  if (why === 'unhealthy') { s.counters.counts.unhealthy++; s.counters.fallbacks.unhealthy?.inc() } else { s.counters.counts.noEndpoints++; s.counters.fallbacks.no_endpoints?.inc() }
}

function stateOf<E extends Balanced> (s: Subset, endpoints: readonly E[], now: number, exclude: Exclusion<E>): SubsetState {
  let any = false
  for (const e of endpoints) {
    if (!s.matches(e.labels)) continue
    if (exclude !== undefined && (exclude instanceof Set ? exclude.has(e) : e === exclude)) continue
    any = true
    if (e.acceptsAt(now)) return 'ok'
  }
  return any ? 'unhealthy' : 'no_endpoints'
}

/** Longest key and pin value read from a request (longer ones are ignored: the client IP keys it, no pin). */
const MAX_KEY_CHARS = 256

/**
 * What one request or session asks of `split`: its sticky key (read from the split's key source, else
 * the client IP) and its pin value. `headers` is the flat `[name, value, …]` list with lower-case names
 * as it goes to the backend (after the route's auth stripped and added headers), `query` the raw query.
 */
export function splitAsk (split: RouteSplit, headers: readonly string[], query: string, clientIp: string): SplitAsk {
  const src = split.keySource
  const key = src !== undefined ? readSource(src, headers, query) : undefined
  const pinSrc = split.pinSource
  const pin = pinSrc !== undefined ? readSource(pinSrc, headers, query) : undefined
  return { split, key: key !== undefined && key.length <= MAX_KEY_CHARS ? key : clientIp, pin: pin !== undefined && pin.length <= MAX_KEY_CHARS ? pin : undefined }
}
