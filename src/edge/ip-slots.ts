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

/** A pod lends a byte figure in units of 1/BYTE_UNITS of it (rounded up): a lease message per unit, not per chunk. */
export const BYTE_UNITS = 64

/**
 * One client's units of a byte figure in a worker of a pod: held (lent by the pod), their size and how
 * many make the figure, whether a borrow is out, and the charges that wait for it.
 */
interface ByteUnits { held: number, readonly unit: number, max: number, asking: boolean, waiting: Array<(ok: boolean) => void> }

/**
 * Bytes per client IP under a per-IP figure (request body bytes held in memory). Alone, a charge is
 * decided here. In a worker of a pod the figure is the pod's: the worker holds from its lease the units
 * (1/BYTE_UNITS of the figure, rounded up) that cover what it counts for that client. A charge they
 * cover is allowed at once; one they do not borrows the units missing, and while that borrow is out
 * every other charge of that client waits for it too (so none is allowed on units not yet lent). When it
 * is answered the waiting charges are allowed together (borrowing again first if those that came
 * meanwhile need more), or refused together. A release gives back the units no longer needed. So the
 * pod holds at most the figure (rounded up to a unit) for one client; a worker may refuse a little early.
 */
export class IpBytes {
  readonly table = new IpTable()
  private readonly units = new Map<string, ByteUnits>()

  constructor (private readonly pod: PodIpCounts | undefined, private readonly scope: IpScope) {}

  /**
   * `bytes` more of `ip` under `perIp` (0: no figure). False: refused, nothing counted. Else counted
   * (give back with `release`, whatever follows): true, or a promise while the worker borrows units of
   * the pod, resolving false when the pod holds the figure.
   */
  charge (ip: string, bytes: number, perIp: number): boolean | Promise<boolean> {
    const after = this.table.count(ip) + bytes
    if (perIp > 0 && after > perIp) return false
    if (perIp === 0 || this.pod === undefined) { this.table.add(ip, bytes); return true }
    let u = this.units.get(ip)
    if (u === undefined) {
      const unit = Math.ceil(perIp / BYTE_UNITS)
      u = { held: 0, unit, max: Math.ceil(perIp / unit), asking: false, waiting: [] }
      this.units.set(ip, u)
    }
    u.max = Math.ceil(perIp / u.unit)
    if (u.asking) { this.table.add(ip, bytes); return this.wait(u) }
    const need = Math.ceil(after / u.unit) - u.held
    if (need <= 0) { this.table.add(ip, bytes); return true }
    const now = this.pod.take(this.scope, ip, u.max, need)
    if (now === false) { this.trim(ip, u); return false }
    this.table.add(ip, bytes)
    if (now === true) { u.held += need; return true }
    const waits = this.wait(u)
    this.borrowing(ip, u, need, now)
    return waits
  }

  release (ip: string, bytes: number): void {
    this.table.remove(ip, bytes)
    const u = this.units.get(ip)
    if (u !== undefined) this.trim(ip, u)
  }

  private wait (u: ByteUnits): Promise<boolean> {
    return new Promise<boolean>((resolve) => { u.waiting.push(resolve) })
  }

  /** A borrow of `n` units is out: when answered, the waiting charges are settled. */
  private borrowing (ip: string, u: ByteUnits, n: number, answer: Promise<boolean>): void {
    u.asking = true
    void answer.then((ok) => {
      u.asking = false
      if (ok) u.held += n
      // Charges that came while it was out may need more than it asked for: ask for the rest first.
      const more = ok ? Math.ceil(this.table.count(ip) / u.unit) - u.held : 0
      const again = more > 0 ? this.pod!.take(this.scope, ip, u.max, more) : ok
      if (again instanceof Promise) { this.borrowing(ip, u, more, again); return }
      if (again && more > 0) u.held += more
      const waiting = u.waiting
      u.waiting = []
      for (const done of waiting) done(again)
      this.trim(ip, u)
    })
  }

  /** Gives back the units no longer needed; forgets a client with nothing held or asked. */
  private trim (ip: string, u: ByteUnits): void {
    if (u.asking) return
    const needed = Math.ceil(this.table.count(ip) / u.unit)
    if (u.held > needed) { this.pod!.release(this.scope, ip, u.held - needed); u.held = needed }
    if (u.held === 0 && u.waiting.length === 0) this.units.delete(ip)
  }
}
