import { availableParallelism } from 'node:os'
import type { Config } from '../config/load.js'

/** `gateway.workers` as a count: `auto` is the cores this process may use. */
export function workerCount (cfg: Pick<Config, 'gateway'>): number {
  const w = cfg.gateway.workers
  return w === 'auto' ? availableParallelism() : w
}

/** A pod-wide budget split over `n` workers: each gets its share rounded up (0, "no limit", stays 0). */
function part (total: number, n: number): number {
  return total === 0 ? 0 : Math.max(1, Math.ceil(total / n))
}

/**
 * What one of `n` workers enforces of a pod-wide config: every budget that counts the whole pod
 * (`limits.max*` without `PerIp`, admission, the drain's pace, each upstream's handoff pace) is split
 * evenly, so the pod together keeps the configured figure (at most n − 1 above it, from rounding up).
 * Budgets per client address stay as configured: a client's connections spread over the workers by the
 * kernel, so these count per worker (docs/workers.md). With n = 1 the config is returned as it is.
 */
export function workerShare (cfg: Config, n: number): Config {
  if (n <= 1) return cfg
  const l = cfg.limits
  const upstreams: Record<string, unknown> = {}
  for (const [name, u] of Object.entries(cfg.upstreams)) {
    upstreams[name] = 'handoff' in u && u.handoff !== undefined ? { ...u, handoff: { ...u.handoff, maxPerSec: part(u.handoff.maxPerSec, n) } } : u
  }
  return {
    ...cfg,
    limits: { ...l, maxRequestsInFlight: part(l.maxRequestsInFlight, n), maxBufferedBodyBytes: part(l.maxBufferedBodyBytes, n), maxWebSocketSessions: part(l.maxWebSocketSessions, n) },
    admission: { ...cfg.admission, handshakesPerSec: part(cfg.admission.handshakesPerSec, n), burst: part(cfg.admission.burst, n) },
    drain: { ...cfg.drain, maxMigrationsPerSec: part(cfg.drain.maxMigrationsPerSec, n) },
    upstreams: upstreams as Config['upstreams'],
  }
}
