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

/** An endpoint's /status row as a worker reports it (src/upstream/endpoint-set.ts, status). */
type EndpointRow = Record<string, unknown> & { address: string, state: string, drain?: Record<string, unknown>, links?: unknown[] }
type UpstreamRow = Record<string, unknown> & { name: string, endpoints: EndpointRow[] }

/** What an endpoint row counts as held now (each worker has its own connections, sessions, streams): summed. */
const ENDPOINT_HELD = ['inflight', 'held', 'connected', 'connecting', 'connectFailures', 'sessions', 'handshaking', 'closing', 'streams'] as const
/** What a leaving endpoint's drain counts: summed. */
const DRAIN_HELD = ['sessionsAtStart', 'moved', 'sessionsLeft', 'open'] as const
const STATE_ORDER: Record<string, number> = { active: 0, draining: 1, drained: 2 }

function sumOf (rows: Array<Record<string, unknown>>, key: string): number {
  return rows.reduce((n, r) => n + (typeof r[key] === 'number' ? r[key] : 0), 0)
}

/**
 * One endpoint of the pod: the first worker's row (its labels, admin state, health as that worker
 * sees it), with what every worker holds on it summed, every worker's mux links, and the state of the
 * least advanced worker (drained once every worker has drained it; as ferry_upstream_endpoint_state).
 */
function podEndpoint (rows: EndpointRow[]): EndpointRow {
  const first = rows[0]!
  const out: EndpointRow = { ...first }
  for (const k of ENDPOINT_HELD) if (typeof first[k] === 'number') out[k] = sumOf(rows, k)
  if (first.links !== undefined) out.links = rows.flatMap((r) => r.links ?? [])
  out.state = rows.reduce((s, r) => (STATE_ORDER[r.state] ?? 0) < (STATE_ORDER[s] ?? 0) ? r.state : s, first.state)
  const drains = rows.map((r) => r.drain).filter((d): d is Record<string, unknown> => d !== undefined)
  if (first.drain !== undefined) {
    const all = drains.length === rows.length && drains.every((d) => d.state === 'drained')
    const drain: Record<string, unknown> = { ...first.drain, state: all ? 'drained' : 'draining', drainedAt: all ? first.drain.drainedAt : null }
    for (const k of DRAIN_HELD) drain[k] = sumOf(drains, k)
    out.drain = drain
  }
  return out
}

/**
 * /status `upstreams`: the first worker's list (every worker runs the same config), each endpoint's
 * counts and drain progress summed over the workers and its state the least advanced one's; an
 * upstream's `queued` is summed too. Health is the first worker's (each worker checks on its own).
 */
export function podUpstreams (statuses: WorkerStatus[]): UpstreamRow[] {
  const lists = statuses.map((st) => (st.upstreams as UpstreamRow[] | undefined) ?? [])
  return (lists[0] ?? []).map((u) => {
    const same = lists.map((l) => l.find((x) => x.name === u.name)).filter((x): x is UpstreamRow => x !== undefined)
    // A removed endpoint still finishing and a new one at the same address are two rows: matched by their order.
    const seen = new Map<string, number>()
    const endpoints = u.endpoints.map((ep) => {
      const k = seen.get(ep.address) ?? 0
      seen.set(ep.address, k + 1)
      return podEndpoint(same.map((x) => x.endpoints.filter((e) => e.address === ep.address)[k]).filter((e): e is EndpointRow => e !== undefined))
    })
    return { ...u, ...(typeof u.queued === 'number' ? { queued: sumOf(same, 'queued') } : {}), endpoints }
  })
}
