import type { Logger } from 'pino'
import { AffinityPlacement } from '../affinity/placement.js'
import type { AffinityStore } from '../affinity/store.js'
import type { MuxUpstreamConfig, WsUpstreamConfig } from '../config/schema.js'
import type { EndpointSource } from '../discovery/source.js'
import type { WsUpstream } from '../front/ws-types.js'
import type { Metrics } from '../observability/metrics.js'
import type { ResumeTokens } from '../sessions/token.js'
import type { RouteSplit } from '../routing/split.js'
import type { ActiveHealth } from './health.js'
import { MuxUpstream } from './mux/upstream.js'
import { WsPassthroughUpstream } from './ws/upstream.js'

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

/**
 * Builds the upstream that carries WebSocket sessions for a `ws` or `mux` config entry; its endpoints
 * come from `source`. `sharedHealth` (ws only): read another upstream's active checks instead of
 * probing (an HTTP upstream's WebSocket twin).
 */
export function createWsUpstream (name: string, cfg: WsUpstreamConfig | MuxUpstreamConfig, log: Logger, metrics: Metrics, source: EndpointSource, deps: WsUpstreamDeps, sharedHealth?: (address: string) => ActiveHealth | undefined): WsUpstream {
  const placement = deps.store !== undefined ? new AffinityPlacement(deps.store, deps.gatewayId, deps.ttlMs ?? 600_000) : undefined
  if (cfg.protocol === 'mux') return new MuxUpstream(name, cfg, log, metrics, source, { gatewayId: deps.gatewayId, placement, tokens: deps.tokens, routeSplit: deps.routeSplit })
  return new WsPassthroughUpstream(name, cfg, log, metrics, source, placement, sharedHealth)
}
