import { createHash } from 'node:crypto'
import type { Logger } from 'pino'
import type { Counter, Gauge, Histogram } from 'prom-client'
import { FerryError } from '../errors.js'

/**
 * Where a session lives: the backend endpoint that holds it, the gateway pod that owns its client side,
 * and the fencing epoch (bumped by every `claim`, carried by OPEN/RESUME; a backend refuses a lower one).
 */
export interface AffinityRecord {
  /** `host:port` of the backend endpoint. */
  readonly endpoint: string
  /** Gateway id (`gateway.id`) of the pod that owns the session. */
  readonly pod: string
  /** Non-negative integer; only `claim` moves it, always by +1. */
  readonly epoch: number
}

/**
 * The outcome of `claim`. `stale`: the record's epoch is not the expected one (someone else moved the
 * session first; `record` is what the store holds now). `missing`: no record (expired, deleted, never
 * written). `unavailable`: the store could not answer within its budget (Redis down or slow), nothing
 * was claimed and nothing can be fenced.
 */
export type ClaimResult =
  | { readonly ok: true, readonly record: AffinityRecord }
  | { readonly ok: false, readonly record: AffinityRecord | undefined, readonly reason: 'stale' | 'missing' | 'unavailable' }

/**
 * 'ok': answers come from the store. 'fallback': the store cannot answer in time (Redis down, slow or not
 * yet connected); every call resolves at once to its fallback answer (`get` → undefined, so the caller
 * picks by rendezvous hashing and all pods agree; writes → false) until Redis answers again.
 */
export type AffinityState = 'ok' | 'fallback'

export type AffinityStoreKind = 'memory' | 'redis'

/** Operations, as the `op` label of the store metrics (one list: the type and the metric children). */
const AFFINITY_OPS = ['get', 'set', 'touch', 'delete', 'claim', 'announce', 'pods', 'withdraw'] as const
export type AffinityOp = typeof AFFINITY_OPS[number]

/**
 * Session key → affinity record, with a TTL. No method throws for a store failure or waits past the
 * store's budget: a failure is an answer (undefined / false / `unavailable`) and a `state` of
 * 'fallback'. They do throw FerryError('FERRY_ERR_INTERNAL') for a malformed record (a bug in the caller).
 */
export interface AffinityStore {
  readonly kind: AffinityStoreKind
  readonly state: AffinityState
  /** The record, or undefined when there is none, it expired, or the store is falling back. */
  get: (key: string) => Promise<AffinityRecord | undefined>
  /** Writes (replaces) the record with a TTL (default: the store's `ttlMs`). False when not stored. */
  set: (key: string, record: AffinityRecord, ttlMs?: number) => Promise<boolean>
  /** Restarts the TTL of a live record. False when there is none (or the store is falling back). */
  touch: (key: string, ttlMs?: number) => Promise<boolean>
  /** Removes the record. True when one was removed. */
  delete: (key: string) => Promise<boolean>
  /**
   * Atomic compare-and-set: when the record's epoch is `expectedEpoch`, it becomes
   * `{ endpoint (unchanged), pod, epoch: expectedEpoch + 1 }` (TTL unchanged). Of concurrent claims with
   * the same expected epoch, from any pods, exactly one wins.
   */
  claim: (key: string, pod: string, expectedEpoch: number) => Promise<ClaimResult>
  /** Resolves with the state once the store settled (Redis connected or found unreachable), within `waitMs`. */
  ready: (waitMs?: number) => Promise<AffinityState>
  /** Idempotent. 'flush' lets commands already sent finish (bounded); 'abort' drops the connection now. */
  close: (kind?: 'flush' | 'abort') => Promise<void>
  /** JSON for /status. */
  status: () => AffinityStoreStatus
}

export interface AffinityStoreStatus {
  readonly store: AffinityStoreKind
  readonly state: AffinityState
  readonly ttlMs: number
  readonly [detail: string]: unknown
}

/** The `affinity` config slice (ParsedConfig['affinity'] fits it). */
export interface AffinityOptions {
  readonly store: AffinityStoreKind
  /** Default TTL of `set` and `touch`. */
  readonly ttlMs: number
  /** memory: records kept at most; the least recently used go first. */
  readonly maxEntries: number
  readonly redis: RedisAffinityOptions
}

export interface RedisAffinityOptions {
  /** `redis://[user:password@]host:port[/db]` or `rediss://…`. */
  readonly url: string
  /** Budget of every call; past it the call answers its fallback and the store falls back. */
  readonly lookupTimeoutMs: number
  /** Prefix of the Redis keys (`ferry:aff:`). */
  readonly keyPrefix: string
  /** Prefix of the pod directory keys (`ferry:pods:`; see pods.ts). */
  readonly podsKeyPrefix?: string
  // Not in the config schema (derived defaults); here for tests and for operators who need them.
  /** While falling back, how often a PING checks whether Redis answers within the budget again. Default max(100, 4 × lookupTimeoutMs). */
  readonly probeIntervalMs?: number
  /** A connection with commands outstanding and no byte from Redis for this long is dropped and reconnected (a stopped or vanished server). Default max(1000, 40 × lookupTimeoutMs). */
  readonly deadAfterMs?: number
  /** TCP connect attempt budget. Default 1000. */
  readonly connectTimeoutMs?: number
  /** Cap of the reconnect backoff (exponential from 50 ms, jittered). Default 1000. */
  readonly maxReconnectDelayMs?: number
}

/**
 * The metric families a store updates, named as the Metrics class (src/observability/metrics.ts)
 * declares them: structural, so passing the gateway's Metrics satisfies it. Without it, no metrics.
 */
export interface AffinityMetrics {
  /** ferry_affinity_fallback{store}: 1 while the store answers with fallbacks, else 0. */
  readonly affinityFallback: Gauge<'store'>
  /** ferry_affinity_lookups_total{store,outcome}: get() answers by outcome (hit, miss, fallback). */
  readonly affinityLookups: Counter<'store' | 'outcome'>
  /** ferry_affinity_store_seconds{store,op}: how long Redis took to answer a call (answered calls only). */
  readonly affinityStoreLatency: Histogram<'store' | 'op'>
  /** ferry_affinity_store_errors_total{store,op,reason}: calls that failed: timeout, connection, reply, corrupt. */
  readonly affinityStoreErrors: Counter<'store' | 'op' | 'reason'>
  /** ferry_affinity_evictions_total{store}: records dropped by maxEntries before their TTL (memory). */
  readonly affinityEvictions: Counter<'store'>
}

export interface AffinityDeps {
  readonly logger: Logger
  readonly metrics?: AffinityMetrics
}

/** Keys longer than this are stored by digest: keys come from clients, and a store must stay bounded in bytes too. */
export const MAX_KEY_LENGTH = 128

/**
 * The key as stored. Long keys become `#` + base64url(SHA-256): fixed size, and two keys share a record
 * only if their digests collide. (Finding a short key equal to a long key's digest needs that long key.)
 */
export function storeKey (key: string): string {
  return key.length <= MAX_KEY_LENGTH ? key : '#' + createHash('sha256').update(key).digest('base64url')
}

/** Rejects records the stores cannot represent; the Redis encoding separates fields with '|'. */
export function checkRecord (record: AffinityRecord): void {
  if (typeof record.endpoint !== 'string' || record.endpoint.length === 0 || record.endpoint.includes('|')) {
    throw new FerryError('FERRY_ERR_INTERNAL', `affinity record endpoint must be a non-empty host:port without '|', got ${JSON.stringify(record.endpoint)}`)
  }
  checkPod(record.pod)
  checkEpoch(record.epoch)
}

export function checkPod (pod: string): void {
  if (typeof pod !== 'string' || pod.length === 0) {
    throw new FerryError('FERRY_ERR_INTERNAL', `affinity record pod must be a non-empty string, got ${JSON.stringify(pod)}`)
  }
}

export function checkEpoch (epoch: number): void {
  if (!Number.isSafeInteger(epoch) || epoch < 0) {
    throw new FerryError('FERRY_ERR_INTERNAL', `affinity epoch must be a non-negative safe integer, got ${String(epoch)}`)
  }
}

/** A usable TTL in whole milliseconds (Redis PX wants an integer ≥ 1); a missing or non-finite one → `def`. */
export function ttlOf (ttlMs: number | undefined, def: number): number {
  const v = ttlMs === undefined || !Number.isFinite(ttlMs) ? def : ttlMs
  return Math.max(1, Math.ceil(v))
}

export function frozenRecord (endpoint: string, pod: string, epoch: number): AffinityRecord {
  return Object.freeze({ endpoint, pod, epoch })
}

interface Inc { inc: () => void }
interface Settable { set: (v: number) => void }
interface Observable { observe: (v: number) => void }
const NOOP: Inc & Settable & Observable = { inc () {}, set () {}, observe () {} }

/** Metric children resolved once per store (never per call), or no-ops without metrics. */
export class StoreMetrics {
  readonly fallback: Settable
  readonly hit: Inc
  readonly miss: Inc
  readonly fellBack: Inc
  readonly evictions: Inc
  private readonly latency = new Map<AffinityOp, Observable>()
  private readonly errors = new Map<string, Inc>()

  constructor (private readonly store: AffinityStoreKind, private readonly m: AffinityMetrics | undefined) {
    this.fallback = m?.affinityFallback.labels(store) ?? NOOP
    this.hit = m?.affinityLookups.labels(store, 'hit') ?? NOOP
    this.miss = m?.affinityLookups.labels(store, 'miss') ?? NOOP
    this.fellBack = m?.affinityLookups.labels(store, 'fallback') ?? NOOP
    this.evictions = m?.affinityEvictions.labels(store) ?? NOOP
    for (const op of AFFINITY_OPS) this.latency.set(op, m?.affinityStoreLatency.labels(store, op) ?? NOOP)
  }

  observe (op: AffinityOp, seconds: number): void {
    this.latency.get(op)!.observe(seconds)
  }

  error (op: AffinityOp, reason: 'timeout' | 'connection' | 'reply' | 'corrupt'): void {
    const k = `${op}:${reason}`
    let c = this.errors.get(k)
    if (c === undefined) { c = this.m?.affinityStoreErrors.labels(this.store, op, reason) ?? NOOP; this.errors.set(k, c) }
    c.inc()
  }
}
