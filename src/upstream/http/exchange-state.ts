import type { Logger } from 'pino'
import type { HttpLifecycle, HttpTarget } from '../../contracts/http.js'
import type { HttpUpstream } from './pool.js'
import type { UpstreamMetrics } from './metrics.js'

/**
 * States of one proxied request (HttpExchange, exchange.ts). Moves only along MOVES, through the
 * exchange's `to()`:
 *   gated → [buffering →] waiting → dispatched → responding → done
 * `gated`: the route's edge checks (auth, rate limits) are still deciding (requests without checks pass
 * at once); the body is read meanwhile (bounded as always) but nothing is sent upstream until they let
 * the request through.
 * `buffering`: let through, but its body (a buffered one, see BodyMode) is still arriving; the pool slot
 * is asked for only once the body is whole, so a slow client never holds a backend connection.
 * `waiting`: asking for a pool slot (or queued for one); `dispatched`: sent upstream, no response head yet
 * (an idempotent body-less request whose endpoint failed goes back to `waiting` for another one).
 * From any live state to `failed` (Ferry answered with an error) or `aborted` (client gone).
 * `draining`: the client is gone but the upstream response is small enough to read to its end and
 * discard, so the keep-alive connection survives: client churn must not become backend churn. It ends
 * `done` (read to its end) or `aborted` (cut: too long, an error, or no head within the drain deadline).
 * The request is accounted (metrics, access log, the front's release) once, on leaving the live states
 * (gated … responding) for done, failed, aborted or draining.
 */
export type ExchangeState = 'gated' | 'buffering' | 'waiting' | 'dispatched' | 'responding' | 'draining' | 'done' | 'failed' | 'aborted'

/** Every allowed move. Anything else is a bug: the exchange refuses it, logs it and counts FERRY_ERR_INTERNAL. */
export const MOVES: Readonly<Record<ExchangeState, readonly ExchangeState[]>> = {
  gated: ['buffering', 'waiting', 'failed', 'aborted'],
  buffering: ['waiting', 'failed', 'aborted'],
  waiting: ['dispatched', 'failed', 'aborted'],
  dispatched: ['responding', 'waiting', 'draining', 'failed', 'aborted'],
  responding: ['done', 'draining', 'failed', 'aborted'],
  draining: ['done', 'aborted'],
  done: [],
  failed: [],
  aborted: [],
}

/** Whether `from → to` is a move of MOVES. */
export function canMove (from: ExchangeState, to: ExchangeState): boolean {
  return MOVES[from].includes(to)
}

/** The request is accounted and its client side is finished (draining reads on for the backend connection's sake only). */
export function isFinal (s: ExchangeState): boolean {
  return s === 'done' || s === 'failed' || s === 'aborted' || s === 'draining'
}

/** Response bytes Ferry will still read and discard after the client left, to keep the connection. */
export const DRAIN_LIMIT = 256 * 1024

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
