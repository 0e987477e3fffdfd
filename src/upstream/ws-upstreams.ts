import type { Logger } from 'pino'
import type { EndpointCarrier } from '../drain/endpoint-drain.js'
import { AffinityPlacement } from '../affinity/placement.js'
import type { AffinityStore } from '../affinity/store.js'
import type { MuxUpstreamConfig, WsUpstreamConfig } from '../config/schema.js'
import type { EndpointSource } from '../discovery/source.js'
import type { WsUpstream } from '../contracts/ws.js'
import type { Metrics } from '../observability/metrics.js'
import type { ResumeTokens } from '../sessions/token.js'
import type { RouteSplit } from '../routing/split.js'
import type { ActiveHealth } from './health.js'
import { MuxUpstream } from './mux/upstream.js'
import { WsPassthroughUpstream } from './ws/upstream.js'
import type { UpstreamTlsClient } from './tls.js'

/** What WebSocket upstreams share with the gateway. */
export interface WsUpstreamDeps {
  readonly gatewayId: string
  /** The affinity store; each upstream keeps its keys' records through its own placement. */
  readonly store?: AffinityStore
  /** Records' TTL (affinity.ttlMs): live keys are touched every third of it. */
  readonly ttlMs?: number
  /** Resume tokens (mux upstreams). */
  readonly tokens?: ResumeTokens
  /** A route's split in the running config, by route name (mux: where a handed-off session goes now). */
  readonly routeSplit?: (route: string) => RouteSplit | undefined
}

/** An HTTP upstream's WebSocket twin: the HTTP upstream it serves. */
export interface TwinOf {
  /** The HTTP upstream's name in the config (the twin is named `NAME:ws`). */
  readonly configName: string
  /** Reads the HTTP upstream's active checks instead of probing every endpoint a second time. */
  readonly sharedHealth: (address: string) => ActiveHealth | undefined
}

/**
 * Builds the upstream that carries WebSocket sessions for a `ws` or `mux` config entry (or an HTTP
 * upstream's twin, `twin`); its endpoints come from `source`; `tls`: its TLS client (undefined: plain). Also returns what the gateway's
 * EndpointDrainer moves sessions off its leaving endpoints through.
 */
export function createWsUpstream (name: string, cfg: WsUpstreamConfig | MuxUpstreamConfig, log: Logger, metrics: Metrics, source: EndpointSource, deps: WsUpstreamDeps, tls: UpstreamTlsClient | undefined, twin?: TwinOf): { upstream: WsUpstream, carrier: EndpointCarrier } {
  const placement = deps.store !== undefined ? new AffinityPlacement(deps.store, deps.gatewayId, deps.ttlMs ?? 600_000) : undefined
  if (cfg.protocol === 'mux') {
    const upstream = new MuxUpstream(name, cfg, log, metrics, source, { gatewayId: deps.gatewayId, placement, tokens: deps.tokens, routeSplit: deps.routeSplit, tls })
    return { upstream, carrier: muxCarrier(name, upstream, cfg) }
  }
  const upstream = new WsPassthroughUpstream(name, cfg, log, metrics, source, { placement, sharedHealth: twin?.sharedHealth, configName: twin?.configName, tls })
  return { upstream, carrier: upstream.carrier }
}

/**
 * A mux upstream as the EndpointDrainer sees it: only the operator's drain moves its sessions (a removed
 * endpoint's links GOAWAY and its sessions continue), through MuxUpstream.moveSessionsOff, at the pace
 * of its handoffs (`handoff.maxPerSec`: one budget for every session the upstream moves).
 */
function muxCarrier (name: string, u: MuxUpstream, cfg: MuxUpstreamConfig): EndpointCarrier {
  return {
    upstream: name,
    endpoints: u.set,
    movesFor: new Set(['operator']),
    budget: { maxMigrationsPerSec: cfg.handoff.maxPerSec, spreadMs: 0 },
    sessionsOn: (address) => {
      let n = 0
      for (const ep of u.set.all()) if (ep.address === address) n += ep.inflight
      return n
    },
    moveSessionsOff: (address, n) => u.moveSessionsOff(address, n),
  }
}
