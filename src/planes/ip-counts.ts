import type { Logger } from 'pino'
import { CallUnanswered, ControlCalls } from './calls.js'

/**
 * The per-client-IP limits a pod counts as one: `http` is limits.maxRequestsInFlightPerIp, `ws`
 * limits.maxWebSocketSessionsPerIp. One client's connections land on any worker (the kernel spreads
 * them), so these are counted by the control plane for the whole pod.
 */
export type IpScope = 'http' | 'ws'

/** A worker's call: a slot of `ip` under `max` (answered), or one given back (not answered: `id` 0). */
export type IpCall =
  | { op: 'take', scope: IpScope, ip: string, max: number }
  | { op: 'release', scope: IpScope, ip: string }

/** The control plane's answer to a take: the call it answers, so one that comes after the worker gave up on it can be undone. */
export interface IpAnswer { ok: boolean, scope: IpScope, ip: string }

/**
 * How a take ended for the worker: `counted` by the pod (give it back with `release`), `local` (the
 * control plane did not answer in time and the worker admitted it within its even part of the figure;
 * nothing to give back to the pod), or refused.
 */
export type IpTake = 'counted' | 'local' | false

/** How long a worker waits for the pod's count before it decides alone. */
const BUDGET_MS = 250

/**
 * A worker's side of the pod's per-IP counts. A take is a message each way, made only for a limit that
 * is set and a client this worker does not already hold the whole figure of; a release is a message
 * one way. A take the control plane does not answer within BUDGET_MS is decided by the worker alone:
 * admitted while it holds at most its even part of the figure (⌈max ÷ workers⌉), else refused; a late
 * `ok` is given back at once, so the pod's count never keeps a slot nobody holds.
 */
export class PodIpCounts {
  private readonly calls = new ControlCalls(BUDGET_MS)
  private quiet = false

  constructor (private readonly workers: number, private readonly send: (id: number, call: IpCall) => void, private readonly log: Logger) {}

  /** One more slot of `ip` under the pod's `max`; `local`: the slots of `ip` this worker holds, this one included. */
  async take (scope: IpScope, ip: string, max: number, local: number): Promise<IpTake> {
    try {
      const a = await this.calls.call<IpAnswer>((id) => { this.send(id, { op: 'take', scope, ip, max }) })
      return a.ok ? 'counted' : false
    } catch (err) {
      if (err instanceof CallUnanswered && err.closed) return false
      const part = Math.ceil(max / this.workers)
      if (!this.quiet) { this.quiet = true; this.log.warn({ budgetMs: BUDGET_MS, scope, part }, 'the control plane did not answer a per-IP limit in time: this worker decides alone, within its even part of the figure') }
      return local <= part ? 'local' : false
    }
  }

  /** Gives back a slot the pod counted. */
  release (scope: IpScope, ip: string): void {
    this.send(0, { op: 'release', scope, ip })
  }

  answer (id: number, body: unknown): void {
    if (this.calls.answer(id, body)) { this.quiet = false; return }
    // Too late: the worker decided alone, so a slot the pod counted for it is given back.
    const a = body as IpAnswer
    if (a.ok) this.release(a.scope, a.ip)
  }

  close (): void {
    this.calls.close()
  }
}

/**
 * The control plane's side: for each scope and client IP, the slots each worker holds. A take is
 * judged against the pod's total; a worker that exits takes its slots with it (its connections are
 * gone). Entries exist only while a count is above zero.
 */
export class PodIpTable {
  private readonly counts = new Map<string, number[]>()
  private readonly totals = new Map<string, number>()

  constructor (private readonly workers: number) {}

  /** A worker's call; the answer for a take, undefined for a release. */
  serve (worker: number, c: IpCall): IpAnswer | undefined {
    if (c.op === 'release') { this.release(worker, c.scope, c.ip); return undefined }
    return { ok: this.take(worker, c.scope, c.ip, c.max), scope: c.scope, ip: c.ip }
  }

  take (worker: number, scope: IpScope, ip: string, max: number): boolean {
    const key = `${scope} ${ip}`
    const total = this.totals.get(key) ?? 0
    if (total >= max) return false
    let by = this.counts.get(key)
    if (by === undefined) { by = new Array<number>(this.workers).fill(0); this.counts.set(key, by) }
    by[worker] = (by[worker] ?? 0) + 1
    this.totals.set(key, total + 1)
    return true
  }

  release (worker: number, scope: IpScope, ip: string): void {
    const key = `${scope} ${ip}`
    const by = this.counts.get(key)
    // Not held by this worker: never a negative count.
    if (by === undefined || (by[worker] ?? 0) === 0) return
    by[worker]!--
    this.settle(key, by, 1)
  }

  /** A worker exited: what it held is free. */
  drop (worker: number): void {
    for (const [key, by] of this.counts) {
      const n = by[worker] ?? 0
      if (n === 0) continue
      by[worker] = 0
      this.settle(key, by, n)
    }
  }

  private settle (key: string, by: number[], freed: number): void {
    const total = (this.totals.get(key) ?? 0) - freed
    if (total <= 0) { this.totals.delete(key); this.counts.delete(key) } else this.totals.set(key, total)
  }

  /** For /status: the slots counted and the client IPs holding them, per scope. */
  status (): Record<IpScope, { slots: number, clientIps: number }> {
    const s = { http: { slots: 0, clientIps: 0 }, ws: { slots: 0, clientIps: 0 } }
    for (const [key, total] of this.totals) {
      const scope = key.startsWith('http ') ? s.http : s.ws
      scope.slots += total
      scope.clientIps++
    }
    return s
  }
}
