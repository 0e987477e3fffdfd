import type { Counter } from 'prom-client'
import type { Config } from '../config/load.js'

/**
 * Admission control of new WebSocket handshakes: a token bucket of `handshakesPerSec`, `burst` deep.
 * A pod that takes a drained pod's sessions (or a reconnect wave) admits them at a rate its backends
 * can absorb; the rest are told when to come back, jittered so their retries spread out.
 */
export class Admission {
  private tokens: number
  private last = performance.now()
  private readonly refused: { http: Counter.Internal, ws: Counter.Internal }

  constructor (private cfg: Config['admission'], refused: Counter<'reply'>) {
    this.tokens = cfg.burst
    this.refused = { http: refused.labels('http_503'), ws: refused.labels('ws_1013') }
  }

  /** A reload: the new rate and bucket size apply from now on (tokens held so far are kept, up to the new burst). */
  reconfigure (cfg: Config['admission']): void {
    this.cfg = cfg
    this.tokens = Math.min(this.tokens, cfg.burst)
  }

  get enabled (): boolean {
    return this.cfg.handshakesPerSec > 0
  }

  /** Takes one handshake's token; false when the bucket is empty (the caller refuses the handshake). */
  take (): boolean {
    if (!this.enabled) return true
    const now = performance.now()
    this.tokens = Math.min(this.cfg.burst, this.tokens + (now - this.last) * this.cfg.handshakesPerSec / 1000)
    this.last = now
    if (this.tokens < 1) return false
    this.tokens--
    return true
  }

  /** A refused handshake: counts it and returns the retry hint in ms (retryAfterMs to twice that). */
  refuse (reply: 'http' | 'ws'): number {
    this.refused[reply].inc()
    return Math.round(this.cfg.retryAfterMs * (1 + Math.random()))
  }

  status (): object {
    return { handshakesPerSec: this.cfg.handshakesPerSec, burst: this.cfg.burst, tokens: this.enabled ? Math.floor(this.tokens) : null }
  }
}
