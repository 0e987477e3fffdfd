import type { Logger } from 'pino'
import type { Gauge } from 'prom-client'
import type { Metrics } from '../observability/metrics.js'

/** Passive health of one endpoint. Operator intent (ready/drain/maint) sits beside it, not in it. */
export type EndpointHealth = 'up' | 'ejected'

export interface EjectionConfig {
  readonly consecutiveFailures: number
  readonly ejectMs: number
  /** Cap of the ejection time: each ejection in a streak lasts twice the one before, up to this. */
  readonly maxEjectMs: number
}

/**
 * Outlier ejection for one endpoint, shared by every upstream kind: `consecutiveFailures` in a row
 * eject it for `ejectMs`; once that passes it is "probing" and its first failure ejects it again, its
 * first success brings it back. Ejections in a streak back off: each lasts twice the previous one, up
 * to `maxEjectMs`; the streak is forgotten once the endpoint stayed up as long as its last ejection
 * lasted. The only code that moves `health`.
 */
export class PassiveHealth {
  health: EndpointHealth = 'up'
  consecutiveFailures = 0
  ejectedUntil = 0
  ejections = 0
  /** Ejections in the current streak (the backoff exponent). */
  private streak = 0
  private lastEjectMs = 0
  private restoredAt = 0

  constructor (
    private readonly upstream: string,
    private readonly address: string,
    private readonly cfg: EjectionConfig,
    private readonly log: Logger,
    private readonly metrics: Metrics,
  ) {
    metrics.endpointUp.labels(upstream, address).set(1)
  }

  acceptsAt (now: number): boolean {
    return this.health === 'up' || now >= this.ejectedUntil
  }

  succeeded (why: string): void {
    this.consecutiveFailures = 0
    if (this.health === 'ejected') {
      this.restoredAt = Date.now()
      this.to('up', why)
    }
  }

  failed (what: string): void {
    this.consecutiveFailures++
    const now = Date.now()
    // A probing endpoint (ejection expired) goes straight back out on its first failure.
    const probing = this.health === 'ejected' && now >= this.ejectedUntil
    if (probing || (this.health === 'up' && this.consecutiveFailures >= this.cfg.consecutiveFailures)) {
      if (!probing && now - this.restoredAt >= this.lastEjectMs) this.streak = 0
      const ms = Math.min(this.cfg.maxEjectMs, this.cfg.ejectMs * 2 ** Math.min(this.streak, 30))
      this.streak++
      this.lastEjectMs = ms
      this.ejectedUntil = now + ms
      this.consecutiveFailures = 0
      this.ejections++
      this.metrics.endpointEjections.labels(this.upstream, this.address).inc()
      if (probing) this.log.warn({ upstream: this.upstream, endpoint: this.address, ejectMs: ms }, 'endpoint still failing, ejected again')
      this.to('ejected', `${this.cfg.consecutiveFailures} consecutive ${what}; out for ${ms} ms`)
    }
  }

  private to (health: EndpointHealth, why: string): void {
    if (this.health === health) return
    this.health = health
    this.metrics.endpointUp.labels(this.upstream, this.address).set(health === 'up' ? 1 : 0)
    this.log.warn({ upstream: this.upstream, endpoint: this.address, health, why }, `endpoint ${health}`)
  }

  /** The /status view. */
  status (now: number): { health: string, ejectedForMs: number, consecutiveFailures: number, ejections: number } {
    return {
      health: this.health === 'ejected' && now >= this.ejectedUntil ? 'probing' : this.health,
      ejectedForMs: this.health === 'ejected' ? Math.max(0, this.ejectedUntil - now) : 0,
      consecutiveFailures: this.consecutiveFailures,
      ejections: this.ejections,
    }
  }
}

/** What active health checks concluded about one endpoint: `starting` until its first check answered. */
export type CheckedHealth = 'starting' | 'up' | 'down'

export interface CheckThresholds {
  readonly healthyThreshold: number
  readonly unhealthyThreshold: number
}

/**
 * Active health of one endpoint, from the results of its health checks (the EndpointSet's checker runs
 * them). starting → up on the first passed check (a new endpoint need not wait for `healthyThreshold`:
 * it has no bad record), starting/up → down after `unhealthyThreshold` failed checks in a row, down → up
 * after `healthyThreshold` passed ones in a row. The only code that moves `state`.
 */
export class ActiveHealth {
  state: CheckedHealth = 'starting'
  private passes = 0
  private fails = 0
  checks = 0
  lastError: string | undefined
  lastCheckMs: number | undefined
  private readonly gauge: Gauge.Internal<'upstream' | 'endpoint'>

  constructor (
    private readonly upstream: string,
    private readonly address: string,
    private readonly cfg: CheckThresholds,
    private readonly log: Logger,
    private readonly metrics: Metrics,
  ) {
    this.gauge = metrics.endpointCheckedUp.labels(upstream, address)
    this.gauge.set(0)
  }

  get up (): boolean {
    return this.state === 'up'
  }

  /** One check's outcome (`error` undefined: passed), which took `ms`. */
  record (error: string | undefined, ms: number): void {
    this.checks++
    this.lastCheckMs = ms
    this.metrics.healthChecks.labels(this.upstream, this.address, error === undefined ? 'passed' : 'failed').inc()
    if (error === undefined) {
      this.fails = 0
      this.passes++
      this.lastError = undefined
      if (this.state === 'starting' || (this.state === 'down' && this.passes >= this.cfg.healthyThreshold)) this.to('up', `${this.passes} check(s) passed`)
      return
    }
    this.passes = 0
    this.fails++
    this.lastError = error
    if (this.state !== 'down' && this.fails >= this.cfg.unhealthyThreshold) this.to('down', `${this.fails} check(s) failed: ${error}`)
  }

  private to (state: CheckedHealth, why: string): void {
    const from = this.state
    this.state = state
    this.gauge.set(state === 'up' ? 1 : 0)
    const line = { upstream: this.upstream, endpoint: this.address, from, to: state, why }
    if (from === 'starting' && state === 'up') this.log.info(line, 'endpoint passed its first health check')
    else this.log.warn(line, `endpoint health check ${state}`)
  }

  status (): { check: CheckedHealth, checks: number, consecutivePassed: number, consecutiveFailed: number, lastError: string | null, lastCheckMs: number | null } {
    return { check: this.state, checks: this.checks, consecutivePassed: this.passes, consecutiveFailed: this.fails, lastError: this.lastError ?? null, lastCheckMs: this.lastCheckMs ?? null }
  }
}
