import type { Logger } from 'pino'
import { EdgeRedisUnavailable, type Take } from '../edge/redis.js'
import { LocalBuckets, type SharedBuckets } from '../edge/rate-limit.js'
import { ControlCalls } from './calls.js'

/** One take a worker asks the control plane for: `key` is `policy:client key`. */
export interface BucketCall {
  key: string
  ratePerSec: number
  burst: number
  want: number
  maxKeys: number
}

/** How long a worker waits for a take before the request goes through without one. */
const BUDGET_MS = 250

/**
 * `scope: local` rate limits in a worker of a pod: the buckets are the control plane's, one per key for
 * the whole pod, so a limit means the same with 1 or N workers (a client's connections land on any
 * worker). Each take is a message to the control plane, or one per `leaseTokens` requests. A take the
 * control plane does not answer within BUDGET_MS lets the request through (counted as fail_open): the
 * control plane only stops answering while the pod is going away.
 */
export class PodBuckets implements SharedBuckets {
  readonly failOpen = true
  private readonly calls = new ControlCalls(BUDGET_MS)
  private quiet = false

  constructor (private readonly send: (id: number, call: BucketCall) => void, private readonly log: Logger) {}

  async take (key: string, ratePerSec: number, burst: number, want = 1, maxKeys = 10000): Promise<Take> {
    try {
      return await this.calls.call<Take>((id) => { this.send(id, { key, ratePerSec, burst, want, maxKeys }) })
    } catch (err) {
      if (!this.quiet) { this.quiet = true; this.log.warn({ budgetMs: BUDGET_MS }, 'the control plane did not answer a rate-limit take in time: let through') }
      throw new EdgeRedisUnavailable((err as Error).message)
    }
  }

  answer (id: number, body: unknown): void {
    if (this.calls.answer(id, body)) this.quiet = false
  }

  close (): void {
    this.calls.close()
  }
}

/** How long a set of buckets no take has used is kept (a reload changed its policy's rate or burst). */
const IDLE_MS = 60_000

/** The control plane's side: the pod's buckets, one set per policy shape (rate, burst, maxKeys). */
export class PodBucketStore {
  private readonly sets = new Map<string, { buckets: LocalBuckets, usedAt: number }>()
  private sweptAt = 0

  take (c: BucketCall, now = performance.now()): Take {
    const shape = `${c.ratePerSec}/${c.burst}/${c.maxKeys}`
    let set = this.sets.get(shape)
    if (set === undefined) {
      set = { buckets: new LocalBuckets({ ratePerSec: c.ratePerSec, burst: c.burst, maxKeys: c.maxKeys }), usedAt: now }
      this.sets.set(shape, set)
    }
    set.usedAt = now
    if (now - this.sweptAt > IDLE_MS) {
      this.sweptAt = now
      for (const [k, s] of this.sets) if (now - s.usedAt > IDLE_MS) this.sets.delete(k)
    }
    return set.buckets.takeMany(c.key, Math.max(1, Math.min(c.want, c.burst)), now)
  }
}
