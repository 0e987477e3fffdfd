import { Networks } from '../net/address.js'

/** A route's access list, as configured (`routes[].access`). */
export interface AccessConfig {
  readonly allow: readonly string[]
  readonly deny: readonly string[]
  readonly origins: readonly string[]
}

/** Why a request was refused: its client address, or (a WebSocket upgrade) its Origin. */
export type AccessRefusal = 'ip' | 'origin'

/**
 * A route's access list, compiled once per config: `deny` first (a match refuses), then `allow` (when
 * it lists anything, the client address must match one entry), then, for WebSocket upgrades, the Origin
 * allowlist (a browser always sends Origin; a request without one, from a non-browser client, passes).
 * Addresses are the client as `http.trustedProxies` resolves it, the one limits and logs use.
 */
export class RouteAccess {
  private readonly allow: Networks | undefined
  private readonly deny: Networks | undefined
  private readonly exact: Set<string>
  private readonly suffixes: Array<{ scheme: string, suffix: string, port: string }>

  constructor (cfg: AccessConfig) {
    this.allow = cfg.allow.length > 0 ? new Networks(cfg.allow) : undefined
    this.deny = cfg.deny.length > 0 ? new Networks(cfg.deny) : undefined
    this.exact = new Set()
    this.suffixes = []
    for (const o of cfg.origins) {
      const m = /^(https?):\/\/\*(\.[^:]+)(?::(\d+))?$/.exec(o)
      if (m !== null) this.suffixes.push({ scheme: m[1]!, suffix: m[2]!.toLowerCase(), port: m[3] ?? '' })
      else this.exact.add(o.toLowerCase())
    }
  }

  /** Has an Origin allowlist. */
  get checksOrigin (): boolean {
    return this.exact.size > 0 || this.suffixes.length > 0
  }

  /** Why the client at `ip` may not use the route, or undefined. */
  refusesIp (ip: string): AccessRefusal | undefined {
    if (this.deny?.contains(ip) === true) return 'ip'
    if (this.allow !== undefined && !this.allow.contains(ip)) return 'ip'
    return undefined
  }

  /** Why a WebSocket upgrade with this Origin header ('' for none) is refused, or undefined. */
  refusesOrigin (origin: string): AccessRefusal | undefined {
    if (origin === '' || !this.checksOrigin) return undefined
    const o = origin.toLowerCase()
    if (this.exact.has(o)) return undefined
    const m = /^(https?):\/\/([^/:]+)(?::(\d+))?$/.exec(o)
    if (m !== null) {
      for (const s of this.suffixes) {
        if (s.scheme === m[1] && m[2]!.endsWith(s.suffix) && m[2]!.length > s.suffix.length && s.port === (m[3] ?? '')) return undefined
      }
    }
    return 'origin'
  }
}
