import type { Logger } from 'pino'
import { FerryError, toFerryError } from '../errors.js'
import type { Metrics } from '../observability/metrics.js'
import type { HttpTarget } from '../contracts/http.js'
import type { WsUpstream } from '../contracts/ws.js'
import type { Route } from '../routing/router.js'
import type { Admission } from '../drain/admission.js'
import type { ConnectionLimits, LimitSlot } from '../edge/limits.js'
import { RateLimited, refusalHeader, type Admitted, type EdgeRequest, type RouteGuard } from '../edge/guard.js'
import type { RouteTable } from './route-table.js'

/**
 * The one admission pipeline of the front. Every HTTP request and every WebSocket upgrade passes the
 * same stages in this order; each refuses with its own error before anything of a later stage is spent:
 *
 * - `route`: host and path to a route (404 FERRY_ERR_NO_ROUTE);
 * - `access`: the route's access list, the client address and then (upgrades) the Origin (403);
 * - `kind`: the route's upstream takes this kind (a plain request on a ws/mux route: 426; an upgrade on
 *   an upstream without WebSocket: 400 FERRY_ERR_NOT_WEBSOCKET);
 * - `shape`: what the kind must look like: a declared body within maxBodyBytes (413), a well-formed
 *   WebSocket handshake (400);
 * - `rate`: upgrades only, `admission.handshakesPerSec` (503, or 101 + close 1013 for ferry/client);
 * - `limit`: the concurrency limits (`limits.maxRequestsInFlight[PerIp]`, `limits.maxWebSocketSessions[PerIp]`);
 *   the slot is taken here, so requests and upgrades waiting on a slow edge check count, and it is
 *   released once: by whoever ends the request or session, or by `release` when the guard refuses.
 *   In a worker of a pod the per-IP figure is the pod's: beyond the worker's lease of that client it
 *   borrows from the control plane (`held`), and the guard runs once it answered;
 * - `guard`: the route's edge checks (rate limits by request, auth, rate limits by claim), synchronously
 *   when they can be (src/edge/guard.ts).
 */
export const STAGES = ['route', 'access', 'kind', 'shape', 'rate', 'limit', 'guard'] as const
export type Stage = typeof STAGES[number]

/** A refusal: the stage that refused, its error and the response header that goes with it (Retry-After, WWW-Authenticate). */
export interface Refused {
  readonly stage: Stage
  readonly err: FerryError
  readonly header?: readonly [string, string] | undefined
  /** The route, from the `access` stage on. */
  readonly route?: Route | undefined
  /** A ferry/client client on a mux route is not answered in HTTP (a browser cannot read a status): it is upgraded and closed 1013 with this reason. */
  readonly close1013?: string | undefined
}

/** What every ask carries: where it goes and who asks. */
interface Ask {
  readonly host: string
  readonly path: string
  /** The client address as http.trustedProxies resolves it (access lists, limits). */
  readonly clientIp: string
}

export interface HttpAsk extends Ask {
  /** Declared body length (undefined: chunked). */
  readonly contentLength: number | undefined
}

export interface WsAsk extends Ask {
  readonly origin: string
  /** The handshake's headers as a flat `[name, value, …]` list, and its key and version. */
  readonly raw: readonly string[]
  readonly key: string
  readonly version: string
  /** The client offered `ferry.v1` (ferry/client). */
  readonly ferryClient: boolean
}

/** Through every synchronous stage: the upstream, the route's body cap, and the concurrency slot's release. */
export interface HttpPass {
  readonly route: Route
  readonly upstream: HttpTarget
  readonly maxBody: number
  /** Gives the concurrency slot back (once: the exchange that takes it over calls it when it ends). */
  readonly release: () => void
  /** The worker borrowed a per-IP slot from its pod: the refusal (the slot is given back already), or undefined once held. */
  readonly held?: Promise<Refused | undefined> | undefined
}

export interface WsPass {
  readonly route: Route
  readonly upstream: WsUpstream
  /** Gives the session slot back (once: the front's session registry calls it when the session ends, or the front when the upgrade fails). */
  readonly release: () => void
  /** As HttpPass's. */
  readonly held?: Promise<Refused | undefined> | undefined
}

/** The guard's decision: the checks passed at once, or a promise of it (rejecting with a Refused). */
export interface Verdict { readonly verifiesBody: boolean, readonly admitted: Admitted | Promise<Admitted> }

const KEY_RE = /^[A-Za-z0-9+/]{22}==$/

/** Connection names `upgrade`, Upgrade is `websocket`, and the key and version headers appear once each (RFC 6455 §4.2.1, §11.3.1). */
export function isUpgradeRequest (raw: readonly string[]): boolean {
  let keys = 0
  let versions = 0
  let connection = false
  let upgrade = false
  for (let i = 0; i < raw.length; i += 2) {
    const k = raw[i]!
    if (k === 'sec-websocket-key') keys++
    else if (k === 'sec-websocket-version') versions++
    else if (k === 'connection') connection ||= raw[i + 1]!.toLowerCase().split(',').some((c) => c.trim() === 'upgrade')
    else if (k === 'upgrade') upgrade ||= raw[i + 1]!.trim().toLowerCase() === 'websocket'
  }
  return keys === 1 && versions === 1 && connection && upgrade
}

export interface AdmitDeps {
  readonly metrics: Metrics
  readonly log: Logger
  readonly limits: ConnectionLimits
  readonly admission: Admission
}

/** The pipeline, shared by the HTTP and the WebSocket front of one process (one set of limits, one admission bucket). */
export class Admit {
  constructor (private readonly deps: AdmitDeps) {}

  /** Stages route → limit of a plain HTTP request (it has no `rate` stage). */
  http (table: RouteTable, ask: HttpAsk): HttpPass | Refused {
    const route = this.route(table, ask, undefined)
    if (isRefused(route)) return route
    const upstream = table.upstreams.get(route.upstream)
    if (upstream === undefined) return { stage: 'kind', route, err: new FerryError('FERRY_ERR_UPGRADE_REQUIRED', `route ${route.name} takes WebSocket upgrades only`), header: ['upgrade', 'websocket'] }
    const maxBody = route.maxBodyBytes ?? table.config.http.maxBodyBytes
    if (ask.contentLength !== undefined && ask.contentLength > maxBody) return { stage: 'shape', route, err: new FerryError('FERRY_ERR_BODY_TOO_LARGE', `request body of ${ask.contentLength} bytes exceeds maxBodyBytes ${maxBody}`) }
    const slot = this.deps.limits.takeRequest(ask.clientIp)
    if (slot instanceof FerryError) return this.limitRefused(route, slot)
    return { route, upstream, maxBody, release: slot.release, held: this.held(route, slot) }
  }

  /** Stages route → limit of a WebSocket upgrade. */
  ws (table: RouteTable, ask: WsAsk): WsPass | Refused {
    const route = this.route(table, ask, ask.origin)
    if (isRefused(route)) return route
    const upstream = table.wsUpstreams.get(route.upstream)
    if (upstream === undefined) return { stage: 'kind', route, err: new FerryError('FERRY_ERR_NOT_WEBSOCKET', `route ${route.name} does not take WebSocket upgrades`) }
    if (!KEY_RE.test(ask.key) || ask.version !== '13') return { stage: 'shape', route, err: new FerryError('FERRY_ERR_NOT_WEBSOCKET', 'bad Sec-WebSocket-Key or Sec-WebSocket-Version (13 expected)') }
    // uWS 20.30 upgrades on a well-formed key alone; RFC 6455 asks for more.
    if (!isUpgradeRequest(ask.raw)) return { stage: 'shape', route, err: new FerryError('FERRY_ERR_NOT_WEBSOCKET', 'a WebSocket handshake needs Connection: upgrade, Upgrade: websocket and exactly one Sec-WebSocket-Key and -Version') }
    // Past the handshake rate nothing is opened upstream; the client is told when to come back.
    const admission = this.deps.admission
    if (!admission.take()) {
      const ferryMux = ask.ferryClient && upstream.mode === 'mux'
      const ms = admission.refuse(ferryMux ? 'ws' : 'http')
      return { stage: 'rate', route, err: new FerryError('FERRY_ERR_ADMISSION', `new sessions are admitted at ${table.config.admission.handshakesPerSec}/s; retry in ${ms} ms`), header: ['retry-after', String(Math.ceil(ms / 1000))], close1013: ferryMux ? `retry-after-ms=${ms}` : undefined }
    }
    const slot = this.deps.limits.takeSession(ask.clientIp)
    if (slot instanceof FerryError) return this.limitRefused(route, slot)
    return { route, upstream, release: slot.release, held: this.held(route, slot) }
  }

  private limitRefused (route: Route, err: FerryError): Refused {
    return { stage: 'limit', route, err, header: this.deps.limits.retryAfter }
  }

  /** The pod's answer on a per-IP slot, as the pipeline's refusal. */
  private held (route: Route, slot: LimitSlot): Promise<Refused | undefined> | undefined {
    return slot.held?.then((err) => err === undefined ? undefined : this.limitRefused(route, err))
  }

  /** The route's edge checks (auth, rate limits); undefined for an open route, which skips stage `guard`. */
  guardOf (table: RouteTable, route: Route): RouteGuard | undefined {
    return table.edge.guard(route)
  }

  /**
   * Stage `guard`: the route's edge checks (`guardOf`, for a route that has them) on
   * `req`. A Refused when they refuse at once; else the verdict, whose promise rejects with a Refused.
   * `ferryMux`: a ferry/client client on a mux route, whose rate-limit refusal is a close 1013.
   */
  guard (guard: RouteGuard, route: Route, req: EdgeRequest, ferryMux = false): Verdict | Refused {
    const refuse = (err: unknown): Refused => {
      const ferr = toFerryError(err, 'edge check failed')
      if (ferr.code === 'FERRY_ERR_INTERNAL') this.deps.log.error({ err: ferr, route: route.name }, 'edge check failed')
      return { stage: 'guard', route, err: ferr, header: refusalHeader(ferr, guard.challenge), close1013: ferryMux && ferr instanceof RateLimited ? `retry-after-ms=${ferr.retryAfterMs}` : undefined }
    }
    let admitted: Admitted | Promise<Admitted>
    try {
      admitted = guard.check(req)
    } catch (err) {
      return refuse(err)
    }
    return { verifiesBody: guard.verifiesBody, admitted: admitted instanceof Promise ? admitted.catch((err: unknown): never => { throw refuse(err) }) : admitted }
  }

  /** Stages `route` and `access`: the route, or why there is none for this client. */
  private route (table: RouteTable, ask: Ask, origin: string | undefined): Route | Refused {
    const route = table.router.match(ask.host, ask.path)
    if (route === undefined) return { stage: 'route', err: new FerryError('FERRY_ERR_NO_ROUTE', `no route for ${ask.host}${ask.path}`) }
    const access = route.access
    if (access === undefined) return route
    const denied = access.refusesIp(ask.clientIp) ?? (origin === undefined ? undefined : access.refusesOrigin(origin))
    if (denied === undefined) return route
    this.deps.metrics.accessDenied.labels(route.name, denied).inc()
    return {
      stage: 'access',
      route,
      err: new FerryError('FERRY_ERR_ACCESS_DENIED', denied === 'ip' ? `route ${route.name} does not admit ${ask.clientIp}` : `route ${route.name} does not admit WebSocket upgrades from origin ${origin!.slice(0, 100)}`),
    }
  }
}

/** A stage refused (the discriminant between a pass and a refusal). */
export function isRefused (r: object): r is Refused {
  return 'stage' in r
}
