import { Redis } from 'ioredis'
import type { Logger } from 'pino'
import type { Metrics } from '../observability/metrics.js'
import { registryHeartbeatMs, registryKeys, registryLabels, type RegistryKeys } from './registry-keys.js'
import { SourceBase, type SourceEndpoint } from './source.js'

/** How long a backend may take to reach a restarted Redis again (ioredis's reconnect backs off to 2 s) before its heartbeat. */
const RECONNECT_MS = 2000

export interface RegistrySourceConfig {
  readonly redis: string
  readonly service: string
  readonly keyPrefix: string
  readonly scanIntervalMs: number
}

/** idle: nothing to read. reading: a read is out (a notice meanwhile sets `again`). stopped: released. */
type ReadState = 'created' | 'idle' | 'reading' | 'stopped'

/**
 * Endpoints that register themselves in Redis (src/discovery/registry-keys.ts). A subscriber
 * connection listens on the service channel; each notice, each (re)subscription and each
 * `scanIntervalMs` triggers one read of the whole set (SMEMBERS + MGET: a member whose key expired is
 * dead and dropped from the set in Redis too). Reads never overlap: notices during a read make one more.
 * A failed read keeps the last good set. Owns its two connections and its one timer.
 */
export class RegistrySource extends SourceBase {
  readonly kind = 'registry'
  private state: ReadState = 'created'
  private again = false
  private readonly keys: RegistryKeys
  private cmd: Redis | undefined
  private sub: Redis | undefined
  private timer: NodeJS.Timeout | undefined
  private failures = 0
  private lastError: string | undefined
  private lastReadAt: number | undefined
  private notices = 0
  /** Members whose announced labels were malformed (warned once each while they stay registered). */
  private readonly badLabels = new Set<string>()
  /** When a read first came back empty while the set was not (see `read`). */
  private emptySince: number | undefined
  /** The longest heartbeat period the entries of the last read that found some announced (their ttlMs ÷ 3). */
  private heartbeatMs = 0
  reads = 0

  constructor (
    private readonly upstream: string,
    private readonly cfg: RegistrySourceConfig,
    private readonly log: Logger,
    private readonly metrics: Metrics,
  ) {
    super()
    this.keys = registryKeys(cfg.keyPrefix, cfg.service)
  }

  start (): void {
    if (this.state !== 'created') return
    this.state = 'idle'
    const onError = (err: Error): void => { this.failed(err.message) }
    this.cmd = new Redis(this.cfg.redis, { maxRetriesPerRequest: 1, enableOfflineQueue: false })
    this.cmd.on('error', onError)
    this.cmd.on('ready', () => { this.read() })
    this.sub = new Redis(this.cfg.redis, { maxRetriesPerRequest: 1 })
    this.sub.on('error', onError)
    this.sub.on('message', () => { this.notices++; this.read() })
    // ioredis subscribes again after a reconnect; a read then catches what was missed.
    this.sub.on('ready', () => { this.read() })
    void this.sub.subscribe(this.keys.channel).catch(() => { /* retried on reconnect */ })
    this.timer = setInterval(() => { this.read() }, this.cfg.scanIntervalMs)
    this.timer.unref()
  }

  private read (): void {
    if (this.state === 'reading') { this.again = true; return }
    if (this.state !== 'idle' || this.cmd?.status !== 'ready') return
    this.state = 'reading'
    this.again = false
    void this.readOnce().then(
      (alive) => {
        if (this.state === 'stopped') return
        this.reads++
        this.lastReadAt = Date.now()
        this.metrics.discoveryRefreshes.labels(this.upstream, 'registry', 'ok').inc()
        if (this.failures > 0) this.log.info({ upstream: this.upstream, service: this.cfg.service, failures: this.failures }, 'registry reads work again')
        this.failures = 0
        this.lastError = undefined
        // An empty registry while we know endpoints is what a restarted (empty) Redis looks like until the
        // backends' next heartbeat: it is believed only when a read agrees after scanIntervalMs, or after
        // the longest heartbeat the backends announced plus their Redis reconnect if that is longer.
        const now = Date.now()
        if (alive.length === 0 && (this.current?.length ?? 0) > 0) {
          this.emptySince ??= now
          if (now - this.emptySince < Math.max(this.cfg.scanIntervalMs, this.heartbeatMs + RECONNECT_MS)) return
        }
        this.emptySince = undefined
        this.publish(alive)
      },
      (err: Error) => { this.failed(err.message) },
    ).finally(() => {
      if (this.state !== 'reading') return
      this.state = 'idle'
      if (this.again) this.read()
    })
  }

  private async readOnce (): Promise<SourceEndpoint[]> {
    const cmd = this.cmd!
    const members = await cmd.smembers(this.keys.members)
    if (members.length === 0) return []
    const values = await cmd.mget(members.map((m) => this.keys.endpoint(m)))
    const alive: SourceEndpoint[] = []
    const dead: string[] = []
    members.forEach((m, i) => {
      const v = values[i]
      if (v === null || v === undefined) { dead.push(m); return }
      // The labels the backend announced (`register.labels`); malformed ones are dropped, the endpoint stays.
      const labels = registryLabels(v)
      if (labels === undefined) {
        if (!this.badLabels.has(m)) {
          this.badLabels.add(m)
          this.log.warn({ upstream: this.upstream, service: this.cfg.service, endpoint: m }, 'registry entry carries malformed labels; the endpoint is used without labels')
        }
        alive.push({ address: m, labels: {} })
      } else {
        this.badLabels.delete(m)
        alive.push({ address: m, labels })
      }
    })
    for (const m of this.badLabels) if (!members.includes(m)) this.badLabels.delete(m)
    let beat = 0
    for (const v of values) if (v !== null && v !== undefined) beat = Math.max(beat, registryHeartbeatMs(v) ?? 0)
    if (alive.length > 0) this.heartbeatMs = beat
    // Expired registrations (a backend that died without deregistering) leave the member set.
    if (dead.length > 0) void cmd.srem(this.keys.members, ...dead).catch(() => {})
    return alive
  }

  private failed (why: string): void {
    if (this.state === 'stopped') return
    this.metrics.discoveryRefreshes.labels(this.upstream, 'registry', 'failed').inc()
    this.lastError = why
    if (this.failures++ === 0) {
      this.log.warn({ upstream: this.upstream, service: this.cfg.service, code: 'FERRY_ERR_DISCOVERY', why, kept: this.current?.length ?? 0 }, 'registry unreachable; the last good endpoint set is kept')
    }
  }

  async stop (): Promise<void> {
    if (this.state === 'stopped') return
    this.state = 'stopped'
    if (this.timer !== undefined) clearInterval(this.timer)
    this.timer = undefined
    this.cmd?.disconnect()
    this.sub?.disconnect()
  }

  status (): object {
    return {
      source: 'registry',
      service: this.cfg.service,
      state: this.state,
      connected: this.cmd?.status === 'ready' && this.sub?.status === 'ready',
      endpoints: this.addresses,
      reads: this.reads,
      notices: this.notices,
      lastReadAt: this.lastReadAt === undefined ? null : new Date(this.lastReadAt).toISOString(),
      consecutiveFailures: this.failures,
      lastError: this.lastError ?? null,
    }
  }
}
