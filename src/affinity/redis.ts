import { performance } from 'node:perf_hooks'
import { Redis, ReplyError } from 'ioredis'
import type { Logger } from 'pino'
import { parsePodRecord, type PodBoard, type PodRecord } from './pods.js'
import {
  checkEpoch, checkPod, checkRecord, frozenRecord, storeKey, ttlOf, StoreMetrics,
  type AffinityDeps, type AffinityOp, type AffinityRecord, type AffinityState, type AffinityStore, type AffinityStoreStatus,
  type ClaimResult, type RedisAffinityOptions,
} from './store.js'

/**
 * connecting: the first connection is not ready yet (calls fall back, nothing logged yet).
 * ok: calls go to Redis, each within the budget.
 * fallback: Redis is down, slow or unreachable; calls answer at once without touching the connection,
 *   and a PING every probeIntervalMs (and on every reconnect) looks for an answer within the budget.
 * closed: close() was called.
 * `to()` is the only function that moves it; it logs and sets ferry_affinity_fallback.
 */
export type RedisStorePhase = 'connecting' | 'ok' | 'fallback' | 'closed'

/**
 * Records are one string, `<epoch>|<endpoint>|<pod>`: one GET / SET PX / PEXPIRE per call, and the pod
 * (free text) comes last so only the endpoint must be free of '|'.
 * The claim script compares the epoch and rewrites the value with the new pod and epoch + 1, keeping
 * the TTL (KEEPTTL: Redis ≥ 6.0). Replies: {0} missing, {1, new} won, {2, current} stale.
 */
const CLAIM_LUA = `
local v = redis.call('GET', KEYS[1])
if not v then return {0} end
local i = string.find(v, '|', 1, true)
if not i then return {2, v} end
local j = string.find(v, '|', i + 1, true)
local epoch = tonumber(string.sub(v, 1, i - 1))
if not j or epoch == nil or epoch ~= tonumber(ARGV[1]) then return {2, v} end
local nv = string.format('%d', epoch + 1) .. string.sub(v, i, j) .. ARGV[2]
redis.call('SET', KEYS[1], nv, 'KEEPTTL')
return {1, nv}
`

/**
 * The pod directory: `<podsKeyPrefix>pod:<id>` holds the pod's JSON with a PX TTL, and the sorted set
 * `<podsKeyPrefix>index` holds the ids scored by when they expire (Redis' clock, so pods' clocks do not
 * matter). Listing prunes expired ids and reads the live records in one round trip; it reads keys it
 * derives from the index (fine on one Redis; a Redis Cluster would need the keys in one hash slot).
 */
const POD_ANNOUNCE_LUA = `
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[2]), ARGV[3])
return 1
`
const POD_LIST_LUA = `
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local ids = redis.call('ZRANGE', KEYS[1], 0, tonumber(ARGV[2]) - 1)
local out = {}
for _, id in ipairs(ids) do
  local v = redis.call('GET', ARGV[1] .. id)
  if v then out[#out + 1] = v end
end
return out
`
/** Pods listed at most (the console shows a table, not a fleet inventory). */
const MAX_PODS = 200
/**
 * The pod directory's calls (heartbeat, console list, withdraw). They share the session store's
 * connection but not its health: one that times out or fails is counted and answers its fallback, and
 * never moves the store to 'fallback' (which would route sessions by hashing). A lost connection still
 * does, through the client's 'close' event. Their budget is at least POD_BUDGET_MS: a list of 200 pods
 * is not a key lookup.
 */
const POD_OPS: ReadonlySet<AffinityOp> = new Set<AffinityOp>(['announce', 'pods', 'withdraw'])
const POD_BUDGET_MS = 1000

interface ClaimCommand {
  ferryAffinityClaim: (key: string, expectedEpoch: string, pod: string) => Promise<[number, string?]>
  ferryPodAnnounce: (key: string, index: string, json: string, ttlMs: string, id: string) => Promise<number>
  ferryPodList: (index: string, keyPrefix: string, max: string) => Promise<string[]>
}

const FALLBACK: unique symbol = Symbol('affinity fallback')
type Fallback = typeof FALLBACK

interface Expiring {
  readonly op: AffinityOp
  readonly deadline: number
  settled: boolean
  /** Answers FALLBACK now (past the deadline, or the store fell back meanwhile). */
  expire: () => void
}

/** One call waiting for Redis. */
class Call<T> implements Expiring {
  settled = false
  constructor (readonly op: AffinityOp, readonly deadline: number, private readonly resolve: (v: T | Fallback) => void) {}

  answer (v: T | Fallback): void {
    if (this.settled) return
    this.settled = true
    this.resolve(v)
  }

  expire (): void {
    this.answer(FALLBACK)
  }
}

/**
 * Calls waiting for Redis. They all get the same budget, so deadlines grow in arrival order and the
 * oldest call is the next to expire: a FIFO and one timer armed for its head. Redis answers in order
 * too, so settled calls leave from the front and the queue holds only what is in flight.
 */
class Deadlines {
  private items: Expiring[] = []
  private head = 0
  private timer: NodeJS.Timeout | undefined
  /** When the timer last fired: the check it scheduled expires calls due by then. */
  private dueBy = 0

  constructor (private readonly onTimeout: (c: Expiring) => void) {}

  get size (): number {
    return this.items.length - this.head
  }

  add (c: Expiring): void {
    this.items.push(c)
    // An armed timer is for an earlier (or equal) deadline: it re-arms for the rest when it fires.
    if (this.timer === undefined) this.arm()
  }

  /** Drops settled calls from the front. */
  compact (): void {
    const items = this.items
    while (this.head < items.length && items[this.head]!.settled) this.head++
    if (this.head === items.length) { this.items = []; this.head = 0 } else if (this.head >= 1024 && this.head * 2 >= items.length) { this.items = items.slice(this.head); this.head = 0 }
  }

  /** Answers every call in flight with FALLBACK (the store just fell back, or closed). */
  expireAll (): void {
    const items = this.items
    this.items = []
    this.head = 0
    for (const c of items) c.expire()
  }

  stop (): void {
    clearTimeout(this.timer)
    this.timer = undefined
    this.expireAll()
  }

  private arm (): void {
    this.compact()
    const first = this.items[this.head]
    if (first === undefined) return
    this.timer = setTimeout(this.fire, Math.max(0, first.deadline - performance.now()))
    this.timer.unref()
  }

  /**
   * A due timer only notes the time and schedules the check: timers run before I/O in a loop turn, so
   * after a blocked event loop a reply already waiting in the socket would lose to its own deadline.
   * setImmediate runs after this turn's I/O has read it, and expires only calls due when the timer fired
   * (a call made meanwhile, by code run from that I/O, has not been through an I/O phase yet).
   * `timer` stays set until then, so `add` does not arm a second one.
   */
  private readonly fire = (): void => {
    this.dueBy = performance.now()
    setImmediate(this.expireDue)
  }

  private readonly expireDue = (): void => {
    this.timer = undefined
    for (;;) {
      this.compact()
      const c = this.items[this.head]
      if (c === undefined || c.deadline > this.dueBy) break
      this.head++
      c.expire()
      this.onTimeout(c)
    }
    this.arm()
  }
}

function encode (r: AffinityRecord): string {
  return `${r.epoch}|${r.endpoint}|${r.pod}`
}

/** The record in a stored value, or undefined when it is not one of ours. */
function decode (v: string): AffinityRecord | undefined {
  const i = v.indexOf('|')
  const j = i > 0 ? v.indexOf('|', i + 1) : -1
  if (j <= i + 1 || j === v.length - 1) return undefined
  const digits = v.slice(0, i)
  const epoch = Number(digits)
  if (!/^\d+$/.test(digits) || !Number.isSafeInteger(epoch)) return undefined
  return frozenRecord(v.slice(i + 1, j), v.slice(j + 1), epoch)
}

/** The URL without its password, for logs and /status. */
function redact (url: string): string {
  try {
    const u = new URL(url)
    if (u.password !== '') u.password = '***'
    return u.toString()
  } catch {
    return '(unparsable url)'
  }
}

function message (err: unknown): string {
  return err instanceof Error ? err.message : String(err)
}

/** Reply errors (WRONGTYPE, OOM, READONLY...) are logged at most this often: Redis answers, so they do not change the state. */
const REPLY_ERROR_LOG_MS = 10_000

/**
 * The shared store: one ioredis connection, keys `<keyPrefix><key>` holding `<epoch>|<endpoint>|<pod>`
 * with a PX TTL. Every call has `lookupTimeoutMs`: past it, or on a connection error, it answers its
 * fallback (get → undefined) and the store moves to 'fallback', where calls answer at once until a
 * probe PING comes back within the budget. The client never queues while disconnected
 * (enableOfflineQueue: false), fails in-flight commands on a disconnect (maxRetriesPerRequest: 0) without
 * replaying them later (autoResendUnfulfilledCommands: false, so a timed-out write cannot land minutes
 * later), reconnects forever with capped jittered backoff, and drops a connection that stopped answering
 * (socketTimeout), so a stopped or vanished Redis is reconnected rather than waited on.
 */
export class RedisAffinityStore implements AffinityStore, PodBoard {
  readonly kind = 'redis'
  private phase: RedisStorePhase = 'connecting'
  private readonly redis: Redis
  private readonly log: Logger
  private readonly metrics: StoreMetrics
  private readonly deadlines: Deadlines
  /** The pod directory's calls: their own budget and FIFO, and a timeout does not fall back (POD_OPS). */
  private readonly podDeadlines: Deadlines
  private readonly podBudgetMs: number
  private readonly ttlMs: number
  private readonly budgetMs: number
  private readonly prefix: string
  private readonly podsPrefix: string
  private readonly probeIntervalMs: number
  private readonly url: string
  private readonly probeTimer: NodeJS.Timeout
  private probing = false
  private since = Date.now()
  private lastCause = 'connecting'
  private fallbacks = 0
  private replyErrors = 0
  private lastReplyErrorLog = 0
  private settledWaiters: Array<() => void> = []
  private closing: Promise<void> | undefined

  constructor (opts: { readonly ttlMs: number, readonly redis: RedisAffinityOptions }, deps: AffinityDeps) {
    const r = opts.redis
    this.ttlMs = ttlOf(opts.ttlMs, 600_000)
    this.budgetMs = Math.max(1, r.lookupTimeoutMs)
    this.prefix = r.keyPrefix
    this.podsPrefix = r.podsKeyPrefix ?? 'ferry:pods:'
    this.probeIntervalMs = r.probeIntervalMs ?? Math.max(100, 4 * this.budgetMs)
    this.url = redact(r.url)
    this.log = deps.logger
    this.metrics = new StoreMetrics('redis', deps.metrics)
    this.metrics.fallback.set(1)
    this.deadlines = new Deadlines((c) => {
      this.metrics.error(c.op, 'timeout')
      this.to('fallback', `no answer to ${c.op} within lookupTimeoutMs (${this.budgetMs} ms)`)
    })
    this.podBudgetMs = Math.max(POD_BUDGET_MS, this.budgetMs)
    this.podDeadlines = new Deadlines((c) => { this.metrics.error(c.op, 'timeout') })
    const maxDelay = r.maxReconnectDelayMs ?? 1000
    this.redis = new Redis(r.url, {
      lazyConnect: false,
      enableOfflineQueue: false,
      maxRetriesPerRequest: 0,
      autoResendUnfulfilledCommands: false,
      // Exponential from 50 ms, capped, with the upper half jittered so pods do not reconnect in step.
      retryStrategy: (times: number) => {
        const d = Math.min(maxDelay, 50 * 2 ** Math.min(times - 1, 16))
        return Math.round(d / 2 + Math.random() * d / 2)
      },
      connectTimeout: r.connectTimeoutMs ?? 1000,
      socketTimeout: r.deadAfterMs ?? Math.max(1000, 40 * this.budgetMs),
      protocol: 2,
      disableClientInfo: true,
      scripts: {
        ferryAffinityClaim: { numberOfKeys: 1, lua: CLAIM_LUA },
        ferryPodAnnounce: { numberOfKeys: 2, lua: POD_ANNOUNCE_LUA },
        ferryPodList: { numberOfKeys: 1, lua: POD_LIST_LUA },
      },
    })
    this.redis.on('error', (err: Error) => {
      this.log.debug({ store: 'redis', redis: this.url, err: err.message }, 'affinity store connection error')
      if (this.phase === 'connecting') this.to('fallback', `cannot connect: ${err.message}`)
    })
    this.redis.on('close', () => {
      if (this.phase === 'ok' || this.phase === 'connecting') this.to('fallback', 'connection to Redis lost')
    })
    this.redis.on('ready', () => { this.probe() })
    this.probeTimer = setTimeout(this.probeTick, this.probeIntervalMs)
    this.probeTimer.unref()
  }

  get state (): AffinityState {
    return this.phase === 'ok' ? 'ok' : 'fallback'
  }

  async get (key: string): Promise<AffinityRecord | undefined> {
    const k = this.prefix + storeKey(key)
    const v = await this.run('get', async () => await this.redis.get(k), (reply: string | null) => {
      if (reply === null) return undefined
      const rec = decode(reply)
      if (rec === undefined) this.metrics.error('get', 'corrupt')
      return rec
    })
    if (v === FALLBACK) { this.metrics.fellBack.inc(); return undefined }
    if (v === undefined) this.metrics.miss.inc(); else this.metrics.hit.inc()
    return v
  }

  async set (key: string, record: AffinityRecord, ttlMs?: number): Promise<boolean> {
    checkRecord(record)
    const k = this.prefix + storeKey(key)
    const value = encode(record)
    const ttl = ttlOf(ttlMs, this.ttlMs)
    const v = await this.run('set', async () => await this.redis.set(k, value, 'PX', ttl), (reply: string | null) => reply === 'OK')
    return v === true
  }

  async touch (key: string, ttlMs?: number): Promise<boolean> {
    const k = this.prefix + storeKey(key)
    const ttl = ttlOf(ttlMs, this.ttlMs)
    const v = await this.run('touch', async () => await this.redis.pexpire(k, ttl), (reply: number) => reply === 1)
    return v === true
  }

  async delete (key: string): Promise<boolean> {
    const k = this.prefix + storeKey(key)
    const v = await this.run('delete', async () => await this.redis.del(k), (reply: number) => reply > 0)
    return v === true
  }

  async claim (key: string, pod: string, expectedEpoch: number): Promise<ClaimResult> {
    checkPod(pod)
    checkEpoch(expectedEpoch)
    const k = this.prefix + storeKey(key)
    const client = this.redis as unknown as ClaimCommand
    const v = await this.run('claim', async () => await client.ferryAffinityClaim(k, String(expectedEpoch), pod), (reply: [number, string?]): ClaimResult => {
      const [code, value] = reply
      const rec = value === undefined ? undefined : decode(value)
      if (code === 1 && rec !== undefined) return { ok: true, record: rec }
      if (value !== undefined && rec === undefined) this.metrics.error('claim', 'corrupt')
      return { ok: false, record: rec, reason: code === 2 && rec !== undefined ? 'stale' : 'missing' }
    })
    return v === FALLBACK ? { ok: false, record: undefined, reason: 'unavailable' } : v
  }

  async announce (pod: PodRecord, ttlMs: number): Promise<boolean> {
    const client = this.redis as unknown as ClaimCommand
    const v = await this.run('announce', async () => await client.ferryPodAnnounce(`${this.podsPrefix}pod:${pod.id}`, `${this.podsPrefix}index`, JSON.stringify(pod), String(ttlOf(ttlMs, 15_000)), pod.id), (reply: number) => reply === 1)
    return v === true
  }

  async listPods (): Promise<PodRecord[] | undefined> {
    const client = this.redis as unknown as ClaimCommand
    const v = await this.run('pods', async () => await client.ferryPodList(`${this.podsPrefix}index`, `${this.podsPrefix}pod:`, String(MAX_PODS)), (reply: string[]) => {
      const out: PodRecord[] = []
      for (const json of reply) {
        const p = parsePodRecord(json)
        if (p === undefined) this.metrics.error('pods', 'corrupt'); else out.push(p)
      }
      return out
    })
    return v === FALLBACK ? undefined : v
  }

  async withdraw (id: string): Promise<boolean> {
    const v = await this.run('withdraw', async () => await this.redis.multi().del(`${this.podsPrefix}pod:${id}`).zrem(`${this.podsPrefix}index`, id).exec(), (reply) => reply !== null)
    return v === true
  }

  async ready (waitMs = 1000): Promise<AffinityState> {
    if (this.phase === 'connecting') {
      await new Promise<void>((resolve) => {
        const timer = setTimeout(() => {
          this.to('fallback', `not connected within ${waitMs} ms`)
          resolve()
        }, waitMs)
        this.settledWaiters.push(() => { clearTimeout(timer); resolve() })
      })
    }
    return this.state
  }

  async close (kind: 'flush' | 'abort' = 'flush'): Promise<void> {
    if (this.closing !== undefined) return await this.closing
    const wasReady = this.redis.status === 'ready' && this.phase === 'ok'
    this.to('closed', 'close')
    clearTimeout(this.probeTimer)
    this.deadlines.stop()
    this.podDeadlines.stop()
    this.closing = (async () => {
      if (kind === 'flush' && wasReady) {
        // QUIT waits for the commands already sent; a stopped Redis must not hold the shutdown.
        let timer: NodeJS.Timeout | undefined
        await Promise.race([
          this.redis.quit().catch(() => {}),
          new Promise<void>((resolve) => { timer = setTimeout(resolve, Math.max(200, 4 * this.budgetMs)) }),
        ])
        clearTimeout(timer)
      }
      this.redis.disconnect()
    })()
    await this.closing
  }

  status (): AffinityStoreStatus {
    return {
      store: 'redis',
      state: this.state,
      phase: this.phase,
      since: new Date(this.since).toISOString(),
      cause: this.lastCause,
      ttlMs: this.ttlMs,
      redis: this.url,
      connection: this.redis.status,
      lookupTimeoutMs: this.budgetMs,
      keyPrefix: this.prefix,
      podsKeyPrefix: this.podsPrefix,
      inFlight: this.deadlines.size + this.podDeadlines.size,
      fallbacks: this.fallbacks,
      replyErrors: this.replyErrors,
    }
  }

  /**
   * Sends one command within the budget. Resolves with the parsed reply, or FALLBACK: at once while not
   * 'ok', at the deadline, or on a connection error. Never rejects. A pod directory call (POD_OPS) has its
   * own budget and queue, and its failures are only counted.
   */
  private async run<R, T>(op: AffinityOp, send: () => Promise<R>, parse: (reply: R) => T): Promise<T | Fallback> {
    if (this.phase !== 'ok') return FALLBACK
    const started = performance.now()
    const pod = POD_OPS.has(op)
    const deadlines = pod ? this.podDeadlines : this.deadlines
    return await new Promise<T | Fallback>((resolve) => {
      const call = new Call<T>(op, started + (pod ? this.podBudgetMs : this.budgetMs), resolve)
      deadlines.add(call)
      send().then((reply) => {
        if (call.settled) return
        this.metrics.observe(op, (performance.now() - started) / 1000)
        let v: T | Fallback
        try {
          v = parse(reply)
        } catch {
          // A reply of an unexpected shape (someone else's script under our name?): no throw from here.
          this.metrics.error(op, 'corrupt')
          v = FALLBACK
        }
        call.answer(v)
        deadlines.compact()
      }, (err: unknown) => {
        if (call.settled) return
        call.answer(FALLBACK)
        deadlines.compact()
        if (pod) this.metrics.error(op, err instanceof ReplyError ? 'reply' : 'connection')
        else this.failed(op, err)
      })
    })
  }

  private failed (op: AffinityOp, err: unknown): void {
    if (err instanceof ReplyError) {
      // Redis answered: the connection is fine, this call (or this key) is not.
      this.metrics.error(op, 'reply')
      this.replyErrors++
      const now = Date.now()
      if (now - this.lastReplyErrorLog >= REPLY_ERROR_LOG_MS) {
        this.lastReplyErrorLog = now
        this.log.warn({ store: 'redis', redis: this.url, op, err: message(err), replyErrors: this.replyErrors }, 'affinity store: Redis refused a command; this call falls back')
      }
      return
    }
    this.metrics.error(op, 'connection')
    this.to('fallback', message(err))
  }

  private readonly probeTick = (): void => {
    if (this.phase !== 'connecting' && this.phase !== 'fallback') return
    this.probe()
    this.probeTimer.refresh()
  }

  /** One PING at a time; an answer within the budget brings the store back to 'ok'. */
  private probe (): void {
    if (this.probing || (this.phase !== 'connecting' && this.phase !== 'fallback') || this.redis.status !== 'ready') return
    this.probing = true
    const started = performance.now()
    this.redis.ping().then(() => {
      this.probing = false
      const ms = performance.now() - started
      if (ms <= this.budgetMs) this.to('ok', 'PING answered')
      else this.log.debug({ store: 'redis', redis: this.url, ms }, 'affinity store: Redis answers, but slower than lookupTimeoutMs')
    }, () => {
      this.probing = false
    })
  }

  private to (next: RedisStorePhase, cause: string): void {
    const prev = this.phase
    if (prev === next || prev === 'closed') return
    this.phase = next
    const now = Date.now()
    const forMs = now - this.since
    this.since = now
    this.lastCause = cause
    this.metrics.fallback.set(next === 'ok' ? 0 : 1)
    if (prev === 'connecting') {
      const waiters = this.settledWaiters
      this.settledWaiters = []
      for (const w of waiters) w()
    }
    if (next === 'ok') {
      if (prev === 'connecting') this.log.info({ store: 'redis', redis: this.url }, 'affinity store connected to Redis')
      else this.log.info({ store: 'redis', redis: this.url, fallbackMs: forMs }, 'affinity store answering again: lookups use Redis')
    } else if (next === 'fallback') {
      this.fallbacks++
      this.deadlines.expireAll()
      this.podDeadlines.expireAll()
      this.probeTimer.refresh()
      this.log.warn({ store: 'redis', redis: this.url, cause, lookupTimeoutMs: this.budgetMs }, 'affinity store unavailable: lookups fall back to rendezvous hashing')
    }
  }
}
