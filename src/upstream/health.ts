import type { Logger } from 'pino'
import type { Metrics } from '../observability/metrics.js'

/** Passive health of one endpoint. Operator intent (ready/drain/maint) will sit beside it, not in it. */
export type EndpointHealth = 'up' | 'ejected'

export interface EjectionConfig {
  readonly consecutiveFailures: number
  readonly ejectMs: number
}

/**
 * Outlier ejection for one endpoint, shared by every upstream kind: `consecutiveFailures` in a row
 * eject it for `ejectMs`; once that passes it is "probing" and its first failure ejects it again, its
 * first success brings it back. The only code that moves `health`.
 */
export class PassiveHealth {
  health: EndpointHealth = 'up'
  consecutiveFailures = 0
  ejectedUntil = 0
  ejections = 0

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
    if (this.health === 'ejected') this.to('up', why)
  }

  failed (what: string): void {
    this.consecutiveFailures++
    const now = Date.now()
    // A probing endpoint (ejection expired) goes straight back out on its first failure.
    const probing = this.health === 'ejected' && now >= this.ejectedUntil
    if (probing || (this.health === 'up' && this.consecutiveFailures >= this.cfg.consecutiveFailures)) {
      this.ejectedUntil = now + this.cfg.ejectMs
      this.consecutiveFailures = 0
      this.ejections++
      this.metrics.endpointEjections.labels(this.upstream, this.address).inc()
      if (probing) this.log.warn({ upstream: this.upstream, endpoint: this.address }, 'endpoint still failing, ejected again')
      this.to('ejected', `${this.cfg.consecutiveFailures} consecutive ${what}`)
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
