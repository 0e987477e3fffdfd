/**
 * Where an upstream's endpoints come from. A source produces whole sets of `host:port` addresses
 * (`[v6]:port` for IPv6); the upstream's EndpointSet diffs them and applies the change live. A source
 * that cannot refresh keeps its last good set: it never publishes an empty set because of an error.
 */
export type SourceKind = 'static' | 'dns' | 'registry'

export type SetListener = (addresses: readonly string[]) => void

export interface EndpointSource {
  readonly kind: SourceKind
  /** The last set published; undefined until the source first answered. */
  readonly current: readonly string[] | undefined
  /** Calls `fn` with every new set (at once with the current one, if known). Returns the unsubscribe. */
  subscribe: (fn: SetListener) => () => void
  /** Begins refreshing (timers, subscriptions). Idempotent. */
  start: () => void
  /** Stops refreshing and releases its sockets and timers. Idempotent. */
  stop: () => Promise<void>
  status: () => object
}

/** `host:port`, with IPv6 hosts bracketed. */
export function formatAddress (host: string, port: number): string {
  return host.includes(':') ? `[${host}]:${port}` : `${host}:${port}`
}

/** The subscriber list and change detection every source shares. */
export abstract class SourceBase implements EndpointSource {
  abstract readonly kind: SourceKind
  current: readonly string[] | undefined
  private readonly listeners = new Set<SetListener>()

  subscribe (fn: SetListener): () => void {
    this.listeners.add(fn)
    if (this.current !== undefined) fn(this.current)
    return () => { this.listeners.delete(fn) }
  }

  /**
   * Publishes `addresses` (deduplicated, in their order: a static list keeps its config order, which
   * round-robin follows) if they differ, as a set, from the current ones.
   */
  protected publish (addresses: Iterable<string>): void {
    const next = [...new Set(addresses)]
    const cur = this.current
    if (cur !== undefined && cur.length === next.length) {
      const a = [...cur].sort()
      const b = [...next].sort()
      if (a.every((x, i) => x === b[i])) return
    }
    this.current = next
    for (const fn of [...this.listeners]) fn(next)
  }

  abstract start (): void
  abstract stop (): Promise<void>
  abstract status (): object
}

/** `endpoints:` in the config: a fixed set (a reload replaces it). */
export class StaticSource extends SourceBase {
  readonly kind = 'static'

  constructor (addresses: readonly string[]) {
    super()
    // The config accepts `http://host:port` and `ws://host:port`; the set holds `host:port`.
    this.publish(addresses.map((a) => a.replace(/^(?:http|ws):\/\//, '').replace(/\/$/, '')))
  }

  start (): void {}
  async stop (): Promise<void> {}
  status (): object {
    return { source: 'static', endpoints: this.current }
  }
}
