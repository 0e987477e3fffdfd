import type { RateLimitPolicyConfig } from '../config/schema.js'
import { FerryError } from '../errors.js'
import { EdgeRedisUnavailable, type EdgeRedis } from './redis.js'
import { fullBucket, takeToken, type Bucket } from './token-bucket.js'

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

  constructor (private readonly cfg: RateLimitPolicyConfig) {}

  /** 0: taken; else ms until a token is there. */
  take (key: string, now = performance.now()): number {
    let b = this.buckets.get(key)
    if (b === undefined) {
      if (this.buckets.size >= this.cfg.maxKeys) this.buckets.delete(this.buckets.keys().next().value!)
      b = fullBucket(this.cfg.burst, now)
    } else this.buckets.delete(key) // re-inserted last: Map order is recency order
    this.buckets.set(key, b)
    return takeToken(b, now, this.cfg.ratePerSec, this.cfg.burst)
  }

  get size (): number {
    return this.buckets.size
  }
}

/** One named policy: local buckets, or the shared ones in Redis (then failMode decides when Redis cannot answer). */
export class RateLimitPolicy {
  private readonly local: LocalBuckets | undefined

  constructor (readonly name: string, readonly cfg: RateLimitPolicyConfig, private readonly redis: EdgeRedis | undefined, private readonly decided: (d: RateDecision) => void) {
    this.local = cfg.scope === 'local' ? new LocalBuckets(cfg) : undefined
  }

  /** Throws RateLimited (or FERRY_ERR_RATE_LIMIT_UNAVAILABLE) synchronously for local policies; a promise for Redis ones. */
  check (key: string): void | Promise<void> {
    if (this.local !== undefined) {
      const wait = this.local.take(key)
      if (wait > 0) { this.decided('limited'); throw new RateLimited(this.name, wait) }
      this.decided('allowed')
      return
    }
    return this.checkRemote(key)
  }

  private async checkRemote (key: string): Promise<void> {
    let wait: number
    try {
      wait = await this.redis!.take(`${this.name}:${key}`, this.cfg.ratePerSec, this.cfg.burst)
    } catch (err) {
      if (!(err instanceof EdgeRedisUnavailable)) throw err
      if (this.redis!.failOpen) { this.decided('fail_open'); return }
      this.decided('fail_closed')
      throw new FerryError('FERRY_ERR_RATE_LIMIT_UNAVAILABLE', `rate limit ${this.name} cannot be checked: ${err.message}`)
    }
    if (wait > 0) { this.decided('limited'); throw new RateLimited(this.name, wait) }
    this.decided('allowed')
  }

  get keysTracked (): number {
    return this.local?.size ?? 0
  }
}
