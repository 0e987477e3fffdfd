import type { Logger } from 'pino'

/** What a pod announces about itself in the shared store (and the console lists). */
export interface PodRecord {
  readonly id: string
  readonly host: string
  readonly version: string
  /** Open WebSocket sessions. */
  readonly sessions: number
  readonly draining: boolean
  /** ISO time of the announcement. */
  readonly updatedAt: string
}

/** The store side of the pod directory (the Redis affinity store implements it on its connection). */
export interface PodBoard {
  /** Writes the pod's record with a TTL; false when the store could not answer within its budget. */
  announce: (pod: PodRecord, ttlMs: number) => Promise<boolean>
  /** Every pod whose record is live; undefined when the store could not answer. */
  listPods: () => Promise<PodRecord[] | undefined>
  /** Removes the pod's record; false when the store could not answer. */
  withdraw: (id: string) => Promise<boolean>
}

/** The store's pod board, when it has one (the Redis store does; the memory store is this process only). */
export function podBoardOf (store: object): PodBoard | undefined {
  const b = store as Partial<PodBoard>
  return typeof b.announce === 'function' && typeof b.listPods === 'function' && typeof b.withdraw === 'function' ? store as PodBoard : undefined
}

/** ok: the list is the store's; unavailable: the store did not answer (the last list is kept); local: no shared store (memory). */
export type PodListState = 'ok' | 'unavailable' | 'local'

export interface PodDirectoryStatus {
  readonly state: PodListState
  readonly pods: ReadonlyArray<PodRecord & { readonly self: boolean }>
  /** When the list was last read from the store (null: never). */
  readonly listedAt: string | null
}

/** A record read back from the store, or undefined when it is not one (written by something else). */
export function parsePodRecord (json: string): PodRecord | undefined {
  let v: unknown
  try { v = JSON.parse(json) } catch { return undefined }
  if (v === null || typeof v !== 'object') return undefined
  const r = v as Record<string, unknown>
  if (typeof r.id !== 'string' || r.id === '' || typeof r.sessions !== 'number' || typeof r.draining !== 'boolean') return undefined
  return { id: r.id, host: String(r.host ?? ''), version: String(r.version ?? ''), sessions: r.sessions, draining: r.draining, updatedAt: String(r.updatedAt ?? '') }
}

/**
 * This pod's entry in the pod directory. One timer (owned here) announces the pod every third of
 * `ttlMs` and reads the list back; the console reads the cached list, never the store. A store that
 * does not answer leaves the last list, marked unavailable; nothing here waits past the store's pod
 * budget (lookupTimeoutMs, at least 1 s), and a slow or failed pod call never sends session routing to
 * fallback.
 * Without a board (memory store) the list is this pod alone.
 */
export class PodDirectory {
  private timer: NodeJS.Timeout | undefined
  private beating = false
  private state: PodListState
  private pods: PodRecord[] = []
  private listedAt: string | null = null

  constructor (private readonly board: PodBoard | undefined, private readonly ttlMs: number, private readonly self: () => PodRecord, private readonly log: Logger) {
    this.state = board === undefined ? 'local' : 'unavailable'
  }

  start (): void {
    if (this.board === undefined || this.timer !== undefined) return
    this.timer = setTimeout(this.tick, Math.max(250, Math.floor(this.ttlMs / 3)))
    this.timer.unref()
    void this.beat()
  }

  /** Announces now (the pod started draining): the other pods' consoles see it within a read. */
  refresh (): void {
    if (this.timer !== undefined) void this.beat()
  }

  status (): PodDirectoryStatus {
    const me = this.self()
    if (this.board === undefined) return { state: 'local', pods: [{ ...me, self: true }], listedAt: null }
    // This pod's own row is always current, whatever the store last said.
    const others = this.pods.filter((p) => p.id !== me.id)
    const pods = [{ ...me, self: true }, ...others.map((p) => ({ ...p, self: false }))].sort((a, b) => a.id < b.id ? -1 : a.id > b.id ? 1 : 0)
    return { state: this.state, pods, listedAt: this.listedAt }
  }

  /** Stops the heartbeat and removes this pod's record (within the store's budget). */
  async close (): Promise<void> {
    if (this.timer === undefined) return
    clearTimeout(this.timer)
    this.timer = undefined
    if (this.board !== undefined && !await this.board.withdraw(this.self().id)) this.log.debug('pod directory: could not remove this pod\'s record (it expires by its TTL)')
  }

  private readonly tick = (): void => {
    void this.beat().finally(() => { this.timer?.refresh() })
  }

  private async beat (): Promise<void> {
    const board = this.board
    if (board === undefined || this.beating) return
    this.beating = true
    try {
      await board.announce(this.self(), this.ttlMs)
      const list = await board.listPods()
      if (this.timer === undefined) return
      const next: PodListState = list === undefined ? 'unavailable' : 'ok'
      if (next !== this.state) this.log.info({ state: next }, `pod directory ${next}`)
      this.state = next
      if (list !== undefined) {
        this.pods = list
        this.listedAt = new Date().toISOString()
      }
    } finally {
      this.beating = false
    }
  }
}
