import type { Config } from './load.js'
import { DEFAULT_FORWARD_HEADERS, type WebSocketRouteConfig } from './schema.js'

/** The uWS-level settings of a WebSocket path: fixed once the path is registered (a reload cannot change them). */
export const UWS_BOUND_SETTINGS = ['maxPayloadLength', 'idleTimeoutSec', 'compression', 'maxBackpressure'] as const

/** WebSocket route settings by path: the first route of each path decides (uWS binds settings to a URL pattern). */
export function wsSettingsByPath (config: Config): Map<string, WebSocketRouteConfig> {
  const byPath = new Map<string, WebSocketRouteConfig>()
  for (const r of config.routes) {
    const proto = config.upstreams[r.upstream]?.protocol
    if ((proto === 'ws' || proto === 'mux') && !byPath.has(r.match.path)) byPath.set(r.match.path, r.websocket ?? DEFAULT_WS_SETTINGS)
  }
  return byPath
}

/** Route settings when a ws/mux route has no `websocket` block (the schema's defaults). */
export const DEFAULT_WS_SETTINGS: WebSocketRouteConfig = Object.freeze({
  maxPayloadLength: 1024 * 1024,
  idleTimeoutSec: 120,
  compression: 'off',
  maxBackpressure: 1024 * 1024,
  maxBufferedToUpstream: 1024 * 1024,
  subprotocols: [],
  forwardHeaders: DEFAULT_FORWARD_HEADERS,
})
