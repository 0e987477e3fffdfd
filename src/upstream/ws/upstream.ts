import type { IncomingMessage } from 'node:http'
import type { Socket } from 'node:net'
import type { Logger } from 'pino'
import { NO_LABELS, type Labels } from '../../config/labels.js'
import type { Counter, Gauge } from 'prom-client'
import WebSocket from 'ws'
import type { Endpoint } from '../../config/load.js'
import type { WsUpstreamConfig } from '../../config/schema.js'
import type { EndpointSource } from '../../discovery/source.js'
import { FerryError, type FerryErrorCode } from '../../errors.js'
import { closeReason, sendableCloseCode, type ClientSink, type UpstreamLeg, type WsHandshake, type WsUpstream } from '../../contracts/ws.js'
import type { Metrics } from '../../observability/metrics.js'
import { Balancer, hashKey } from '../../routing/balancer.js'
import type { AffinityPlacement } from '../../affinity/placement.js'
import { EndpointSet, healthyAt, type SetMember } from '../endpoint-set.js'
import { PassiveHealth, type ActiveHealth } from '../health.js'
import { httpProbe, tcpProbe } from '../probes.js'
import { corkUntilCheck } from '../../net/cork.js'
import { endpointDrainReason, type DrainCause, type EndpointCarrier } from '../../drain/endpoint-drain.js'
import { utf8ForLatin1Writer } from '../../net/header-bytes.js'
import type { UpstreamTlsClient } from '../tls.js'

/** How long a backend gets to answer our close frame before its socket is cut. */
const CLOSE_GRACE_MS = 2000
/** close('flush'): how long sessions still open may go on before they are closed 1001 like 'abort'. */
const FLUSH_GRACE_MS = 5000
/** Endpoints one handshake may try: the first pick and one failover. */
const MAX_ATTEMPTS = 2
/** At most one "backend refused the handshake" line per endpoint per this period. */
const REFUSAL_LOG_EVERY_MS = 10000
/** Largest backend→client message Ferry reassembles (routes limit only client messages). */
const MAX_BACKEND_MESSAGE = 64 * 1024 * 1024

/**
 * Headers the handshake to the backend owns (ws writes them, or they make no sense on a new hop); never
 * taken from the client's, even when a route lists them in forwardHeaders.
 */
const HANDSHAKE_OWNED = new Set([
  'connection', 'upgrade', 'keep-alive', 'proxy-connection', 'te', 'trailer', 'transfer-encoding', 'content-length',
  'sec-websocket-key', 'sec-websocket-version', 'sec-websocket-protocol', 'sec-websocket-extensions', 'sec-websocket-accept',
])

function noop (): void {}

/**
 * One backend endpoint of a passthrough upstream. `inflight` (what least-connections balances) counts
 * handshakes in progress plus backend sockets not yet closed; `sessions` only those relaying a session.
 */
class WsEndpoint implements SetMember {
  checked: ActiveHealth | undefined
  labels: Labels = NO_LABELS
  handshaking = 0
  sockets = 0
  sessions = 0
  /** The legs relaying a session (state open), oldest first: what a drain moves off. */
  readonly legs = new Set<PassthroughLeg>()
  private lastRefusalLog = 0
  private refusalsNotLogged = 0

  constructor (readonly endpoint: Endpoint, readonly passive: PassiveHealth) {}

  get address (): string {
    return this.endpoint.address
  }

  get inflight (): number {
    return this.handshaking + this.sockets
  }

  acceptsAt (now: number): boolean {
    return healthyAt(this, now)
  }

  /** Rate-limited log of a backend's non-101 answer: the line says how many were not logged since the last. */
  logRefusal (log: Logger, status: number, path: string): void {
    const now = Date.now()
    if (now - this.lastRefusalLog < REFUSAL_LOG_EVERY_MS) { this.refusalsNotLogged++; return }
    log.info({ endpoint: this.address, status, path, notLogged: this.refusalsNotLogged }, 'passthrough backend refused the WebSocket handshake')
    this.lastRefusalLog = now
    this.refusalsNotLogged = 0
  }
}

/**
 * open: relaying both ways. closing: the session is over for the client (it closed, the front closed it,
 * the upstream aborted it, or the backend broke the protocol); the backend socket is finishing its close
 * handshake, cut after CLOSE_GRACE_MS. closed: the backend socket is gone and released.
 */
type LegState = 'open' | 'closing' | 'closed'

/**
 * One passthrough session's backend side: the only owner of its `ws` client socket once the handshake
 * handed it over. Messages are relayed with their type; close codes and reasons travel both ways; a
 * congested client pauses the backend socket, and a backend socket that takes nothing more shows in
 * `buffered` (the front closes the client 1013).
 */
class PassthroughLeg implements UpstreamLeg {
  private state: LegState = 'open'
  private graceTimer: NodeJS.Timeout | undefined
  /** The session's affinity key, when the placement keeps its record alive. */
  affinityKey: string | undefined

  constructor (
    readonly protocol: string,
    private readonly ws: WebSocket,
    /** ws's socket, from the 101 response; corked per loop turn (corkUntilCheck). */
    private readonly socket: Socket,
    private readonly sink: ClientSink,
    readonly ep: WsEndpoint,
    private readonly owner: WsPassthroughUpstream,
  ) {
    ep.legs.add(this)
    ws.on('message', (data: Buffer, isBinary: boolean) => { this.fromBackend(data, isBinary) })
    ws.on('close', (code: number, reason: Buffer) => { this.backendClosed(code, reason) })
    ws.on('error', (err: Error) => { this.backendError(err) })
  }

  private to (state: LegState): void {
    if (this.state === 'open') {
      this.ep.sessions--
      this.ep.legs.delete(this)
    }
    this.state = state
    if (state === 'closed') {
      clearTimeout(this.graceTimer)
      this.graceTimer = undefined
      this.ep.sockets--
      this.owner.released(this)
    }
  }

  private fromBackend (data: Buffer, isBinary: boolean): void {
    if (this.state !== 'open') return
    // ws allocates each message's buffer and never touches it again (server frames are not masked), so
    // the sink may hold it until it sends.
    this.sink.deliver(data, isBinary)
    // Either seen here or told later through clientCongested. ws may still emit the rest of the chunk it
    // holds; the socket reads nothing more until clientDrained.
    if (this.sink.congested && !this.ws.isPaused) this.ws.pause()
  }

  private backendClosed (code: number, reason: Buffer): void {
    if (this.state === 'closed') return
    const wasOpen = this.state === 'open'
    this.to('closed')
    if (!wasOpen) return
    // 1006: no close frame (the socket was reset or just closed). 1011, not 1012: nothing says the backend
    // restarts, a client that reconnects at once may hit the same fault.
    if (code === 1006) this.sink.end(1011, 'backend connection lost', 'FERRY_ERR_WS_UPSTREAM_LOST')
    else this.sink.end(sendableCloseCode(code), reason.toString('utf8'))
  }

  /** An established ws emits 'error' only when the backend broke the protocol; ws has already sent it 1002/1007/1009. */
  private backendError (err: Error): void {
    if (this.state !== 'open') return
    this.owner.log.debug({ endpoint: this.ep.address, err: err.message }, 'passthrough backend broke the WebSocket protocol')
    // Not the code ws sent the backend: towards the client 1007/1009 would blame the client's own data.
    this.sink.end(1011, 'backend protocol error', 'FERRY_ERR_UPSTREAM_PROTOCOL')
    this.beginClose(undefined, '')
  }

  /**
   * Leaves 'open': sends a close frame (unless ws is closing already; `code` 'none': one without a code)
   * and bounds the backend's answer. `code` undefined: no close frame (ws has sent one already).
   */
  private beginClose (code: number | 'none' | undefined, reason: string): void {
    this.to('closing')
    const ws = this.ws
    this.graceTimer = setTimeout(() => { ws.terminate() }, CLOSE_GRACE_MS)
    // A socket paused for a congested client would never read the backend's close frame.
    if (ws.isPaused) ws.resume()
    if (code === undefined || ws.readyState !== WebSocket.OPEN) return
    try {
      if (code === 'none') ws.close()
      else ws.close(code, closeReason(reason))
    } catch {
      ws.terminate()
    }
  }

  send (data: Uint8Array, binary: boolean): void {
    if (this.state !== 'open' || this.ws.readyState !== WebSocket.OPEN) return
    // ws writes each frame at once: a session with 8 messages in flight made 8 write syscalls where one
    // writev does (over half of the busy time in the profile, each write also running the loopback
    // peer's receive path).
    corkUntilCheck(this.socket)
    // ws may queue the buffer: copy, the uWS view dies when the caller returns.
    this.ws.send(Buffer.from(data), { binary, compress: false })
  }

  get buffered (): number {
    return this.ws.bufferedAmount
  }

  clientCongested (): void {
    if (this.state === 'open' && !this.ws.isPaused) this.ws.pause()
  }

  clientDrained (): void {
    if (this.state === 'open' && this.ws.isPaused) this.ws.resume()
  }

  clientClosed (code: number, reason: string): void {
    if (this.state !== 'open') return
    // 1005: the client's close frame carried no code, or (uWS 20.30 reports both alike) a malformed one
    // of 1 byte: the backend gets a close frame without a code too and reads 1005, not a made-up 1000.
    // 1006 (it vanished, or broke the protocol in a way uWS does not name) and other codes never sent on
    // the wire → 1001.
    this.beginClose(code === 1005 ? 'none' : sendableCloseCode(code, 1001), reason)
  }

  /**
   * The endpoint is leaving (src/drain/endpoint-drain.ts): the client gets what the backend already
   * sent, then 1012 with `reason` (its retry hint); the backend is told 1012 too. False when not open.
   */
  moveOff (reason: string): boolean {
    if (this.state !== 'open') return false
    this.sink.end(1012, reason, 'FERRY_ERR_ENDPOINT_DRAINING')
    this.beginClose(1012, reason)
    return true
  }

  /** The upstream is stopping: both sides are told 1001. */
  abort (): void {
    if (this.state !== 'open') return
    this.sink.end(1001, 'gateway stopping', 'FERRY_ERR_GATEWAY_STOPPING')
    this.beginClose(1001, 'gateway stopping')
  }
}

/** Why a handshake attempt failed, and whether it says something about the endpoint's health. */
interface AttemptFailure {
  code: FerryErrorCode
  message: string
  health: 'failed' | 'succeeded' | 'unknown'
}

type UpstreamState = 'open' | 'closing' | 'closed'

/** What a passthrough upstream may be given besides its config. */
export interface WsPassthroughOptions {
  /** Keeps the records of its sessions' affinity keys. */
  readonly placement?: AffinityPlacement | undefined
  /** The active checks of another upstream on the same source (see MemberKind); `cfg.healthCheck` must be unset then. */
  readonly sharedHealth?: ((address: string) => ActiveHealth | undefined) | undefined
  /** The upstream's name in the config when it differs from `name` (an HTTP upstream's twin `api:ws` serves `api`). */
  readonly configName?: string | undefined
  /** TLS towards the endpoints (wss); undefined: plain ws. */
  readonly tls?: UpstreamTlsClient | undefined
}

/**
 * A `protocol: ws` upstream: every client session gets its own WebSocket to an unmodified backend.
 * The client's upgrade is answered only after the backend's: 101 with the backend's subprotocol (or none,
 * as the backend chose), or an HTTP error when it refused (502) or could not be reached (502/504).
 *
 * Failover: a connect failure or timeout is retried once on another endpoint within `timeouts.connectMs`.
 * When there is another endpoint to fail over to, the first attempt gets half the budget, so one
 * black-holed endpoint does not eat it all. A backend's answer (non-101, a broken 101) is not retried.
 * Passive health counts connect errors, timeouts, 5xx answers and broken 101s as failures; a 4xx answer
 * is the backend judging the client (bad token, origin) and counts as the endpoint being alive.
 */
export class WsPassthroughUpstream implements WsUpstream {
  readonly mode = 'ws'
  /**
   * The endpoints, following the upstream's source. A removed one takes no new sessions; its open ones
   * are moved off by the gateway's EndpointDrainer through `carrier`, paced (so are those of an endpoint
   * the operator drains, or one failing its health with `drain.onUnhealthy: drain`).
   */
  private readonly set: EndpointSet<WsEndpoint>
  /** What the gateway's EndpointDrainer moves sessions off leaving endpoints through. */
  readonly carrier: EndpointCarrier
  private readonly placement: AffinityPlacement | undefined
  private readonly balancer: Balancer<WsEndpoint>
  /** Rendezvous hashing of a session's affinity key: every pod picks the same endpoint for a key. */
  private readonly byKey: Balancer<WsEndpoint>
  private readonly legs = new Set<PassthroughLeg>()
  /** Handshakes in progress, each with the function that gives it up. */
  private readonly handshakes = new Set<(err: FerryError) => void>()
  private state: UpstreamState = 'open'
  private idleWaiters: Array<() => void> = []
  private readonly connections: Gauge.Internal<string>
  private readonly retries: Counter.Internal
  private readonly tls: UpstreamTlsClient | undefined

  constructor (readonly name: string, readonly cfg: WsUpstreamConfig, readonly log: Logger, metrics: Metrics, source: EndpointSource, opts: WsPassthroughOptions = {}) {
    const check = cfg.healthCheck
    const tls = this.tls = opts.tls
    this.placement = opts.placement
    this.set = new EndpointSet<WsEndpoint>(name, source, {
      create: (ep) => new WsEndpoint(ep, new PassiveHealth(name, ep.address, cfg.ejection, log, metrics)),
      // Handshakes under way complete; the EndpointDrainer moves the open sessions off, paced.
      retire: () => {},
      idle: (e) => e.inflight === 0,
      close: async () => {},
      probe: async (e, timeoutMs) => {
        if (check?.http !== undefined) await httpProbe(e.endpoint, check.http, timeoutMs, tls)
        else await tcpProbe(e.endpoint, timeoutMs, tls)
      },
      sharedHealth: opts.sharedHealth,
    }, check, log, metrics)
    const moves: DrainCause[] = cfg.drain.onUnhealthy === 'drain' ? ['operator', 'removed', 'unhealthy'] : ['operator', 'removed']
    this.carrier = {
      upstream: opts.configName ?? name,
      endpoints: this.set,
      movesFor: new Set(moves),
      budget: cfg.drain,
      sessionsOn: (address) => this.sessionsOn(address),
      moveSessionsOff: (address, n) => this.moveSessionsOff(address, n),
    }
    const panic = cfg.whenAllUnhealthy === 'panic'
    this.balancer = new Balancer(this.set, cfg.balance, { panic, boundedLoadFactor: cfg.boundedLoadFactor })
    this.byKey = new Balancer(this.set, 'hash', { panic, boundedLoadFactor: cfg.boundedLoadFactor })
    this.connections = metrics.upstreamConnections.labels('upstream', 'ws', name)
    this.retries = metrics.upstreamRetries.labels(name)
  }

  async open (hs: WsHandshake, sink: ClientSink): Promise<UpstreamLeg> {
    if (this.state !== 'open') throw new FerryError('FERRY_ERR_GATEWAY_STOPPING', `upstream ${this.name} is closing`)
    const target = hs.query === '' ? hs.path : `${hs.path}?${hs.query}`
    // ws refuses URLs with a fragment; a request target never has one.
    if (target.includes('#')) throw new FerryError('FERRY_ERR_BAD_REQUEST', 'request target contains #')
    const headers: Record<string, string> = {}
    // Node writes header strings as latin1: values beyond ASCII go as their UTF-8 bytes (header-bytes.ts).
    for (const [k, v] of Object.entries(hs.headers)) if (!HANDSHAKE_OWNED.has(k)) headers[k] = utf8ForLatin1Writer(v)
    // Offered as a plain header, not through ws's `protocols`: ws would refuse a 101 that selects no
    // subprotocol, which browsers accept. The backend's choice is checked here instead.
    if (hs.protocols.length > 0) headers['sec-websocket-protocol'] = hs.protocols.join(', ')
    const affine = hs.affinityKey !== undefined
    const key = affine ? hashKey(hs.affinityKey!) : this.cfg.balance === 'hash' ? hashKey(hs.remoteAddress) : undefined
    const balancer = affine ? this.byKey : this.balancer
    const deadline = Date.now() + this.cfg.timeouts.connectMs
    // Refused before the affinity store is asked: a handshake with nowhere to go costs no store round trip.
    const refused = this.set.refusal(Date.now(), this.cfg.whenAllUnhealthy)
    if (refused !== undefined) throw refused
    // The key's recorded endpoint (affinity store) goes first while it is healthy.
    const known = affine && this.placement !== undefined ? await this.placement.recorded(hs.affinityKey!) : undefined
    const home = known !== undefined ? this.set.get(known) : undefined
    const tried = new Set<WsEndpoint>()
    let lastError: FerryError | undefined
    for (let attempt = 0; attempt < MAX_ATTEMPTS; attempt++) {
      const now = Date.now()
      const left = deadline - now
      if (left <= 0 || this.state !== 'open') break
      // The route's split narrows new sessions to a label subset (a failover may move on to another subset).
      const subset = hs.split?.split.assign(hs.split, this.set.active, now, tried, attempt === 0)
      // A key's recorded endpoint outside the subset the split chose is passed over: new sessions follow the split.
      const ep = attempt === 0 && home?.acceptsAt(now) === true && (subset === undefined || subset.matches(home.labels)) ? home : balancer.pick(Infinity, now, tried, key, subset)
      if (ep === undefined) break
      tried.add(ep)
      if (attempt > 0) this.retries.inc()
      const failoverLeft = attempt + 1 < MAX_ATTEMPTS && tried.size < this.set.size
      try {
        const leg = await this.handshake(ep, target, headers, hs, sink, failoverLeft ? Math.ceil(left / 2) : left)
        if (affine && this.placement !== undefined) {
          this.placement.opened(hs.affinityKey!, ep.endpoint.address, known)
          leg.affinityKey = hs.affinityKey
        }
        return leg
      } catch (err) {
        lastError = err as FerryError
        if (lastError.code !== 'FERRY_ERR_UPSTREAM_CONNECT' && lastError.code !== 'FERRY_ERR_UPSTREAM_CONNECT_TIMEOUT' && lastError.code !== 'FERRY_ERR_UPSTREAM_TLS') throw lastError
      }
    }
    if (this.state !== 'open') throw new FerryError('FERRY_ERR_GATEWAY_STOPPING', `upstream ${this.name} is closing`)
    throw lastError ?? new FerryError('FERRY_ERR_UPSTREAM_CONNECT_TIMEOUT', `upstream ${this.name}: no backend handshake within ${this.cfg.timeouts.connectMs} ms`)
  }

  /**
   * One WebSocket handshake with one endpoint, within `ms`. Owns the socket and the timer until it
   * resolves with the session's leg (which owns the socket from then on) or rejects (the socket is
   * destroyed).
   */
  private async handshake (ep: WsEndpoint, target: string, headers: Record<string, string>, hs: WsHandshake, sink: ClientSink, ms: number): Promise<PassthroughLeg> {
    const host = ep.endpoint.host.includes(':') ? `[${ep.endpoint.host}]` : ep.endpoint.host
    const tls = this.tls
    let ws: WebSocket
    try {
      ws = new WebSocket(`${tls !== undefined ? 'wss' : 'ws'}://${host}:${ep.endpoint.port}${target}`, {
        headers,
        perMessageDeflate: false,
        maxPayload: Math.max(hs.settings.maxPayloadLength, MAX_BACKEND_MESSAGE),
        followRedirects: false,
        ...tls?.options(ep.endpoint),
      })
    } catch (err) {
      // A URL or header value Node will not write: the client sent it.
      throw new FerryError('FERRY_ERR_BAD_REQUEST', `cannot forward this handshake: ${(err as Error).message}`)
    }
    ep.handshaking++
    return await new Promise((resolve, reject) => {
      let protocol = ''
      let settled = false
      const settle = (): void => {
        settled = true
        ep.handshaking--
        clearTimeout(timer)
        this.handshakes.delete(cancel)
        ws.removeAllListeners('upgrade')
        ws.removeAllListeners('unexpected-response')
        ws.removeAllListeners('open')
        ws.removeAllListeners('error')
      }
      const fail = (f: AttemptFailure): void => {
        if (settled) return
        settle()
        ws.on('error', noop) // terminate() of a connecting ws emits one more
        ws.terminate()
        if (f.health === 'failed') ep.passive.failed('handshake failures')
        else if (f.health === 'succeeded') ep.passive.succeeded('handshake answered')
        this.maybeIdle()
        reject(new FerryError(f.code, f.message))
      }
      const cancel = (err: FerryError): void => { fail({ code: err.code, message: err.message, health: 'unknown' }) }
      this.handshakes.add(cancel)
      const timer = setTimeout(() => {
        fail({ code: 'FERRY_ERR_UPSTREAM_CONNECT_TIMEOUT', message: `${ep.address}: no WebSocket handshake within ${ms} ms`, health: 'failed' })
      }, ms)
      let socket: Socket | undefined
      ws.once('upgrade', (res: IncomingMessage) => {
        socket = res.socket
        const p = res.headers['sec-websocket-protocol']
        protocol = typeof p === 'string' ? p.trim() : ''
        // ws reads the header right after this event and refuses one it did not offer itself (it offered none).
        delete res.headers['sec-websocket-protocol']
      })
      ws.once('unexpected-response', (_req, res: IncomingMessage) => {
        const status = res.statusCode ?? 0
        res.on('error', noop)
        res.resume()
        ep.logRefusal(this.log, status, hs.path)
        fail({ code: 'FERRY_ERR_WS_UPSTREAM_HANDSHAKE', message: `${ep.address} answered ${status} to the WebSocket handshake`, health: status >= 500 ? 'failed' : 'succeeded' })
      })
      ws.once('error', (err: NodeJS.ErrnoException) => {
        // A failed TLS handshake (counted and logged once per endpoint by the TLS client). Other socket
        // errors carry an errno code (ECONNREFUSED, ECONNRESET, ...); ws's own refusals of a malformed
        // 101 (bad Sec-WebSocket-Accept, unrequested extension) do not.
        const tlsFailure = tls?.failure(ep.address, err)
        if (tlsFailure !== undefined) fail({ code: tlsFailure.code, message: tlsFailure.message, health: 'failed' })
        else if (typeof err.code === 'string' && err.code.startsWith('E')) fail({ code: 'FERRY_ERR_UPSTREAM_CONNECT', message: `${ep.address}: ${err.code}`, health: 'failed' })
        else fail({ code: 'FERRY_ERR_WS_UPSTREAM_HANDSHAKE', message: `${ep.address}: ${err.message}`, health: 'failed' })
      })
      ws.once('open', () => {
        if (settled) return
        if (protocol !== '' && !hs.protocols.includes(protocol)) {
          fail({ code: 'FERRY_ERR_WS_UPSTREAM_HANDSHAKE', message: `${ep.address} selected subprotocol ${protocol}, which the client did not offer`, health: 'unknown' })
          return
        }
        if (socket === undefined) { // ws emits 'upgrade' before 'open'; never relay without the socket
          fail({ code: 'FERRY_ERR_WS_UPSTREAM_HANDSHAKE', message: `${ep.address}: no 101 response seen`, health: 'unknown' })
          return
        }
        settle()
        ep.passive.succeeded('handshake')
        // The leg takes the socket now, in this callback: a message the backend sent right behind its 101
        // is emitted before any promise continuation would run.
        ep.sockets++
        ep.sessions++
        const leg = new PassthroughLeg(protocol, ws, socket, sink, ep, this)
        this.legs.add(leg)
        resolve(leg)
      })
    })
  }

  /** Sessions relayed on the endpoint(s) at `address` (a removed member and its re-added successor both count). */
  private sessionsOn (address: string): number {
    let n = 0
    for (const ep of this.set.all()) if (ep.address === address) n += ep.sessions
    return n
  }

  /** Closes up to `n` sessions on `address`, oldest first, 1012 with a retry hint (both sides); returns how many. */
  private moveSessionsOff (address: string, n: number): number {
    let moved = 0
    for (const ep of this.set.all()) {
      if (ep.address !== address) continue
      // moveOff removes the leg from the set: deleting the current entry is safe in a Set's iteration.
      for (const leg of ep.legs) {
        if (moved >= n) return moved
        if (leg.moveOff(endpointDrainReason())) moved++
      }
    }
    return moved
  }

  /** A leg's backend socket closed. */
  released (leg: PassthroughLeg): void {
    this.legs.delete(leg)
    if (leg.affinityKey !== undefined) this.placement?.closed(leg.affinityKey)
    this.maybeIdle()
  }

  /** Wakes close() once no handshake is in progress and no backend socket is open. */
  private maybeIdle (): void {
    if (this.legs.size > 0 || this.handshakes.size > 0 || this.idleWaiters.length === 0) return
    const waiters = this.idleWaiters
    this.idleWaiters = []
    for (const w of waiters) w()
  }

  private async idle (ms: number): Promise<boolean> {
    if (this.legs.size === 0 && this.handshakes.size === 0) return true
    let timer: NodeJS.Timeout | undefined
    const done = await Promise.race([
      new Promise<boolean>((resolve) => { this.idleWaiters.push(() => { resolve(true) }) }),
      new Promise<boolean>((resolve) => { timer = setTimeout(() => { resolve(false) }, ms) }),
    ])
    clearTimeout(timer)
    return done
  }

  async retire (): Promise<void> {
    if (this.state !== 'open') return
    this.state = 'closing'
    // Handshakes under way complete; open sessions continue until they end (those on an endpoint the new
    // config no longer has, or that the operator drains, are moved off by the EndpointDrainer).
    while (!await this.idle(60_000)) { /* still in use */ }
    this.placement?.stop()
    await this.set.close('flush')
    this.state = 'closed'
  }

  /**
   * No new sessions; handshakes in progress are given up (their clients get 503). 'abort' closes open
   * sessions now (1001 to both sides); 'flush' lets them end by themselves for FLUSH_GRACE_MS first (the
   * gateway's front has usually closed them already). Resolves when every backend socket is closed.
   */
  async close (kind: 'flush' | 'abort'): Promise<void> {
    if (this.state !== 'open') { await this.idle(FLUSH_GRACE_MS + 2 * CLOSE_GRACE_MS); return }
    this.state = 'closing'
    this.placement?.stop()
    const stopping = new FerryError('FERRY_ERR_GATEWAY_STOPPING', `upstream ${this.name} is closing`)
    for (const cancel of [...this.handshakes]) cancel(stopping)
    if (kind === 'flush') await this.idle(FLUSH_GRACE_MS)
    for (const leg of [...this.legs]) leg.abort()
    // Every leg is closing now, each cut after CLOSE_GRACE_MS at most.
    await this.idle(2 * CLOSE_GRACE_MS)
    await this.set.close(kind)
    this.state = 'closed'
  }

  collect (): void {
    let sockets = 0
    for (const ep of this.set.all()) sockets += ep.sockets
    this.connections.set(sockets)
    this.set.collect()
  }

  labelled (): Array<{ labels: Labels, healthy: boolean }> {
    return this.set.labelled(Date.now())
  }

  status (): object {
    return {
      name: this.name,
      protocol: 'ws',
      balance: this.cfg.balance,
      state: this.state,
      whenAllUnhealthy: this.cfg.whenAllUnhealthy,
      source: this.set.sourceStatus(),
      tls: this.tls?.status() ?? null,
      endpoints: this.set.status((ep) => ({
        sessions: ep.sessions,
        handshaking: ep.handshaking,
        closing: ep.sockets - ep.sessions,
      })),
    }
  }
}
