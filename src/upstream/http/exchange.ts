import type { HttpResponse } from 'uWebSockets.js'
import { ERRORS, FerryError, type FerryErrorCode } from '../../errors.js'
import type { Admission, BodyPolicy, BodySize, ClientExchange, ClientRequest, Refusal } from '../../contracts/http.js'
import type { Route } from '../../routing/router.js'
import { ClientSide, type ClientOwner } from './client-side.js'
import { BackendSide, type BackendOwner } from './backend-side.js'
import { canMove, DRAIN_LIMIT, isFinal, type ExchangeContext, type ExchangeState } from './exchange-state.js'

export type { ExchangeContext } from './exchange-state.js'

const NO_POLICY: BodyPolicy = { idleMs: 0, totalMs: 0, minRate: 0, rateWindowMs: 0 }

/** The context of an HTTP upstream under one config (built again on each reload: it carries settings from outside the upstream). */
export function exchangeContext (c: Omit<ExchangeContext, 'exchange'>): ExchangeContext {
  const ctx: ExchangeContext = { ...c, exchange: (res, req, route, size, policy, release) => new HttpExchange(res, req, route, ctx, size, policy, release) }
  return ctx
}

/**
 * One client request proxied to one upstream: the ClientSide (client-side.ts: the uWS response, the
 * request body and its limits and timers, the response as written) and the BackendSide (backend-side.ts:
 * the pool slot, the undici dispatch, retries, the drain after the client left, affinity), wired here.
 * The exchange owns the one state (ExchangeState, moved only along MOVES by `to()`) and the ending: the
 * request is accounted once (`record`: the sides' releases, the front's `onEnd`, metrics, access log,
 * the upstream's `leave`), when it leaves the live states. The sides call each other only through it
 * or, for the response, the backend side through the ClientSide's methods.
 */
export class HttpExchange implements ClientExchange, ClientOwner, BackendOwner {
  private current: ExchangeState = 'gated'
  /** The response status: the upstream's, or the error's Ferry answered with. */
  status = 0
  private readonly client: ClientSide
  private readonly backend: BackendSide
  private errorCode: FerryErrorCode | undefined
  private errorHeader: readonly [string, string] | undefined
  /** When the exchange began, for the access log's `ms` (read only when the access log is on). */
  private started = 0

  constructor (
    res: HttpResponse,
    private readonly req: ClientRequest,
    private readonly route: Route,
    private readonly ctx: ExchangeContext,
    size: BodySize,
    policy: BodyPolicy = NO_POLICY,
    /** Called once when the exchange ends, whichever way (the front's concurrency limits release here). */
    private readonly onEnd?: () => void,
  ) {
    this.client = new ClientSide(this, res, req, ctx, size, policy)
    this.backend = new BackendSide(this, this.client, req, route, ctx)
    if (ctx.accessLog) this.started = performance.now()
  }

  /**
   * Called synchronously from the uWS handler: attaches onAborted/onData before anything async.
   * `gate`: the edge's decision, or a promise of it (the request waits in `gated`); it rejects with a
   * Refusal. `verifyBody`: the decision may demand a body digest, so the body is hashed as it arrives.
   */
  start (gate?: Admission | Promise<Admission | undefined>, verifyBody = false): void {
    this.client.watchAbort()
    this.ctx.metrics.inFlight(1)
    this.ctx.lifecycle.inFlight++
    this.ctx.lifecycle.served++
    // The upstream this exchange started on serves it to the end, even if a reload replaces it meanwhile.
    this.ctx.upstream.enter()
    if (gate instanceof Promise) {
      gate.then((a) => { if (this.state === 'gated') this.admit(a) }, (r: Refusal) => {
        if (this.state === 'gated') this.fail(r.err, r.header)
      })
    }
    if (!this.client.readBody(verifyBody)) return
    if (!(gate instanceof Promise)) this.admit(gate)
  }

  private admit (a: Admission | undefined): void {
    if (a !== undefined) {
      this.backend.headers = a.headers
      this.client.expect(a.bodySha256)
      if (!this.client.bodyMatches()) return
    }
    if (this.client.awaitsBody) this.to('buffering')
    else this.requestSlot()
  }

  requestSlot (): void {
    this.to('waiting')
    this.backend.afterThisRead()
  }

  // ---- state --------------------------------------------------------------------------------------

  /** The one place the state moves. A move not in MOVES is a bug: refused, logged and counted (FERRY_ERR_INTERNAL), never thrown into uWS or undici. */
  to (next: ExchangeState): void {
    if (canMove(this.current, next)) { this.current = next; return }
    this.ctx.metrics.error('FERRY_ERR_INTERNAL')
    this.ctx.log.error({ reqId: this.req.requestId, from: this.state, to: next, upstream: this.ctx.upstream.name }, 'HTTP exchange: illegal state move refused')
  }

  get state (): ExchangeState {
    return this.current
  }

  get final (): boolean {
    return isFinal(this.state)
  }

  // ---- what the sides report ----------------------------------------------------------------------

  clientDrained (): void {
    this.backend.resume()
  }

  responseEnded (): void {
    if (this.state === 'draining') { this.to('done'); return }
    if (this.state !== 'responding') return
    const end = this.client.endResponse()
    if (end === 'done') this.finish()
    else if (end === 'short') this.fail(new FerryError('FERRY_ERR_UPSTREAM_PROTOCOL', 'upstream body shorter than its Content-Length'))
  }

  responseWritten (): void {
    this.finish()
  }

  // ---- endings ------------------------------------------------------------------------------------

  clientAborted (): void {
    if (this.final) return
    const wasState = this.state
    this.errorCode = 'FERRY_ERR_CLIENT_ABORTED'
    if (wasState === 'gated' || wasState === 'buffering' || wasState === 'waiting') this.ctx.metrics.abortedBeforeUpstream.inc()
    this.backend.cancel()
    if (this.drainable(wasState)) {
      // Read the rest of the (small) response and drop it; the slot is released on onResponseEnd.
      this.to('draining')
      this.client.dropPending()
      this.backend.drain(wasState === 'dispatched')
    } else {
      this.to('aborted')
      const err = new FerryError('FERRY_ERR_CLIENT_ABORTED', 'client went away')
      this.client.destroyBody(err)
      if (wasState === 'dispatched' || wasState === 'responding') this.backend.abort(err)
    }
    this.record()
  }

  /** Worth keeping the upstream connection: the request was fully sent and little response is left. */
  private drainable (wasState: ExchangeState): boolean {
    if (wasState !== 'dispatched' && wasState !== 'responding') return false
    const client = this.client
    if (client.bodyMode !== 'none' && !client.bodyDone) return false
    // A response of unknown length may never end (SSE, a stream): reading it on would hold the backend
    // connection, and its slot, for as long as the backend keeps writing. Long-held requests likewise.
    if (wasState === 'responding' && (client.responseLength < 0 || client.responseLength - client.bytesOut > DRAIN_LIMIT)) return false
    if (this.backend.longHeld() !== undefined) return false
    return true
  }

  /** Ferry ends the request with an error: a status page if nothing was sent yet, else a cut connection. */
  fail (err: FerryError, header?: readonly [string, string]): void {
    if (this.final) return
    if (header !== undefined) this.errorHeader = header
    const wasResponding = this.state === 'responding'
    this.to('failed')
    this.errorCode = err.code
    this.backend.cancel()
    this.client.destroyBody()
    this.backend.abort(err)
    if (!this.client.cutResponse(wasResponding)) {
      this.status = ERRORS[err.code].status || 500
      this.client.sendFailure(this.status, err, this.errorHeader)
    }
    if (err.code !== 'FERRY_ERR_CLIENT_ABORTED' && err.code !== 'FERRY_ERR_UPSTREAM_TLS') this.ctx.log.warn({ reqId: this.req.requestId, code: err.code, upstream: this.ctx.upstream.name, client: this.req.clientIp }, err.message)
    this.record()
  }

  private finish (): void {
    this.to('done')
    this.record()
  }

  /** The request's accounting, once: the client side's releases, the front's `onEnd`, metrics, access log, `leave`. */
  private record (): void {
    this.client.close()
    this.onEnd?.()
    const m = this.ctx.metrics
    m.inFlight(-1)
    this.ctx.lifecycle.inFlight--
    m.requests(this.route.name, this.status, this.client.bodyBytesIn, this.client.bytesOut)
    if (this.errorCode !== undefined) m.error(this.errorCode)
    if (this.ctx.accessLog) {
      const client = this.client
      this.ctx.log.info({
        reqId: this.req.requestId, method: this.req.method, path: this.req.path, status: this.status,
        route: this.route.name, upstream: this.ctx.upstream.name, endpoint: this.backend.lastEp?.address,
        ms: Math.round((performance.now() - this.started) * 100) / 100, in: client.bodyBytesIn, out: client.bytesOut,
        client: this.req.clientIp, err: this.errorCode,
      }, 'access')
    }
    this.ctx.upstream.leave()
  }
}
