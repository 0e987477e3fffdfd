import { closeSync, openSync, readFileSync } from 'node:fs'
import type { Logger } from 'pino'
import type { Counter, Gauge } from 'prom-client'
import type { Metrics } from '../observability/metrics.js'

/**
 * off: `limits.fdReserve` is 0. accepting: the reserve is held and every listener accepts.
 * paused: the front (HTTP/WebSocket and TCP listeners) does not accept; the reserve is free for the
 * admin listener and for work under way. exhausted: work under way used up all but a quarter of the
 * reserve; the admin listener does not accept either until half of it is free (a connection nobody can
 * accept would make uWS spin on it).
 */
export type DescriptorState = 'off' | 'accepting' | 'paused' | 'exhausted'

/** What the guard pauses and resumes (the gateway wires its listeners in). */
export interface AcceptControl {
  pauseFront: () => void
  /** Throws when a listener cannot bind its address again: it stays paused and the next check retries. */
  resumeFront: () => void
  pauseAdmin: () => void
  resumeAdmin: () => void
}

/**
 * How often descriptors are checked. A check while accepting is one open() and close() of /dev/null
 * (a few µs); counting /proc/self/fd instead costs 12 ms at 5,000 descriptors and 30 ms at 20,000.
 * It also bounds how long uWS may spin on accept() (EMFILE) before the front is paused.
 */
export const CHECK_MS = 100
/** Opened (O_CLOEXEC, read-only) to hold a reserved descriptor and to probe for a free one. */
const PLACEHOLDER = '/dev/null'

/**
 * Keeps `limits.fdReserve` file descriptors free for the admin listener and for work under way.
 * uWebSockets.js 20.30 retries accept() in a tight loop when it fails with EMFILE (a core at 100%,
 * the admin port unanswered, clients hanging in the accept queue), and gives no hook at accept, so the
 * only lever is its listen socket. The guard holds the reserve as placeholder descriptors: when the
 * process cannot open one more, everything but the reserve is in use; then the front's listen socket is
 * closed (the kernel refuses new connections at once), TCP listeners reset new connections, and the
 * reserve is let go. Once twice the reserve can be opened again, the reserve is taken back and the front
 * binds its address again. One timer; no descriptor counting (see CHECK_MS).
 */
export class DescriptorGuard {
  private state: DescriptorState = 'off'
  /** The placeholders: the reserve while accepting, nothing otherwise. */
  private readonly held: number[] = []
  private reserve = 0
  private timer: NodeJS.Timeout | undefined
  /** The soft RLIMIT_NOFILE (after Node raised it to the hard limit), when /proc says. */
  readonly limit: number | undefined
  private pauses = 0
  private pausedAt = 0
  private resumeError: string | undefined
  private readonly paused: { front: Counter.Internal, admin: Counter.Internal }
  private readonly pausedNow: { front: Gauge.Internal<'listener'>, admin: Gauge.Internal<'listener'> }

  constructor (configured: number, private readonly control: AcceptControl, private readonly log: Logger, metrics: Metrics) {
    this.limit = readDescriptorLimit()
    this.paused = { front: metrics.acceptPaused.labels('front'), admin: metrics.acceptPaused.labels('admin') }
    this.pausedNow = { front: metrics.acceptPausedNow.labels('front'), admin: metrics.acceptPausedNow.labels('admin') }
    this.pausedNow.front.set(0)
    this.pausedNow.admin.set(0)
    this.configure(configured)
  }

  get current (): DescriptorState {
    return this.state
  }

  /** The front is not accepting now (a listener bound meanwhile must start paused). */
  get frontPaused (): boolean {
    return this.state === 'paused' || this.state === 'exhausted'
  }

  /** Start-up and reloads: `limits.fdReserve` (0: off), at most a quarter of the descriptor limit. */
  configure (configured: number): void {
    const reserve = this.limit === undefined ? configured : Math.min(configured, Math.floor(this.limit / 4))
    if (reserve === this.reserve) return
    if (reserve < configured) this.log.warn({ fdReserve: configured, limit: this.limit, kept: reserve }, 'limits.fdReserve is more than a quarter of the descriptor limit (RLIMIT_NOFILE); keeping a quarter')
    this.reserve = reserve
    if (reserve === 0) { this.turnOff(); return }
    if (this.timer === undefined) {
      this.timer = setInterval(() => { this.check() }, CHECK_MS)
      this.timer.unref()
    }
    if (this.state === 'off') this.to('accepting')
    // Accepting: hold exactly the (new) reserve. Paused: the next check takes the new size into account.
    if (this.state === 'accepting') {
      while (this.held.length > reserve) closeSync(this.held.pop()!)
      while (this.held.length < reserve) {
        const fd = tryOpen()
        if (fd === undefined) { this.pause(); return }
        this.held.push(fd)
      }
    }
  }

  private check (): void {
    try {
      if (this.state === 'accepting') {
        const fd = tryOpen()
        if (fd === undefined) this.pause()
        else closeSync(fd)
      } else if (this.state !== 'off') this.recover()
    } catch (err) {
      // Not EMFILE/ENFILE (no /dev/null?): the guard cannot work; say so once and stand aside.
      this.log.error({ err }, `the descriptor guard cannot open ${PLACEHOLDER}; limits.fdReserve is not enforced`)
      this.reserve = 0
      this.turnOff()
    }
  }

  /**
   * Paused or exhausted: counts the free descriptors by opening up to twice the reserve (closed again
   * at once; what is taken back as the reserve is kept), and moves on by the count.
   */
  private recover (): void {
    const want = 2 * this.reserve
    const got: number[] = []
    try {
      while (got.length < want) {
        const fd = tryOpen()
        if (fd === undefined) break
        got.push(fd)
      }
    } catch (err) {
      for (const fd of got) closeSync(fd)
      throw err
    }
    const free = got.length
    if (free >= want) this.held.push(...got.splice(0, this.reserve))
    for (const fd of got) closeSync(fd)
    if (this.state === 'paused' && free < Math.ceil(this.reserve / 4)) { this.exhaust(); return }
    if (this.state === 'exhausted' && free >= Math.ceil(this.reserve / 2)) this.adminBack()
    if (free < want) return
    if (this.state === 'paused') {
      try {
        this.control.resumeFront()
        this.resume()
        return
      } catch (err) {
        if (this.resumeError === undefined) this.log.warn({ err: (err as Error).message }, 'descriptors are free again but the front cannot bind its address again; retrying every check')
        this.resumeError = (err as Error).message
      }
    }
    this.releaseHeld()
  }

  private pause (): void {
    this.control.pauseFront()
    this.releaseHeld()
    this.pauses++
    this.pausedAt = Date.now()
    this.paused.front.inc()
    this.pausedNow.front.set(1)
    this.log.warn({ limit: this.limit, fdReserve: this.reserve, resumeWhenFree: 2 * this.reserve }, 'file descriptors nearly exhausted: the front stops accepting new connections (refused at once) until enough are free')
    this.to('paused')
  }

  private exhaust (): void {
    this.control.pauseAdmin()
    this.paused.admin.inc()
    this.pausedNow.admin.set(1)
    this.log.error({ limit: this.limit, fdReserve: this.reserve }, 'the descriptor reserve is used up: the admin listener stops accepting as well until half of it is free')
    this.to('exhausted')
  }

  private adminBack (): void {
    try {
      this.control.resumeAdmin()
    } catch (err) {
      if (this.resumeError === undefined) this.log.warn({ err: (err as Error).message }, 'the admin listener cannot bind its address again; retrying every check')
      this.resumeError = (err as Error).message
      return
    }
    this.pausedNow.admin.set(0)
    this.resumeError = undefined
    this.log.info('half the descriptor reserve is free again: the admin listener accepts')
    this.to('paused')
  }

  private resume (): void {
    this.pausedNow.front.set(0)
    this.pausedNow.admin.set(0)
    this.resumeError = undefined
    this.log.info({ pausedMs: Date.now() - this.pausedAt }, 'file descriptors free again: the front accepts new connections')
    this.to('accepting')
  }

  /** fdReserve 0 (or the guard cannot work): listeners accept again, placeholders and timer go. */
  private turnOff (): void {
    if (this.timer !== undefined) clearInterval(this.timer)
    this.timer = undefined
    this.releaseHeld()
    if (this.state === 'exhausted') { try { this.control.resumeAdmin() } catch { /* logged by the next failure */ } }
    if (this.frontPaused) { try { this.control.resumeFront() } catch (err) { this.log.warn({ err: (err as Error).message }, 'a paused listener cannot bind its address again') } }
    this.pausedNow.front.set(0)
    this.pausedNow.admin.set(0)
    this.to('off')
  }

  private to (next: DescriptorState): void {
    if (this.log.isLevelEnabled('debug')) this.log.debug({ from: this.state, to: next }, `descriptor guard ${next}`)
    this.state = next
  }

  private releaseHeld (): void {
    for (const fd of this.held) closeSync(fd)
    this.held.length = 0
  }

  /** The gateway stops: the timer and the placeholders go (listeners are closed by their owners). */
  close (): void {
    if (this.timer !== undefined) clearInterval(this.timer)
    this.timer = undefined
    this.releaseHeld()
    this.state = 'off'
  }

  status (): object {
    return {
      state: this.state,
      limit: this.limit ?? null,
      fdReserve: this.reserve,
      checkEveryMs: CHECK_MS,
      pauses: this.pauses,
      ...(this.frontPaused ? { pausedForMs: Date.now() - this.pausedAt } : {}),
      ...(this.resumeError !== undefined ? { resumeError: this.resumeError } : {}),
    }
  }
}

/** A placeholder descriptor, or undefined when the process (EMFILE) or the system (ENFILE) has none left. */
function tryOpen (): number | undefined {
  try {
    return openSync(PLACEHOLDER, 'r')
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code
    if (code === 'EMFILE' || code === 'ENFILE') return undefined
    throw err
  }
}

/** The soft RLIMIT_NOFILE from /proc/self/limits (Linux), or undefined. */
export function readDescriptorLimit (): number | undefined {
  try {
    const m = /^Max open files\s+(\d+)/m.exec(readFileSync('/proc/self/limits', 'latin1'))
    return m === null ? undefined : Number(m[1])
  } catch {
    return undefined
  }
}
