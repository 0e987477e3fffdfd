import type { Logger } from 'pino'
import type { MuxUpstreamConfig, WsUpstreamConfig } from '../config/schema.js'
import type { WsUpstream } from '../front/ws-types.js'
import type { Metrics } from '../observability/metrics.js'
import { MuxUpstream } from './mux/upstream.js'
import { WsPassthroughUpstream } from './ws/upstream.js'

/** Builds the upstream that carries WebSocket sessions for a `ws` or `mux` config entry. */
export function createWsUpstream (name: string, cfg: WsUpstreamConfig | MuxUpstreamConfig, log: Logger, metrics: Metrics, gatewayId: string): WsUpstream {
  if (cfg.protocol === 'mux') return new MuxUpstream(name, cfg, log, metrics, gatewayId)
  return new WsPassthroughUpstream(name, cfg, log, metrics)
}
