import { promises as dns } from 'node:dns'
import type { Logger } from 'pino'
import type { Metrics } from '../observability/metrics.js'
import { formatAddress, SourceBase } from './source.js'

export interface DnsSourceConfig {
  readonly name: string
  readonly type: 'A' | 'AAAA' | 'SRV'
  readonly port?: number | undefined
  readonly servers?: readonly string[] | undefined
  readonly minTtlMs: number
  readonly maxTtlMs: number
  readonly intervalMs: number
  readonly timeoutMs: number
}

/** waiting: the timer runs until the next resolution. resolving: a query is out. stopped: released. */
export type DnsSourceState = 'created' | 'resolving' | 'waiting' | 'stopped'

/**
 * Endpoints from DNS (a Kubernetes headless Service, or SRV records): resolved at start, then again when
 * the records' TTL ends (clamped to [minTtlMs, maxTtlMs]; SRV answers carry no TTL in Node, so
 * `intervalMs` then). A failed or empty answer keeps the last good set: it is counted, logged once per
 * streak, and retried after `intervalMs` (clamped the same way). Owns its resolver and its one timer.
 */
export class DnsSource extends SourceBase {
  readonly kind = 'dns'
  private state: DnsSourceState = 'created'
  private readonly resolver: dns.Resolver
  private timer: NodeJS.Timeout | undefined
  private failures = 0
  private lastError: string | undefined
  private lastResolvedAt: number | undefined
  private ttlMs: number | undefined
  private nextAt: number | undefined
  resolutions = 0

  constructor (
    private readonly upstream: string,
    private readonly cfg: DnsSourceConfig,
    private readonly log: Logger,
    private readonly metrics: Metrics,
  ) {
    super()
    this.resolver = new dns.Resolver({ timeout: cfg.timeoutMs, tries: 1 })
    if (cfg.servers !== undefined) this.resolver.setServers([...cfg.servers])
  }

  start (): void {
    if (this.state !== 'created') return
    this.resolve()
  }

  private clamp (ms: number): number {
    return Math.min(this.cfg.maxTtlMs, Math.max(this.cfg.minTtlMs, ms))
  }

  private resolve (): void {
    this.state = 'resolving'
    this.timer = undefined
    void this.query().then(
      ({ addresses, ttlMs }) => {
        if (this.state === 'stopped') return
        this.resolutions++
        this.metrics.discoveryRefreshes.labels(this.upstream, 'dns', 'ok').inc()
        if (this.failures > 0) this.log.info({ upstream: this.upstream, name: this.cfg.name, failures: this.failures }, 'DNS resolution works again')
        this.failures = 0
        this.lastError = undefined
        this.lastResolvedAt = Date.now()
        this.ttlMs = ttlMs
        this.publish(addresses)
        this.wait(this.clamp(ttlMs ?? this.cfg.intervalMs))
      },
      (err: unknown) => {
        if (this.state === 'stopped') return
        const why = (err as NodeJS.ErrnoException).code ?? (err as Error).message
        this.metrics.discoveryRefreshes.labels(this.upstream, 'dns', 'failed').inc()
        this.lastError = why
        // Logged once per streak of failures (they repeat every intervalMs).
        if (this.failures++ === 0) {
          this.log.warn({ upstream: this.upstream, name: this.cfg.name, type: this.cfg.type, code: 'FERRY_ERR_DISCOVERY', why, kept: this.current?.length ?? 0 }, 'DNS resolution failed; the last good endpoint set is kept')
        }
        this.wait(this.clamp(this.cfg.intervalMs))
      },
    )
  }

  private wait (ms: number): void {
    this.state = 'waiting'
    this.nextAt = Date.now() + ms
    this.timer = setTimeout(() => { if (this.state === 'waiting') this.resolve() }, ms)
    this.timer.unref()
  }

  /** One resolution: the whole set and its shortest TTL (undefined: the answer carries none). */
  private async query (): Promise<{ addresses: string[], ttlMs: number | undefined }> {
    const { name, type } = this.cfg
    if (type === 'SRV') {
      const records = await this.resolver.resolveSrv(name)
      const addresses: string[] = []
      // Each target's addresses (a pod IP can change behind the same target name).
      const targets = await Promise.all(records.map(async (r) => ({ r, ips: await this.resolver.resolve4(r.name) })))
      for (const { r, ips } of targets) for (const ip of ips) addresses.push(formatAddress(ip, r.port))
      if (addresses.length === 0) throw new Error('no SRV targets')
      return { addresses, ttlMs: undefined }
    }
    const records = type === 'A' ? await this.resolver.resolve4(name, { ttl: true }) : await this.resolver.resolve6(name, { ttl: true })
    if (records.length === 0) throw new Error(`no ${type} records`)
    const ttl = Math.min(...records.map((r) => r.ttl))
    return { addresses: records.map((r) => formatAddress(r.address, this.cfg.port!)), ttlMs: ttl * 1000 }
  }

  async stop (): Promise<void> {
    if (this.state === 'stopped') return
    this.state = 'stopped'
    if (this.timer !== undefined) clearTimeout(this.timer)
    this.timer = undefined
    this.resolver.cancel()
  }

  status (): object {
    return {
      source: 'dns',
      name: this.cfg.name,
      type: this.cfg.type,
      state: this.state,
      endpoints: this.addresses,
      resolutions: this.resolutions,
      lastResolvedAt: this.lastResolvedAt === undefined ? null : new Date(this.lastResolvedAt).toISOString(),
      ttlMs: this.ttlMs ?? null,
      nextInMs: this.state === 'waiting' && this.nextAt !== undefined ? Math.max(0, this.nextAt - Date.now()) : null,
      consecutiveFailures: this.failures,
      lastError: this.lastError ?? null,
    }
  }
}
