import type { Logger } from 'pino'

/**
 * The per-client-IP figures a pod holds as one: `http` is limits.maxRequestsInFlightPerIp, `ws`
 * limits.maxWebSocketSessionsPerIp, `stream` limits.maxStreamedBodiesPerIp, `body`
 * limits.maxBufferedBodyBytesPerIp (in units of 1/64 of it: src/edge/ip-slots.ts, IpBytes), `tcp:NAME`
 * listen.tcp[NAME].maxConnectionsPerIp. One client's connections land on any worker (the kernel spreads
 * them), so the pod's figure is shared out by the control plane as leases.
 */
export type IpScope = 'http' | 'ws' | 'stream' | 'body' | `tcp:${string}`

/**
 * A worker's calls, sent in batches (one message per turn of its event loop): `borrow` asks for `want`
 * more slots of a client under the figure `max` (answered with an `ip-grant`, maybe after the other
 * workers were asked to cede); `return` gives back `n` idle slots (`cede`: in answer to that cede).
 */
export type IpCall =
  | { op: 'borrow', scope: IpScope, ip: string, want: number, max: number }
  | { op: 'return', scope: IpScope, ip: string, n: number, cede?: number | undefined }

/** How long a worker waits for a grant, and the control plane for the other workers to cede, before deciding without. */
export const LEASE_WAIT_MS = 250
/** How long the control plane waits for the workers asked to cede before it lends what is free. */
const CEDE_WAIT_MS = LEASE_WAIT_MS / 2
/** How long a lease a worker does not use stays with it (so a busy client does not ask for every request). */
export const LEASE_IDLE_MS = 1000

/** A take of `n` slots waiting for a borrow: resolved true (held) or false (refused). */
interface Waiter { readonly n: number, readonly done: (ok: boolean) => void }

/** One client's lease in a worker: the slots the pod lent it, the slots it uses, the takes waiting for more. */
interface Lease {
  readonly scope: IpScope
  readonly ip: string
  lease: number
  used: number
  waiting: Waiter[]
  /** The slots the waiting takes want, together. */
  wanted: number
  /** A borrow is out (its want), or -1: one goes with this turn's batch; and the timer that decides without an answer. */
  asking: number
  /** The figure the last borrow asked under. */
  max: number
  timer: NodeJS.Timeout | undefined
  /** The last time the lease did not cover a take, or a slot was released: an idle lease goes back LEASE_IDLE_MS after. */
  touchedAt: number
}

/**
 * A worker's side of the pod's per-IP counts. The control plane lends each worker slots of a client
 * (its lease); a take within the lease is decided here at once, with no message. A take beyond it
 * waits while the worker borrows more (a message each way, batched per event-loop turn): the control
 * plane grants from what no worker holds, and when that is not enough it asks the other workers to cede
 * the slots of that client they hold but do not use. A lease not used for LEASE_IDLE_MS is given back.
 * The pod never lends more than the figure, so however the kernel spreads one client's connections,
 * it holds at most the figure in the pod. A borrow not answered within LEASE_WAIT_MS is decided here
 * alone: admitted while the worker holds at most its even part of the figure (⌈max ÷ workers⌉); a late
 * grant adds to the lease and goes back when idle.
 */
export class PodIpCounts {
  private readonly leases = new Map<string, Lease>()
  private batch: IpCall[] = []
  /** Leases that borrow with this turn's batch. */
  private readonly borrowing = new Set<Lease>()
  private scheduled = false
  private readonly sweep: NodeJS.Timeout
  private quiet = false
  private closed = false
  /** Counts each borrow's outcome (the gateway sets it: ferry_ip_lease_borrows_total). */
  onBorrow: (result: 'granted' | 'short' | 'unanswered') => void = () => {}

  constructor (private readonly workers: number, private readonly send: (calls: IpCall[]) => void, private readonly log: Logger) {
    this.sweep = setInterval(() => { this.returnIdle(performance.now()) }, LEASE_IDLE_MS / 2)
    this.sweep.unref()
  }

  /**
   * `n` more slots of `ip` under the pod's `max` (all or none): true or false now, or a promise of it
   * while the worker borrows.
   */
  take (scope: IpScope, ip: string, max: number, n = 1): boolean | Promise<boolean> {
    const key = `${scope} ${ip}`
    let l = this.leases.get(key)
    if (l === undefined) {
      l = { scope, ip, lease: 0, used: 0, waiting: [], wanted: 0, asking: 0, max, timer: undefined, touchedAt: 0 }
      this.leases.set(key, l)
    }
    // Within the lease (and the figure: a reload may have lowered it below what was lent before).
    if (l.used + n <= l.lease && l.used + n <= max && l.wanted === 0) { l.used += n; return true }
    if (this.closed || l.used + l.wanted + n > max) { this.forgetIfIdle(key, l); return false }
    l.touchedAt = performance.now()
    const lease = l
    return new Promise<boolean>((resolve) => {
      lease.waiting.push({ n, done: resolve })
      lease.wanted += n
      if (lease.asking === 0) this.borrow(lease, max)
    })
  }

  /** Gives back `n` slots `take` granted (a take whose promise is pending is released once it resolved true). */
  release (scope: IpScope, ip: string, n = 1): void {
    const key = `${scope} ${ip}`
    const l = this.leases.get(key)
    if (l === undefined || l.used === 0) return
    l.used -= Math.min(n, l.used)
    l.touchedAt = performance.now()
  }

  /** A borrow goes with this turn's batch, for as many takes as wait by then. */
  private borrow (l: Lease, max: number): void {
    l.asking = -1
    l.max = max
    this.borrowing.add(l)
    this.schedule()
  }

  /** A batch from the control plane, in order: grants and requests to cede. */
  receive (batch: readonly IpToWorker[]): void {
    for (const c of batch) {
      if (c.op === 'grant') this.granted(c.scope, c.ip, c.n, c.max)
      else this.cede(c.scope, c.ip, c.id)
    }
  }

  /** The control plane lent `n` more slots (n may be 0: the pod holds the figure). */
  granted (scope: IpScope, ip: string, n: number, max: number): void {
    const key = `${scope} ${ip}`
    const l = this.leases.get(key)
    if (l === undefined) {
      // Granted after the lease was dropped (closing): straight back.
      if (n > 0) this.queue({ op: 'return', scope, ip, n })
      return
    }
    l.lease += n
    // A late grant after deciding alone goes back when idle; one that came while another borrow waits
    // for this turn's batch serves what it can now.
    if (l.asking <= 0) { this.serve(l); return }
    if (this.quiet) { this.quiet = false; this.log.info('the control plane answers per-IP limits again') }
    const wanted = l.asking
    this.onBorrow(n >= wanted ? 'granted' : 'short')
    clearTimeout(l.timer)
    l.timer = undefined
    l.asking = 0
    this.serve(l)
    // All that was asked came, and more takes arrived meanwhile: ask again for them. Else the pod is full.
    if (l.waiting.length > 0 && n >= wanted) { this.borrow(l, max); return }
    this.refuseWaiting(l)
    this.forgetIfIdle(key, l)
  }

  /** Grants the waiting takes, in order, while the lease covers them. */
  private serve (l: Lease): void {
    while (l.waiting.length > 0 && l.used + l.waiting[0]!.n <= l.lease) {
      const w = l.waiting.shift()!
      l.used += w.n
      l.wanted -= w.n
      w.done(true)
    }
  }

  private refuseWaiting (l: Lease): void {
    const w = l.waiting
    l.waiting = []
    l.wanted = 0
    for (const x of w) x.done(false)
  }

  private unanswered (l: Lease, max: number): void {
    l.timer = undefined
    l.asking = 0
    this.onBorrow('unanswered')
    const part = Math.ceil(max / this.workers)
    if (!this.quiet) { this.quiet = true; this.log.warn({ waitMs: LEASE_WAIT_MS, part }, 'the control plane did not answer a per-IP limit in time: this worker decides alone, within its even part of the figure') }
    const waiting = l.waiting
    l.waiting = []
    l.wanted = 0
    for (const w of waiting) {
      if (l.used + w.n <= part) { l.used += w.n; w.done(true) } else w.done(false)
    }
  }

  /** The control plane asks for the slots of a client this worker holds but does not use. */
  cede (scope: IpScope, ip: string, id: number): void {
    const key = `${scope} ${ip}`
    const l = this.leases.get(key)
    const idle = l === undefined || l.waiting.length > 0 ? 0 : Math.max(0, l.lease - l.used)
    if (l !== undefined) { l.lease -= idle; this.forgetIfIdle(key, l) }
    this.queue({ op: 'return', scope, ip, n: idle, cede: id })
  }

  /** The sweep (every LEASE_IDLE_MS ÷ 2): leases not needed for LEASE_IDLE_MS go back. */
  returnIdle (now: number): void {
    for (const [key, l] of this.leases) {
      if (l.asking > 0 || l.waiting.length > 0 || now - l.touchedAt < LEASE_IDLE_MS) continue
      const idle = l.lease - l.used
      if (idle > 0) { l.lease -= idle; this.queue({ op: 'return', scope: l.scope, ip: l.ip, n: idle }) }
      this.forgetIfIdle(key, l)
    }
  }

  private forgetIfIdle (key: string, l: Lease): void {
    if (l.lease === 0 && l.used === 0 && l.waiting.length === 0 && l.asking === 0) this.leases.delete(key)
  }

  private queue (c: IpCall): void {
    this.batch.push(c)
    this.schedule()
  }

  private schedule (): void {
    if (this.scheduled) return
    this.scheduled = true
    setImmediate(() => { this.flush() })
  }

  private flush (): void {
    this.scheduled = false
    for (const l of this.borrowing) {
      const want = l.wanted
      if (want === 0) { l.asking = 0; this.forgetIfIdle(`${l.scope} ${l.ip}`, l); continue }
      l.asking = want
      this.batch.push({ op: 'borrow', scope: l.scope, ip: l.ip, want, max: l.max })
      const lease = l
      l.timer = setTimeout(() => { this.unanswered(lease, lease.max) }, LEASE_WAIT_MS)
    }
    this.borrowing.clear()
    if (this.batch.length === 0) return
    const b = this.batch
    this.batch = []
    this.send(b)
  }

  /** For /status: the clients this worker holds leases of, and the slots lent and used. */
  status (): { clientIps: number, lent: number, used: number } {
    let lent = 0
    let used = 0
    for (const l of this.leases.values()) { lent += l.lease; used += l.used }
    return { clientIps: this.leases.size, lent, used }
  }

  close (): void {
    this.closed = true
    clearInterval(this.sweep)
    for (const l of this.leases.values()) {
      clearTimeout(l.timer)
      this.refuseWaiting(l)
    }
  }
}

/** What the control plane sends a worker: a grant, or a request to cede. */
export type IpToWorker =
  | { op: 'grant', scope: IpScope, ip: string, n: number, max: number }
  | { op: 'cede', scope: IpScope, ip: string, id: number }

interface Borrow { worker: number, want: number, max: number }

/** One client's leases in the control plane: what each worker holds, borrows waiting, a cede round in progress. */
interface Loan {
  readonly lent: number[]
  total: number
  queue: Borrow[]
  /** The cede round: the workers still to answer, and the timer that ends it without them. */
  ceding: Set<number> | undefined
  timer: NodeJS.Timeout | undefined
  round: number
}

/**
 * The control plane's side: for each scope and client IP, the slots lent to each worker. It never
 * lends more than the figure in all. A borrow is granted from what no worker holds; when that is not
 * enough, the workers that hold some of that client are asked to cede what they do not use (a round
 * that ends when they answered or after CEDE_WAIT_MS), and the borrow gets what is free then. A worker
 * that exits returns everything (its connections are gone). Entries exist only while something is lent.
 */
export class PodIpTable {
  private readonly loans = new Map<string, Loan>()
  private nextRound = 1
  /** What goes to each worker at the end of this turn, one message each. */
  private readonly out = new Map<number, IpToWorker[]>()

  constructor (private readonly workers: number, private readonly deliver: (worker: number, batch: IpToWorker[]) => void) {}

  private send (worker: number, m: IpToWorker): void {
    const b = this.out.get(worker)
    if (b !== undefined) { b.push(m); return }
    if (this.out.size === 0) setImmediate(() => { for (const [w, batch] of this.out) this.deliver(w, batch); this.out.clear() })
    this.out.set(worker, [m])
  }

  /** A worker's batch of calls, in order. */
  serve (worker: number, calls: readonly IpCall[]): void {
    for (const c of calls) {
      const key = `${c.scope} ${c.ip}`
      if (c.op === 'borrow') this.borrow(key, c.scope, c.ip, { worker, want: c.want, max: c.max })
      else this.returned(key, worker, c.n, c.cede)
    }
  }

  private loan (key: string): Loan {
    let l = this.loans.get(key)
    if (l === undefined) {
      l = { lent: new Array<number>(this.workers).fill(0), total: 0, queue: [], ceding: undefined, timer: undefined, round: 0 }
      this.loans.set(key, l)
    }
    return l
  }

  private borrow (key: string, scope: IpScope, ip: string, b: Borrow): void {
    const l = this.loan(key)
    l.queue.push(b)
    this.settle(key, scope, ip, l)
  }

  /** Grants the queued borrows in order; one that needs more than is free starts a cede round and waits for it. */
  private settle (key: string, scope: IpScope, ip: string, l: Loan): void {
    while (l.queue.length > 0 && l.ceding === undefined) {
      const b = l.queue[0]!
      const free = Math.max(0, b.max - l.total)
      const others = l.lent.map((n, w) => ({ n, w })).filter((x) => x.w !== b.worker && x.n > 0)
      if (free < b.want && others.length > 0 && l.round === 0) {
        const id = this.nextRound++
        l.round = id
        l.ceding = new Set(others.map((x) => x.w))
        for (const x of others) this.send(x.w, { op: 'cede', scope, ip, id })
        // Shorter than a worker's wait for its grant, so the borrower hears before it decides alone.
        l.timer = setTimeout(() => { this.endRound(key, scope, ip, l) }, CEDE_WAIT_MS)
        return
      }
      l.queue.shift()
      l.round = 0
      const n = Math.min(free, b.want)
      l.lent[b.worker] = (l.lent[b.worker] ?? 0) + n
      l.total += n
      this.send(b.worker, { op: 'grant', scope, ip, n, max: b.max })
    }
    if (l.total === 0 && l.queue.length === 0 && l.ceding === undefined) this.loans.delete(key)
  }

  private endRound (key: string, scope: IpScope, ip: string, l: Loan): void {
    clearTimeout(l.timer)
    l.timer = undefined
    l.ceding = undefined
    // The borrow at the head takes what is free now (round stays set: it does not start another).
    this.settle(key, scope, ip, l)
  }

  private returned (key: string, worker: number, n: number, cede: number | undefined): void {
    const l = this.loans.get(key)
    if (l === undefined) return
    const give = Math.min(n, l.lent[worker] ?? 0)
    l.lent[worker] = (l.lent[worker] ?? 0) - give
    l.total -= give
    const [scope, ip] = splitKey(key)
    if (cede !== undefined && cede === l.round && l.ceding !== undefined) {
      l.ceding.delete(worker)
      if (l.ceding.size === 0) { this.endRound(key, scope, ip, l); return }
    }
    if (l.ceding === undefined) this.settle(key, scope, ip, l)
  }

  /** A worker exited: what it was lent is free, and its borrows and cede answers are not waited for. */
  drop (worker: number): void {
    for (const [key, l] of [...this.loans]) {
      const [scope, ip] = splitKey(key)
      l.total -= l.lent[worker] ?? 0
      l.lent[worker] = 0
      l.queue = l.queue.filter((b) => b.worker !== worker)
      if (l.ceding?.delete(worker) === true && l.ceding.size === 0) { this.endRound(key, scope, ip, l); continue }
      if (l.ceding === undefined) this.settle(key, scope, ip, l)
    }
  }

  /** For /status: the slots lent and the client IPs they are lent for, per scope (`http` and `ws` always, the others while some are lent). */
  status (): Record<string, { lent: number, clientIps: number }> {
    const s: Record<string, { lent: number, clientIps: number }> = { http: { lent: 0, clientIps: 0 }, ws: { lent: 0, clientIps: 0 } }
    for (const [key, l] of this.loans) {
      if (l.total === 0) continue
      const scope = (s[splitKey(key)[0]] ??= { lent: 0, clientIps: 0 })
      scope.lent += l.total
      scope.clientIps++
    }
    return s
  }
}

function splitKey (key: string): [IpScope, string] {
  const i = key.indexOf(' ')
  return [key.slice(0, i) as IpScope, key.slice(i + 1)]
}
