import type { Labels } from '../config/labels.js'

/**
 * What every upstream kind (http, ws, mux, tcp) is to the registry that builds, keeps and retires it
 * (src/upstream/registry.ts). A config entry's instance lives as long as its config does: a reload that
 * leaves the entry unchanged keeps it; one that changes or removes it retires it.
 */
export interface Upstream {
  /** Its name in the config (an HTTP upstream's WebSocket twin: `NAME:ws`). */
  readonly name: string
  /** Stops taking work; 'flush' lets what is under way end by itself for a grace period, 'abort' ends it now. */
  close: (kind: 'flush' | 'abort') => Promise<void>
  /**
   * A reload replaced or removed it: no new work, what is under way continues. Resolves once the last of
   * it ended (and the instance closed); undefined when it carries nothing itself and is closed now (TCP:
   * the listeners own the connections).
   */
  retire: () => Promise<void> | undefined
  status: () => object
  /** The active endpoints' labels and whether each takes new work now (a route split's /status). */
  labelled: () => Array<{ labels: Labels, healthy: boolean }>
  /**
   * Scrape-time gauges. `replaced`: instances of the same name a reload retired that still finish their
   * work (an HTTP upstream counts their queue and connections under the name).
   */
  collect: (replaced: readonly Upstream[]) => void
}
