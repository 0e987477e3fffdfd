import type { AffinityStore } from './store.js'

/**
 * An upstream's use of the affinity store: where a key's sessions live (`recorded`), writing that down
 * when a session opens, and keeping the records of open sessions alive (one timer per upstream touches
 * every live key each third of the TTL). Nothing here blocks a session on the store: lookups are bounded
 * by the store's budget, writes are not awaited.
 */
export class AffinityPlacement {
  /** Open sessions per key, and where they are (to rewrite a record the store lost, e.g. a restarted Redis). */
  private readonly live = new Map<string, { n: number, endpoint: string, epoch: number }>()
  private timer: NodeJS.Timeout | undefined

  constructor (private readonly store: AffinityStore, private readonly pod: string, private readonly ttlMs: number) {}

  /** The endpoint (`host:port`) recorded for `key`, or undefined (none, or the store is falling back). */
  async recorded (key: string): Promise<string | undefined> {
    return (await this.store.get(key))?.endpoint
  }

  /** A session with `key` opened on `endpoint`; `known` is what `recorded` said (the record is rewritten only when it differs). */
  opened (key: string, endpoint: string, known: string | undefined, epoch = 0): void {
    if (known !== endpoint || epoch > 0) void this.store.set(key, { endpoint, pod: this.pod, epoch })
    const l = this.live.get(key)
    if (l === undefined) this.live.set(key, { n: 1, endpoint, epoch })
    else { l.n++; l.endpoint = endpoint; l.epoch = epoch }
    if (this.timer === undefined) {
      this.timer = setInterval(() => { this.touchAll() }, Math.max(1000, Math.floor(this.ttlMs / 3)))
      this.timer.unref()
    }
  }

  /** A backend gave a client `key` (its own session cookie) from `endpoint`: recorded, so the key's requests go there. */
  learned (key: string, endpoint: string): void {
    void this.store.set(key, { endpoint, pod: this.pod, epoch: 0 })
  }

  /** A live session with `key` moved to `endpoint` (backend handoff): the record follows it. */
  moved (key: string, endpoint: string): void {
    const l = this.live.get(key)
    if (l !== undefined) l.endpoint = endpoint
    void this.store.set(key, { endpoint, pod: this.pod, epoch: l?.epoch ?? 0 })
  }

  closed (key: string): void {
    const l = this.live.get(key)
    if (l !== undefined && --l.n <= 0) this.live.delete(key)
  }

  private touchAll (): void {
    for (const [key, l] of this.live) {
      void this.store.touch(key).then((found) => {
        if (!found && this.store.state === 'ok' && this.live.get(key) === l) void this.store.set(key, { endpoint: l.endpoint, pod: this.pod, epoch: l.epoch })
      })
    }
  }

  get liveKeys (): number {
    return this.live.size
  }

  stop (): void {
    if (this.timer !== undefined) clearInterval(this.timer)
    this.timer = undefined
  }
}
