import type { Config } from '../config/load.js'
import type { HttpTarget } from '../contracts/http.js'
import type { WsUpstream } from '../contracts/ws.js'
import type { Edge } from '../edge/guard.js'
import type { Router } from '../routing/router.js'

/**
 * What a request is routed with: one config's routes and upstreams. The gateway swaps the whole table
 * on a reload; a request or session looks it up once, when it arrives, and keeps what it got.
 */
export interface RouteTable {
  readonly config: Config
  readonly router: Router
  /** HTTP upstreams by name. */
  readonly upstreams: ReadonlyMap<string, HttpTarget>
  /** WebSocket-carrying upstreams (ws, mux; and the passthrough of each http upstream) by name. */
  readonly wsUpstreams: ReadonlyMap<string, WsUpstream>
  /** Auth and rate-limit guards of the routes. */
  readonly edge: Edge
}
