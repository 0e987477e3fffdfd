import type { IpScope, PodIpCounts } from '../planes/ip-counts.js'

/** Counts (or bytes) per client IP; an entry exists only while its count is above zero (no growth with churn). */
export class IpTable {
  private readonly counts = new Map<string, number>()
  total = 0

  count (ip: string): number {
    return this.counts.get(ip) ?? 0
  }

  add (ip: string, n = 1): void {
    this.counts.set(ip, (this.counts.get(ip) ?? 0) + n)
    this.total += n
  }

  remove (ip: string, n = 1): void {
    const had = this.counts.get(ip)
    if (had === undefined) return // not ours: a release without a take is a bug upstream, never a negative count
    const take = Math.min(had, n)
    if (had <= take) this.counts.delete(ip)
    else this.counts.set(ip, had - take)
    this.total -= take
  }

  get ips (): number {
    return this.counts.size
  }
}

/**
 * One connection's, request's or session's hold on a per-IP figure, given back once with `release` (a
 * second call does nothing). `held` is there when a worker of a pod had to borrow the slot from its
 * control plane: it resolves to undefined once held, or to the refusal (then nothing is held). Until it
 * resolves the slot counts as held.
 */
export interface IpSlot<R> {
  readonly release: () => void
  readonly held?: Promise<R | undefined>
}

/**
 * Takes a slot of `ip` in `table` under `perIp` (0: no figure), or returns `refused(ip)` when this
 * process already holds the figure of that client. With `pod` (a worker of a pod) and a figure set, the
 * pod's lease of that client in `scope` is taken too: at once while the worker's lease covers it, else
 * `held`. `refused` is called only on a refusal (give a function made once, not one per take: this runs
 * for every request).
 */
export function takeIpSlot<R> (table: IpTable, ip: string, perIp: number, pod: PodIpCounts | undefined, scope: IpScope, refused: (ip: string) => R): R | IpSlot<R> {
  if (perIp > 0 && table.count(ip) >= perIp) return refused(ip)
  table.add(ip)
  if (perIp === 0 || pod === undefined) {
    let live = true
    return { release: () => { if (live) { live = false; table.remove(ip) } } }
  }
  const now = pod.take(scope, ip, perIp)
  if (now === false) { table.remove(ip); return refused(ip) }
  let state: 'asking' | 'held' | 'gone' = now === true ? 'held' : 'asking'
  const release = (): void => {
    if (state === 'gone') return
    if (state === 'held') pod.release(scope, ip)
    state = 'gone'
    table.remove(ip)
  }
  if (now === true) return { release }
  const held = now.then((ok) => {
    if (state === 'gone') {
      // Released while the pod was asked: what it lent goes back.
      if (ok) pod.release(scope, ip)
      return undefined
    }
    if (!ok) { state = 'gone'; table.remove(ip); return refused(ip) }
    state = 'held'
    return undefined
  })
  return { held, release }
}
