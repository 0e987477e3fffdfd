import type { RouteConfig, WebSocketRouteConfig } from '../config/schema.js'
import { RouteAccess } from '../edge/access.js'
import { RouteSplit, SplitStats } from './split.js'

export interface Route {
  /** Stable name for logs and metrics: `host/path` or `*\/path`. */
  readonly name: string
  readonly upstream: string
  readonly maxBodyBytes: number | undefined
  /** Overrides http.bufferBodyBytes. */
  readonly bufferBodyBytes: number | undefined
  /** The route's access list (client addresses, WebSocket origins), if it has one. */
  readonly access: RouteAccess | undefined
  /** Every request is long-held (the upstream's pool.longHeld budget). */
  readonly longHeld: boolean
  /** WebSocket settings (routes to ws/mux upstreams; absent: defaults). */
  readonly websocket: WebSocketRouteConfig | undefined
  /** Where the session affinity key comes from (`query:uid`), if the route has one. */
  readonly affinityKey: string | undefined
  /** Routes to http upstreams with `affinity.setCookie`: the cookie Ferry sets on a request without one (the key's NAME). */
  readonly affinityCookie: string | undefined
  /** Name of the route's auth policy, if any. */
  readonly auth: string | undefined
  /** Names of the route's rate limit policies. */
  readonly rateLimits: readonly string[]
  readonly host: string | undefined
  readonly path: string
  /** Version-aware routing: the route's split between label subsets of its upstream, if it has one. */
  readonly split: RouteSplit | undefined
}

/** A route's name: `host/path`, `*` for any host (what logs, metrics, /status and the admin API use). */
export function routeName (r: Pick<RouteConfig, 'match'>): string {
  return `${r.match.host?.toLowerCase() ?? '*'}${r.match.path}`
}

interface CompiledRoute extends Route {
  readonly hostSuffix: string | undefined
  readonly order: number
}

/**
 * Host + path-prefix routing. Routes are sorted once, most specific first (host before host-less,
 * exact host before wildcard, longer path first, then file order), so `match` is a linear scan that
 * stops at the first hit: a handful of string compares per request.
 */
export class Router {
  private readonly routes: CompiledRoute[]

  /** `stats`: the gateway's split counters (kept across reloads); absent: counted nowhere (tests). */
  constructor (routes: readonly RouteConfig[], stats = new SplitStats(undefined)) {
    this.routes = routes.map((r, order) => {
      const host = r.match.host?.toLowerCase()
      const name = routeName(r)
      // A split keeps a client on its subset by `split.key`, else by the route's affinity key, else by client IP.
      const affinitySource = r.affinity?.key !== undefined && r.affinity.key !== 'token' ? r.affinity.key : undefined
      return {
        name,
        split: r.split === undefined ? undefined : new RouteSplit(name, r.split, r.split.key ?? affinitySource, stats),
        upstream: r.upstream,
        maxBodyBytes: r.maxBodyBytes,
        bufferBodyBytes: r.bufferBodyBytes,
        longHeld: r.longHeld,
        access: r.access === undefined ? undefined : new RouteAccess(r.access),
        websocket: r.websocket,
        affinityKey: r.affinity?.key,
        affinityCookie: r.affinity?.setCookie === true ? r.affinity.key.slice('cookie:'.length) : undefined,
        auth: r.auth,
        rateLimits: r.rateLimits,
        host,
        hostSuffix: host?.startsWith('*.') === true ? host.slice(1) : undefined,
        path: r.match.path,
        order,
      }
    }).sort((a, b) => rank(a) - rank(b) || b.path.length - a.path.length || a.order - b.order)
  }

  /** `host` is the raw Host header (any case, maybe with :port); `path` is the URL path without query. */
  match (host: string, path: string): Route | undefined {
    const h = normaliseHost(host)
    for (const r of this.routes) {
      if (r.host !== undefined) {
        if (r.hostSuffix !== undefined ? !(h.endsWith(r.hostSuffix) && h.length > r.hostSuffix.length) : h !== r.host) continue
      }
      if (pathMatches(r.path, path)) return r
    }
    return undefined
  }

  list (): readonly Route[] {
    return this.routes
  }

  /** The route of this name (`host/path`, `*` for any host), if any. */
  byName (name: string): Route | undefined {
    return this.routes.find((r) => r.name === name)
  }
}

function rank (r: CompiledRoute): number {
  return r.host === undefined ? 2 : r.hostSuffix !== undefined ? 1 : 0
}

function normaliseHost (host: string): string {
  let h = host
  if (h.startsWith('[')) {
    const end = h.indexOf(']')
    return (end === -1 ? h : h.slice(0, end + 1)).toLowerCase()
  }
  const colon = h.indexOf(':')
  if (colon !== -1) h = h.slice(0, colon)
  return h.toLowerCase()
}

/** `/api` matches `/api` and `/api/…` but not `/apix`; a prefix ending in `/` matches anything under it. */
export function pathMatches (prefix: string, path: string): boolean {
  if (!path.startsWith(prefix)) return false
  if (prefix.endsWith('/') || path.length === prefix.length) return true
  return path.charCodeAt(prefix.length) === 47 /* / */
}
