import { connect as netConnect, type Socket } from 'node:net'
import { connect as tlsConnect } from 'node:tls'
import type { Logger } from 'pino'
import { NO_LABELS, type Labels } from '../../config/labels.js'
import type { Counter } from 'prom-client'
import type { Endpoint } from '../../config/load.js'
import type { TcpUpstreamConfig } from '../../config/schema.js'
import type { EndpointSource } from '../../discovery/source.js'
import { FerryError, type FerryErrorCode } from '../../errors.js'
import type { Metrics } from '../../observability/metrics.js'
import { Balancer } from '../../routing/balancer.js'
import { EndpointSet, healthyAt, type SetMember } from '../endpoint-set.js'
import { PassiveHealth, type ActiveHealth } from '../health.js'
import { tcpProbe } from '../probes.js'
import type { ConnectOwner, TcpBackend, TcpTarget, UpstreamSocketOptions } from '../../contracts/tcp.js'
import type { Upstream } from '../../contracts/upstream.js'
import type { UpstreamTlsClient } from '../tls.js'

/**
 * One backend endpoint of a TCP upstream and the bookkeeping the balancer reads. `inflight` counts
 * connections that are connecting or open (what least-connections balances); `connected` only open ones.
 */
export class TcpEndpoint implements SetMember, TcpBackend {
  inflight = 0
  checked: ActiveHealth | undefined
  /** TCP endpoints have no labels (no route splits them); the set keeps the field. */
  labels: Labels = NO_LABELS
  connected = 0
  connectFailures = 0
  readonly failedConnect: Counter.Internal
  readonly failedTimeout: Counter.Internal
  readonly failedTls: Counter.Internal

  constructor (readonly upstream: string, readonly endpoint: Endpoint, metrics: Metrics, readonly passive: PassiveHealth) {
    this.failedConnect = metrics.tcpConnectFailures.labels(upstream, endpoint.address, 'FERRY_ERR_UPSTREAM_CONNECT')
    this.failedTimeout = metrics.tcpConnectFailures.labels(upstream, endpoint.address, 'FERRY_ERR_UPSTREAM_CONNECT_TIMEOUT')
    this.failedTls = metrics.tcpConnectFailures.labels(upstream, endpoint.address, 'FERRY_ERR_UPSTREAM_TLS')
  }

  get address (): string {
    return this.endpoint.address
  }

  acceptsAt (now: number): boolean {
    return healthyAt(this, now)
  }
}

export type AttemptState = 'connecting' | 'connected' | 'failed' | 'cancelled'

/**
 * Getting one backend connection for one client connection: tries endpoints in balancer order, each at
 * most once, each for at most `timeouts.connectMs` (the TLS handshake included), all within
 * `timeouts.connectBudgetMs`. Owns the sockets and timer of the attempt in progress until it hands a
 * connected socket over. `preface` (a PROXY header) is the first thing written on the TCP connection:
 * before the TLS handshake when the upstream speaks TLS, as HAProxy's send-proxy with ssl does.
 */
export class ConnectAttempt {
  private state: AttemptState = 'connecting'
  /** The TCP socket of the attempt; `socket` is the TLS socket over it once the handshake started (else the same). */
  private raw: Socket | undefined
  private socket: Socket | undefined
  private ep: TcpEndpoint | undefined
  private timer: NodeJS.Timeout | undefined
  private readonly tried = new Set<TcpEndpoint>()
  private readonly deadline: number
  private lastError: FerryError | undefined

  constructor (
    private readonly upstream: TcpUpstream,
    private readonly owner: ConnectOwner,
    private readonly key: number | undefined,
    private readonly opts: UpstreamSocketOptions,
    private readonly preface: Buffer | undefined,
  ) {
    this.deadline = Date.now() + upstream.cfg.timeouts.connectBudgetMs
    this.next()
  }

  get current (): AttemptState {
    return this.state
  }

  /** The client went away: drop the attempt in progress. Idempotent; a no-op once the outcome was delivered. */
  cancel (): void {
    if (this.state !== 'connecting') return
    this.state = 'cancelled'
    this.clear()
    if (this.ep !== undefined) this.upstream.abandon(this.ep)
    this.ep = undefined
  }

  private clear (): void {
    if (this.timer !== undefined) clearTimeout(this.timer)
    this.timer = undefined
    for (const s of new Set([this.socket, this.raw])) {
      if (s === undefined) continue
      s.removeAllListeners('connect')
      s.removeAllListeners('secureConnect')
      s.removeAllListeners('error')
      s.on('error', noop) // a late error from a socket we gave up on must not reach the event loop
      s.destroy()
    }
    this.socket = undefined
    this.raw = undefined
  }

  private next (): void {
    const now = Date.now()
    const remaining = this.deadline - now
    const refusal = this.tried.size === 0 ? this.upstream.refusal(now) : undefined
    const ep = remaining > 0 && refusal === undefined ? this.upstream.pick(now, this.tried, this.key) : undefined
    if (ep === undefined) {
      this.state = 'failed'
      const err = refusal ?? this.lastError ?? new FerryError('FERRY_ERR_UPSTREAM_CONNECT', `upstream ${this.upstream.name}: no endpoint could be tried within connectBudgetMs ${this.upstream.cfg.timeouts.connectBudgetMs}`)
      this.owner.onUpstreamFailed(err)
      return
    }
    this.tried.add(ep)
    this.ep = ep
    ep.inflight++
    const { endpoint } = ep
    const s = netConnect({
      host: endpoint.host,
      port: endpoint.port,
      allowHalfOpen: true,
      noDelay: this.opts.noDelay,
      keepAlive: this.opts.keepAlive,
      keepAliveInitialDelay: this.opts.keepAliveDelayMs,
    })
    this.raw = this.socket = s
    s.once('connect', () => { this.onTcpConnect(ep) })
    s.once('error', (err: Error) => { this.onFail('FERRY_ERR_UPSTREAM_CONNECT', `upstream ${this.upstream.name}: connect to ${endpoint.address} failed: ${(err as NodeJS.ErrnoException).code ?? err.message}`) })
    const ms = Math.min(this.upstream.cfg.timeouts.connectMs, remaining)
    this.timer = setTimeout(() => { this.onFail('FERRY_ERR_UPSTREAM_CONNECT_TIMEOUT', `upstream ${this.upstream.name}: connect to ${endpoint.address}${this.upstream.tls !== undefined ? ' (and TLS handshake)' : ''} took longer than ${ms} ms`) }, ms)
  }

  private onTcpConnect (ep: TcpEndpoint): void {
    if (this.state !== 'connecting') return
    const raw = this.raw!
    if (this.preface !== undefined) raw.write(this.preface)
    const tls = this.upstream.tls
    if (tls === undefined) { this.onConnect(); return }
    // The TLS socket takes allowHalfOpen from the TCP one it wraps.
    const s = tlsConnect({ socket: raw, ...tls.options(ep.endpoint) })
    this.socket = s
    s.once('secureConnect', () => { this.onConnect() })
    s.once('error', (err: NodeJS.ErrnoException) => {
      const failure = tls.failure(ep.address, err)
      if (failure !== undefined) this.onFail(failure.code, `upstream ${this.upstream.name}: ${failure.message}`)
      else this.onFail('FERRY_ERR_UPSTREAM_CONNECT', `upstream ${this.upstream.name}: TLS connect to ${ep.address} failed: ${err.code ?? err.message}`)
    })
  }

  private onConnect (): void {
    if (this.state !== 'connecting') return
    const s = this.socket!
    const ep = this.ep!
    clearTimeout(this.timer)
    this.timer = undefined
    // The TLS socket carries the bytes from now on; the TCP one under it is its business.
    this.raw?.removeAllListeners('error')
    this.raw?.removeAllListeners('connect')
    if (this.raw !== s) this.raw?.on('error', noop)
    this.socket = undefined
    this.raw = undefined
    this.ep = undefined
    s.removeAllListeners('error')
    s.removeAllListeners('secureConnect')
    this.state = 'connected'
    this.upstream.connected(ep)
    this.owner.onUpstreamConnected(s, ep)
  }

  private onFail (code: FerryErrorCode, message: string): void {
    if (this.state !== 'connecting') return
    const ep = this.ep!
    this.ep = undefined
    this.clear()
    this.lastError = new FerryError(code, message)
    this.upstream.connectFailed(ep, code)
    this.next()
  }
}

function noop (): void {}

/**
 * A TCP upstream: its endpoints, the balancer and passive ejection (the same rules as the HTTP pool:
 * `ejection.consecutiveFailures` connect failures in a row eject an endpoint for `ejectMs`; a probe
 * after that puts it back on success or out again on failure; with every endpoint ejected all are used).
 * There is no pool and no queue: each client connection gets its own backend connection.
 */
export class TcpUpstream implements TcpTarget, Upstream {
  /** The endpoints, following the upstream's source (removed ones take no new connections; open ones continue). */
  readonly set: EndpointSet<TcpEndpoint>
  private readonly balancer: Balancer<TcpEndpoint>
  private closed = false

  constructor (
    readonly name: string,
    readonly cfg: TcpUpstreamConfig,
    log: Logger,
    private readonly metrics: Metrics,
    source: EndpointSource,
    /** TLS towards the endpoints; undefined: plain TCP. */
    readonly tls?: UpstreamTlsClient,
  ) {
    this.set = new EndpointSet<TcpEndpoint>(name, source, {
      create: (endpoint) => new TcpEndpoint(name, endpoint, metrics, new PassiveHealth(name, endpoint.address, cfg.ejection, log, metrics)),
      // Connections belong to the listeners: a removed endpoint's go on until they end.
      retire: () => {},
      idle: (e) => e.inflight === 0,
      close: async () => {},
      probe: async (e, timeoutMs) => { await tcpProbe(e.endpoint, timeoutMs, tls) },
    }, cfg.healthCheck, log, metrics)
    this.balancer = new Balancer(this.set, cfg.balance, { panic: cfg.whenAllUnhealthy === 'panic', boundedLoadFactor: cfg.boundedLoadFactor })
  }

  /** Active endpoints (in the set now). */
  get endpoints (): readonly TcpEndpoint[] {
    return this.set.active
  }

  /** Why a new connection is refused at once (no endpoints; none healthy with whenAllUnhealthy: fail), else undefined. */
  refusal (now: number): FerryError | undefined {
    return this.set.refusal(now, this.cfg.whenAllUnhealthy)
  }

  /** Starts getting a backend connection for `owner`; `key` is the client's hashKey for the 'hash' policy; `preface` goes first on the TCP connection. */
  connect (owner: ConnectOwner, key: number | undefined, opts: UpstreamSocketOptions, preface?: Buffer): ConnectAttempt | undefined {
    if (this.closed) {
      owner.onUpstreamFailed(new FerryError('FERRY_ERR_UPSTREAM_CONNECT', `upstream ${this.name} is shut down`))
      return undefined
    }
    return new ConnectAttempt(this, owner, key, opts, preface)
  }

  pick (now: number, tried: ReadonlySet<TcpEndpoint>, key: number | undefined): TcpEndpoint | undefined {
    return this.balancer.pick(Infinity, now, tried, key)
  }

  /** Number of open backend connections (the `ferry_connections{side="upstream",kind="tcp"}` gauge). */
  get connectedCount (): number {
    let n = 0
    for (const ep of this.set.all()) n += ep.connected
    return n
  }

  /** @internal ConnectAttempt: the attempt on `ep` succeeded. */
  connected (ep: TcpEndpoint): void {
    ep.connected++
    ep.passive.succeeded('connect succeeded')
  }

  /** @internal ConnectAttempt: the attempt on `ep` failed with `code`. */
  connectFailed (ep: TcpEndpoint, code: FerryErrorCode): void {
    ep.inflight--
    ep.connectFailures++
    if (code === 'FERRY_ERR_UPSTREAM_CONNECT_TIMEOUT') ep.failedTimeout.inc()
    else if (code === 'FERRY_ERR_UPSTREAM_TLS') ep.failedTls.inc()
    else ep.failedConnect.inc()
    ep.passive.failed('connect failures')
  }

  /**
   * A connected backend socket failed: a TLS failure (an endpoint that refuses the client certificate
   * says so only after the handshake, under TLS 1.3) is counted and logged here and returned; else undefined.
   */
  socketError (ep: TcpBackend, err: Error): FerryError | undefined {
    return this.tls?.failure(ep.address, err)
  }

  /** @internal ConnectAttempt: an attempt on `ep` was cancelled before its outcome (neutral for health). */
  abandon (ep: TcpEndpoint): void {
    ep.inflight--
  }

  /** The owner of a connected backend socket calls this once after it closed. */
  release (ep: TcpEndpoint): void {
    ep.inflight--
    ep.connected--
  }

  status (): object {
    return {
      name: this.name,
      protocol: 'tcp',
      balance: this.cfg.balance,
      whenAllUnhealthy: this.cfg.whenAllUnhealthy,
      source: this.set.sourceStatus(),
      tls: this.tls?.status() ?? null,
      endpoints: this.set.status((ep) => ({
        connecting: ep.inflight - ep.connected,
        connected: ep.connected,
        connectFailures: ep.connectFailures,
      })),
    }
  }

  /**
   * No new connections after this. Open connections belong to the listeners, which close them (in
   * their own `close`); there is nothing pooled here to flush, so both kinds do the same.
   */
  async close (kind: 'flush' | 'abort'): Promise<void> {
    this.closed = true
    await this.set.close(kind)
  }

  /** A reload replaced it: closed now; the connections it made belong to the listeners and continue. */
  retire (): undefined {
    void this.close('flush')
    return undefined
  }

  labelled (): Array<{ labels: Labels, healthy: boolean }> {
    return this.set.labelled(Date.now())
  }

  collect (): void {
    this.metrics.upstreamConnections.labels('upstream', 'tcp', this.name).set(this.connectedCount)
    this.set.collect()
  }
}
