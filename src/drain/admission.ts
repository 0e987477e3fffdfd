import type { Counter } from 'prom-client'
import type { Config } from '../config/load.js'
import { fullBucket, takeToken, type Bucket } from '../edge/token-bucket.js'

/**
 * Admission control of new WebSocket handshakes: a token bucket of `handshakesPerSec`, `burst` deep.
 * A pod that takes a drained pod's sessions (or a reconnect wave) admits them at a rate its backends
 * can absorb; the rest are told when to come back, jittered so their retries spread out.
 */
export class Admission {
  private readonly bucket: Bucket
  private readonly refused: { http: Counter.Internal, ws: Counter.Internal }

  constructor (private cfg: Config['admission'], refused: Counter<'reply'>) {
    this.bucket = fullBucket(cfg.burst)
    this.refused = { http: refused.labels('http_503'), ws: refused.labels('ws_1013') }
  }

  /** A reload: the new rate and bucket size apply from now on (tokens held so far are kept, up to the new burst). */
  reconfigure (cfg: Config['admission']): void {
    this.cfg = cfg
    this.bucket.tokens = Math.min(this.bucket.tokens, cfg.burst)
  }

  get enabled (): boolean {
    return this.cfg.handshakesPerSec > 0
  }

  /** Takes one handshake's token; false when the bucket is empty (the caller refuses the handshake). */
  take (): boolean {
    if (!this.enabled) return true
    return takeToken(this.bucket, performance.now(), this.cfg.handshakesPerSec, this.cfg.burst) === 0
  }

  /** A refused handshake: counts it and returns the retry hint in ms (retryAfterMs to twice that). */
  refuse (reply: 'http' | 'ws'): number {
    this.refused[reply].inc()
    return Math.round(this.cfg.retryAfterMs * (1 + Math.random()))
  }

  status (): object {
    return { handshakesPerSec: this.cfg.handshakesPerSec, burst: this.cfg.burst, tokens: this.enabled ? Math.floor(this.bucket.tokens) : null }
  }
}
