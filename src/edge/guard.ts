import type { Logger } from 'pino'
import type { Config } from '../config/load.js'
import { canonicalJson } from '../config/reload.js'
import { FerryError, isFerryError } from '../errors.js'
import type { Metrics } from '../observability/metrics.js'
import { AuthPolicy, type EdgeRequest, type Principal } from './auth.js'
import { EdgeRedis } from './redis.js'
import { readSource } from './source.js'

import { RateLimited, RateLimitPolicy, type SharedBuckets } from './rate-limit.js'
export { RateLimited } from './rate-limit.js'
export type { EdgeRequest, Principal } from './auth.js'

/** A request the edge let through, and what the backend is to learn about the caller. */
export interface Admitted {
  readonly principal: Principal | undefined
  /** Header names removed from what the client sent. */
  readonly strip: ReadonlySet<string>
  /** Headers added (flat `[name, value, …]`): the forwarded claims and the method. */
  readonly add: readonly string[]
}

const NOTHING: Admitted = Object.freeze({ principal: undefined, strip: new Set<string>(), add: [] })

/** Header values Ferry may forward: visible ASCII, space and tab, not too long. */
const SAFE_VALUE = /^[\t\x20-\x7e\x80-\uffff]{0,4096}$/

function then<T, U> (v: T | Promise<T>, f: (x: T) => U | Promise<U>): U | Promise<U> {
  return v instanceof Promise ? v.then(f) : f(v)
}

/**
 * The edge checks of one route, in order: rate limits keyed on the request (ip, header), the auth
 * policy, rate limits keyed on verified claims. Each step is synchronous when it can be, so a route
 * with local limits and cached credentials adds no promise to a request.
 */
export class RouteGuard {
  private readonly before: RateLimitPolicy[]
  private readonly after: RateLimitPolicy[]

  constructor (private readonly auth: AuthPolicy | undefined, limits: RateLimitPolicy[], private readonly metrics: Metrics) {
    this.before = limits.filter((l) => !l.cfg.key.startsWith('claim:'))
    this.after = limits.filter((l) => l.cfg.key.startsWith('claim:'))
  }

  /** HMAC signatures cover the body: the HTTP exchange hashes it as it streams. */
  get verifiesBody (): boolean {
    return this.auth?.cfg.hmac !== undefined
  }

  /** The WWW-Authenticate challenge for this route's 401s. */
  get challenge (): string | undefined {
    return this.auth?.challenge
  }

  check (req: EdgeRequest): Admitted | Promise<Admitted> {
    return then(this.limit(this.before, req, undefined), () =>
      then(this.authenticate(req), (principal) =>
        then(this.limit(this.after, req, principal), () => this.admitted(principal))))
  }

  private limit (limits: RateLimitPolicy[], req: EdgeRequest, principal: Principal | undefined, from = 0): void | Promise<void> {
    for (let i = from; i < limits.length; i++) {
      const l = limits[i]!
      const key = limitKey(l.cfg.key, req, principal)
      if (key === undefined) continue
      const r = l.check(key)
      if (r instanceof Promise) return r.then(() => this.limit(limits, req, principal, i + 1))
    }
  }

  private authenticate (req: EdgeRequest): Principal | undefined | Promise<Principal | undefined> {
    const auth = this.auth
    if (auth === undefined) return undefined
    const ok = (p: Principal | undefined): Principal | undefined => {
      this.count(auth.name, p?.method ?? 'none', p === undefined ? 'anonymous' : 'ok')
      return p
    }
    const failed = (err: unknown): never => {
      this.count(auth.name, (err as { authMethod?: string }).authMethod ?? 'none', isFerryError(err) ? err.code : 'FERRY_ERR_INTERNAL')
      throw err
    }
    let r: Principal | undefined | Promise<Principal>
    try { r = auth.authenticate(req) } catch (err) { return failed(err) }
    return r instanceof Promise ? r.then(ok, failed) : ok(r)
  }

  /** prom-client hashes labels on every labels() call: the few children are kept. */
  private readonly counted = new Map<string, { inc: () => void }>()

  private count (policy: string, method: string, result: string): void {
    const k = `${method} ${result}`
    let c = this.counted.get(k)
    if (c === undefined) { c = this.metrics.authResults.labels(policy, method, result); this.counted.set(k, c) }
    c.inc()
  }

  private admitted (principal: Principal | undefined): Admitted {
    const auth = this.auth
    if (auth === undefined) return NOTHING
    const add: string[] = []
    if (principal !== undefined) {
      for (const [claim, header] of Object.entries(auth.cfg.forward.claims)) {
        const v = principal.claims[claim]
        if (v === undefined || v === null) continue
        const s = typeof v === 'string' ? v : JSON.stringify(v)
        if (SAFE_VALUE.test(s)) add.push(header, s)
      }
      add.push(auth.cfg.forward.methodHeader, principal.method)
    }
    return { principal, strip: auth.stripped, add }
  }
}

function limitKey (spec: string, req: EdgeRequest, principal: Principal | undefined): string | undefined {
  if (spec === 'ip') return req.clientIp
  if (spec.startsWith('header:')) {
    const v = readSource(spec, req.headers, '')
    return v === undefined ? undefined : v.slice(0, 256)
  }
  const v = principal?.claims[spec.slice(6)]
  return typeof v === 'string' ? v.slice(0, 256) : typeof v === 'number' ? String(v) : undefined
}

/** Applies an admission to a flat header list: the client's copies of the stripped names go, the forwarded ones are added. */
export function applyAdmitted (headers: readonly string[], a: Admitted): string[] {
  if (a.strip.size === 0 && a.add.length === 0) return headers as string[]
  const out: string[] = []
  for (let i = 0; i < headers.length; i += 2) if (!a.strip.has(headers[i]!)) out.push(headers[i]!, headers[i + 1]!)
  for (const x of a.add) out.push(x)
  return out
}

/**
 * Owns the edge objects of one config: auth policies, rate-limit policies (their buckets) and the Redis
 * connection behind cluster-wide limits. A reload builds a new Edge that keeps the previous one's
 * policies whose config did not change (local buckets, JWKS caches and nonces survive) and its Redis
 * connection when `rateLimits.redis` is the same.
 */
export class Edge {
  private readonly auth = new Map<string, { key: string, policy: AuthPolicy }>()
  private readonly limits = new Map<string, { key: string, policy: RateLimitPolicy }>()
  private readonly guards = new Map<string, RouteGuard>()
  private readonly redisKey: string
  private readonly redis: EdgeRedis | undefined

  /** Throws FerryError FERRY_ERR_CONFIG_INVALID naming the field when a key file cannot be read. */
  /** `pod`: the pod's buckets for `scope: local` policies in a worker of a pod (src/planes/buckets.ts). */
  constructor (cfg: Config, prev: Edge | undefined, log: Logger, metrics: Metrics, pod?: SharedBuckets) {
    const needsRedis = Object.values(cfg.rateLimits.policies).some((p) => p.scope === 'redis') ||
      Object.values(cfg.auth.policies).some((p) => p.hmac?.replayStore === 'redis')
    this.redisKey = needsRedis ? canonicalJson(cfg.rateLimits.redis) : ''
    this.redis = !needsRedis ? undefined : prev?.redisKey === this.redisKey ? prev.redis : new EdgeRedis(cfg.rateLimits.redis, log.child({ component: 'edge-redis' }))
    const sameRedis = this.redis === prev?.redis
    try {
      for (const [name, pcfg] of Object.entries(cfg.auth.policies)) {
        const key = canonicalJson(pcfg)
        const old = prev?.auth.get(name)
        // Key files are read again on every reload (rotated keys), so only inline-only policies are kept.
        const reusable = old?.key === key && sameRedis && pcfg.jwt?.secretFile === undefined && pcfg.jwt?.publicKeyFile === undefined && pcfg.jwt?.jwksFile === undefined && pcfg.apiKey?.keysFile === undefined
        this.auth.set(name, { key, policy: reusable ? old.policy : new AuthPolicy(name, pcfg, this.redis) })
      }
      for (const [name, pcfg] of Object.entries(cfg.rateLimits.policies)) {
        const key = canonicalJson(pcfg)
        const old = prev?.limits.get(name)
        this.limits.set(name, { key, policy: old?.key === key && sameRedis ? old.policy : new RateLimitPolicy(name, pcfg, this.redis, decisionCounter(metrics, name), pod) })
      }
    } catch (err) {
      if (!sameRedis) void this.redis?.close()
      throw err
    }
    for (const r of cfg.routes) {
      if (r.auth === undefined && r.rateLimits.length === 0) continue
      const name = guardName(r.auth, r.rateLimits)
      if (this.guards.has(name)) continue
      this.guards.set(name, new RouteGuard(r.auth !== undefined ? this.auth.get(r.auth)!.policy : undefined, r.rateLimits.map((n) => this.limits.get(n)!.policy), metrics))
    }
  }

  /** The guard of a route with an auth policy or rate limits; undefined for an open route. */
  guard (route: { auth: string | undefined, rateLimits: readonly string[] }): RouteGuard | undefined {
    if (route.auth === undefined && route.rateLimits.length === 0) return undefined
    return this.guards.get(guardName(route.auth, route.rateLimits))
  }

  /** The running Edge was replaced by `next` (or the gateway stops: no `next`): closes what `next` does not keep. */
  async retire (next: Edge | undefined): Promise<void> {
    if (this.redis !== undefined && this.redis !== next?.redis) await this.redis.close()
  }

  status (): { rateLimitKeys: Record<string, number>, redis: boolean } {
    const rateLimitKeys: Record<string, number> = {}
    for (const [n, l] of this.limits) rateLimitKeys[n] = l.policy.keysTracked
    return { rateLimitKeys, redis: this.redis !== undefined }
  }
}

function guardName (auth: string | undefined, limits: readonly string[]): string {
  return `${auth ?? ''}\0${limits.join('\0')}`
}

function decisionCounter (metrics: Metrics, policy: string): (d: 'allowed' | 'limited' | 'fail_open' | 'fail_closed') => void {
  const c = {
    allowed: metrics.rateLimitDecisions.labels(policy, 'allowed'),
    limited: metrics.rateLimitDecisions.labels(policy, 'limited'),
    fail_open: metrics.rateLimitDecisions.labels(policy, 'fail_open'),
    fail_closed: metrics.rateLimitDecisions.labels(policy, 'fail_closed'),
  }
  return (d) => { c[d].inc() }
}

/** Why an edge refusal gets which extra response header. */
export function refusalHeader (err: FerryError, challenge: string | undefined): readonly [string, string] | undefined {
  if (err instanceof RateLimited) return ['retry-after', String(Math.max(1, Math.ceil(err.retryAfterMs / 1000)))]
  if (err.status === 401 && challenge !== undefined) return ['www-authenticate', err.code === 'FERRY_ERR_AUTH_MISSING' ? challenge : `${challenge}, error="invalid_token"`]
  return undefined
}
