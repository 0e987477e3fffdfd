import type { Config } from './load.js'
import { UWS_BOUND_SETTINGS, wsSettingsByPath } from './ws-settings.js'

/** JSON with object keys sorted: equal configs give equal strings whatever the key order. */
export function canonicalJson (v: unknown): string {
  return JSON.stringify(v, (_k, x: unknown) => x !== null && typeof x === 'object' && !Array.isArray(x)
    ? Object.fromEntries(Object.entries(x as Record<string, unknown>).sort(([a], [b]) => a < b ? -1 : a > b ? 1 : 0))
    : x)
}

/**
 * What a hot reload cannot change in a running process, as field-named problems (empty: the reload
 * may go ahead). These need a restart, which drain-and-replace makes harmless.
 */
export function reloadRefusals (running: Config, next: Config): string[] {
  const out: string[] = []
  const fixed = (path: string, a: unknown, b: unknown, why: string): void => {
    if (canonicalJson(a) !== canonicalJson(b)) out.push(`${path}: cannot change on a reload (${why}); restart the pod (drain-and-replace) to apply it`)
  }
  fixed('gateway.id', running.gateway.id, next.gateway.id, 'it names this pod in affinity records and on its mux links')
  fixed('affinity', running.affinity, next.affinity, 'open sessions hold the store')
  fixed('resume', running.resume, next.resume, 'tokens already issued must stay valid')
  fixed('reload', running.reload, next.reload, 'the file watch is set up at start-up')
  fixed('admin.console', running.admin.console, next.admin.console, 'the console feed is set up at start-up')
  // uWS makes an app SSL or not when it is created, with its cipher list; the redirect listener is bound at start.
  const tlsFixed = (t: Config['listen']['http']['tls']) => t === undefined ? undefined : { ciphers: t.ciphers, minVersion: t.minVersion, watchIntervalMs: t.watchIntervalMs }
  fixed('listen.http.tls', running.listen.http.tls === undefined, next.listen.http.tls === undefined, 'the HTTP front is made with TLS or without it at start-up')
  fixed('listen.http.tls', tlsFixed(running.listen.http.tls), tlsFixed(next.listen.http.tls), 'ciphers, minVersion and watchIntervalMs are set up at start-up; certificates and sni entries can change')
  fixed('listen.http.redirectHttpPort', running.listen.http.redirectHttpPort, next.listen.http.redirectHttpPort, 'the redirect listener is bound at start-up')
  // `v1+v2` puts Ferry's PROXY reader in front of uWS when the front starts; `off` ⇄ `v2` is a check per request.
  const reader = (c: Config): boolean => c.listen.http.acceptProxyProtocol === 'v1+v2'
  fixed('listen.http.acceptProxyProtocol', reader(running), reader(next), 'v1+v2 sets up Ferry\'s PROXY reader in front of uWebSockets.js at start-up; off and v2 switch live')
  if (reader(running) && reader(next)) fixed('listen.http', { host: running.listen.http.host, port: running.listen.http.port }, { host: next.listen.http.host, port: next.listen.http.port }, 'with acceptProxyProtocol v1+v2 the listener is the PROXY reader, bound at start-up')
  // uWS binds these to a path's URL pattern when it is registered; new paths are fine.
  const before = wsSettingsByPath(running)
  for (const [path, s] of wsSettingsByPath(next)) {
    const was = before.get(path)
    if (was === undefined) continue
    const i = next.routes.findIndex((r) => r.match.path === path && r.websocket !== undefined)
    for (const k of UWS_BOUND_SETTINGS) {
      if (was[k] !== s[k]) out.push(`routes[${i < 0 ? next.routes.findIndex((r) => r.match.path === path) : i}].websocket.${k}: cannot change on a reload for the existing WebSocket path ${path} (uWebSockets.js binds it to the path); restart the pod to apply it`)
    }
  }
  return out
}
