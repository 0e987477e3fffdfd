import type { IncomingHttpHeaders } from 'node:http'
// Imported: the global `performance` is a getter in Node 20, run on each use (twice per request here).
import { performance } from 'node:perf_hooks'
import { Readable } from 'node:stream'
import type { Dispatcher } from 'undici'
import { FerryError, isFerryError, type FerryErrorCode } from '../../errors.js'
import type { ClientRequest } from '../../contracts/http.js'
import type { Route } from '../../routing/router.js'
import { splitAsk, type SplitAsk } from '../../routing/split.js'
import type { HttpEndpoint, HttpUpstream, LongHeldWhy, SlotOutcome, SlotWaiter, StickyAsk } from './pool.js'
import { longHeldWhy } from './long-held.js'
import { learnedKey, stickyKey, type StickyKey } from './sticky.js'
import { headersForLatin1Writer } from '../../net/header-bytes.js'
import { DRAIN_LIMIT, type ExchangeContext, type ExchangeState } from './exchange-state.js'
import type { ClientSide } from './client-side.js'

/** RFC 9110 §9.2.2. A switch, not a Set: the method is a new string per request, which a Set would hash first. */
function idempotent (method: string): boolean {
  switch (method) {
    case 'GET': case 'HEAD': case 'OPTIONS': case 'PUT': case 'DELETE': case 'TRACE': return true
    default: return false
  }
}
/**
 * How long a request whose client left may still wait for response headers. Past it the upstream
 * request is aborted: a hung backend must not keep pool slots for abandoned requests until responseMs.
 */
const DRAIN_HEADERS_MS = 1000

/**
 * timeouts.responseMs, kept to the millisecond: undici checks its headersTimeout on a clock that ticks
 * every 499 ms (lib/util/timers.js), so its own 504 came up to ~0.5 s late, or early when other requests
 * were in flight. One native timer per sent request instead, in Node's shared list for that duration
 * (an O(1) insert and clear). undici's stays as the backstop of the upload phase, 1 s longer (pool.ts).
 */
function onResponseDeadline (side: BackendSide): void {
  side.responseDeadline()
}

/** What the backend side of an exchange asks of its exchange (which owns the state and the ending). */
export interface BackendOwner {
  readonly state: ExchangeState
  /** isFinal(state): the request is accounted, the client side finished. */
  readonly final: boolean
  /** The response status (the access log's and the request counter's). */
  status: number
  /** Moves the exchange's state (checked against MOVES). */
  to: (next: ExchangeState) => void
  fail: (err: FerryError) => void
  /** The upstream response ended (its slot is already back). */
  responseEnded: () => void
}

/** Backend sides whose request was read in this turn of the loop: they ask for slots once it is handled. */
let due: BackendSide[] = []
function takeSlots (): void {
  const list = due
  due = []
  for (const b of list) b.takeSlot()
}

/**
 * The backend half of an exchange. It owns the pool slot (asked for, queued, held; released exactly
 * once per slot, `releaseSlot`), the undici dispatch (it is the dispatch handler; it aborts it when the
 * request ends early), the retry on another endpoint, the drain deadline of a response read on after
 * its client left, and the route's affinity (the key, its placement record, a key the backend set).
 * It writes to the client only through the ClientSide.
 */
export class BackendSide implements SlotWaiter, Dispatcher.DispatchHandler {
  /** Headers sent upstream (the edge may strip and add some). */
  headers: readonly string[]
  /** The endpoint of the last dispatch (the access log's `endpoint`). */
  lastEp: HttpEndpoint | undefined
  private ep: HttpEndpoint | undefined
  /** The slot is a long-held one (dispatched on the endpoint's longPool). */
  private onLong = false
  private queueEntry: ReturnType<HttpUpstream['acquire']>
  private controller: Dispatcher.DispatchController | undefined
  private attempts = 0
  private dispatchedAt = 0
  private drainTimer: NodeJS.Timeout | undefined
  /** timeouts.responseMs of the request sent (armed once it is all sent; cleared by its head or its slot's release). */
  private responseTimer: NodeJS.Timeout | undefined
  private drained = 0
  /** Route affinity: the request's key (undefined: none), where the store records it, and whether that is being asked. */
  private sticky: StickyKey | undefined
  private home: string | undefined
  private lookingUp = false
  /** Why this request is long-held (pool.longHeld), read once. */
  private longWhy: LongHeldWhy | undefined | null = null
  /** The route's split, asked with the headers as they go upstream (so a pin may come from a verified claim); read once. */
  private split: SplitAsk | undefined

  constructor (
    private readonly owner: BackendOwner,
    private readonly client: ClientSide,
    private readonly req: ClientRequest,
    private readonly route: Route,
    private readonly ctx: ExchangeContext,
  ) {
    this.headers = req.headers
  }

  /**
   * Asks for a slot once the read that carried the request has been handled (setImmediate, batched):
   * uWS 20.30 closes a connection when the same read holds a second, pipelined request, and reports it
   * (onAborted) after this request's handler, microtasks included. Asking now would send the request
   * upstream, where it takes effect, while its response can no longer be delivered.
   */
  afterThisRead (): void {
    if (due.length === 0) setImmediate(takeSlots)
    due.push(this)
  }

  /** @internal The read is handled: take a slot, unless the client is gone (never sent upstream then). */
  takeSlot (): void {
    if (this.owner.state !== 'waiting' || this.queueEntry !== undefined || this.lookingUp) return
    const up = this.ctx.upstream
    if (this.route.affinityKey !== undefined) {
      this.sticky = stickyKey(this.route, this.req, this.headers)
      // A key Ferry just issued has no record; an existing key's is asked for within the store's budget.
      if (this.sticky !== undefined && this.sticky.setCookie === undefined && up.placement !== undefined) {
        this.lookingUp = true
        void up.placement.recorded(this.sticky.key).then((home) => {
          this.lookingUp = false
          this.home = home
          if (this.owner.state === 'waiting' && this.queueEntry === undefined) this.queueEntry = up.acquire(this, undefined, this.splitAsk(), this.longHeld(), this.stickyAsk())
        })
        return
      }
    }
    this.queueEntry = up.acquire(this, undefined, this.splitAsk(), this.longHeld(), this.stickyAsk())
  }

  private stickyAsk (): StickyAsk | undefined {
    if (this.route.affinityKey === undefined) return undefined
    if (this.sticky === undefined) {
      if (this.attempts === 0) this.ctx.upstream.countSticky('keyless')
      return undefined
    }
    return { key: this.sticky.key, home: this.home, issued: this.sticky.setCookie !== undefined }
  }

  longHeld (): LongHeldWhy | undefined {
    if (this.longWhy === null) this.longWhy = longHeldWhy(this.route.longHeld, this.req.method, this.req.target, this.headers)
    return this.longWhy
  }

  private splitAsk (): SplitAsk | undefined {
    const split = this.route.split
    if (split === undefined) return undefined
    const q = this.req.target.indexOf('?')
    this.split ??= splitAsk(split, this.headers, q === -1 ? '' : this.req.target.slice(q + 1), this.req.clientIp)
    return this.split
  }

  // ---- endings the exchange decides ---------------------------------------------------------------

  /** The request will not be sent (or sent again): leaves the pool queue if it waits there. */
  cancel (): void {
    if (this.queueEntry !== undefined) { this.ctx.upstream.cancel(this.queueEntry); this.queueEntry = undefined }
  }

  /** Ends the upstream request now (undici reports it through onResponseError, which returns the slot). */
  abort (err: FerryError): void {
    this.controller?.abort(err)
  }

  /** The client left: read the rest of the (small) response and drop it; `awaitHead`: none yet, so within DRAIN_HEADERS_MS. */
  drain (awaitHead: boolean): void {
    this.controller?.resume()
    if (awaitHead) {
      this.drainTimer = setTimeout(() => this.onDrainDeadline(), DRAIN_HEADERS_MS)
      this.drainTimer.unref()
    }
  }

  private onDrainDeadline (): void {
    this.drainTimer = undefined
    if (this.owner.state !== 'draining' || this.owner.status !== 0) return // headers arrived meanwhile
    this.owner.to('aborted')
    this.controller?.abort(new FerryError('FERRY_ERR_CLIENT_ABORTED', 'client went away; no response headers within the drain deadline'))
  }

  /** The client socket drained: the upstream may send more. */
  resume (): void {
    this.controller?.resume()
  }

  // ---- pool slot ----------------------------------------------------------------------------------

  onSlot (ep: HttpEndpoint, long: boolean): void {
    this.queueEntry = undefined
    if (this.owner.final) { this.ctx.upstream.release(ep, 'neutral', long); return }
    this.onLong = long
    this.client.dispatched()
    this.ep = ep
    this.lastEp = ep
    if (this.sticky !== undefined) this.ctx.upstream.placement?.opened(this.sticky.key, ep.address, this.home)
    this.attempts++
    this.owner.to('dispatched')
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
        body: this.client.requestBody(),
        idempotent: idempotent(this.req.method),
        blocking: false,
      }
      ;(long ? ep.longPool : ep.pool).dispatch(opts, this)
    } catch (err) {
      // Not reached with a handler (undici reports through onResponseError); kept for a throwing dispatcher.
      this.ep?.reset(this.onLong)
      this.releaseSlot('neutral')
      this.owner.fail(new FerryError('FERRY_ERR_UNFORWARDABLE', `request rejected: ${(err as Error).message}`, { cause: err }))
    }
  }

  onNoSlot (err: FerryError): void {
    this.queueEntry = undefined
    this.owner.fail(err)
  }

  /** Returns the slot held, if any (once: `ep` is cleared), and stops the drain and response deadlines. */
  private releaseSlot (outcome: SlotOutcome): void {
    if (this.drainTimer !== undefined) { clearTimeout(this.drainTimer); this.drainTimer = undefined }
    this.clearResponseTimer()
    const ep = this.ep
    if (ep === undefined) return
    this.ep = undefined
    if (this.sticky !== undefined) this.ctx.upstream.placement?.closed(this.sticky.key)
    this.ctx.upstream.release(ep, outcome, this.onLong)
  }

  // ---- undici dispatch handler --------------------------------------------------------------------

  onRequestStart (controller: Dispatcher.DispatchController): void {
    this.controller = controller
    const s = this.owner.state
    if (s === 'aborted' || s === 'failed') { controller.abort(new FerryError('FERRY_ERR_CLIENT_ABORTED', 'client went away')); return }
    // undici writes the head and a buffered body now; a streamed body counts from its last byte.
    const body = this.client.requestBody()
    if (body instanceof Readable && !body.readableEnded) body.once('end', () => { if (this.owner.state === 'dispatched' && this.ep !== undefined) this.armResponseTimer() })
    else this.armResponseTimer()
  }

  private armResponseTimer (): void {
    this.clearResponseTimer()
    this.responseTimer = setTimeout(onResponseDeadline, this.ctx.upstream.cfg.timeouts.responseMs, this)
    this.responseTimer.unref()
  }

  private clearResponseTimer (): void {
    if (this.responseTimer !== undefined) { clearTimeout(this.responseTimer); this.responseTimer = undefined }
  }

  /** @internal timeouts.responseMs passed without a response head: 504 (through onResponseError, like any failure). */
  responseDeadline (): void {
    this.responseTimer = undefined
    // A client that left is handled by the drain deadline (DRAIN_HEADERS_MS).
    if (this.owner.state !== 'dispatched') return
    this.controller?.abort(new FerryError('FERRY_ERR_UPSTREAM_TIMEOUT', `no response headers within timeouts.responseMs ${this.ctx.upstream.cfg.timeouts.responseMs}`))
  }

  onResponseStart (controller: Dispatcher.DispatchController, statusCode: number, headers: IncomingHttpHeaders, statusMessage?: string): void {
    if (statusCode < 200) return // interim responses are not forwarded (uWS cannot write them); see interim.ts
    this.clearResponseTimer()
    const owner = this.owner
    if (owner.state === 'draining') {
      owner.status = statusCode
      const cl = headers['content-length']
      // A long or unknown length (a stream may never end): not worth reading for the connection's sake.
      if (typeof cl !== 'string' || Number(cl) > DRAIN_LIMIT) controller.abort(new FerryError('FERRY_ERR_CLIENT_ABORTED', 'client went away'))
      return
    }
    if (owner.state !== 'dispatched') { controller.abort(new FerryError('FERRY_ERR_CLIENT_ABORTED', 'client went away')); return }
    this.ctx.metrics.latency.observe((performance.now() - this.dispatchedAt) / 1000)
    owner.to('responding')
    owner.status = statusCode
    if (this.route.affinityKey !== undefined) this.learnKey(headers['set-cookie'])
    this.client.respond(statusCode, statusMessage, headers, this.sticky?.setCookie)
  }

  /** The backend set the route's affinity cookie to a key other than this request's: its requests come back here. */
  private learnKey (setCookie: string | string[] | undefined): void {
    const key = learnedKey(this.route.affinityKey!, setCookie)
    if (key === undefined || key === this.sticky?.key || this.ep === undefined) return
    this.ctx.upstream.placement?.learned(key, this.ep.address)
    this.ctx.upstream.countSticky('learned')
  }

  onResponseData (controller: Dispatcher.DispatchController, chunk: Buffer): void {
    const s = this.owner.state
    if (s === 'draining') {
      this.drained += chunk.length
      if (this.drained > DRAIN_LIMIT) controller.abort(new FerryError('FERRY_ERR_CLIENT_ABORTED', 'client went away'))
      return
    }
    if (s !== 'responding') return
    if (this.client.write(chunk)) controller.pause()
  }

  onResponseEnd (): void {
    this.releaseSlot('ok')
    this.owner.responseEnded()
  }

  onResponseError (_controller: Dispatcher.DispatchController, err: Error): void {
    const owner = this.owner
    if (this.controller === undefined && this.ep !== undefined && REFUSED_BY_UNDICI.has((err as { code?: string }).code ?? '')) {
      // undici refused the request before sending anything (a part it cannot encode): this request alone
      // fails, its slot is free again, and the endpoint's pool is replaced (undici wedged that client).
      this.ep.reset(this.onLong)
      this.releaseSlot('neutral')
      owner.fail(new FerryError('FERRY_ERR_UNFORWARDABLE', `request refused by the upstream client: ${err.message}`, { cause: err }))
      return
    }
    // A failed TLS handshake is counted and logged by the upstream's TLS client (once per endpoint, not per request).
    const ferr = (this.ep !== undefined ? this.ctx.upstream.tls?.failure(this.ep.address, err) : undefined) ?? classify(err)
    const before = owner.state === 'dispatched'
    const retryable = before && this.client.bodyMode === 'none' && this.ctx.retryIdempotent &&
      idempotent(this.req.method) && this.attempts < 2 && RETRYABLE.has(ferr.code)
    this.releaseSlot(ferr.code === 'FERRY_ERR_CLIENT_ABORTED' || ferr.code === 'FERRY_ERR_BODY_TOO_LARGE' || ferr.code === 'FERRY_ERR_CLIENT_BODY' ? 'neutral' : 'failed')
    // A drained response cut short (too long, or the backend failed): the drain is over.
    if (owner.state === 'draining') { owner.to('aborted'); return }
    if (owner.final) return
    if (retryable && this.ctx.upstream.endpoints.length > 1) {
      this.ctx.metrics.retries.inc()
      this.ctx.log.debug({ reqId: this.req.requestId, err: ferr.message }, 'retrying on another endpoint')
      owner.to('waiting')
      this.queueEntry = this.ctx.upstream.acquire(this, this.lastEp, this.splitAsk(), this.longHeld(), this.stickyAsk())
      return
    }
    owner.fail(ferr)
  }
}

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
