import type { TcpListenerConfig } from '../config/schema.js'
import type { TcpTarget } from '../contracts/tcp.js'
import { serverNameMatches } from '../net/tls.js'

/**
 * `listen.tcp[].sniRoutes` of the running config: which TCP upstream a ClientHello's server name goes
 * to. Replaced whole by a reload (connections already routed keep their upstream).
 */
export class SniRoutes {
  private readonly exact = new Map<string, TcpTarget>()
  private readonly wildcard: Array<{ pattern: string, target: TcpTarget }> = []

  constructor (routes: TcpListenerConfig['sniRoutes'], resolve: (upstream: string) => TcpTarget, readonly unmatched: TcpListenerConfig['sniUnmatched']) {
    for (const r of routes) {
      const target = resolve(r.upstream)
      for (const n of r.serverNames.map((x) => x.toLowerCase())) {
        if (n.includes('*')) this.wildcard.push({ pattern: n, target })
        else if (!this.exact.has(n)) this.exact.set(n, target)
      }
    }
  }

  /** The upstream of the route listing `name` (lower case), or undefined: no SNI, or no route lists it. */
  pick (name: string | undefined): TcpTarget | undefined {
    if (name === undefined) return undefined
    return this.exact.get(name) ?? this.wildcard.find((w) => serverNameMatches(w.pattern, name))?.target
  }
}
