import { usableCores, type Cores } from './cores.js'
import type { Config } from '../config/load.js'

/** `gateway.workers` as a count: `auto` is the cores this process may use (its CPUs, capped by a cgroup CPU quota). */
export function workerCount (cfg: Pick<Config, 'gateway'>, cores: Cores = usableCores()): number {
  const w = cfg.gateway.workers
  return w === 'auto' ? cores.usable : w
}

/** The pod-wide concurrency limits the control plane shares out between its workers as they need them. */
export const BUDGETS = ['maxRequestsInFlight', 'maxWebSocketSessions', 'maxBufferedBodyBytes'] as const
export type BudgetName = typeof BUDGETS[number]
/** A worker's share of each: a positive figure, or NONE (0 in a limit means "no limit"). */
export type Budget = Record<BudgetName, number>
/** A share of nothing, for now. */
export const NONE = -1

/** A pod-wide rate split over `n` workers: each gets its part rounded up (0, "no limit", stays 0). */
function part (total: number, n: number): number {
  return total === 0 ? 0 : Math.max(1, Math.ceil(total / n))
}

/** The share worker `index` of `n` starts with: the figure ÷ n, the remainder to the first ones; together exactly the figure. */
export function initialBudget (cfg: Config, index: number, n: number): Budget {
  const b = {} as Budget
  for (const k of BUDGETS) {
    const total = cfg.limits[k]
    const mine = Math.floor(total / n) + (index < total % n ? 1 : 0)
    b[k] = total === 0 ? 0 : mine === 0 ? NONE : mine
  }
  return b
}

/**
 * What one of `n` workers enforces of a pod-wide config. The concurrency limits (`BUDGETS`) are the
 * worker's current share, which the control plane moves between workers as they use them (see
 * `rebalance`). The pod-wide rates (admission, the drain's pace, each upstream's handoff pace) are split
 * evenly, rounded up. Figures per client address stay as configured: the control plane lends them out
 * for the pod (src/planes/ip-counts.ts, docs/workers.md). With n = 1 the config is returned as it is.
 */
export function workerShare (cfg: Config, n: number, budget: Budget | undefined): Config {
  if (n <= 1) return cfg
  const upstreams: Record<string, unknown> = {}
  for (const [name, u] of Object.entries(cfg.upstreams)) {
    upstreams[name] = 'handoff' in u && u.handoff !== undefined ? { ...u, handoff: { ...u.handoff, maxPerSec: part(u.handoff.maxPerSec, n) } } : u
  }
  return {
    ...cfg,
    limits: { ...cfg.limits, ...(budget ?? {}) },
    admission: { ...cfg.admission, handshakesPerSec: part(cfg.admission.handshakesPerSec, n), burst: part(cfg.admission.burst, n) },
    drain: { ...cfg.drain, maxMigrationsPerSec: part(cfg.drain.maxMigrationsPerSec, n) },
    upstreams: upstreams as Config['upstreams'],
  }
}

/** One worker's side of one budget, as its last heartbeat said: what it uses, and the share it enforces. */
export interface BudgetUse {
  used: number
  /** The share it enforces (NONE: nothing). */
  applied: number
  /** A worker that is starting holds the share it was sent, uses nothing and gets nothing more yet. */
  fixed: boolean
}

/**
 * New shares of a pod-wide limit `total` (> 0) between workers, so that the pod never holds more than
 * `total` and what one worker leaves unused can go to another. Each worker's target is what it uses
 * plus an even part of what nobody uses. A worker above its target is lowered at once; but the
 * capacity it gives back counts as held until its heartbeat says it enforces the lower share (it may
 * have taken more since its last report), so a worker below its target grows only from capacity that
 * no worker can be using. Shares move within two heartbeats.
 */
export function rebalance (total: number, rows: BudgetUse[]): number[] {
  const eff = rows.map((r) => Math.max(0, r.applied))
  const open = rows.map((r, i) => ({ r, i })).filter(({ r }) => !r.fixed)
  const used = rows.reduce((n, r) => n + r.used, 0)
  const free = Math.max(0, total - used)
  const target = new Map<number, number>()
  // What nobody uses is shared by every worker, those starting too (their part waits for them).
  open.forEach(({ r, i }, j) => {
    target.set(i, r.used + Math.floor(free / rows.length) + (j < free % rows.length ? 1 : 0))
  })
  let room = total - eff.reduce((n, v) => n + v, 0)
  const next = eff.slice()
  for (const { i } of open) if (target.get(i)! < eff[i]!) next[i] = target.get(i)!
  for (const { i } of open) {
    const want = target.get(i)! - eff[i]!
    if (want <= 0 || room <= 0) continue
    const grant = Math.min(want, room)
    room -= grant
    next[i] = eff[i]! + grant
  }
  return next.map((v, i) => rows[i]!.fixed ? rows[i]!.applied : v === 0 ? NONE : v)
}
