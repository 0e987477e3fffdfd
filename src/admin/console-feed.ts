import { performance } from 'node:perf_hooks'
import type { Logger } from 'pino'
import type { Metrics, TrafficTotals } from '../observability/metrics.js'

/** One subscriber's socket, as the feed sees it (the admin server adapts a uWS response to it). */
export interface FeedSink {
  /** Hands `chunk` to the socket; false when the socket is full (the rest waits in uWS until `writable`). */
  write: (chunk: string) => boolean
  /** Ends the response: 'flush' lets what is queued go out, 'abort' drops the connection now. */
  close: (kind: 'flush' | 'abort') => void
}

/** A subscriber: `blocked` while its socket is full; it misses snapshots meanwhile, `missed` counts them. */
export interface Subscription {
  readonly sink: FeedSink
  blocked: boolean
  missed: number
}

/** What the feed reads each tick. */
export interface FeedSource {
  /** The status the console shows (built once per push, for all subscribers). */
  snapshot: () => object
  /** The counters now (a pod's: every worker's, added up by the control plane). */
  totals: () => Promise<TrafficTotals>
}

export interface FeedOptions {
  intervalMs: number
  maxSubscribers: number
  maxMissed: number
}

/** A sample of the counters the charts draw, and the rates since the sample before. */
export interface RateSample {
  /** Unix ms. */
  t: number
  messagesPerSec: number
  requestsPerSec: number
}

/** The charts show about this much history; the hello event carries it to a new subscriber. */
const HISTORY_MS = 120_000

/** A Server-Sent Events frame: one data line (JSON carries no raw newline). */
function sse (event: string, seq: number, data: unknown): string {
  return `event: ${event}\nid: ${seq}\ndata: ${JSON.stringify(data)}\n\n`
}

/**
 * The console's live channel. One timer (owned here) samples the message and request counters every
 * `intervalMs` (kept for ~2 minutes, the charts' window) and pushes one snapshot, built once, to every
 * subscriber. A subscriber whose socket is full is not written to (uWS holds at most the one snapshot it
 * could not take); after `maxMissed` missed snapshots in a row it is dropped and counted. Memory is
 * bounded by subscribers × one snapshot, and a slow one never delays the others.
 */
export class ConsoleFeed {
  private readonly subs = new Set<Subscription>()
  private readonly history: RateSample[] = []
  private readonly historyLength: number
  private timer: NodeJS.Timeout | undefined
  private last: { at: number, messages: number, requests: number } | undefined
  private seq = 0
  private dropped = 0

  constructor (private readonly opts: FeedOptions, private readonly source: FeedSource, private readonly metrics: Metrics, private readonly log: Logger) {
    this.historyLength = Math.max(2, Math.ceil(HISTORY_MS / opts.intervalMs))
  }

  /** Starts sampling (idempotent). */
  start (): void {
    if (this.timer !== undefined) return
    this.timer = setTimeout(this.tick, this.opts.intervalMs)
    this.timer.unref()
    this.sample().catch((err: unknown) => { this.log.error({ err }, 'console: sampling the counters failed') })
  }

  /** maxSubscribers are open: `subscribe` must not be called. */
  get full (): boolean {
    return this.subs.size >= this.opts.maxSubscribers
  }

  /** Adds a subscriber (check `full` first) and writes it the hello (settings and history) and a first snapshot at once. */
  subscribe (sink: FeedSink): Subscription {
    const sub: Subscription = { sink, blocked: false, missed: 0 }
    this.subs.add(sub)
    this.metrics.consoleSubscribers.set(this.subs.size)
    const first = sse('hello', this.seq, { intervalMs: this.opts.intervalMs, historyMs: HISTORY_MS, history: this.history }) + this.frame()
    if (!sink.write(first)) sub.blocked = true
    return sub
  }

  /** The subscriber went away (aborted); idempotent. */
  unsubscribe (sub: Subscription): void {
    if (!this.subs.delete(sub)) return
    this.metrics.consoleSubscribers.set(this.subs.size)
  }

  /** Its socket took what was queued: it gets the next snapshot. */
  writable (sub: Subscription): void {
    sub.blocked = false
    sub.missed = 0
  }

  /** Ends every subscriber's response (the token changed, or the admin listener stops). */
  closeAll (kind: 'flush' | 'abort'): void {
    for (const sub of [...this.subs]) {
      this.unsubscribe(sub)
      sub.sink.close(kind)
    }
  }

  /** Stops the timer and ends every subscriber. */
  close (): void {
    if (this.timer !== undefined) clearTimeout(this.timer)
    this.timer = undefined
    this.closeAll('flush')
  }

  status (): { subscribers: number, dropped: number, intervalMs: number } {
    return { subscribers: this.subs.size, dropped: this.dropped, intervalMs: this.opts.intervalMs }
  }

  private frame (): string {
    const now = this.history.at(-1)
    return sse('snapshot', ++this.seq, { seq: this.seq, at: new Date().toISOString(), rates: now ?? null, status: this.source.snapshot() })
  }

  /** Samples the counters; the rate is over the time since the previous sample (the first sample has none). */
  private async sample (): Promise<void> {
    const { messages, requests } = await this.source.totals()
    const at = performance.now()
    const prev = this.last
    this.last = { at, messages, requests }
    if (prev === undefined) return
    const sec = Math.max(0.001, (at - prev.at) / 1000)
    // A counter never goes back; should a source's do (a process restarted), that sample reads 0, not a negative rate.
    const round = (n: number): number => Math.max(0, Math.round(n * 10) / 10)
    this.history.push({ t: Date.now(), messagesPerSec: round((messages - prev.messages) / sec), requestsPerSec: round((requests - prev.requests) / sec) })
    if (this.history.length > this.historyLength) this.history.shift()
  }

  /** One tick at a time: the one-shot timer is re-armed only when this tick is done. */
  private readonly tick = (): void => {
    this.sample().then(() => { this.push() }, (err: unknown) => {
      this.log.error({ err }, 'console: sampling the counters failed')
    }).finally(() => {
      this.timer?.refresh()
    })
  }

  private push (): void {
    if (this.subs.size === 0) return
    const frame = this.frame()
    for (const sub of [...this.subs]) {
      if (sub.blocked) {
        if (++sub.missed >= this.opts.maxMissed) this.drop(sub)
        continue
      }
      if (!sub.sink.write(frame)) sub.blocked = true
    }
  }

  private drop (sub: Subscription): void {
    this.unsubscribe(sub)
    this.dropped++
    this.metrics.consoleDropped.inc()
    this.log.warn({ code: 'FERRY_ERR_CONSOLE_SLOW', missed: sub.missed }, 'console: dropped a subscriber that did not take its snapshots')
    sub.sink.close('abort')
  }
}
