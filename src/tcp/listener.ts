import cluster from 'node:cluster'
import { createServer, type Server, type Socket } from 'node:net'
import type { Logger } from 'pino'
import type { Counter, Histogram } from 'prom-client'
import type { TcpListenerConfig } from '../config/schema.js'
import { FerryError, type FerryErrorCode } from '../errors.js'
import type { Metrics } from '../observability/metrics.js'
import type { TcpTarget, UpstreamSocketOptions } from '../contracts/tcp.js'
import { Networks, normalizeIp } from '../net/address.js'
import { RouteAccess } from '../edge/access.js'
import { IpTable, takeIpSlot, type IpSlot } from '../edge/ip-slots.js'
import type { IpScope, PodIpCounts } from '../planes/ip-counts.js'
import { TcpConnection, type CloseReason, type ListenerContext } from './connection.js'
import { TcpTls } from './tls.js'
import { SniRoutes } from './sni-routes.js'

/** paused: descriptors ran low (DescriptorGuard); new connections are closed at once until resumed. */
export type TcpListenerState = 'created' | 'listening' | 'paused' | 'draining' | 'closed'

/** Kernel accept queue asked for (capped by net.core.somaxconn): connection bursts wait there, not in RSTs. */
const BACKLOG = 4096
/** On a flush close, how long connections closed with FIN after the grace may take before they are reset. */
const FLUSH_MS = 1000
/** Warn lines per listener per second for bad input; the rest are counted and summarised. */
const LOG_BUDGET_PER_SEC = 10

/**
 * One `listen.tcp[]` entry: owns the node:net server, the set of its connections, the per-IP counts and
 * the shared idle sweep timer. `close()` is idempotent: it stops accepting, then ('flush') waits up to
 * `shutdownGraceMs` for connections to end by themselves, flush-closes the rest (queued bytes, then FIN)
 * and resets what is left a second later; ('abort') resets them now.
 */
export class TcpListener implements ListenerContext {
  readonly name: string
  private state: TcpListenerState = 'created'
  private readonly server: Server
  private readonly conns = new Set<TcpConnection>()
  private readonly perIp = new IpTable()
  /** This listener's maxConnectionsPerIp among a pod's per-IP figures. */
  private readonly podScope: IpScope
  private readonly trusted: Networks
  private access: RouteAccess | undefined
  private sweepTimer: NodeJS.Timeout | undefined
  private boundPort: number | undefined
  private closing: Promise<void> | undefined
  private drained: (() => void) | undefined
  readonly socketOptions: UpstreamSocketOptions
  /** With `tls`: the certificates handshakes are served with (rotated in place). */
  readonly tls: TcpTls | undefined
  /** With `sniRoutes`: where a ClientHello's server name goes (replaced by a reload: setSniRoutes). */
  sni: SniRoutes | undefined
  /** Connections routed by SNI, by upstream name (for /status; the counters are ferry_tcp_sni_routed_total). */
  private readonly routedTo = new Map<string, { n: number, counter: Counter.Internal }>()
  readonly bytes = { toUpstream: 0, toClient: 0 }
  private readonly flushed = { toUpstream: 0, toClient: 0 }
  private accepted = 0
  private readonly closedBy = new Map<CloseReason, { n: number, counter: Counter.Internal }>()
  private readonly mAccepted: Counter.Internal
  private readonly mBytesUp: Counter.Internal
  private readonly mBytesDown: Counter.Internal
  private readonly mDuration: Histogram.Internal<'listener'>
  private logWindow = 0
  private logged = 0
  private suppressed = 0

  constructor (
    readonly index: number,
    readonly cfg: TcpListenerConfig,
    /** Where new connections go (a reload may point a kept listener at a new upstream). */
    public upstream: TcpTarget,
    private readonly log: Logger,
    private readonly metrics: Metrics,
    /** A worker of a pod: maxConnectionsPerIp is the pod's, lent by the control plane (src/planes/ip-counts.ts). */
    private readonly pod?: PodIpCounts,
  ) {
    this.name = cfg.name
    this.podScope = `tcp:${cfg.name}`
    // First: a bad certificate file throws (naming its field) before anything is opened.
    this.tls = cfg.tls === undefined ? undefined : new TcpTls(`listen.tcp[${index}].tls`, cfg.tls, log, {
      applied: metrics.tcpTlsCertChecks.labels(cfg.name, 'applied'),
      unchanged: metrics.tcpTlsCertChecks.labels(cfg.name, 'unchanged'),
      refused: metrics.tcpTlsCertChecks.labels(cfg.name, 'refused'),
    })
    this.trusted = new Networks(cfg.trustedProxies)
    this.setAccess(cfg.access)
    this.socketOptions = { noDelay: cfg.noDelay, keepAlive: cfg.keepAlive, keepAliveDelayMs: cfg.keepAliveDelayMs }
    this.mAccepted = metrics.tcpConnections.labels(cfg.name)
    this.mBytesUp = metrics.tcpBytes.labels(cfg.name, 'to_upstream')
    this.mBytesDown = metrics.tcpBytes.labels(cfg.name, 'to_client')
    this.mDuration = metrics.tcpDuration.labels(cfg.name)
    this.server = createServer({
      allowHalfOpen: true,
      pauseOnConnect: true,
      noDelay: cfg.noDelay,
      keepAlive: cfg.keepAlive,
      keepAliveInitialDelay: cfg.keepAliveDelayMs,
    }, (s) => this.onConnection(s))
    // Node closes connections beyond maxConnections before they reach JavaScript and tells us here.
    this.server.maxConnections = cfg.maxConnections
    this.server.on('drop', (d) => {
      this.accepted++
      this.mAccepted.inc()
      this.countClosed('FERRY_ERR_TCP_LIMIT')
      this.warn('FERRY_ERR_TCP_LIMIT', { peer: d?.remoteAddress }, `listener holds maxConnections ${cfg.maxConnections}`)
    })
  }

  /** The one place the state moves (created → listening ⇄ paused → draining → closed; draining may come first on a failed start). */
  private to (next: TcpListenerState): void {
    if (this.state === next) return
    if (this.log.isLevelEnabled('debug')) this.log.debug({ listener: this.name, from: this.state, to: next }, `tcp listener ${next}`)
    this.state = next
  }

  /** `listen.tcp[0] (db)`: how config errors and start-up errors name this listener. */
  get label (): string {
    return `listen.tcp[${this.index}] (${this.name})`
  }

  get port (): number | undefined {
    return this.boundPort
  }

  /** Open client connections (all states but closed). */
  get open (): number {
    return this.conns.size
  }

  async listen (): Promise<number> {
    if (this.state !== 'created') throw new Error(`listen() in state ${this.state}`)
    const { host, port } = this.cfg
    await new Promise<void>((resolve, reject) => {
      const onError = (err: NodeJS.ErrnoException): void => {
        reject(new FerryError('FERRY_ERR_LISTEN', `${this.label}: cannot listen on ${host}:${port}: ${err.code ?? err.message} (address in use, not available on this host, or not permitted)`, { cause: err }))
      }
      this.server.once('error', onError)
      // In a worker of a pod (src/planes/) the listening socket is the control plane's, shared by every worker.
      this.server.listen({ host, port, backlog: BACKLOG, exclusive: !cluster.isWorker }, () => {
        this.server.removeListener('error', onError)
        resolve()
      })
    })
    // After binding, server errors are accept failures (EMFILE, ENFILE): logged, never thrown.
    this.server.on('error', (err: NodeJS.ErrnoException) => this.warn('FERRY_ERR_LISTEN', { err: err.code }, `accept failed: ${err.message}`))
    this.boundPort = (this.server.address() as { port: number }).port
    this.to('listening')
    const every = this.sweepEveryMs()
    if (every > 0) {
      this.sweepTimer = setInterval(() => this.sweep(), every)
      this.sweepTimer.unref()
    }
    return this.boundPort
  }

  /** A quarter of the shortest deadline the sweep enforces, 50 ms–5 s; 0 when there is none. */
  private sweepEveryMs (): number {
    const deadlines: number[] = []
    if (this.cfg.idleTimeoutMs > 0) deadlines.push(this.cfg.idleTimeoutMs)
    if (this.cfg.acceptProxyProtocol) deadlines.push(this.cfg.proxyHeaderTimeoutMs)
    if (this.cfg.tls !== undefined) deadlines.push(this.cfg.tls.handshakeTimeoutMs)
    if (this.cfg.sniRoutes.length > 0) deadlines.push(this.cfg.clientHelloTimeoutMs)
    if (deadlines.length === 0) return 0
    return Math.min(5000, Math.max(50, Math.floor(Math.min(...deadlines) / 4)))
  }

  private sweep (): void {
    const now = Date.now()
    for (const c of this.conns) c.sweep(now)
  }

  private onConnection (s: Socket): void {
    this.accepted++
    this.mAccepted.inc()
    if (this.state !== 'listening') {
      s.on('error', noop)
      if (this.state === 'paused') {
        // Reset at once: the client sees a refusal, and neither it nor a backend socket holds a descriptor.
        s.resetAndDestroy()
        this.countClosed('FERRY_ERR_FD_RESERVE')
        return
      }
      s.destroy()
      this.countClosed('FERRY_ERR_TCP_SHUTDOWN')
      return
    }
    const conn = new TcpConnection(this, s)
    this.conns.add(conn)
    const trustedPeer = this.cfg.acceptProxyProtocol && this.trusted.contains(normalizeIp(s.remoteAddress ?? ''))
    conn.start(trustedPeer)
  }

  /**
   * Descriptors ran low: new connections are reset as soon as they are accepted (libuv accepts them;
   * node:net gives no way to leave them in the kernel's queue short of closing the server).
   */
  pauseAccepting (): void {
    if (this.state === 'listening') this.to('paused')
  }

  resumeAccepting (): void {
    if (this.state === 'paused') this.to('listening')
  }

  // ---- ListenerContext ----

  /** The access list, replaced in place by a reload (the port stays bound). */
  setAccess (access: TcpListenerConfig['access']): void {
    this.access = access === undefined ? undefined : new RouteAccess({ allow: access.allow, deny: access.deny, origins: [] })
  }

  /**
   * A reload's `tls` for this kept listener (same presence and handshakeTimeoutMs: anything else rebinds):
   * its files are read again even when the text did not change. Problems refuse the reload.
   */
  prepareTls (next: TcpListenerConfig['tls']): { problems: string[] } | { apply: () => void } {
    if (this.tls === undefined || next === undefined) return { apply: noop }
    return this.tls.prepare(next)
  }

  /** `sniRoutes` of the running config (a reload replaces them in place; `resolve` names its tcp upstreams). */
  setSniRoutes (cfg: TcpListenerConfig, resolve: (upstream: string) => TcpTarget): void {
    this.sni = cfg.sniRoutes.length === 0 ? undefined : new SniRoutes(cfg.sniRoutes, resolve, cfg.sniUnmatched)
  }

  routed (target: TcpTarget): void {
    let c = this.routedTo.get(target.name)
    if (c === undefined) {
      c = { n: 0, counter: this.metrics.tcpSniRouted.labels(this.name, target.name) }
      this.routedTo.set(target.name, c)
    }
    c.n++
    c.counter.inc()
  }

  refusesIp (ip: string): boolean {
    return this.access?.refusesIp(ip) !== undefined
  }

  admitIp (ip: string): IpSlot<'refused'> | 'refused' {
    return takeIpSlot(this.perIp, ip, this.cfg.maxConnectionsPerIp, this.pod, this.podScope, refused)
  }

  onClosed (conn: TcpConnection, reason: CloseReason): void {
    if (!this.conns.delete(conn)) return
    this.countClosed(reason)
    this.mDuration.observe((Date.now() - conn.acceptedAt) / 1000)
    if (this.conns.size === 0) this.drained?.()
  }

  report (conn: TcpConnection, code: FerryErrorCode, detail: string): void {
    // Resets and idle closes are ordinary life for TCP; only bad input and backend trouble are warnings.
    // A TLS failure was logged by the upstream already, once per endpoint and reason.
    if (code === 'FERRY_ERR_TCP_CLIENT_RESET' || code === 'FERRY_ERR_TCP_IDLE' || code === 'FERRY_ERR_TCP_SHUTDOWN' || code === 'FERRY_ERR_UPSTREAM_TLS') {
      if (this.log.isLevelEnabled('debug')) this.log.debug({ listener: this.name, code, peer: conn.peer }, detail)
      return
    }
    this.warn(code, { peer: conn.peer }, detail)
  }

  private countClosed (reason: CloseReason): void {
    let c = this.closedBy.get(reason)
    if (c === undefined) {
      c = { n: 0, counter: this.metrics.tcpClosed.labels(this.name, reason) }
      this.closedBy.set(reason, c)
    }
    c.n++
    c.counter.inc()
  }

  /** At most LOG_BUDGET_PER_SEC warn lines a second; a flood is summarised by one line with the count. */
  private warn (code: FerryErrorCode, fields: Record<string, unknown>, msg: string): void {
    const now = Date.now()
    if (now - this.logWindow >= 1000) {
      if (this.suppressed > 0) this.log.warn({ listener: this.name, suppressed: this.suppressed }, 'tcp: further problems not logged in the last second')
      this.logWindow = now
      this.logged = 0
      this.suppressed = 0
    }
    if (this.logged >= LOG_BUDGET_PER_SEC) { this.suppressed++; return }
    this.logged++
    this.log.warn({ listener: this.name, upstream: this.upstream.name, code, ...fields }, msg)
  }

  /** Scrape time: moves the byte totals into the counters (the data path only adds to plain numbers). */
  collect (): void {
    const up = this.bytes.toUpstream - this.flushed.toUpstream
    const down = this.bytes.toClient - this.flushed.toClient
    if (up > 0) { this.mBytesUp.inc(up); this.flushed.toUpstream = this.bytes.toUpstream }
    if (down > 0) { this.mBytesDown.inc(down); this.flushed.toClient = this.bytes.toClient }
  }

  status (): object {
    const closed: Record<string, number> = {}
    for (const [reason, c] of this.closedBy) closed[reason] = c.n
    return {
      name: this.name,
      host: this.cfg.host,
      port: this.boundPort,
      upstream: this.upstream.name,
      state: this.state,
      open: this.conns.size,
      clientIps: this.perIp.ips,
      accepted: this.accepted,
      closed,
      bytes: { toUpstream: this.bytes.toUpstream, toClient: this.bytes.toClient },
      maxConnections: this.cfg.maxConnections,
      maxConnectionsPerIp: this.cfg.maxConnectionsPerIp,
      proxyProtocol: this.cfg.proxyProtocol,
      acceptProxyProtocol: this.cfg.acceptProxyProtocol,
      ...(this.tls !== undefined ? { tls: this.tls.status() } : {}),
      ...(this.sni !== undefined ? { sniRoutes: { unmatched: this.sni.unmatched, routed: Object.fromEntries([...this.routedTo].map(([u, c]) => [u, c.n])) } } : {}),
    }
  }

  /**
   * Stops accepting and closes the listener: 'flush' gives open connections `shutdownGraceMs` (else
   * `graceMs`: the drain's time left) to end by themselves, then flushes and closes them; 'abort' closes
   * them now (also when a flush is under way).
   */
  async close (kind: 'flush' | 'abort', graceMs = 5000): Promise<void> {
    if (this.closing !== undefined) {
      if (kind === 'abort') this.abortAll()
      return await this.closing
    }
    this.closing = this.doClose(kind, this.cfg.shutdownGraceMs ?? graceMs)
    return await this.closing
  }

  private async doClose (kind: 'flush' | 'abort', graceMs: number): Promise<void> {
    const wasListening = this.state === 'listening' || this.state === 'paused'
    this.to('draining')
    if (wasListening) this.server.close()
    if (this.sweepTimer !== undefined && kind === 'abort') clearInterval(this.sweepTimer)
    if (kind === 'flush' && this.conns.size > 0) {
      this.log.info({ listener: this.name, open: this.conns.size, graceMs }, 'tcp listener draining')
      await this.drainedWithin(graceMs)
      // Still open: send what is queued and FIN both ways; whoever does not finish soon is reset.
      for (const c of [...this.conns]) c.close('flush', 'FERRY_ERR_TCP_SHUTDOWN', 'gateway stopping')
      await this.drainedWithin(FLUSH_MS)
    }
    this.abortAll()
    if (this.sweepTimer !== undefined) clearInterval(this.sweepTimer)
    this.sweepTimer = undefined
    this.tls?.close()
    this.to('closed')
  }

  /** Resolves when the last connection closed, or after `ms`. */
  private async drainedWithin (ms: number): Promise<void> {
    if (this.conns.size === 0 || ms <= 0) return
    await new Promise<void>((resolve) => {
      const timer = setTimeout(resolve, ms)
      this.drained = () => { clearTimeout(timer); resolve() }
    })
    this.drained = undefined
  }

  private abortAll (): void {
    for (const c of [...this.conns]) c.close('abort', 'FERRY_ERR_TCP_SHUTDOWN', 'gateway stopping')
  }
}

function noop (): void {}

function refused (): 'refused' {
  return 'refused'
}
