import type { RateLimitPolicyConfig } from '../config/schema.js'
import { FerryError } from '../errors.js'
import { EdgeRedisUnavailable, type EdgeRedis, type Take } from './redis.js'
import { fullBucket, takeTokens, type Bucket } from './token-bucket.js'

/** Why a request was let through or not, for ferry_rate_limit_decisions_total. */
export type RateDecision = 'allowed' | 'limited' | 'fail_open' | 'fail_closed'

/** A rate limit refused the request: FERRY_ERR_RATE_LIMITED with the time until a token is there. */
export class RateLimited extends FerryError {
  constructor (readonly policy: string, readonly retryAfterMs: number) {
    super('FERRY_ERR_RATE_LIMITED', `rate limit ${policy} exceeded; retry in ${retryAfterMs} ms`)
  }
}

/**
 * Token buckets of one policy kept in this process: a Map of key → (tokens, last refill), bounded by
 * maxKeys with least-recently-seen eviction (Map order; a take moves the key to the end). A forgotten
 * key starts again with a full bucket, which errs on letting traffic through.
 */
export class LocalBuckets {
  private readonly buckets = new Map<string, Bucket>()

  constructor (private readonly cfg: Pick<RateLimitPolicyConfig, 'ratePerSec' | 'burst' | 'maxKeys'>) {}

  /** 0: taken; else ms until a token is there. */
  take (key: string, now = performance.now()): number {
    return this.takeMany(key, 1, now).waitMs
  }

  /** Up to `want` tokens: as many whole ones as the bucket holds, or none and the ms until one is there. */
  takeMany (key: string, want: number, now = performance.now()): Take {
    let b = this.buckets.get(key)
    if (b === undefined) {
      if (this.buckets.size >= this.cfg.maxKeys) this.buckets.delete(this.buckets.keys().next().value!)
      b = fullBucket(this.cfg.burst, now)
    } else this.buckets.delete(key) // re-inserted last: Map order is recency order
    this.buckets.set(key, b)
    return takeTokens(b, now, this.cfg.ratePerSec, this.cfg.burst, want)
  }

  get size (): number {
    return this.buckets.size
  }
}

/**
 * Buckets kept somewhere else than this process, one per key: Redis (`scope: redis`, EdgeRedis), or the
 * control plane of a pod with several workers (`scope: local` there: src/planes/buckets.ts).
 */
export interface SharedBuckets {
  /** Takes up to `want` tokens from the bucket `key`; throws EdgeRedisUnavailable when it cannot be asked. */
  take: (key: string, ratePerSec: number, burst: number, want?: number, maxKeys?: number) => Promise<Take>
  /** What a take that cannot be asked means: let the request through (true) or refuse it. */
  readonly failOpen: boolean
}

/** How long leased tokens may be spent; what is left then is dropped (the shared bucket never gets it back). */
export const LEASE_MS = 1000

/**
 * Tokens this pod took from a key's shared bucket (`leaseTokens` at a time), spent here without a round
 * trip until LEASE_MS after they came; or, when the bucket was empty, the time its next token appears
 * (nobody can have one before that, so requests until then are refused here too).
 */
interface Lease {
  tokens: number
  until: number
  limitedUntil: number
  /**
   * The take in flight for this key: requests arriving meanwhile wait for it instead of sending their
   * own. It resolves with the error when Redis could not answer (they apply failMode too, no new try).
   */
  pending: Promise<unknown> | undefined
}

/**
 * One named policy: local buckets, or shared ones (then failMode decides when they cannot be asked):
 * in Redis (`scope: redis`), or, for `scope: local` in a worker of a pod, the pod's control plane, so a
 * local limit means the same per pod with 1 or N workers. With `leaseTokens` > 1, a shared policy takes
 * that many tokens per round trip and spends them here: every token spent came out of the shared bucket,
 * so the fleet (the pod) never admits more than the limit; it may admit less, by the tokens other pods
 * (workers) hold unspent (at most their number × (leaseTokens − 1), each for at most LEASE_MS).
 */
export class RateLimitPolicy {
  private readonly local: LocalBuckets | undefined
  private readonly shared: SharedBuckets | undefined
  /** key → lease, LRU-bounded by maxKeys like the local buckets (shared policies with leaseTokens > 1). */
  private readonly leases: Map<string, Lease> | undefined

  /** `pod`: a worker's way to the pod's buckets (absent in a single process: local policies count here). */
  constructor (readonly name: string, readonly cfg: RateLimitPolicyConfig, redis: EdgeRedis | undefined, private readonly decided: (d: RateDecision) => void, pod?: SharedBuckets) {
    this.shared = cfg.scope === 'redis' ? redis : pod
    this.local = this.shared === undefined ? new LocalBuckets(cfg) : undefined
    this.leases = this.shared !== undefined && cfg.leaseTokens > 1 ? new Map() : undefined
  }

  /** Throws RateLimited (or FERRY_ERR_RATE_LIMIT_UNAVAILABLE) synchronously for local policies; a promise for Redis ones. */
  check (key: string): void | Promise<void> {
    if (this.local !== undefined) {
      const wait = this.local.take(key)
      if (wait > 0) { this.decided('limited'); throw new RateLimited(this.name, wait) }
      this.decided('allowed')
      return
    }
    if (this.leases !== undefined) return this.checkLeased(key)
    return this.checkRemote(key)
  }

  /** One round trip per request (leaseTokens 1): exact, the shared bucket decides each request. */
  private async checkRemote (key: string): Promise<void> {
    let take: Take
    try {
      take = await this.shared!.take(`${this.name}:${key}`, this.cfg.ratePerSec, this.cfg.burst, 1, this.cfg.maxKeys)
    } catch (err) {
      this.unavailable(err)
      return
    }
    if (take.granted === 0) { this.decided('limited'); throw new RateLimited(this.name, take.waitMs) }
    this.decided('allowed')
  }

  /** failMode for a take Redis could not answer: returns (open) or throws (closed). */
  private unavailable (err: unknown): void {
    if (!(err instanceof EdgeRedisUnavailable)) throw err
    if (this.shared!.failOpen) { this.decided('fail_open'); return }
    this.decided('fail_closed')
    throw new FerryError('FERRY_ERR_RATE_LIMIT_UNAVAILABLE', `rate limit ${this.name} cannot be checked: ${err.message}`)
  }

  /** Spends a leased token synchronously when there is one; else waits for (or starts) the key's next take. */
  private checkLeased (key: string): void | Promise<void> {
    const now = performance.now()
    const leases = this.leases!
    let l = leases.get(key)
    if (l !== undefined) {
      leases.delete(key) // re-inserted last: Map order is recency order
      leases.set(key, l)
      if (l.tokens >= 1 && now < l.until) { l.tokens--; this.decided('allowed'); return }
      if (now < l.limitedUntil) { this.decided('limited'); throw new RateLimited(this.name, Math.ceil(l.limitedUntil - now)) }
      if (l.pending !== undefined) return l.pending.then((err) => { if (err === undefined) return this.checkLeased(key); this.unavailable(err) })
    } else {
      if (leases.size >= this.cfg.maxKeys) leases.delete(leases.keys().next().value!)
      l = { tokens: 0, until: 0, limitedUntil: 0, pending: undefined }
      leases.set(key, l)
    }
    return this.lease(key, l)
  }

  private async lease (key: string, l: Lease): Promise<void> {
    const taking = this.shared!.take(`${this.name}:${key}`, this.cfg.ratePerSec, this.cfg.burst, Math.min(this.cfg.leaseTokens, this.cfg.burst), this.cfg.maxKeys)
    const pending = taking.then(() => undefined, (err: unknown) => err).finally(() => { if (l.pending === pending) l.pending = undefined })
    l.pending = pending
    let take: Take
    try {
      take = await taking
    } catch (err) {
      this.unavailable(err)
      return
    }
    const at = performance.now()
    if (take.granted === 0) {
      l.tokens = 0
      l.limitedUntil = at + take.waitMs
      this.decided('limited')
      throw new RateLimited(this.name, take.waitMs)
    }
    // this request spends the first token; the rest wait here for the requests behind it
    l.tokens = take.granted - 1
    l.until = at + LEASE_MS
    l.limitedUntil = 0
    this.decided('allowed')
  }

  get keysTracked (): number {
    return this.local?.size ?? this.leases?.size ?? 0
  }
}

