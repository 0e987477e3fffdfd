import type { Logger } from 'pino'
import type { Counter } from 'prom-client'
import { parseEndpoint, type Endpoint } from '../../config/load.js'
import type { MuxUpstreamConfig } from '../../config/schema.js'
import { FerryError } from '../../errors.js'
import { sendableCloseCode, type ClientSink, type TopicPublisher, type UpstreamLeg, type WsHandshake, type WsUpstream } from '../../front/ws-types.js'
import type { ConnectionEnd } from '../../mux/connection.js'
import type { MuxStream } from '../../mux/stream.js'
import type { Metrics } from '../../observability/metrics.js'
import { Balancer, hashKey, type Balanced } from '../../routing/balancer.js'
import { PassiveHealth } from '../health.js'
import { LinkSlot, type LinkOwner } from './link.js'

/**
 * One backend endpoint of a mux upstream: its link slots, passive health, and the topic scope of the
 * sessions it carries (a backend's PUBLISH reaches only the clients it subscribed itself).
 */
class MuxEndpoint implements Balanced, LinkOwner {
  readonly slots: LinkSlot[]
  readonly passive: PassiveHealth
  readonly topicPrefix: string
  private readonly events: Record<'connected' | 'connect_failed' | 'lost' | 'goaway', Counter.Internal>

  constructor (readonly upstream: MuxUpstream, readonly endpoint: Endpoint) {
    const m = upstream.metrics
    this.passive = new PassiveHealth(upstream.name, endpoint.address, upstream.cfg.ejection, upstream.log, m)
    this.slots = Array.from({ length: upstream.cfg.pool.links }, (_, i) => new LinkSlot(i, this))
    this.topicPrefix = `${upstream.name}\u0001${endpoint.address}\u0001`
    const ev = (e: string): Counter.Internal => m.muxLinkEvents.labels(upstream.name, endpoint.address, e)
    this.events = { connected: ev('connected'), connect_failed: ev('connect_failed'), lost: ev('lost'), goaway: ev('goaway') }
  }

  get name (): string { return this.upstream.name }
  get address (): string { return this.endpoint.address }
  get host (): string { return this.endpoint.host }
  get port (): number { return this.endpoint.port }
  get cfg (): MuxUpstreamConfig { return this.upstream.cfg }
  get gatewayId (): string { return this.upstream.gatewayId }
  get log (): Logger { return this.upstream.log }

  /** Streams on all links (what least-streams balances). */
  get inflight (): number {
    let n = 0
    for (const s of this.slots) n += s.streams
    return n
  }

  acceptsAt (now: number): boolean {
    return this.passive.acceptsAt(now) && this.readyLink() !== undefined
  }

  /** The ready link with the fewest streams whose socket is not backed up. */
  readyLink (): LinkSlot | undefined {
    let best: LinkSlot | undefined
    for (const s of this.slots) {
      if (s.state !== 'ready' || s.conn === undefined || !s.conn.writable) continue
      if (best === undefined || s.streams < best.streams) best = s
    }
    return best
  }

  linkReady (slot: LinkSlot): void {
    this.events.connected.inc()
    this.passive.succeeded('link connected')
    this.log.info({ endpoint: this.address, link: slot.index }, 'mux link ready')
    this.upstream.wake()
  }

  linkFailed (slot: LinkSlot, why: string): void {
    this.events.connect_failed.inc()
    this.passive.failed('link connect failures')
    this.log.debug({ endpoint: this.address, link: slot.index, why }, 'mux link connect failed')
  }

  linkLost (slot: LinkSlot, end: ConnectionEnd): void {
    this.events.lost.inc()
    this.log.warn({ endpoint: this.address, link: slot.index, code: end.code, why: end.message }, 'mux link lost; its sessions were closed 1012')
  }

  linkGoaway (slot: LinkSlot, reason: string): void {
    this.events.goaway.inc()
    this.log.info({ endpoint: this.address, link: slot.index, reason }, 'mux backend sent GOAWAY; link drains')
  }

  publish (topic: string, data: Buffer, binary: boolean): void {
    this.upstream.publish(this.topicPrefix + topic, data, binary)
  }

  protocolError (code: string): void {
    this.upstream.protocolError(code)
  }
}

/**
 * The gateway side of one session on a mux stream: bridges the stream's events to the client sink and
 * the client's events to the stream. Holds credit while the client is congested.
 */
class MuxLeg implements UpstreamLeg {
  stream!: MuxStream

  constructor (readonly protocol: string, private readonly sink: ClientSink, private readonly ep: MuxEndpoint, private readonly stalls: { send: Counter.Internal, receive: Counter.Internal }) {}

  readonly events = {
    message: (data: Buffer, binary: boolean): void => {
      this.sink.deliver(data, binary)
      if (this.sink.congested) this.stream.holdCredit(true)
    },
    end: (code: number, reason: string, cause: 'peer' | 'reset' | 'link', errorCode?: string): void => {
      this.sink.end(cause === 'peer' ? sendableCloseCode(code) : code, reason, errorCode ?? 'upstream')
      if (cause !== 'link') this.afterStreamEnd()
    },
    drain: (): void => {},
    stall: (direction: 'send' | 'receive'): void => { this.stalls[direction].inc() },
    subscribe: (topic: string): void => { this.sink.subscribe(this.ep.topicPrefix + topic) },
    unsubscribe: (topic: string): void => { this.sink.unsubscribe(this.ep.topicPrefix + topic) },
  }

  send (data: Uint8Array, binary: boolean): void {
    this.stream.send(data, binary)
  }

  get buffered (): number {
    return this.stream.queued
  }

  clientDrained (): void {
    this.stream.holdCredit(false)
  }

  clientCongested (): void {
    this.stream.holdCredit(true)
  }

  clientClosed (code: number, reason: string): void {
    this.stream.close(code, reason)
    this.afterStreamEnd()
  }

  /** A draining link closes once its last stream is gone. */
  private afterStreamEnd (): void {
    for (const s of this.ep.slots) if (s.state === 'draining') s.closeIfIdle()
  }
}

/**
 * A `protocol: mux` upstream: `pool.links` links per endpoint, sessions as streams on the least-loaded
 * ready link of the endpoint the balancer picks. A session waits up to `timeouts.openMs` for a ready
 * link (links connect at start and reconnect with backoff), else its upgrade is answered 502.
 */
export class MuxUpstream implements WsUpstream {
  readonly mode = 'mux'
  readonly endpoints: MuxEndpoint[]
  private readonly balancer: Balancer<MuxEndpoint>
  /** Rendezvous hashing of a session's affinity key: every pod picks the same endpoint for a key. */
  private readonly byKey: Balancer<MuxEndpoint>
  private waiters: Array<() => void> = []
  private publisher: TopicPublisher | undefined
  private closed = false
  private readonly published: Counter.Internal
  private readonly fanout: Counter.Internal
  private readonly stalls: { send: Counter.Internal, receive: Counter.Internal }
  private readonly protocolErrors = new Map<string, Counter.Internal>()

  constructor (readonly name: string, readonly cfg: MuxUpstreamConfig, readonly log: Logger, readonly metrics: Metrics, readonly gatewayId: string) {
    this.endpoints = cfg.endpoints.map((e) => new MuxEndpoint(this, parseEndpoint(e)))
    this.balancer = new Balancer(this.endpoints, cfg.balance === 'least-streams' ? 'least-connections' : cfg.balance)
    this.byKey = new Balancer(this.endpoints, 'hash')
    this.published = metrics.muxPublished.labels(name)
    this.fanout = metrics.muxFanout.labels(name)
    this.stalls = { send: metrics.muxCreditStalls.labels(name, 'to_upstream'), receive: metrics.muxCreditStalls.labels(name, 'to_client') }
    for (const ep of this.endpoints) for (const s of ep.slots) s.start()
  }

  bindPublisher (p: TopicPublisher): void {
    this.publisher = p
  }

  publish (topic: string, data: Buffer, binary: boolean): void {
    this.published.inc()
    const n = this.publisher?.publish(topic, data, binary) ?? 0
    this.fanout.inc(n)
  }

  protocolError (code: string): void {
    let c = this.protocolErrors.get(code)
    if (c === undefined) { c = this.metrics.muxProtocolErrors.labels(this.name, code); this.protocolErrors.set(code, c) }
    c.inc()
  }

  /** A link became ready: sessions waiting for one try again. */
  wake (): void {
    const w = this.waiters
    this.waiters = []
    for (const fn of w) fn()
  }

  async open (hs: WsHandshake, sink: ClientSink): Promise<UpstreamLeg> {
    if (this.closed) throw new FerryError('FERRY_ERR_GATEWAY_STOPPING', 'upstream is closing')
    const affine = hs.affinityKey !== undefined
    const key = affine ? hashKey(hs.affinityKey!) : this.cfg.balance === 'hash' ? hashKey(hs.remoteAddress) : undefined
    const balancer = affine ? this.byKey : this.balancer
    const deadline = Date.now() + this.cfg.timeouts.openMs
    for (;;) {
      const picked = balancer.pick(Infinity, Date.now(), undefined, key)
      // Panic (the balancer fell back to an endpoint without a ready link): any endpoint that has one.
      const owner = picked?.acceptsAt(Date.now()) === true ? picked : this.endpoints.find((e) => e.readyLink() !== undefined)
      const slot = owner?.readyLink()
      if (owner !== undefined && slot?.conn !== undefined) {
        const protocol = hs.settings.subprotocols.find((p) => hs.protocols.includes(p)) ?? ''
        const leg = new MuxLeg(protocol, sink, owner, this.stalls)
        const stream = slot.conn.openStream({
          key: hs.affinityKey ?? hs.sessionId, session: hs.sessionId, path: hs.path, query: hs.query, headers: hs.headers,
          remoteAddress: hs.remoteAddress, protocol, route: hs.route,
        }, leg.events)
        if (stream !== undefined) {
          leg.stream = stream
          return leg
        }
      }
      const left = deadline - Date.now()
      if (left <= 0 || this.closed) {
        throw new FerryError('FERRY_ERR_MUX_NO_LINK', `no ready mux link to any endpoint of ${this.name} within ${this.cfg.timeouts.openMs} ms`)
      }
      await new Promise<void>((resolve) => {
        const timer = setTimeout(() => { this.waiters = this.waiters.filter((w) => w !== done); resolve() }, left)
        const done = (): void => { clearTimeout(timer); resolve() }
        this.waiters.push(done)
      })
    }
  }

  async close (kind: 'flush' | 'abort'): Promise<void> {
    void kind // sessions were closed by the front already; links say GOAWAY and go
    this.closed = true
    this.wake()
    for (const ep of this.endpoints) for (const s of ep.slots) s.stop()
  }

  collect (): void {
    const m = this.metrics
    let links = 0
    for (const ep of this.endpoints) {
      const byState: Record<string, number> = { connecting: 0, ready: 0, draining: 0, backoff: 0 }
      for (const s of ep.slots) {
        byState[s.state] = (byState[s.state] ?? 0) + 1
        m.muxStreamsPerLink.labels(this.name, ep.address, String(s.index)).set(s.streams)
        if (s.state === 'ready' || s.state === 'draining') links++
      }
      for (const [state, n] of Object.entries(byState)) m.muxLinks.labels(this.name, ep.address, state).set(n)
    }
    m.upstreamConnections.labels('upstream', 'mux', this.name).set(links)
  }

  status (): object {
    const now = Date.now()
    return {
      name: this.name,
      protocol: 'mux',
      balance: this.cfg.balance,
      endpoints: this.endpoints.map((ep) => ({
        address: ep.address,
        ...ep.passive.status(now),
        streams: ep.inflight,
        links: ep.slots.map((s) => s.status()),
      })),
    }
  }
}
