import { labelsText, NO_LABELS, type Labels } from '../config/labels.js'

/**
 * Where an upstream's endpoints come from. A source produces whole sets of endpoints: a `host:port`
 * address (`[v6]:port` for IPv6) and its labels (static entries with labels, a registry whose backends
 * announce them; DNS gives none). The upstream's EndpointSet diffs them and applies the change live. A
 * source that cannot refresh keeps its last good set: it never publishes an empty set because of an error.
 */
export type SourceKind = 'static' | 'dns' | 'registry'

export interface SourceEndpoint {
  readonly address: string
  readonly labels: Labels
}

export type SetListener = (endpoints: readonly SourceEndpoint[]) => void

export interface EndpointSource {
  readonly kind: SourceKind
  /** The last set published; undefined until the source first answered. */
  readonly current: readonly SourceEndpoint[] | undefined
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
  current: readonly SourceEndpoint[] | undefined
  private readonly listeners = new Set<SetListener>()

  subscribe (fn: SetListener): () => void {
    this.listeners.add(fn)
    if (this.current !== undefined) fn(this.current)
    return () => { this.listeners.delete(fn) }
  }

  /**
   * Publishes `endpoints` (deduplicated by address, the first entry wins, in their order: a static list
   * keeps its config order, which round-robin follows) if they differ, as a set of addresses with their
   * labels, from the current ones. A bare string is an address without labels.
   */
  protected publish (endpoints: Iterable<SourceEndpoint | string>): void {
    const byAddress = new Map<string, SourceEndpoint>()
    for (const e of endpoints) {
      const ep = typeof e === 'string' ? { address: e, labels: NO_LABELS } : e
      if (!byAddress.has(ep.address)) byAddress.set(ep.address, ep)
    }
    const next = [...byAddress.values()]
    const cur = this.current
    if (cur !== undefined && cur.length === next.length) {
      const key = (e: SourceEndpoint): string => `${e.address} ${labelsText(e.labels)}`
      const a = cur.map(key).sort()
      const b = next.map(key).sort()
      if (a.every((x, i) => x === b[i])) return
    }
    this.current = next
    for (const fn of [...this.listeners]) fn(next)
  }

  /** The addresses of the current set (for /status). */
  protected get addresses (): string[] {
    return (this.current ?? []).map((e) => e.address)
  }

  abstract start (): void
  abstract stop (): Promise<void>
  abstract status (): object
}

/** `endpoints:` in the config: a fixed set (a reload replaces it). */
export class StaticSource extends SourceBase {
  readonly kind = 'static'

  constructor (entries: ReadonlyArray<string | SourceEndpoint>) {
    super()
    // The config accepts `http://host:port` and `ws://host:port`; the set holds `host:port`.
    this.publish(entries.map((e) => {
      const { address, labels } = typeof e === 'string' ? { address: e, labels: NO_LABELS } : e
      return { address: address.replace(/^(?:http|ws):\/\//, '').replace(/\/$/, ''), labels }
    }))
  }

  start (): void {}
  async stop (): Promise<void> {}
  status (): object {
    return { source: 'static', endpoints: this.addresses }
  }
}
