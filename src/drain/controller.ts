import type { Logger } from 'pino'
import type { Config } from '../config/load.js'
import type { Metrics } from '../observability/metrics.js'

/**
 *   idle ──start()──▶ grace ──acceptGraceMs──▶ migrating ──no sessions left──▶ finishing ──nothing open──▶ done
 *                       │                          │                              │
 *                       └───────── deadline (acceptGraceMs + deadlineMs from start) ────▶ forced close ──▶ done
 *
 * grace: /readyz says 503 while the listeners still accept (load balancers catch up).
 * migrating: listeners closed; WebSocket sessions leave in paced waves (≤ maxMigrationsPerSec, spread
 *   over spreadMs); HTTP responses carry `Connection: close`.
 * finishing: in-flight HTTP requests and TCP connections end; once no HTTP request is in flight and
 *   nothing has been leaving on the HTTP port for two ticks, the idle keep-alive client connections left
 *   are closed (not left to uWS's 10 s idle timer).
 * Then the gateway closes its upstreams (mux links get GOAWAY), its store and admin listener.
 */
export type DrainPhase = 'idle' | 'grace' | 'migrating' | 'finishing' | 'done'

/** ferry_drain_phase's value of each phase. */
export const PHASE_VALUE: Record<DrainPhase, number> = { idle: 0, grace: 1, migrating: 2, finishing: 3, done: 4 }
const TICK_MS = 100

/** What the drain controller drives; the gateway implements it. */
export interface DrainTarget {
  /** /readyz answers 503 from now on. */
  notReady: () => void
  /** Listeners stop accepting (HTTP/WS, TCP); established connections continue, TCP ones up to `graceMs` (the time to the deadline). */
  closeListeners: (graceMs: number) => void
  /** WebSocket sessions open (or still completing their handshake). */
  sessions: () => number
  /** Migrates up to `n` open sessions; returns how many it moved, by kind. */
  migrate: (n: number) => { resumable: number, plain: number }
  httpInFlight: () => number
  /** Client connections on the HTTP port other than WebSocket sessions (idle keep-alive); undefined when not measurable. */
  idleHttpConnections: () => number | undefined
  /** Connections on the HTTP port with bytes still leaving (a response tail, a WebSocket close); undefined when not measurable. */
  httpSending: () => number | undefined
  /** Closes every client connection left on the HTTP port (asked when no request, no session and nothing leaving is left). */
  closeHttpConnections: () => void
  tcpOpen: () => number
  /** The deadline passed: closes whatever is still open; returns the sessions it closed. */
  forceClose: () => number
  /** Closes upstreams (GOAWAY on links), the store and the admin listener. */
  finish: () => Promise<void>
}

export interface DrainStatus {
  phase: DrainPhase
  reason: string | undefined
  startedAt: string | undefined
  /** When the accept grace ends and the listeners close. */
  listenersCloseAt: string | undefined
  deadlineAt: string | undefined
  sessionsAtStart: number
  migrated: { resumable: number, plain: number, forced: number }
  remaining: { sessions: number, httpRequests: number, tcpConnections: number }
  /** Sessions migrated per second now. */
  ratePerSec: number
  hurried: number
}

/**
 * The pace of the migrating phase, in sessions a second (docs/drain.md): the `sessions` left when the
 * listeners close, evenly over spreadMs, but at least one a second (a handful of sessions is no
 * reconnect storm worth stretching over spreadMs) and at most maxMigrationsPerSec; hurried, all within
 * a second. Infinity (spreadMs 0): all at once. A pod's worker applies it to its own sessions, with its
 * share of maxMigrationsPerSec (src/planes/share.ts).
 */
export function migrationRate (cfg: Pick<Config['drain'], 'spreadMs' | 'maxMigrationsPerSec'>, sessions: number, hurried: boolean): number {
  if (hurried) return Math.max(1, sessions)
  const spread = cfg.spreadMs / 1000
  return Math.min(cfg.maxMigrationsPerSec, spread > 0 ? Math.max(1, sessions / spread) : Infinity)
}

/**
 * Drives one drain from start to exit. The only owner of its timers (the grace timer and the tick).
 * Starting twice is the same drain; `hurry` (a second signal) shortens what is left of it.
 */
export class DrainController {
  private phase: DrainPhase = 'idle'
  private reason: string | undefined
  private startedAt = 0
  private listenersCloseAt = 0
  private deadlineAt = 0
  private sessionsAtStart = 0
  private rate = 0
  private allowance = 0
  private lastTick = 0
  private hurried = 0
  /** Finishing ticks in a row with no HTTP request in flight and nothing leaving on the HTTP port. */
  private httpQuiet = 0
  private httpClosed = false
  private readonly migrated = { resumable: 0, plain: 0, forced: 0 }
  private timer: NodeJS.Timeout | undefined
  private resolveDone!: () => void
  /** Resolves when the drain is complete (everything closed). */
  readonly done: Promise<void>

  constructor (private cfg: Config['drain'], private readonly target: DrainTarget, private readonly log: Logger, private readonly metrics: Metrics) {
    this.done = new Promise((resolve) => { this.resolveDone = resolve })
    metrics.drainPhase.set(0)
  }

  /** A reload: the new timings apply to a drain that has not started. */
  reconfigure (cfg: Config['drain']): void {
    if (this.phase === 'idle') this.cfg = cfg
  }

  get current (): DrainPhase {
    return this.phase
  }

  get active (): boolean {
    return this.phase !== 'idle'
  }

  /** Starts the drain (a second call is the same drain and changes nothing). */
  start (reason: string): DrainStatus {
    if (this.phase !== 'idle') {
      this.log.info({ reason, phase: this.phase }, 'drain already in progress')
      return this.status()
    }
    this.reason = reason
    this.startedAt = Date.now()
    this.listenersCloseAt = this.startedAt + this.cfg.acceptGraceMs
    this.deadlineAt = this.listenersCloseAt + this.cfg.deadlineMs
    this.sessionsAtStart = this.target.sessions()
    this.to('grace')
    this.target.notReady()
    this.log.info({ reason, sessions: this.sessionsAtStart, acceptGraceMs: this.cfg.acceptGraceMs, spreadMs: this.cfg.spreadMs, deadlineMs: this.cfg.deadlineMs }, 'drain started: not ready, still accepting')
    this.schedule()
    return this.status()
  }

  /**
   * A second signal: the accept grace ends now, the sessions left go within a second (maxMigrationsPerSec
   * no longer applies) and the deadline comes within 5 s. A third: the deadline is now.
   */
  hurry (): void {
    if (this.phase === 'idle' || this.phase === 'done') return
    this.hurried++
    const now = Date.now()
    this.deadlineAt = Math.min(this.deadlineAt, this.hurried === 1 ? now + 5000 : now)
    this.listenersCloseAt = Math.min(this.listenersCloseAt, now)
    this.log.warn({ hurried: this.hurried, deadlineInMs: this.deadlineAt - now }, 'drain hurried')
    if (this.phase === 'migrating') this.rate = Math.max(this.rate, this.target.sessions())
    this.schedule()
  }

  private to (phase: DrainPhase): void {
    this.phase = phase
    this.metrics.drainPhase.set(PHASE_VALUE[phase])
  }

  private schedule (): void {
    if (this.timer !== undefined) clearTimeout(this.timer)
    const now = Date.now()
    const delay = this.phase === 'grace' ? Math.min(this.listenersCloseAt, this.deadlineAt) - now : TICK_MS
    this.timer = setTimeout(() => { this.timer = undefined; this.step() }, Math.max(0, delay))
  }

  private step (): void {
    const now = Date.now()
    if (this.phase === 'done') return
    if (now >= this.deadlineAt) { void this.end(true); return }
    if (this.phase === 'grace') {
      if (now < this.listenersCloseAt) { this.schedule(); return }
      this.target.closeListeners(this.deadlineAt - now)
      const sessions = this.target.sessions()
      this.rate = migrationRate(this.cfg, sessions, this.hurried > 0)
      this.allowance = 0
      this.lastTick = now
      this.to('migrating')
      this.log.info({ sessions, ratePerSec: Number.isFinite(this.rate) ? Math.round(this.rate * 10) / 10 : 'all at once' }, 'drain: listeners closed, migrating sessions')
    }
    if (this.phase === 'migrating') {
      const left = this.target.sessions()
      if (left > 0) {
        this.allowance = Math.min(this.allowance + (now - this.lastTick) * this.rate / 1000, Math.max(1, this.rate))
        this.lastTick = now
        const n = Number.isFinite(this.allowance) ? Math.floor(this.allowance) : left
        if (n > 0) {
          const moved = this.target.migrate(n)
          this.migrated.resumable += moved.resumable
          this.migrated.plain += moved.plain
          if (moved.resumable > 0) this.metrics.drainMigrated.labels('resumable').inc(moved.resumable)
          if (moved.plain > 0) this.metrics.drainMigrated.labels('plain').inc(moved.plain)
          this.allowance -= moved.resumable + moved.plain
          // Sessions still completing their handshake cannot move yet: do not bank allowance for them.
          if (moved.resumable + moved.plain < n) this.allowance = Math.min(this.allowance, 1)
        }
      }
      if (this.target.sessions() === 0) {
        this.to('finishing')
        this.log.info({ migrated: this.migrated }, 'drain: sessions gone, finishing HTTP requests and TCP connections')
      }
    }
    if (this.phase === 'finishing') {
      if (!this.httpClosed && this.target.httpInFlight() === 0) {
        // Idle keep-alive connections would stay until uWS's idle timer (10 s). They are closed once
        // nothing has been leaving on the port for two ticks: a close frame or a response tail still in
        // the kernel's send queue (or, between two ticks, in uWS's) is never cut.
        this.httpQuiet = (this.target.httpSending() ?? 0) === 0 ? this.httpQuiet + 1 : 0
        if (this.httpQuiet >= 2) {
          this.httpClosed = true
          this.target.closeHttpConnections()
        }
      }
      // The idle-connection count reads /proc/net/tcp: asked last, only once the cheap counters are zero.
      if (this.target.httpInFlight() === 0 && this.target.tcpOpen() === 0 && (this.target.idleHttpConnections() ?? 0) === 0) { void this.end(false); return }
    }
    this.updateRemaining()
    this.schedule()
  }

  private updateRemaining (): void {
    const m = this.metrics.drainRemaining
    m.labels('sessions').set(this.target.sessions())
    m.labels('http_requests').set(this.target.httpInFlight())
    m.labels('tcp_connections').set(this.target.tcpOpen())
  }

  private async end (forced: boolean): Promise<void> {
    if (this.phase === 'done') return
    if (this.timer !== undefined) { clearTimeout(this.timer); this.timer = undefined }
    if (this.phase === 'grace') this.target.closeListeners(0)
    if (forced) {
      const n = this.target.forceClose()
      this.migrated.forced += n
      if (n > 0) this.metrics.drainMigrated.labels('forced').inc(n)
      this.log.warn({ sessions: n, httpRequests: this.target.httpInFlight(), tcpConnections: this.target.tcpOpen() }, 'drain deadline reached: closing what is still open')
    }
    this.to('done')
    this.updateRemaining()
    this.log.info({ migrated: this.migrated, seconds: Math.round((Date.now() - this.startedAt) / 100) / 10 }, 'drained')
    try {
      await this.target.finish()
    } catch (err) {
      this.log.error({ err }, 'drain: closing upstreams failed')
    }
    this.resolveDone()
  }

  /** Stops the timers without finishing (the gateway is being stopped another way). */
  cancel (): void {
    if (this.timer !== undefined) { clearTimeout(this.timer); this.timer = undefined }
  }

  status (): DrainStatus {
    const iso = (t: number): string | undefined => t > 0 ? new Date(t).toISOString() : undefined
    return {
      phase: this.phase,
      reason: this.reason,
      startedAt: iso(this.startedAt),
      listenersCloseAt: iso(this.listenersCloseAt),
      deadlineAt: iso(this.deadlineAt),
      sessionsAtStart: this.sessionsAtStart,
      migrated: { ...this.migrated },
      remaining: { sessions: this.target.sessions(), httpRequests: this.target.httpInFlight(), tcpConnections: this.target.tcpOpen() },
      ratePerSec: Number.isFinite(this.rate) ? Math.round(this.rate * 10) / 10 : -1,
      hurried: this.hurried,
    }
  }
}
