import type { Logger } from 'pino'
import type { Config } from '../config/load.js'
import { canonicalJson } from '../config/reload.js'
import type { UpstreamConfig } from '../config/schema.js'
import type { HttpLifecycle } from '../contracts/http.js'
import type { TcpTarget } from '../contracts/tcp.js'
import type { Upstream } from '../contracts/upstream.js'
import type { TopicPublisher, WsUpstream } from '../contracts/ws.js'
import { createEndpointSource, type EndpointSource } from '../discovery/index.js'
import { carrierWithoutSessions, type EndpointCarrier, type EndpointDrainer } from '../drain/endpoint-drain.js'
import type { Metrics } from '../observability/metrics.js'
import { exchangeContext, type ExchangeContext } from './http/exchange.js'
import { upstreamMetrics } from './http/metrics.js'
// The scrape-time flush of the HTTP upstreams' per-request counts: outside upstream/, only the registry is imported.
export { flushHttpMetrics } from './http/metrics.js'
import { HttpUpstream } from './http/pool.js'
import { AffinityPlacement } from '../affinity/placement.js'
import { TcpUpstream } from './tcp/upstream.js'
import { createWsUpstream, type WsUpstreamDeps } from './ws-upstreams.js'
import { readAllUpstreamTls, UpstreamTlsClient, type UpstreamTlsMaterial } from './tls.js'
// `ferry check` reads the upstreams' TLS files as a build would: outside upstream/, only the registry is imported.
export { upstreamTlsProblems } from './tls.js'

/** One config entry's upstreams: built for a config, or kept from the running set while its config is the same. */
interface Entry {
  /** Its config as canonical JSON: an entry whose key a reload leaves alone is kept as it is. */
  readonly key: string
  readonly protocol: UpstreamConfig['protocol']
  /** Where its endpoints come from (an HTTP upstream and its WebSocket twin share one). */
  readonly source: EndpointSource
  /** The config entry's upstream: what /status shows and a route split reads. */
  readonly primary: Upstream
  /** Every instance it owns (an HTTP upstream and its WebSocket twin: two), each with what the endpoint drainer sees of it. */
  readonly instances: ReadonlyMap<Upstream, readonly EndpointCarrier[]>
  readonly http?: HttpUpstream
  readonly ws?: WsUpstream
  readonly tcp?: TcpUpstream
}

/** What a reload did to the upstreams, by name. */
export interface UpstreamChanges {
  added: string[]
  changed: string[]
  removed: string[]
  unchanged: string[]
}

/** /status order: HTTP upstreams, then WebSocket ones, then TCP ones (each in config order). */
const STATUS_RANK: Record<UpstreamConfig['protocol'], number> = { http: 0, ws: 1, mux: 1, tcp: 2 }

/** The upstreams of one config: what its route table and its TCP listeners reach. */
export class UpstreamSet {
  /** WebSocket-carrying upstreams by config name: ws, mux, and each HTTP upstream's WebSocket twin. */
  readonly ws = new Map<string, WsUpstream>()
  readonly tcp = new Map<string, TcpTarget>()

  constructor (
    readonly entries: ReadonlyMap<string, Entry>,
    /** HTTP upstreams as their exchanges see them (the context carries settings from outside the upstream, so every config gets its own). */
    readonly http: ReadonlyMap<string, ExchangeContext>,
  ) {
    for (const [name, e] of entries) {
      if (e.ws !== undefined) this.ws.set(name, e.ws)
      if (e.tcp !== undefined) this.tcp.set(name, e.tcp)
    }
  }
}

export interface RegistryDeps {
  readonly log: Logger
  readonly metrics: Metrics
  /** Draining flag and in-flight count, shared by the front and every exchange. */
  readonly lifecycle: HttpLifecycle
  /** Reads and drains the endpoints of every instance, current and retired. */
  readonly drainer: EndpointDrainer
  readonly ws: WsUpstreamDeps
}

/**
 * Owns every upstream instance of the gateway: builds those of a config (keeping the running ones whose
 * config did not change, with their pools, links and endpoint sources), retires what a reload no
 * longer uses while it finishes its work, and closes them all at the end. The one place that knows the
 * four kinds (http, ws, mux, tcp); everything else sees an Upstream, or the contract its stage uses.
 */
export class UpstreamRegistry {
  private running = new UpstreamSet(new Map(), new Map())
  /** Instances a reload replaced, while what they carry lasts. */
  private readonly retired = new Set<Upstream>()
  private readonly retiring = new Set<Promise<void>>()
  private publisher: TopicPublisher | undefined

  constructor (private readonly deps: RegistryDeps) {}

  /** The running set. */
  get current (): UpstreamSet {
    return this.running
  }

  /**
   * Builds the upstreams of `cfg`, keeping the running ones whose config (and TLS files) did not change.
   * They run once `commit`ted. Every upstream's TLS files are read first: a bad one throws
   * UpstreamTlsFilesError (`problems`, each naming its field) before anything is built.
   */
  build (cfg: Config): UpstreamSet {
    const tls = readAllUpstreamTls(cfg)
    const prev = this.running.entries
    const entries = new Map<string, Entry>()
    const http = new Map<string, ExchangeContext>()
    for (const [name, ucfg] of Object.entries(cfg.upstreams)) {
      const material = tls.get(name)
      // Renewed files (same paths, new contents) make a new upstream: new connections use them.
      const key = canonicalJson(ucfg) + (material !== undefined ? `\0${material.fingerprint}` : '')
      const kept = prev.get(name)
      let entry: Entry
      if (kept?.key === key) {
        entry = kept
        entry.source.start()
      } else entry = this.create(name, key, ucfg, material)
      entries.set(name, entry)
      if (entry.http !== undefined && ucfg.protocol === 'http') {
        http.set(name, exchangeContext({
          upstream: entry.http,
          metrics: upstreamMetrics(this.deps.metrics, name),
          log: this.deps.log,
          lifecycle: this.deps.lifecycle,
          accessLog: cfg.logging.accessLog,
          requestIdHeader: cfg.http.requestIdHeader,
          retryIdempotent: ucfg.retry.idempotent,
        }))
      }
    }
    return new UpstreamSet(entries, http)
  }

  /** A new entry for `ucfg`: its source and instances, attached to the endpoint drainer from now on. */
  private create (name: string, key: string, ucfg: UpstreamConfig, material: UpstreamTlsMaterial | undefined): Entry {
    const { metrics } = this.deps
    const log = this.deps.log.child({ upstream: name })
    const tls = material !== undefined ? new UpstreamTlsClient(name, material, log, metrics) : undefined
    const source = createEndpointSource(name, ucfg, { log, metrics })
    source.start()
    const instances = new Map<Upstream, readonly EndpointCarrier[]>()
    const own = (u: Upstream, carriers: EndpointCarrier[]): void => {
      instances.set(u, carriers)
      for (const c of carriers) this.deps.drainer.attach(c)
    }
    const base = { key, protocol: ucfg.protocol, source, instances }
    if (ucfg.protocol === 'tcp') {
      const tcp = new TcpUpstream(name, ucfg, log, metrics, source, tls)
      own(tcp, [carrierWithoutSessions(name, tcp.set)])
      return { ...base, primary: tcp, tcp }
    }
    if (ucfg.protocol === 'ws' || ucfg.protocol === 'mux') {
      const { upstream: ws, carrier } = createWsUpstream(name, ucfg, log, metrics, source, this.deps.ws, tls)
      own(ws, [carrier])
      return { ...base, primary: ws, ws }
    }
    // Sticky sessions (route affinity) keep their records in the gateway's affinity store, like the twin's.
    const store = this.deps.ws.store
    const http = new HttpUpstream(name, ucfg, log, metrics, source, store !== undefined ? new AffinityPlacement(store, this.deps.ws.gatewayId, this.deps.ws.ttlMs ?? 600_000) : undefined, tls)
    // WebSocket upgrades on routes to this HTTP upstream go to its endpoints 1:1 (what nginx does with
    // Upgrade headers), as a passthrough upstream of its own (metrics label `NAME:ws`) on the same source.
    // It reads the HTTP upstream's active checks instead of probing every endpoint a second time (the
    // HTTP upstream subscribed to the source first, so its members exist when the twin's are made), and
    // speaks wss to https endpoints with the same TLS client.
    const twin = createWsUpstream(`${name}:ws`, {
      protocol: 'ws',
      balance: ucfg.balance,
      timeouts: { connectMs: ucfg.timeouts.connectMs + ucfg.timeouts.responseMs },
      ejection: ucfg.ejection,
      healthCheck: undefined,
      whenAllUnhealthy: ucfg.whenAllUnhealthy,
      drain: ucfg.drain,
      tls: undefined,
    }, log, metrics, source, this.deps.ws, tls, { configName: name, sharedHealth: (address) => http.set.member(address)?.checked })
    // One upstream name, two instances: an operator drain holds both (requests and sessions).
    own(http, [carrierWithoutSessions(name, http.set)])
    own(twin.upstream, [twin.carrier])
    return { ...base, primary: http, http, ws: twin.upstream }
  }

  /** What `set` changes against the running set, by name. */
  changes (set: UpstreamSet): UpstreamChanges {
    const prev = this.running.entries
    const diff: UpstreamChanges = { added: [], changed: [], removed: [], unchanged: [] }
    for (const n of new Set([...prev.keys(), ...set.entries.keys()])) {
      const a = prev.get(n)?.key
      const b = set.entries.get(n)?.key
      if (a === undefined) diff.added.push(n)
      else if (b === undefined) diff.removed.push(n)
      else if (a !== b) diff.changed.push(n)
      else diff.unchanged.push(n)
    }
    return diff
  }

  /**
   * `set` runs from now on. What the previous set used and `set` does not finishes in the background:
   * an instance takes no new work and closes once what it carries ended (sessions on an endpoint the new
   * config no longer has are moved off meanwhile); a replaced source stops now (the instance keeps the
   * endpoints it had while it finishes).
   */
  commit (set: UpstreamSet): void {
    const prev = this.running
    this.running = set
    if (this.publisher !== undefined) for (const [n, u] of set.ws) if (prev.ws.get(n) !== u) u.bindPublisher?.(this.publisher)
    for (const [n, e] of prev.entries) {
      if (set.entries.get(n) === e) continue
      for (const [u, carriers] of e.instances) this.retire(u, carriers)
    }
    for (const [n, e] of prev.entries) if (set.entries.get(n)?.source !== e.source) void e.source.stop()
  }

  private retire (u: Upstream, carriers: readonly EndpointCarrier[]): void {
    const done = u.retire()
    if (done === undefined) { this.detach(carriers); return }
    this.retired.add(u)
    for (const c of carriers) this.deps.drainer.retire(c)
    const tracked = done
      .finally(() => { this.retired.delete(u); this.detach(carriers) })
      .catch((err: unknown) => { this.deps.log.warn({ err }, 'retiring an upstream failed') })
      .finally(() => { this.retiring.delete(tracked) })
    this.retiring.add(tracked)
  }

  private detach (carriers: readonly EndpointCarrier[]): void {
    for (const c of carriers) this.deps.drainer.detach(c)
  }

  /** A refused reload: closes what `set` built that the running set does not share. */
  discard (set: UpstreamSet): void {
    const prev = this.running.entries
    for (const [n, e] of set.entries) {
      if (prev.get(n) === e) continue
      for (const [u, carriers] of e.instances) { this.detach(carriers); void u.close('abort') }
      void e.source.stop()
    }
  }

  /** The front's pub/sub, for the mux upstreams' PUBLISH frames (those built later get it when they start running). */
  bindPublisher (p: TopicPublisher): void {
    this.publisher = p
    for (const u of this.running.ws.values()) u.bindPublisher?.(p)
  }

  /**
   * Closes every instance, running and retired, then stops the sources. TCP upstreams close last, once
   * `listenersClosed` resolved: their connections belong to the listeners, which close them.
   */
  async close (kind: 'flush' | 'abort', listenersClosed: Promise<unknown>): Promise<void> {
    for (const u of this.retired) void u.close(kind)
    const entries = [...this.running.entries.values()]
    await Promise.all([
      ...this.retiring,
      ...entries.filter((e) => e.protocol !== 'tcp').flatMap((e) => [...e.instances.keys()]).map(async (u) => { await u.close(kind) }),
      listenersClosed,
    ])
    for (const e of entries) if (e.protocol === 'tcp') void e.primary.close(kind)
    await Promise.all(entries.map(async (e) => { await e.source.stop() }))
  }

  /** Scrape-time gauges of the running instances (a retired one's work counts under its name). */
  collect (): void {
    for (const e of this.running.entries.values()) {
      for (const u of e.instances.keys()) u.collect([...this.retired].filter((r) => r.name === u.name))
    }
  }

  /** The active endpoints' labels of upstream `name` (a route split's /status). */
  labelled (name: string): ReturnType<Upstream['labelled']> | undefined {
    return this.running.entries.get(name)?.primary.labelled()
  }

  status (): object[] {
    return [...this.running.entries.values()].sort((a, b) => STATUS_RANK[a.protocol] - STATUS_RANK[b.protocol]).map((e) => e.primary.status())
  }
}
