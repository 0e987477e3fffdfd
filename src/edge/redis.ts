import { Redis } from 'ioredis'
import type { Logger } from 'pino'
import type { RateLimitsConfig } from '../config/schema.js'

/**
 * Token bucket in Redis, timed by Redis's own clock (pods' clocks may differ). State per key: a hash of
 * `t` (ms of the last take) and `n` (tokens then), expiring once a full bucket would have refilled.
 * ARGV: rate in tokens/ms, burst, tokens wanted (a lease; at least 1). Takes as many whole tokens as the
 * bucket holds, up to the number wanted. Reply: {taken, ms until a token is there (when none was)}.
 */
const TAKE_LUA = `
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local want = tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local b = redis.call('HMGET', KEYS[1], 't', 'n')
local last = tonumber(b[1]) or now
local tokens = tonumber(b[2]) or burst
tokens = math.min(burst, tokens + math.max(0, now - last) * rate)
local got = 0
local wait = 0
if tokens >= 1 then got = math.min(want, math.floor(tokens)); tokens = tokens - got else wait = math.ceil((1 - tokens) / rate) end
redis.call('HSET', KEYS[1], 't', now, 'n', tostring(tokens))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate) + 1000)
return {got, wait}
`

interface EdgeCommands {
  ferryTake: (key: string, ratePerMs: string, burst: string, want: string) => Promise<[number, number]>
}

/** What one take from a shared bucket gave: `granted` tokens (0 … wanted), else `waitMs` until one is there. */
export interface Take {
  readonly granted: number
  readonly waitMs: number
}

/** Redis could not answer within the budget (down, slow, not connected yet). */
export class EdgeRedisUnavailable extends Error {
  override name = 'EdgeRedisUnavailable'
}

/**
 * The connection behind cluster-wide rate limits and the HMAC replay store: one ioredis client, no
 * offline queue (while disconnected a call fails at once) and a command timeout of `timeoutMs`, so a
 * request never waits longer than that for Redis. The caller applies `failMode`.
 */
export class EdgeRedis {
  private readonly redis: Redis & EdgeCommands
  private down = false

  constructor (private readonly cfg: RateLimitsConfig['redis'], private readonly log: Logger) {
    this.redis = new Redis(cfg.url, {
      enableOfflineQueue: false,
      maxRetriesPerRequest: 0,
      autoResendUnfulfilledCommands: false,
      commandTimeout: cfg.timeoutMs,
      connectTimeout: 1000,
      retryStrategy: (times: number) => {
        const d = Math.min(2000, 50 * 2 ** Math.min(times - 1, 16))
        return Math.round(d / 2 + Math.random() * d / 2)
      },
      protocol: 2,
      disableClientInfo: true,
      scripts: { ferryTake: { numberOfKeys: 1, lua: TAKE_LUA } },
    }) as Redis & EdgeCommands
    this.redis.on('error', () => { /* reported through the calls that fail, and the transitions below */ })
    this.redis.on('ready', () => { if (this.down) { this.down = false; this.log.info('rate-limit redis reachable again') } })
    this.redis.on('close', () => { if (!this.down) { this.down = true; this.log.warn({ url: redactUrl(cfg.url) }, 'rate-limit redis unreachable; failMode applies') } })
  }

  /** Takes up to `want` tokens from the bucket `key` (as many whole ones as it holds). */
  async take (key: string, ratePerSec: number, burst: number, want = 1): Promise<Take> {
    try {
      const [granted, waitMs] = await this.redis.ferryTake(this.cfg.keyPrefix + key, String(ratePerSec / 1000), String(burst), String(want))
      return { granted, waitMs }
    } catch (err) {
      throw new EdgeRedisUnavailable((err as Error).message)
    }
  }

  /** Records a nonce for `ttlMs`; false when it was already there (a replay). */
  async claimOnce (key: string, ttlMs: number): Promise<boolean> {
    try {
      return await this.redis.set(this.cfg.keyPrefix + key, '1', 'PX', ttlMs, 'NX') === 'OK'
    } catch (err) {
      throw new EdgeRedisUnavailable((err as Error).message)
    }
  }

  get failOpen (): boolean {
    return this.cfg.failMode === 'open'
  }

  async close (): Promise<void> {
    this.redis.disconnect()
  }
}

function redactUrl (url: string): string {
  return url.replace(/\/\/[^@/]*@/, '//***@')
}
