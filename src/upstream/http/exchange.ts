import { createHash, type Hash } from 'node:crypto'
import { Readable } from 'node:stream'
import { STATUS_CODES, type IncomingHttpHeaders } from 'node:http'
import type { HttpResponse } from 'uWebSockets.js'
import type { Dispatcher } from 'undici'
import type { Logger } from 'pino'
import { ERRORS, FerryError, isFerryError, type FerryErrorCode } from '../../errors.js'
import type { Admission, BodyPolicy, BodySize, ClientExchange, ClientRequest, HttpLifecycle, HttpTarget, Refusal } from '../../contracts/http.js'
import type { Route } from '../../routing/router.js'
import { splitAsk, type SplitAsk } from '../../routing/split.js'
import type { HttpEndpoint, HttpUpstream, LongHeldWhy, SlotOutcome, SlotWaiter, StickyAsk } from './pool.js'
import { longHeldWhy } from './long-held.js'
import { learnedKey, stickyKey, type StickyKey } from './sticky.js'
import type { UpstreamMetrics } from './metrics.js'
import { headersForLatin1Writer, latin1Bytes } from '../../net/header-bytes.js'
import { sendError } from '../../net/error-response.js'

/**
 * States of one proxied request. Moves only forward, through `to()`:
 *   gated → [buffering →] waiting → dispatched → responding → done
 * `gated`: the route's edge checks (auth, rate limits) are still deciding (requests without checks pass
 * at once); the body is read meanwhile (bounded as always) but nothing is sent upstream until they let
 * the request through.
 * `buffering`: let through, but its body (a buffered one, see BodyMode) is still arriving; the pool slot
 * is asked for only once the body is whole, so a slow client never holds a backend connection.
 * and from any non-final state to `failed` (Ferry answered with an error) or `aborted` (client gone).
 * `draining`: the client is gone but the upstream response is small enough to read to its end and
 * discard, so the keep-alive connection survives: client churn must not become backend churn.
 */
export type ExchangeState = 'gated' | 'buffering' | 'waiting' | 'dispatched' | 'responding' | 'draining' | 'done' | 'failed' | 'aborted'

/**
 * How the request body travels. `buffer`: read whole into memory (charged to the body limits) before a
 * pool slot is taken, then sent with its length. `stream`: larger than the buffer (declared, or a chunked
 * body that outgrew it): piped into the dispatch as it arrives, counted per client IP, and it must keep
 * the minimum rate. A `buffer` body moves to `stream` when it outgrows the buffer; nothing moves back.
 */
export type BodyMode = 'none' | 'buffer' | 'stream'

const IDEMPOTENT = new Set(['GET', 'HEAD', 'OPTIONS', 'PUT', 'DELETE', 'TRACE'])
/** Response headers Ferry does not copy: hop-by-hop, plus the ones uWS writes itself. */
const SKIP_RESPONSE = new Set(['connection', 'keep-alive', 'proxy-connection', 'transfer-encoding', 'te', 'trailer', 'upgrade', 'content-length', 'date'])
const BODY_HIGH_WATER = 64 * 1024
/** Response bytes Ferry will still read and discard after the client left, to keep the connection. */
const DRAIN_LIMIT = 256 * 1024
/**
 * How long a request whose client left may still wait for response headers. Past it the upstream
 * request is aborted: a hung backend must not keep pool slots for abandoned requests until responseMs.
 */
const DRAIN_HEADERS_MS = 1000

const NO_POLICY: BodyPolicy = { idleMs: 0, totalMs: 0, minRate: 0, rateWindowMs: 0 }
/** uWS's own request timer is re-armed at most this often while body bytes arrive (see onClientData). */
const REARM_EVERY_MS = 1000

/** An HTTP upstream under one config, as its exchanges see it; the front sees it as an HttpTarget. */
export interface ExchangeContext extends HttpTarget {
  readonly lifecycle: HttpLifecycle
  readonly upstream: HttpUpstream
  readonly metrics: UpstreamMetrics
  readonly log: Logger
  readonly accessLog: boolean
  readonly requestIdHeader: string
  readonly retryIdempotent: boolean
}

/** The context of an HTTP upstream under one config (built again on each reload: it carries settings from outside the upstream). */
export function exchangeContext (c: Omit<ExchangeContext, 'exchange'>): ExchangeContext {
  const ctx: ExchangeContext = { ...c, exchange: (res, req, route, size, policy, release) => new HttpExchange(res, req, route, ctx, size, policy, release) }
  return ctx
}

/** Exchanges whose request was read in this turn of the loop: they ask for slots once it is handled. */
let due: HttpExchange[] = []
function afterThisRead (x: HttpExchange): void {
  if (due.length === 0) setImmediate(takeSlots)
  due.push(x)
}
function takeSlots (): void {
  const list = due
  due = []
  for (const x of list) x.takeSlot()
}

/**
 * One client request proxied to one upstream. It owns, for its lifetime: the uWS response (until done or
 * aborted), the request body (its buffer and what it charged to the body limits, or its stream and the
 * streamed-body count it took), the pool slot it holds (released exactly once) and the undici dispatch
 * (aborted if the client leaves). Memory per exchange is bounded: a buffered body by bufferBodyBytes
 * (and the gateway's budget), a streamed one by BODY_HIGH_WATER before the client socket is paused; the
 * response holds at most one upstream chunk before the upstream is paused.
 */
export class HttpExchange implements ClientExchange, SlotWaiter, Dispatcher.DispatchHandler {
  private state: ExchangeState = 'gated'
  private bodyMode: BodyMode = 'none'
  /** A buffered body's chunks while it arrives, then the whole body. */
  private chunks: Buffer[] = []
  private bufferedBody: Buffer | undefined
  /** Bytes charged to limits.chargeBody and not yet released; whether a streamed body is counted. */
  private charged = 0
  private streamCounted = false
  /** Minimum-rate window of a streamed body: its start, the bytes in before it, whether Ferry paused the client in it. */
  private windowStart = 0
  private windowBytes = 0
  private windowPaused = false
  /** When the exchange began, for the access log's `ms` (read only when the access log is on). */
  private started = 0
  private dispatchedAt = 0
  private ep: HttpEndpoint | undefined
  private queueEntry: ReturnType<HttpUpstream['acquire']>
  private controller: Dispatcher.DispatchController | undefined
  private body: Readable | undefined
  private bodyBytesIn = 0
  private clientPaused = false
  private attempts = 0
  private status = 0
  private bytesOut = 0
  private responseLength = -1
  /** Response chunk tryEnd could not fully write; kept until onWritable finishes it. */
  private pending: Buffer | undefined
  private pendingOffset = 0
  private errorCode: FerryErrorCode | undefined
  private bodyComplete = false
  private clientBodyComplete = false
  private drainTimer: NodeJS.Timeout | undefined
  private drained = 0
  private awaitingTail = false
  private lastEp: HttpEndpoint | undefined
  /** Headers sent upstream (the edge may strip and add some). */
  private headers: readonly string[]
  /** Body verification for signed requests: the running digest, the chunk held back, the expected value. */
  private bodyHash: Hash | undefined
  private heldChunk: Buffer | undefined
  private bodyDigest: string | undefined
  private expectedSha256: string | undefined
  private errorHeader: readonly [string, string] | undefined
  /** One timer for the client body: the idle deadline, refreshed per chunk, or the total one if sooner. */
  private bodyTimer: NodeJS.Timeout | undefined
  private bodyDeadline = 0
  private lastChunkAt = 0
  private rearmedAt = 0
  /** Response head received but not yet written (it goes out with the first body bytes). */
  private head: { statusCode: number, statusMessage: string | undefined, headers: IncomingHttpHeaders } | undefined

  constructor (
    private readonly res: HttpResponse,
    private readonly req: ClientRequest,
    private readonly route: Route,
    private readonly ctx: ExchangeContext,
    private readonly size: BodySize,
    private readonly policy: BodyPolicy = NO_POLICY,
    /** Called once when the exchange ends, whichever way (the front's concurrency limits release here). */
    private readonly onEnd?: () => void,
  ) {
    this.headers = req.headers
    if (ctx.accessLog) this.started = performance.now()
  }

  /**
   * Called synchronously from the uWS handler: attaches onAborted/onData before anything async.
   * `gate`: the edge's decision, or a promise of it (the request waits in `gated`); it rejects with a
   * Refusal. `verifyBody`: the decision may demand a body digest, so the body is hashed as it arrives.
   */
  start (gate?: Admission | Promise<Admission>, verifyBody = false): void {
    this.res.onAborted(() => this.onClientAborted())
    this.ctx.metrics.inFlight(1)
    this.ctx.lifecycle.inFlight++
    this.ctx.lifecycle.served++
    // The upstream this exchange started on serves it to the end, even if a reload replaces it meanwhile.
    this.ctx.upstream.enter()
    if (gate instanceof Promise) {
      gate.then((a) => { if (this.state === 'gated') this.admit(a) }, (r: Refusal) => {
        if (this.state !== 'gated') return
        this.errorHeader = r.header
        this.fail(r.err)
      })
    }
    const cl = this.req.contentLength
    if (this.req.chunked || (cl ?? 0) > 0) {
      if (verifyBody) this.bodyHash = createHash('sha256')
      // A chunked body is buffered until it outgrows the buffer; a declared one by its length.
      if (this.req.chunked ? this.size.bufferBytes > 0 : cl! <= this.size.bufferBytes) this.bodyMode = 'buffer'
      else if (!this.startStreaming()) return
      this.res.onData((chunk, isLast) => this.onClientData(chunk, isLast))
      this.armBodyTimer()
    }
    if (!(gate instanceof Promise)) this.admit(gate)
  }

  private admit (a: Admission | undefined): void {
    if (a !== undefined) {
      this.headers = a.headers
      this.expectedSha256 = a.bodySha256
      if (!this.bodyMatches()) return
    }
    if (this.bodyMode === 'buffer' && !this.clientBodyComplete) this.to('buffering')
    else this.requestSlot()
  }

  /**
   * Asks for a slot once the read that carried the request has been handled (setImmediate, batched):
   * uWS 20.30 closes a connection when the same read holds a second, pipelined request, and reports it
   * (onAborted) after this request's handler, microtasks included. Asking now would send the request
   * upstream, where it takes effect, while its response can no longer be delivered.
   */
  private requestSlot (): void {
    this.to('waiting')
    afterThisRead(this)
  }

  /** @internal The read is handled: take a slot, unless the client is gone (never sent upstream then). */
  takeSlot (): void {
    if (this.state !== 'waiting' || this.queueEntry !== undefined || this.lookingUp) return
    const up = this.ctx.upstream
    if (this.route.affinityKey !== undefined) {
      this.sticky = stickyKey(this.route, this.req, this.headers)
      // A key Ferry just issued has no record; an existing key's is asked for within the store's budget.
      if (this.sticky !== undefined && this.sticky.setCookie === undefined && up.placement !== undefined) {
        this.lookingUp = true
        void up.placement.recorded(this.sticky.key).then((home) => {
          this.lookingUp = false
          this.home = home
          if (this.state === 'waiting' && this.queueEntry === undefined) this.queueEntry = up.acquire(this, undefined, this.splitAsk(), this.longHeld(), this.stickyAsk())
        })
        return
      }
    }
    this.queueEntry = up.acquire(this, undefined, this.splitAsk(), this.longHeld(), this.stickyAsk())
  }

  /** Route affinity: the request's key (undefined: none), where the store records it, and whether that is being asked. */
  private sticky: StickyKey | undefined
  private home: string | undefined
  private lookingUp = false
  private stickyAsk (): StickyAsk | undefined {
    if (this.route.affinityKey === undefined) return undefined
    if (this.sticky === undefined) {
      if (this.attempts === 0) this.ctx.upstream.countSticky('keyless')
      return undefined
    }
    return { key: this.sticky.key, home: this.home, issued: this.sticky.setCookie !== undefined }
  }

  /** The slot is a long-held one (dispatched on the endpoint's longPool). */
  private onLong = false
  /** Why this request is long-held (pool.longHeld), read once. */
  private longWhy: LongHeldWhy | undefined | null = null
  private longHeld (): LongHeldWhy | undefined {
    if (this.longWhy === null) this.longWhy = longHeldWhy(this.route.longHeld, this.req.method, this.req.target, this.headers)
    return this.longWhy
  }

  /** The route's split, asked with the headers as they go upstream (so a pin may come from a verified claim); read once. */
  private split: SplitAsk | undefined
  private splitAsk (): SplitAsk | undefined {
    const split = this.route.split
    if (split === undefined) return undefined
    const q = this.req.target.indexOf('?')
    this.split ??= splitAsk(split, this.headers, q === -1 ? '' : this.req.target.slice(q + 1), this.req.clientIp)
    return this.split
  }

  /** False (and the request failed) when the whole body is in and does not hash to what was signed. */
  private bodyMatches (): boolean {
    if (this.expectedSha256 === undefined || this.bodyDigest === undefined || this.bodyDigest === this.expectedSha256) return true
    this.fail(new FerryError('FERRY_ERR_AUTH_BODY_MISMATCH', 'request body does not match its signed x-ferry-content-sha256'))
    return false
  }

  // ---- state --------------------------------------------------------------------------------------

  private to (next: ExchangeState): void {
    this.state = next
  }

  private get final (): boolean {
    return this.state === 'done' || this.state === 'failed' || this.state === 'aborted' || this.state === 'draining'
  }

  // ---- client request body ------------------------------------------------------------------------

  private onClientData (chunk: ArrayBuffer, isLast: boolean): void {
    if (this.final || this.bodyMode === 'none' || this.body?.destroyed === true) return
    if (chunk.byteLength > 0 && this.bodyTimer !== undefined && !isLast) {
      this.lastChunkAt = performance.now()
      // uWS 20.30 gives a request body ~10 s in all, however steadily it arrives, then drops the connection
      // without a response; pause()+resume() re-arms that timer. So uWS's limit becomes ~10 s of silence
      // and Ferry's deadlines (shorter, answered with 408) decide.
      if (this.lastChunkAt - this.rearmedAt >= REARM_EVERY_MS && !this.clientPaused) {
        this.rearmedAt = this.lastChunkAt
        this.res.pause()
        this.res.resume()
      }
    }
    let data: Buffer | undefined
    if (chunk.byteLength > 0) {
      this.bodyBytesIn += chunk.byteLength
      if (this.bodyBytesIn > this.size.maxBytes) {
        this.fail(new FerryError('FERRY_ERR_BODY_TOO_LARGE', `request body exceeds maxBodyBytes ${this.size.maxBytes}`))
        return
      }
      // uWS neuters the ArrayBuffer after this callback: copy.
      data = Buffer.copyBytesFrom(new Uint8Array(chunk))
    }
    if (this.bodyMode === 'buffer') {
      if (this.bodyBytesIn <= this.size.bufferBytes) {
        if (data !== undefined) {
          const refused = this.policy.limits?.chargeBody(this.req.clientIp, data.length)
          if (refused !== undefined) { this.refuseBody(refused); return }
          this.charged += data.length
          this.chunks.push(data)
        }
        if (isLast) this.onBufferedBody()
        return
      }
      // A chunked body outgrew the buffer: it streams from here on, what was buffered first.
      const before = this.chunks
      this.chunks = []
      this.releaseCharge()
      if (!this.startStreaming()) return
      if (before.length > 0 && !this.final) this.streamData(Buffer.concat(before), false)
      if (this.final) return
    }
    this.streamData(data, isLast)
  }

  /** The last byte of a buffered body arrived: the request goes on to the pool queue if the edge let it through. */
  private onBufferedBody (): void {
    const body = this.chunks.length === 1 ? this.chunks[0]! : Buffer.concat(this.chunks, this.bodyBytesIn)
    this.chunks = []
    this.bufferedBody = body
    if (this.bodyHash !== undefined) this.bodyDigest = this.bodyHash.update(body).digest('hex')
    this.clientBodyComplete = true
    this.clearBodyTimer()
    if (this.state === 'buffering' && this.bodyMatches()) this.requestSlot()
  }

  /** Pushes streamed body bytes; a signed body holds one chunk back until its digest is known. */
  private streamData (chunk: Buffer | undefined, isLast: boolean): void {
    const body = this.body!
    let data = chunk
    if (data !== undefined) {
      if (this.bodyHash !== undefined) {
        // A signed body: one chunk is held back, so if the digest turns out wrong the backend has not
        // received the complete body (with Content-Length, the last byte would complete the request).
        this.bodyHash.update(data)
        const held = this.heldChunk
        this.heldChunk = isLast ? undefined : data
        if (held === undefined && !isLast) return
        data = held === undefined ? data : isLast ? Buffer.concat([held, data]) : held
      }
      if (isLast && this.bodyHash !== undefined) {
        this.bodyDigest = this.bodyHash.digest('hex')
        if (!this.bodyMatches()) return
      }
      if (!body.push(data) && !isLast) {
        this.clientPaused = true
        this.windowPaused = true
        this.res.pause()
      }
    } else if (isLast && this.bodyHash !== undefined) {
      this.bodyDigest = this.bodyHash.digest('hex')
      if (!this.bodyMatches()) return
      if (this.heldChunk !== undefined) { body.push(this.heldChunk); this.heldChunk = undefined }
    }
    if (isLast) {
      this.clientBodyComplete = true
      this.clearBodyTimer()
      this.releaseStreamCount()
      body.push(null)
    }
  }

  /**
   * The body will stream into a backend connection as it arrives: counted per client IP
   * (limits.maxStreamedBodiesPerIp) and held to the minimum rate. False: refused (the request failed).
   */
  private startStreaming (): boolean {
    const limits = this.policy.limits
    if (limits !== undefined) {
      const refused = limits.takeStream(this.req.clientIp)
      if (refused !== undefined) { this.refuseBody(refused); return false }
      this.streamCounted = true
    }
    this.bodyMode = 'stream'
    this.body = new Readable({ highWaterMark: BODY_HIGH_WATER, read: () => this.resumeClient() })
    // The body is destroyed with an error when the client goes away; until undici has taken the body
    // (a queued or gated request) nobody else listens, and an unhandled 'error' would end the process.
    this.body.on('error', noop)
    if (this.policy.minRate > 0) {
      this.startRateWindow(performance.now())
      if (this.bodyTimer !== undefined) this.aimBodyTimer(performance.now())
    }
    // Let through while it was being buffered: it has waited for its body long enough.
    if (this.state === 'buffering') this.requestSlot()
    return true
  }

  /** A body limit refused the request: 429/503 with Retry-After. */
  private refuseBody (err: FerryError): void {
    this.errorHeader = this.policy.limits?.retryAfter
    this.fail(err)
  }

  private releaseCharge (): void {
    if (this.charged > 0) { this.policy.limits?.releaseBody(this.req.clientIp, this.charged); this.charged = 0 }
  }

  private releaseStreamCount (): void {
    if (this.streamCounted) { this.streamCounted = false; this.policy.limits?.releaseStream(this.req.clientIp) }
  }

  private resumeClient (): void {
    if (this.clientPaused && !this.final) {
      this.clientPaused = false
      // Silence while Ferry held the client back is not the client's.
      this.lastChunkAt = this.rearmedAt = performance.now()
      this.res.resume()
    }
  }

  // ---- client body deadlines and minimum rate (slowloris) -----------------------------------------

  private armBodyTimer (): void {
    const { idleMs, totalMs, minRate } = this.policy
    if (idleMs <= 0 && totalMs <= 0 && (minRate <= 0 || this.bodyMode !== 'stream')) return
    const now = performance.now()
    this.lastChunkAt = this.rearmedAt = now
    this.bodyDeadline = totalMs > 0 ? now + totalMs : Infinity
    this.aimBodyTimer(now)
  }

  /** One timer, aimed at whichever comes first: the idle deadline, the total one, the end of the rate window. */
  private aimBodyTimer (now: number): void {
    const { idleMs, minRate, rateWindowMs } = this.policy
    const idleAt = this.clientPaused || idleMs <= 0 ? now + (idleMs > 0 ? idleMs : Infinity) : this.lastChunkAt + idleMs
    const windowEnd = this.bodyMode === 'stream' && minRate > 0 ? this.windowStart + rateWindowMs : Infinity
    const next = Math.min(idleAt, this.bodyDeadline, windowEnd)
    if (this.bodyTimer !== undefined) clearTimeout(this.bodyTimer)
    this.bodyTimer = undefined
    if (next === Infinity) return
    this.bodyTimer = setTimeout(() => this.onBodyTimer(), Math.max(1, next - now))
    this.bodyTimer.unref()
  }

  private onBodyTimer (): void {
    this.bodyTimer = undefined
    if (this.final || this.clientBodyComplete) return
    const now = performance.now()
    const { idleMs, totalMs, minRate, rateWindowMs } = this.policy
    const idleAt = this.clientPaused || idleMs <= 0 ? Infinity : this.lastChunkAt + idleMs
    if (now >= this.bodyDeadline) {
      this.fail(new FerryError('FERRY_ERR_CLIENT_BODY_TIMEOUT', `request body not complete within http.bodyTimeoutMs ${totalMs} (${this.bodyBytesIn} bytes received)`))
      return
    }
    if (now >= idleAt) {
      this.fail(new FerryError('FERRY_ERR_CLIENT_BODY_TIMEOUT', `no request body bytes for http.bodyIdleMs ${idleMs} (${this.bodyBytesIn} bytes received)`))
      return
    }
    if (this.bodyMode === 'stream' && minRate > 0 && now >= this.windowStart + rateWindowMs) {
      const elapsed = now - this.windowStart
      const got = this.bodyBytesIn - this.windowBytes
      // A window in which Ferry held the client back (backend or queue slower than the client) says nothing about the client.
      if (!this.windowPaused && !this.clientPaused && got * 1000 < minRate * elapsed) {
        this.fail(new FerryError('FERRY_ERR_CLIENT_BODY_TIMEOUT', `request body arrived at ${Math.round(got * 1000 / elapsed)} bytes/s over ${Math.round(elapsed)} ms, below http.minBodyRateBytesPerSec ${minRate} (${this.bodyBytesIn} bytes received)`))
        return
      }
      this.startRateWindow(now)
    }
    this.aimBodyTimer(now)
  }

  private startRateWindow (now: number): void {
    this.windowStart = now
    this.windowBytes = this.bodyBytesIn
    this.windowPaused = this.clientPaused
  }

  private clearBodyTimer (): void {
    if (this.bodyTimer !== undefined) { clearTimeout(this.bodyTimer); this.bodyTimer = undefined }
  }

  // ---- pool slot ----------------------------------------------------------------------------------

  onSlot (ep: HttpEndpoint, long: boolean): void {
    this.queueEntry = undefined
    if (this.final) { this.ctx.upstream.release(ep, 'neutral', long); return }
    this.onLong = long
    // A buffered body leaves the budget here: what dispatched requests hold is bounded by the pool.
    this.releaseCharge()
    this.ep = ep
    this.lastEp = ep
    if (this.sticky !== undefined) this.ctx.upstream.placement?.opened(this.sticky.key, ep.address, this.home)
    this.attempts++
    this.to('dispatched')
    this.dispatchedAt = performance.now()
    try {
      const opts: Dispatcher.DispatchOptions & { servername: string } = {
        path: this.req.target,
        method: this.req.method,
        // undici (7, core/request.js; not in its types) takes a request's TLS name from its Host header unless
        // given one, and replaces a keep-alive https connection whenever that name changes; the connector
        // sends the endpoint's own SNI whatever this says.
        servername: ep.endpoint.host,
        // undici writes header strings as latin1: values beyond ASCII go as their UTF-8 bytes (header-bytes.ts).
        // The client's headers as they were read need nothing when all are ASCII (the edge's may differ).
        headers: (this.headers === this.req.headers && this.req.asciiHeaders ? this.headers : headersForLatin1Writer(this.headers)) as string[],
        body: this.bodyMode === 'stream' ? this.body! : this.bufferedBody ?? null,
        idempotent: IDEMPOTENT.has(this.req.method),
        blocking: false,
      }
      ;(long ? ep.longPool : ep.pool).dispatch(opts, this)
    } catch (err) {
      // Not reached with a handler (undici reports through onResponseError); kept for a throwing dispatcher.
      this.ep?.reset(this.onLong)
      this.releaseSlot('neutral')
      this.fail(new FerryError('FERRY_ERR_UNFORWARDABLE', `request rejected: ${(err as Error).message}`, { cause: err }))
    }
  }

  onNoSlot (err: FerryError): void {
    this.queueEntry = undefined
    this.fail(err)
  }

  private releaseSlot (outcome: SlotOutcome): void {
    if (this.drainTimer !== undefined) { clearTimeout(this.drainTimer); this.drainTimer = undefined }
    const ep = this.ep
    if (ep === undefined) return
    this.ep = undefined
    if (this.sticky !== undefined) this.ctx.upstream.placement?.closed(this.sticky.key)
    this.ctx.upstream.release(ep, outcome, this.onLong)
  }

  // ---- undici dispatch handler --------------------------------------------------------------------

  onRequestStart (controller: Dispatcher.DispatchController): void {
    this.controller = controller
    if (this.state === 'aborted' || this.state === 'failed') controller.abort(new FerryError('FERRY_ERR_CLIENT_ABORTED', 'client went away'))
  }

  onResponseStart (controller: Dispatcher.DispatchController, statusCode: number, headers: IncomingHttpHeaders, statusMessage?: string): void {
    if (statusCode < 200) return // interim responses are not forwarded (uWS cannot write them); see interim.ts
    if (this.state === 'draining') {
      this.status = statusCode
      const cl = headers['content-length']
      // A long or unknown length (a stream may never end): not worth reading for the connection's sake.
      if (typeof cl !== 'string' || Number(cl) > DRAIN_LIMIT) controller.abort(new FerryError('FERRY_ERR_CLIENT_ABORTED', 'client went away'))
      return
    }
    if (this.state !== 'dispatched') { controller.abort(new FerryError('FERRY_ERR_CLIENT_ABORTED', 'client went away')); return }
    this.ctx.metrics.latency.observe((performance.now() - this.dispatchedAt) / 1000)
    this.to('responding')
    this.status = statusCode
    if (this.route.affinityKey !== undefined) this.learnKey(headers['set-cookie'])
    const cl = headers['content-length']
    const noBody = this.req.method === 'HEAD' || statusCode === 204 || statusCode === 304
    this.responseLength = noBody ? 0 : typeof cl === 'string' ? Number(cl) : -1
    // The head is written together with the first body bytes (one cork, one send) unless there is no body.
    this.head = { statusCode, statusMessage, headers }
    if (noBody || this.responseLength === 0) {
      const res = this.res
      res.cork(() => {
        this.writeHead()
        // uWS writes `Content-Length: <n>` for endWithoutBody(n); with no argument it writes none.
        if (!noBody) res.end()
        else if (statusCode !== 204 && statusCode !== 304 && typeof cl === 'string') res.endWithoutBody(Number(cl))
        else res.endWithoutBody()
      })
      this.bodyComplete = true
      return
    }
  }

  /** Whether uWS's onWritable handler is set: only once a write was refused (most responses never need it). */
  private watchingWritable = false
  private watchWritable (): void {
    if (this.watchingWritable) return
    this.watchingWritable = true
    this.res.onWritable((offset) => this.onWritable(offset))
  }

  /** The backend set the route's affinity cookie to a key other than this request's: its requests come back here. */
  private learnKey (setCookie: string | string[] | undefined): void {
    const key = learnedKey(this.route.affinityKey!, setCookie)
    if (key === undefined || key === this.sticky?.key || this.ep === undefined) return
    this.ctx.upstream.placement?.learned(key, this.ep.address)
    this.ctx.upstream.countSticky('learned')
  }

  /** Writes the status line and headers held in `head` (inside the caller's cork). */
  private writeHead (): void {
    const head = this.head!
    this.head = undefined
    const res = this.res
    const { statusCode, statusMessage, headers } = head
    res.writeStatus(`${statusCode} ${statusMessage !== undefined && statusMessage !== '' ? statusMessage : (STATUS_CODES[statusCode] ?? '')}`)
    // Headers the backend named in its Connection header are hop-by-hop too (RFC 9110 §7.6.1).
    const conn = headers.connection
    // `keep-alive` (what most backends send) names only a header skipped anyway.
    const named = typeof conn === 'string' && conn !== 'keep-alive' ? conn.toLowerCase().split(',').map((x) => x.trim()) : undefined
    for (const name in headers) {
      if (SKIP_RESPONSE.has(name) || named?.includes(name) === true) continue
      const v = headers[name]
      if (v === undefined) continue
      // undici read the bytes as latin1; uWS would write the string as UTF-8.
      if (Array.isArray(v)) for (const x of v) res.writeHeader(name, latin1Bytes(x))
      else res.writeHeader(name, latin1Bytes(v))
    }
    if (headers[this.ctx.requestIdHeader] === undefined) res.writeHeader(this.ctx.requestIdHeader, this.req.requestId)
    if (this.sticky?.setCookie !== undefined) res.writeHeader('set-cookie', this.sticky.setCookie)
    // uWS 20.30 closes the socket after answering a `Connection: close` request but does not say so in
    // the response; clients that reuse the socket meanwhile get a RST. Say it (RFC 9112 §9.6). While
    // draining, say it too: the client closes this connection and sends its next request elsewhere.
    if (this.req.close || this.ctx.lifecycle.draining) res.writeHeader('connection', 'close')
  }

  onResponseData (controller: Dispatcher.DispatchController, chunk: Buffer): void {
    if (this.state === 'draining') {
      this.drained += chunk.length
      if (this.drained > DRAIN_LIMIT) controller.abort(new FerryError('FERRY_ERR_CLIENT_ABORTED', 'client went away'))
      return
    }
    if (this.state !== 'responding' || this.bodyComplete) return
    this.bytesOut += chunk.length
    const res = this.res
    let blocked = false
    res.cork(() => {
      if (this.head !== undefined) this.writeHead()
      if (this.responseLength >= 0) {
        const offset = res.getWriteOffset()
        const [ok, done] = res.tryEnd(chunk, this.responseLength)
        if (done) this.bodyComplete = true
        else if (!ok) { this.pending = chunk; this.pendingOffset = offset; blocked = true }
      } else if (!res.write(chunk)) {
        blocked = true // uWS buffered the chunk; wait for onWritable before reading more upstream
      }
      if (blocked) this.watchWritable()
    })
    if (blocked) controller.pause()
  }

  /** uWS says the client socket drained. Finish a partial tryEnd chunk, then resume the upstream. */
  private onWritable (offset: number): boolean {
    if (this.state !== 'responding') return true
    const pending = this.pending
    if (pending !== undefined) {
      const [ok, done] = this.res.tryEnd(pending.subarray(offset - this.pendingOffset), this.responseLength)
      if (!ok && !done) return false
      this.pending = undefined
      if (done) {
        this.bodyComplete = true
        if (this.awaitingTail) this.finish('done')
        return true
      }
    }
    this.controller?.resume()
    return true
  }

  onResponseEnd (): void {
    this.releaseSlot('ok')
    if (this.state !== 'responding') return
    if (!this.bodyComplete) {
      if (this.pending !== undefined) {
        // The last tryEnd chunk is still partly unwritten: the exchange is done when onWritable drains it.
        this.awaitingTail = true
        return
      }
      if (this.responseLength >= 0) {
        // undici checks Content-Length, so this means fewer bytes than announced: cut, never pad.
        this.fail(new FerryError('FERRY_ERR_UPSTREAM_PROTOCOL', 'upstream body shorter than its Content-Length'))
        return
      }
      this.res.cork(() => {
        if (this.head !== undefined) this.writeHead()
        this.res.end()
      })
      this.bodyComplete = true
    }
    this.finish('done')
  }

  onResponseError (_controller: Dispatcher.DispatchController, err: Error): void {
    if (this.controller === undefined && this.ep !== undefined && REFUSED_BY_UNDICI.has((err as { code?: string }).code ?? '')) {
      // undici refused the request before sending anything (a part it cannot encode): this request alone
      // fails, its slot is free again, and the endpoint's pool is replaced (undici wedged that client).
      this.ep.reset(this.onLong)
      this.releaseSlot('neutral')
      this.fail(new FerryError('FERRY_ERR_UNFORWARDABLE', `request refused by the upstream client: ${err.message}`, { cause: err }))
      return
    }
    // A failed TLS handshake is counted and logged by the upstream's TLS client (once per endpoint, not per request).
    const ferr = (this.ep !== undefined ? this.ctx.upstream.tls?.failure(this.ep.address, err) : undefined) ?? classify(err)
    const before = this.state === 'dispatched'
    const retryable = before && this.bodyMode === 'none' && this.ctx.retryIdempotent &&
      IDEMPOTENT.has(this.req.method) && this.attempts < 2 && RETRYABLE.has(ferr.code)
    this.releaseSlot(ferr.code === 'FERRY_ERR_CLIENT_ABORTED' || ferr.code === 'FERRY_ERR_BODY_TOO_LARGE' || ferr.code === 'FERRY_ERR_CLIENT_BODY' ? 'neutral' : 'failed')
    if (this.state === 'aborted' || this.final) return
    if (retryable && this.ctx.upstream.endpoints.length > 1) {
      this.ctx.metrics.retries.inc()
      this.ctx.log.debug({ reqId: this.req.requestId, err: ferr.message }, 'retrying on another endpoint')
      this.to('waiting')
      this.queueEntry = this.ctx.upstream.acquire(this, this.lastEp, this.splitAsk(), this.longHeld(), this.stickyAsk())
      return
    }
    this.fail(ferr)
  }


  // ---- endings ------------------------------------------------------------------------------------

  private onClientAborted (): void {
    if (this.final) return
    const wasState = this.state
    this.errorCode = 'FERRY_ERR_CLIENT_ABORTED'
    if (wasState === 'gated' || wasState === 'buffering' || wasState === 'waiting') this.ctx.metrics.abortedBeforeUpstream.inc()
    if (this.queueEntry !== undefined) { this.ctx.upstream.cancel(this.queueEntry); this.queueEntry = undefined }
    if (this.drainable(wasState)) {
      // Read the rest of the (small) response and drop it; the slot is released on onResponseEnd.
      this.to('draining')
      this.pending = undefined
      this.controller?.resume()
      if (wasState === 'dispatched') {
        this.drainTimer = setTimeout(() => this.onDrainDeadline(), DRAIN_HEADERS_MS)
        this.drainTimer.unref()
      }
    } else {
      this.to('aborted')
      const err = new FerryError('FERRY_ERR_CLIENT_ABORTED', 'client went away')
      this.body?.destroy(err)
      if (wasState === 'dispatched' || wasState === 'responding') this.controller?.abort(err)
    }
    this.record()
  }

  private onDrainDeadline (): void {
    this.drainTimer = undefined
    if (this.state !== 'draining' || this.status !== 0) return // headers arrived meanwhile
    this.to('aborted')
    this.controller?.abort(new FerryError('FERRY_ERR_CLIENT_ABORTED', 'client went away; no response headers within the drain deadline'))
  }

  /** Worth keeping the upstream connection: the request was fully sent and little response is left. */
  private drainable (wasState: ExchangeState): boolean {
    if (wasState !== 'dispatched' && wasState !== 'responding') return false
    if (this.bodyMode !== 'none' && !this.clientBodyComplete) return false
    // A response of unknown length may never end (SSE, a stream): reading it on would hold the backend
    // connection, and its slot, for as long as the backend keeps writing. Long-held requests likewise.
    if (wasState === 'responding' && (this.responseLength < 0 || this.responseLength - this.bytesOut > DRAIN_LIMIT)) return false
    if (this.longHeld() !== undefined) return false
    return true
  }

  /** Ferry ends the request with an error: a status page if nothing was sent yet, else a cut connection. */
  private fail (err: FerryError): void {
    if (this.final) return
    const wasResponding = this.state === 'responding'
    this.to('failed')
    this.errorCode = err.code
    if (this.queueEntry !== undefined) { this.ctx.upstream.cancel(this.queueEntry); this.queueEntry = undefined }
    this.body?.destroy()
    this.controller?.abort(err)
    if (wasResponding && this.head === undefined) {
      // Headers are out: the only honest signal left is a truncated response. (After a completed
      // tryEnd the uWS response is gone and must not be touched.)
      if (!this.bodyComplete) this.res.close()
    } else {
      this.status = ERRORS[err.code].status || 500
      // Close the connection when request body bytes may still be unread, so they are never parsed as a request.
      const close = this.req.close || this.ctx.lifecycle.draining || this.req.contentLength !== 0
      sendError(this.res, this.status, err, this.req.requestId, this.ctx.requestIdHeader, close, this.errorHeader)
    }
    if (err.code !== 'FERRY_ERR_CLIENT_ABORTED' && err.code !== 'FERRY_ERR_UPSTREAM_TLS') this.ctx.log.warn({ reqId: this.req.requestId, code: err.code, upstream: this.ctx.upstream.name, client: this.req.clientIp }, err.message)
    this.record()
  }

  private finish (state: 'done'): void {
    this.to(state)
    this.record()
  }

  private record (): void {
    this.clearBodyTimer()
    this.releaseCharge()
    this.releaseStreamCount()
    this.chunks = []
    this.onEnd?.()
    const m = this.ctx.metrics
    m.inFlight(-1)
    this.ctx.lifecycle.inFlight--
    m.requests(this.route.name, this.status, this.bodyBytesIn, this.bytesOut)
    if (this.errorCode !== undefined) m.error(this.errorCode)
    if (this.ctx.accessLog) {
      this.ctx.log.info({
        reqId: this.req.requestId, method: this.req.method, path: this.req.path, status: this.status,
        route: this.route.name, upstream: this.ctx.upstream.name, endpoint: this.lastEp?.address,
        ms: Math.round((performance.now() - this.started) * 100) / 100, in: this.bodyBytesIn, out: this.bytesOut,
        client: this.req.clientIp, err: this.errorCode,
      }, 'access')
    }
    this.ctx.upstream.leave()
  }
}

function noop (): void {}

/** undici's codes for a request it will not send (InvalidArgumentError, NotSupportedError), raised before onRequestStart. */
const REFUSED_BY_UNDICI = new Set(['UND_ERR_INVALID_ARG', 'UND_ERR_NOT_SUPPORTED'])

/** Errors after which an idempotent, body-less request may go to another endpoint. */
const RETRYABLE = new Set<FerryErrorCode>(['FERRY_ERR_UPSTREAM_CONNECT', 'FERRY_ERR_UPSTREAM_CONNECT_TIMEOUT', 'FERRY_ERR_UPSTREAM_RESET', 'FERRY_ERR_UPSTREAM_TLS'])

/** Maps undici and socket errors to Ferry's codes. */
export function classify (err: Error): FerryError {
  if (isFerryError(err)) return err
  // undici's llhttp errors carry no `code`, only their class name.
  const code = (err as { code?: string }).code ?? (err.name === 'HTTPParserError' ? 'HPE_PARSE' : '')
  const msg = `${code !== '' ? code + ': ' : ''}${err.message}`
  switch (code) {
    case 'UND_ERR_CONNECT_TIMEOUT': return new FerryError('FERRY_ERR_UPSTREAM_CONNECT_TIMEOUT', msg, { cause: err })
    case 'ECONNREFUSED': case 'ENOTFOUND': case 'EHOSTUNREACH': case 'ENETUNREACH': case 'EAI_AGAIN': case 'EADDRNOTAVAIL':
      return new FerryError('FERRY_ERR_UPSTREAM_CONNECT', msg, { cause: err })
    case 'UND_ERR_HEADERS_TIMEOUT': return new FerryError('FERRY_ERR_UPSTREAM_TIMEOUT', msg, { cause: err })
    case 'UND_ERR_BODY_TIMEOUT': return new FerryError('FERRY_ERR_UPSTREAM_BODY_TIMEOUT', msg, { cause: err })
    case 'UND_ERR_SOCKET': case 'ECONNRESET': case 'EPIPE': case 'UND_ERR_CLOSED':
      return new FerryError('FERRY_ERR_UPSTREAM_RESET', msg, { cause: err })
    case 'UND_ERR_REQ_CONTENT_LENGTH_MISMATCH': return new FerryError('FERRY_ERR_CLIENT_BODY', msg, { cause: err })
    case 'UND_ERR_ABORTED': return new FerryError('FERRY_ERR_CLIENT_ABORTED', msg, { cause: err })
    default:
      if (code.startsWith('HPE_') || code === 'UND_ERR_RES_CONTENT_LENGTH_MISMATCH' || code === 'UND_ERR_HEADERS_OVERFLOW' || code === 'UND_ERR_INFO') {
        return new FerryError('FERRY_ERR_UPSTREAM_PROTOCOL', msg, { cause: err })
      }
      return new FerryError('FERRY_ERR_UPSTREAM_RESET', msg, { cause: err })
  }
}
