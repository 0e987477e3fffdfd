/** A token bucket's state: `tokens` held at time `at` (performance.now() milliseconds). */
export interface Bucket {
  tokens: number
  at: number
}

/** A full bucket of `burst` tokens at `now`. */
export function fullBucket (burst: number, now = performance.now()): Bucket {
  return { tokens: burst, at: now }
}

/**
 * Refills `b` at `perSec` up to `burst` as of `now`, then takes one token. Returns 0 when taken, else
 * the milliseconds until a token is there (nothing taken). The one token-bucket rule of Ferry:
 * admission control, local rate limits and per-session message rates all use it.
 */
export function takeToken (b: Bucket, now: number, perSec: number, burst: number): number {
  b.tokens = Math.min(burst, b.tokens + (now - b.at) * perSec / 1000)
  b.at = now
  if (b.tokens >= 1) { b.tokens -= 1; return 0 }
  return Math.ceil((1 - b.tokens) * 1000 / perSec)
}

/**
 * takeToken for up to `want` tokens: takes as many whole ones as the bucket holds (at least one, or
 * none and the milliseconds until one is there), like the shared buckets' script in src/edge/redis.ts.
 */
export function takeTokens (b: Bucket, now: number, perSec: number, burst: number, want: number): { granted: number, waitMs: number } {
  const waitMs = takeToken(b, now, perSec, burst)
  if (waitMs > 0) return { granted: 0, waitMs }
  const more = Math.min(want - 1, Math.floor(b.tokens))
  b.tokens -= more
  return { granted: 1 + more, waitMs: 0 }
}
