import type { Config } from '../config/load.js'
import type { WorkerStatus } from './messages.js'

/**
 * The parts of a pod's /status that are the pod's, not one worker's: built by the control plane from
 * its workers' last heartbeats (src/planes/control.ts). A worker reports what it holds and the share
 * of each pod-wide figure it enforces (src/planes/share.ts); the pod shows the sums of what is held
 * and the configured figures, and each worker's share under `workers[]`.
 */

interface SessionCounts { sessions: number, byRoute: Record<string, number>, byMode: { ws: number, mux: number } }

/** /status `websocket`: every worker's sessions, by route and by mode. */
export function podSessions (statuses: WorkerStatus[]): SessionCounts {
  const out: SessionCounts = { sessions: 0, byRoute: {}, byMode: { ws: 0, mux: 0 } }
  for (const st of statuses) {
    const w = st.websocket as SessionCounts | undefined
    if (w === undefined) continue
    out.sessions += w.sessions
    for (const [route, n] of Object.entries(w.byRoute)) out.byRoute[route] = (out.byRoute[route] ?? 0) + n
    out.byMode.ws += w.byMode.ws
    out.byMode.mux += w.byMode.mux
  }
  return out
}

/**
 * /status `admission`: the configured rate and burst (each worker admits its even share of them), and
 * the tokens every worker's bucket holds now (null: admission is off).
 */
export function podAdmission (cfg: Config, statuses: WorkerStatus[]): object {
  const on = cfg.admission.handshakesPerSec > 0
  let tokens = 0
  for (const st of statuses) tokens += (st.admission as { tokens: number | null } | undefined)?.tokens ?? 0
  return { handshakesPerSec: cfg.admission.handshakesPerSec, burst: cfg.admission.burst, tokens: on ? tokens : null }
}

/** What a worker's /status `limits` counts now (src/edge/limits.ts, status), summed over the pod. */
const HELD = ['httpInFlight', 'streamedBodies', 'bufferedBodyBytes', 'wsSessions'] as const

/**
 * /status `limits`: what the workers hold now, summed, and the configured figures (a worker enforces its
 * share of the pod-wide ones: `workers[].budget`). The workers' client-IP counts are not added up (one
 * client on two workers is in both tables): the pod's per-IP figures are `pod.perIp`.
 */
export function podLimits (cfg: Config, statuses: WorkerStatus[]): object {
  const held: Record<string, number> = {}
  for (const k of HELD) held[k] = 0
  for (const st of statuses) {
    const l = st.limits as Record<string, number> | undefined
    if (l === undefined) continue
    for (const k of HELD) held[k]! += l[k] ?? 0
  }
  return { ...held, ...cfg.limits }
}
